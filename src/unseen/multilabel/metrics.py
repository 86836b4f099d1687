"""Evaluation metrics for multi-label ZSL / GZSL (design spec ``multilabel-zsl.md`` sections 7 and 9).

Conventions (shared by every function here):

* ``scores`` is an ``N x C`` float matrix and ``labels`` an ``N x C`` integer matrix over the **evaluated** label
  space (ZSL: the unseen columns only; GZSL: ``[seen | unseen]``) and image set. Labels are in ``{+1, -1, 0}``;
  ``0`` = not annotated. Inputs may be numpy arrays or torch tensors (any device); everything is computed with
  numpy and the inputs are never modified.
* **AP** (section 7.1) is per class and masked: only the images annotated (``+1`` or ``-1``) for the class count.
  Tied scores form one threshold, exactly as ``sklearn.metrics.average_precision_score``:
  ``AP_c = (1/|Pos_c|) sum_{thresholds t} (TP_t - TP_{t-1}) * TP_t / (TP_t + FP_t)``, i.e. every positive gets the
  precision at the end of its tie group. A class without a positive has ``AP = nan``.
* **mAP** (section 7.2) = mean of ``AP_c`` over the classes with >= 1 positive (``n_excluded`` counts the
  others). ``biam_compat=True`` gives those classes ``AP = 0`` and averages them in (BiAM's convention; for
  comparison only; the pooled Open Images AP of section 7.4 is *not* reproduced). ``weighted=True`` gives
  ``sum_c n+_c AP_c / sum_c n+_c``.
* ``image_filter="all"`` evaluates every image (NUS-WIDE); ``"has_positive"`` drops the images with no ``+1`` in
  the evaluated label space (Open Images, separately for ZSL and GZSL).
* **P/R/F1@K** (section 7.3) are overall (micro) over the image set: per image the top-K labels (ties broken by
  the lowest column index); ``TP`` = top-K entries labelled ``+1`` (a ``0`` or ``-1`` in the top-K is a false
  positive); ``P@K = TP / (N K)``, ``R@K = TP / #{Y = +1}``, ``F1 = 2PR / (P + R)`` (``0`` if ``P + R = 0``).
  Over an empty image set P and R are ``nan``; R is ``nan`` when there is no positive.
* Memory: AP works on chunks of ``chunk_size`` columns and P/R/F1@K on chunks of rows; the extra memory is
  ``O(N x chunk)`` (about 80 bytes per annotated entry of an AP chunk, about 10 bytes per entry of a row chunk),
  never ``O(N x C)``. The results do not depend on the chunk sizes (bit for bit).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_FILTERS",
    "average_precision",
    "mean_average_precision",
    "precision_recall_f1_at_k",
    "evaluate_multilabel",
]

IMAGE_FILTERS = ("all", "has_positive")

# default chunk budget (entries of an N x chunk block); ~320 MB worst case for a fully annotated AP chunk
_CHUNK_ENTRIES = 1 << 22


# --------------------------------------------------------------------------------------------- helpers


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view/copy of a numpy array, a torch tensor (any device/dtype) or a sequence."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        import torch

        t = x.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.double()  # bfloat16 / float16: numpy has no bfloat16
        return t.numpy()
    return np.asarray(x)


def _row_blocks(n: int, size: int) -> Iterator[slice]:
    for r0 in range(0, n, size):
        yield slice(r0, min(n, r0 + size))


def _auto_chunk(n_other: int, chunk_size: int | None, n_max: int, what: str) -> int:
    if chunk_size is None:
        chunk_size = _CHUNK_ENTRIES // max(n_other, 1)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"{what}: expected a positive integer, got {chunk_size!r}")
    return int(max(1, min(chunk_size, max(n_max, 1))))


def _prepare(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated numpy ``(scores, labels)``; scores keep their float dtype, labels become an integer array.

    Checks run over row blocks so that they need O(block) extra memory.
    """
    s = _to_numpy(scores)
    y = _to_numpy(labels)
    if s.ndim != 2:
        raise ValueError(f"scores: expected an N x C matrix, got shape {s.shape}")
    if y.ndim != 2:
        raise ValueError(f"labels: expected an N x C matrix, got shape {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same shape, got scores {s.shape} and labels {y.shape}")
    if s.dtype == np.bool_ or not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"scores: expected a real (float or integer) matrix, got dtype {s.dtype}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"labels: expected an integer matrix with values in {{-1, 0, +1}}, got dtype {y.dtype}")
    N, C = s.shape
    block = _auto_chunk(C, None, N, "block")
    y_is_float = np.issubdtype(y.dtype, np.floating)
    for rows in _row_blocks(N, block):
        yb = y[rows]
        bad = (yb != 1) & (yb != 0) & (yb != -1)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"labels must only contain -1, 0 or +1 (0 = not annotated); found {yb[r, c]!r} at "
                             f"row {rows.start + r}, column {c} ({int(bad.sum())} bad entries in rows "
                             f"{rows.start}..{rows.stop - 1})")
        if np.issubdtype(s.dtype, np.floating):
            fin = np.isfinite(s[rows])
            if not fin.all():
                r, c = np.argwhere(~fin)[0]
                raise ValueError(f"scores must be finite; found {s[rows.start + r, c]!r} at row {rows.start + r}, "
                                 f"column {c}")
    if y_is_float:
        y = y.astype(np.int8)
    if np.issubdtype(s.dtype, np.integer):
        s = s.astype(np.float64)
    return s, y


def _kept_rows(labels: np.ndarray, image_filter: str) -> np.ndarray | None:
    """Row indices kept by ``image_filter`` (``None`` = all rows)."""
    if image_filter not in IMAGE_FILTERS:
        raise ValueError(f"image_filter: expected one of {IMAGE_FILTERS}, got {image_filter!r}")
    if image_filter == "all":
        return None
    N, C = labels.shape
    keep = np.zeros(N, dtype=bool)
    for rows in _row_blocks(N, _auto_chunk(C, None, N, "block")):
        keep[rows] = (labels[rows] == 1).any(axis=1)
    return np.flatnonzero(keep)


def _ap_block(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masked AP and positive counts of the columns of one ``n x b`` block (sklearn tie semantics)."""
    b = s.shape[1]
    r, c = np.nonzero(y)  # annotated entries, row-major: ascending row within each column
    if r.size == 0:
        return np.full(b, np.nan), np.zeros(b, dtype=np.int64)
    v = s[r, c]
    order = np.lexsort((-v, c))  # by column, then score descending (stable: ties keep ascending rows)
    c = c[order]
    v = v[order]
    pos = y[r[order], c] == 1
    del r, order
    m = c.size
    idx = np.arange(m)
    tp = np.cumsum(pos, dtype=np.int64)  # inclusive, over the whole block
    # a position ends a threshold group when the next entry is in another column or has another score
    is_end = np.ones(m, dtype=bool)
    is_end[:-1] = (c[1:] != c[:-1]) | (v[1:] != v[:-1])
    del v
    end = np.where(is_end, idx, m)
    del is_end
    end = np.minimum.accumulate(end[::-1])[::-1]  # the last position of each entry's tie group
    col_start = np.searchsorted(c, np.arange(b))  # first position of each column (c is sorted)
    p = np.flatnonzero(pos)
    cp = c[p]
    start = col_start[cp]
    tp_before = tp[start] - pos[start]  # TP of the previous columns
    e = end[p]
    prec = (tp[e] - tp_before) / (e + 1 - start)  # precision at the end of the positive's tie group
    n_pos = np.bincount(cp, minlength=b)
    ap_sum = np.bincount(cp, weights=prec, minlength=b)  # sequential sum in rank order: chunk-invariant
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_pos > 0, ap_sum / np.maximum(n_pos, 1), np.nan)
    return ap, n_pos


def _average_precision(s: np.ndarray, y: np.ndarray, keep: np.ndarray | None,
                       chunk_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    N, C = s.shape
    n = N if keep is None else keep.size
    b = _auto_chunk(n, chunk_size, C, "chunk_size")
    ap = np.full(C, np.nan)
    n_pos = np.zeros(C, dtype=np.int64)
    for c0 in range(0, C, b):
        cols = slice(c0, min(C, c0 + b))
        if keep is None:
            sb, yb = s[:, cols], y[:, cols]
        else:
            sb, yb = s[keep, cols], y[keep, cols]
        ap[cols], n_pos[cols] = _ap_block(sb, yb)
    return ap, n_pos


def _map_summary(ap: np.ndarray, n_pos: np.ndarray, *, weighted: bool, biam_compat: bool) -> dict[str, Any]:
    has_pos = n_pos > 0
    n_excluded = int((~has_pos).sum())
    if biam_compat:
        vals = np.where(has_pos, ap, 0.0)
        w = n_pos.astype(np.float64)
    else:
        vals = ap[has_pos]
        w = n_pos[has_pos].astype(np.float64)
    if vals.size == 0 or (weighted and w.sum() == 0):
        m = float("nan")
    elif weighted:
        m = float(np.sum(w * vals) / w.sum())
    else:
        m = float(vals.mean())
    return {"mAP": m, "n_excluded": n_excluded}


def _check_ks(ks: Any, C: int) -> tuple[int, ...]:
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
        ks = (ks,)
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks: every K must be a positive integer, got {k!r}")
        if k > C:
            raise ValueError(f"ks: K={int(k)} is larger than the number of evaluated labels C={C}")
        out.append(int(k))
    if not out:
        raise ValueError("ks: expected at least one K")
    return tuple(dict.fromkeys(out))


def _topk_tp(s: np.ndarray, pos: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """True positives in the top-K of each row of one block, for every K (ties: lowest column index first)."""
    n, C = s.shape
    kth = sorted({C - k for k in ks})
    part = np.partition(s, kth, axis=1)  # the K-th largest value of every row, for every K at once
    tps = np.zeros(len(ks), dtype=np.int64)
    for j, k in enumerate(ks):
        t = part[:, C - k][:, None]
        gt = s > t
        eq = s == t
        need = k - gt.sum(axis=1)  # >= 1 tie entries to take, lowest index first
        tp = np.count_nonzero(gt & pos)
        n_eq = eq.sum(axis=1)
        full = n_eq <= need  # every tied entry is in the top-K (n_eq == need)
        tp += np.count_nonzero(eq[full] & pos[full])
        part_rows = np.flatnonzero(~full)
        if part_rows.size:
            eq_r = eq[part_rows]
            take = eq_r & (np.cumsum(eq_r, axis=1, dtype=np.int32) <= need[part_rows, None])
            tp += np.count_nonzero(take & pos[part_rows])
        tps[j] = tp
    return tps


def _prf_at_k(s: np.ndarray, y: np.ndarray, keep: np.ndarray | None, ks: tuple[int, ...],
              chunk_size: int | None) -> dict[str, float]:
    N, C = s.shape
    n = N if keep is None else keep.size
    rb = _auto_chunk(C, chunk_size, n, "chunk_size")
    tps = np.zeros(len(ks), dtype=np.int64)
    n_true = 0
    for rows in _row_blocks(n, rb):
        idx = rows if keep is None else keep[rows]
        sb, yb = s[idx], y[idx]
        pos = yb == 1
        n_true += int(np.count_nonzero(pos))
        tps += _topk_tp(sb, pos, ks)
    out: dict[str, float] = {}
    for k, tp in zip(ks, tps.tolist()):
        P = tp / (n * k) if n > 0 else float("nan")
        R = tp / n_true if n_true > 0 else float("nan")
        F1 = 2 * P * R / (P + R) if (P + R) > 0 else 0.0  # nan + x > 0 is False: F1 = 0 when P or R is nan
        out[f"P@{k}"], out[f"R@{k}"], out[f"F1@{k}"] = float(P), float(R), float(F1)
    return out


# --------------------------------------------------------------------------------------------- public API


def average_precision(scores: Any, labels: Any, *, chunk_size: int | None = None) -> np.ndarray:
    """Masked per-class AP, shape ``(C,)`` float64; ``nan`` for classes without a positive (section 7.1).

    Equal to ``sklearn.metrics.average_precision_score(labels[m, c] == 1, scores[m, c])`` with
    ``m = labels[:, c] != 0`` for every class with a positive (tied scores form one threshold). ``chunk_size``
    = columns per block (default: about 4M entries per block).
    """
    s, y = _prepare(scores, labels)
    return _average_precision(s, y, None, chunk_size)[0]


def mean_average_precision(scores: Any, labels: Any, *, weighted: bool = False, biam_compat: bool = False,
                           image_filter: str = "all", chunk_size: int | None = None) -> dict[str, Any]:
    """mAP over the classes with >= 1 positive among the kept images (section 7.2).

    Returns ``{"mAP", "n_excluded", "per_class", "n_positives", "n_images"}``: ``per_class`` = AP per class
    (``nan`` without a positive, also with ``biam_compat``), ``n_positives`` = ``+1`` count per class,
    ``n_images`` = images kept by ``image_filter``. ``biam_compat``: classes without a positive count as
    ``AP = 0`` in the mean (``n_excluded`` still counts them).
    """
    s, y = _prepare(scores, labels)
    keep = _kept_rows(y, image_filter)
    ap, n_pos = _average_precision(s, y, keep, chunk_size)
    out = _map_summary(ap, n_pos, weighted=weighted, biam_compat=biam_compat)
    out.update(per_class=ap, n_positives=n_pos, n_images=int(s.shape[0] if keep is None else keep.size))
    return out


def precision_recall_f1_at_k(scores: Any, labels: Any, ks: int | Sequence[int] = (3, 5), *,
                             image_filter: str = "all", chunk_size: int | None = None) -> dict[str, float]:
    """Overall (micro) ``P@K``, ``R@K``, ``F1@K`` for every K (section 7.3); keys ``"P@3"``, ``"R@3"``, ...

    ``chunk_size`` = rows per block (default: about 4M entries per block). ``K > C`` is rejected.
    """
    s, y = _prepare(scores, labels)
    ks_t = _check_ks(ks, s.shape[1])
    keep = _kept_rows(y, image_filter)
    return _prf_at_k(s, y, keep, ks_t, chunk_size)


def evaluate_multilabel(scores: Any, labels: Any, *, ks: int | Sequence[int] = (3, 5), image_filter: str = "all",
                        chunk_size: int | None = None, row_chunk_size: int | None = None,
                        weighted: bool = False, biam_compat: bool = False) -> dict[str, Any]:
    """mAP and P/R/F1@K on one label space and image set (validated and filtered once).

    Returns ``{"mAP", "n_excluded", "P@k", "R@k", "F1@k" (every k), "n_images"}``. ``chunk_size`` = columns per
    AP block, ``row_chunk_size`` = rows per top-K block (defaults: about 4M entries per block).
    """
    s, y = _prepare(scores, labels)
    ks_t = _check_ks(ks, s.shape[1])
    keep = _kept_rows(y, image_filter)
    ap, n_pos = _average_precision(s, y, keep, chunk_size)
    out: dict[str, Any] = _map_summary(ap, n_pos, weighted=weighted, biam_compat=biam_compat)
    out.update(_prf_at_k(s, y, keep, ks_t, row_chunk_size))
    out["n_images"] = int(s.shape[0] if keep is None else keep.size)
    return out
