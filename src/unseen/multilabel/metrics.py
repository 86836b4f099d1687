"""Evaluation metrics for multi-label ZSL / GZSL: masked per-class AP, mAP, overall P/R/F1@K (the LESA / BiAM
protocol).

Conventions (shared by every function here):

* ``scores`` is an ``N x C`` float matrix and ``labels`` an ``N x C`` integer matrix over the **evaluated** label
  space (ZSL: the unseen columns only; GZSL: ``[seen | unseen]``) and image set. Labels are in ``{+1, -1, 0}``;
  ``0`` = not annotated. Inputs may be numpy arrays or torch tensors (any device); they are never modified.
  float32 / float64 scores (numpy or CPU tensors, also strided views such as ``scores[:, 7186:]``) are used in
  place; float16 / bfloat16 scores are widened to float32 and integer scores to float64 (both exact); labels that
  are not int8 are converted to an int8 copy. The work runs in numpy and (multithreaded) torch CPU ops.
* **AP** is per class and masked: only the images annotated (``+1`` or ``-1``) for the class count.
  Tied scores form one threshold, exactly as ``sklearn.metrics.average_precision_score``:
  ``AP_c = (1/|Pos_c|) sum_{thresholds t} (TP_t - TP_{t-1}) * TP_t / (TP_t + FP_t)``, i.e. every positive gets the
  precision at the end of its tie group. A class without a positive has ``AP = nan``.
* **mAP** = mean of ``AP_c`` over the classes with >= 1 positive (``n_excluded`` counts the others).
  ``biam_compat=True`` gives those classes ``AP = 0`` and averages them in (BiAM's convention; for comparison
  only). BiAM's Open Images AP, which pools every annotated label of the selected images, is a different number:
  :func:`biam_pooled_map` (``data.biam_compat``). ``weighted=True`` gives ``sum_c n+_c AP_c / sum_c n+_c``.
* ``image_filter="all"`` evaluates every image (NUS-WIDE); ``"has_positive"`` drops the images with no ``+1`` in
  the evaluated label space (Open Images, separately for ZSL and GZSL).
* **P/R/F1@K** are overall (micro) over the image set: per image the top-K labels (ties broken by
  the lowest column index); ``TP`` = top-K entries labelled ``+1`` (a ``0`` or ``-1`` in the top-K is a false
  positive); ``P@K = TP / (N K)``, ``R@K = TP / #{Y = +1}``, ``F1 = 2PR / (P + R)`` (``0`` if ``P + R = 0``).
  Over an empty image set P and R are ``nan``; R is ``nan`` when there is no positive.

How it is computed (the numbers do not depend on any chunk size, bit for bit):

* One pass over row blocks validates the inputs and finds the annotated entries (the int8 labels are scanned
  eight at a time as int64 words).
* AP, sparse labels (at most 3 % annotated; Open Images: ~5 of 7,586 per image): only the annotated entries are
  sorted, once per chunk of columns, by (column, score descending); a chunk holds up to ~4M entries (~100 bytes
  each while sorted), so Open Images is one chunk, kept from the validation pass.
* AP, dense labels (NUS-WIDE: all annotated), rank-based: a positive with score ``t`` has the precision
  ``#{positives >= t} / #{annotated >= t}`` (the precision at the end of its tie group), so a class needs only
  its scores sorted by value (no argsort: the labels never follow the sort) and the scores of its positives.
  Blocks of whole label columns (~4M entries) of the scores are copied transposed, unannotated entries set to
  ``-inf`` (below every finite score), each class sorted in place (numpy's SIMD value sort, ~6x cheaper than an
  argsort), and two ``searchsorted`` per class count the annotated images and the positives at or above each
  positive's score. When every label is annotated and there are at most ~4M positives, their positions come from
  one row-major pass over the labels; otherwise the label blocks are transposed too.
* Both AP paths give every positive the precision at the end of its tie group and sum each class in rank order,
  so they agree bit for bit.
* P/R/F1@K finds the K-th and (K+1)-th largest score of every row, for all K at once, per block of rows: one
  ``torch.topk`` at ``max(ks) + 1`` (more than 1,024 labels) or a full numpy sort of the row (shorter rows). A
  row where the two differ has a unique top-K set (the topk indices; or the entries >= the K-th value). Only a
  row where they are equal (a tie at the K-th place, whose members are chosen by index) is recomputed on the full
  row: the entries above the K-th value, then the first tied entries in column order (cumsum over ``s == kth``).
* Extra memory: ``O(rows x C)`` for a row block (default ~8M entries, 32 MB of float32 scores), ``O(annotated
  entries of one AP chunk)`` (sparse AP) or one dense AP block (~4M scores and int8 labels, 20 MB; the positives'
  positions when listed); never ``O(N x C)`` (except the int8 copy of non-int8 labels and the widened copy of
  float16 / integer scores).
* Threads: ``torch.topk`` and the row gathers use torch's intra-op threads (``torch.get_num_threads()``), the
  rest is single-threaded numpy. On a machine busy with other processes, OpenMP's spin-waiting threads can make
  this many times slower: start Python with ``OMP_WAIT_POLICY=PASSIVE`` or call ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, overload

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_FILTERS",
    "average_precision",
    "mean_average_precision",
    "precision_recall_f1_at_k",
    "evaluate_multilabel",
]

IMAGE_FILTERS = ("all", "has_positive")

# entries of one row block of the label and top-K passes (32 MB of float32 scores; bigger blocks mean fewer
# parallel regions, which matters on a loaded machine)
_BLOCK_ENTRIES = 1 << 23
# entries per AP chunk by default (~100 bytes each while sorted: ~400 MB)
_AP_ENTRIES = 1 << 22
# AP sorts whole label columns (every image; the 0 labels sort below all scores) instead of the annotated entries
# only when more than this fraction of the labels is annotated (NUS-WIDE: all of them); per entry the column value
# sort costs ~1/30 of the scattered (column, score) argsort (measured crossover: 2-3 % annotated, 60,000 x 300)
_DENSE_FRACTION = 0.03
# P/R/F1@K takes the top values of rows up to this long from a full numpy sort (SIMD; ~2x faster than torch.topk
# there), of longer rows from torch.topk (measured crossover: ~1,300 columns for K = 20)
_SORT_MAX_C = 1024
# source rows per step of the transposing copy of a dense AP column block (measured: 256-1024 equally fast)
_T_ROWS = 512


# --------------------------------------------------------------------------------------------- helpers


class _Inputs(NamedTuple):
    """Validated inputs and what one pass over the labels learnt about them."""

    s: torch.Tensor  # N x C scores, float32 or float64, CPU (a view of the input where possible)
    y: np.ndarray  # N x C labels, int8 in {-1, 0, +1}
    yt: torch.Tensor  # torch view of ``y`` (shares memory)
    has_pos: np.ndarray  # (N,) bool: the image has >= 1 positive
    n_true: int  # number of +1 entries (the same with or without ``image_filter="has_positive"``)
    n_annotated: int  # number of non-zero entries over all images
    # flat row-major indices (row * C + col, int64, ascending) of all non-zero entries and their labels (int8),
    # or None when there are more than _AP_ENTRIES of them (AP then collects them per column chunk)
    entries: tuple[np.ndarray, np.ndarray] | None


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view/copy of a numpy array, a torch tensor (any device/dtype) or a sequence."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.double()  # bfloat16 / float16: numpy has no bfloat16
        return t.numpy()
    return np.asarray(x)


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    """Tensor sharing memory with ``a`` where torch allows it (native byte order, non-negative strides)."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only arrays: nothing here writes to them
            return torch.from_numpy(a)
    except ValueError:  # negative strides
        return torch.from_numpy(np.ascontiguousarray(a))


def _scores_tensor(x: Any) -> torch.Tensor:
    """Scores as a CPU float32/float64 tensor: float32/float64 kept, other floats -> float32, integers -> float64."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"scores: expected a real (float or integer) matrix, got dtype {t.dtype}")
        t = t.cpu()
        if not t.is_floating_point():
            return t.double()
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    a = np.asarray(x)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"scores: expected a real (float or integer) matrix, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.integer) or a.itemsize > 8:
        a = a.astype(np.float64)  # integers; long double (torch has none)
    elif a.dtype == np.float16:
        a = a.astype(np.float32)
    return _from_numpy(a)


def _row_blocks(n: int, size: int) -> Iterator[slice]:
    for r0 in range(0, n, size):
        yield slice(r0, min(n, r0 + size))


def _auto_chunk(
    n_other: int, chunk_size: int | None, n_max: int, what: str, budget: int | None = None
) -> int:
    """``chunk_size`` checked, or by default ``budget`` (default ``_BLOCK_ENTRIES``) entries // ``n_other``;
    clipped to ``1..n_max``."""
    if chunk_size is None:
        chunk_size = (budget or _BLOCK_ENTRIES) // max(n_other, 1)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"{what}: expected a positive integer, got {chunk_size!r}")
    return int(max(1, min(chunk_size, max(n_max, 1))))


def _raise_bad_labels(yb: np.ndarray, rows: slice) -> None:
    bad = (yb != 1) & (yb != 0) & (yb != -1)
    r, c = np.argwhere(bad)[0]
    raise ValueError(
        f"labels must only contain -1, 0 or +1 (0 = not annotated); found {yb[r, c].item()!r} at "
        f"row {rows.start + r}, column {c} ({int(bad.sum())} bad entries in rows "
        f"{rows.start}..{rows.stop - 1})"
    )


def _check_finite(s: np.ndarray, rows: slice) -> None:
    """Raise if a score in ``s[rows]`` is nan or +-inf."""
    sb = s[rows]
    if np.isfinite(
        sb.sum()
    ):  # one fast pass; nan / inf make the sum non-finite (so may an overflow: checked)
        return
    fin = np.isfinite(sb)
    if not fin.all():
        r, c = np.argwhere(~fin)[0]
        raise ValueError(
            f"scores must be finite; found {float(sb[r, c])!r} at row {rows.start + r}, column {c}"
        )


@overload
def _flat_nonzero(a: np.ndarray, limit: None = None) -> np.ndarray: ...
@overload
def _flat_nonzero(a: np.ndarray, limit: int) -> np.ndarray | None: ...


def _flat_nonzero(a: np.ndarray, limit: int | None = None) -> np.ndarray | None:
    """Flat row-major indices (ascending int64) of the non-zero entries of a C-contiguous int8 matrix; ``None``
    if there are more than ``limit`` of them.

    Scans the labels eight at a time as int64 words: ~3x faster than ``np.nonzero`` / ``torch.nonzero`` on
    sparse labels, as fast on dense ones.
    """
    a = a.reshape(-1)
    m8 = a.size - a.size % 8
    words = np.flatnonzero(a[:m8].view(np.int64))
    if limit is not None and 8 * words.size > limit and np.count_nonzero(a) > limit:
        return None  # dense labels: skip the expansion below (~10x the cost of the count)
    cand = (words[:, None] * 8 + np.arange(8)).reshape(-1)
    idx = cand[a[cand] != 0]
    tail = np.flatnonzero(a[m8:])
    return np.concatenate([idx, tail + m8]) if tail.size else idx


def _prepare(scores: Any, labels: Any) -> _Inputs:
    """Validated scores and labels plus one pass over both (O(row block) extra memory, plus the annotated
    entries while they are at most ``_AP_ENTRIES``)."""
    y = _to_numpy(labels)
    if not isinstance(scores, torch.Tensor):
        scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected an N x C matrix, got shape {tuple(scores.shape)}")
    if y.ndim != 2:
        raise ValueError(f"labels: expected an N x C matrix, got shape {y.shape}")
    if tuple(scores.shape) != y.shape:
        raise ValueError(
            f"scores and labels must have the same shape, got scores {tuple(scores.shape)} and "
            f"labels {y.shape}"
        )
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(
            f"labels: expected an integer matrix with values in {{-1, 0, +1}}, got dtype {y.dtype}"
        )
    s = _scores_tensor(scores)
    s_np = s.numpy()  # shares memory
    N, C = y.shape
    y8 = y if y.dtype == np.int8 else np.empty((N, C), dtype=np.int8)
    has_pos = np.zeros(N, dtype=bool)
    n_true = n_annotated = 0
    flat: list[np.ndarray] | None = []  # the annotated entries, while there are at most _AP_ENTRIES
    lab: list[np.ndarray] = []
    for rows in _row_blocks(N, _auto_chunk(C, None, N, "block")) if C else ():
        yb = y[rows]
        if y8 is not y:  # validate in the input dtype (a cast to int8 could wrap), then convert
            if np.issubdtype(y.dtype, np.integer):
                ok = yb.max() <= 1 and yb.min() >= -1  # reductions, no temporaries
            else:
                ok = not ((yb != 1) & (yb != 0) & (yb != -1)).any()  # also rejects 0.5 and nan
            if not ok:
                _raise_bad_labels(yb, rows)
            y8[rows] = yb
            yb = y8[rows]
        _check_finite(s_np, rows)
        # a copy only for strided views (e.g. the ZSL columns): the scans below are 3-4x faster on it
        ybc = np.ascontiguousarray(yb)
        if flat is not None:
            # listed only while they fit one AP chunk and the block is sparse (dense AP does not use the list)
            f = _flat_nonzero(ybc, min(_AP_ENTRIES - n_annotated, int(_DENSE_FRACTION * ybc.size)))
            if f is not None and n_annotated + f.size <= _AP_ENTRIES:
                v = ybc.reshape(-1)[f]
                if v.size and (v.min() < -1 or v.max() > 1):  # int8 labels are valid iff their non-zeros are
                    _raise_bad_labels(yb, rows)
                flat.append(f + rows.start * C)
                lab.append(v)
                p = f[v == 1]
                has_pos[rows.start + p // C] = True
                n_true += p.size
                n_annotated += f.size
                continue
            flat = None  # too many for one AP chunk: count densely from here on
            lab = []
        row_max = ybc.max(axis=1)
        if row_max.max() > 1 or ybc.min() < -1:
            _raise_bad_labels(yb, rows)
        has_pos[rows] = row_max == 1
        n_true += int(np.count_nonzero(ybc == 1))
        n_annotated += int(np.count_nonzero(ybc))
    entries = None
    if flat is not None:
        entries = (
            np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64),
            np.concatenate(lab) if lab else np.zeros(0, dtype=np.int8),
        )
    return _Inputs(s, y8, _from_numpy(y8), has_pos, n_true, n_annotated, entries)


def _kept_rows(d: _Inputs, image_filter: str) -> np.ndarray | None:
    """Sorted row indices kept by ``image_filter`` (``None`` = all rows)."""
    if image_filter not in IMAGE_FILTERS:
        raise ValueError(f"image_filter: expected one of {IMAGE_FILTERS}, got {image_filter!r}")
    return None if image_filter == "all" else np.flatnonzero(d.has_pos)


def _n_images(d: _Inputs, keep: np.ndarray | None) -> int:
    return int(d.y.shape[0] if keep is None else keep.size)


# --------------------------------------------------------------------------------------------- AP


def _ap_column_chunks(d: _Inputs, chunk_size: int | None) -> list[tuple[int, int]]:
    """``[(c0, c1), ...]`` column ranges: ``chunk_size`` columns each, or by default as many columns as fit
    ``_AP_ENTRIES`` annotated entries (at least one column)."""
    N, C = d.y.shape
    if chunk_size is not None:
        b = _auto_chunk(N, chunk_size, C, "chunk_size")
        return [(c0, min(C, c0 + b)) for c0 in range(0, C, b)]
    if d.n_annotated <= _AP_ENTRIES:
        return [(0, C)] if C else []
    counts = np.zeros(C, dtype=np.int64)
    for rows in _row_blocks(N, _auto_chunk(C, None, N, "block")):
        counts += np.count_nonzero(d.y[rows], axis=0)
    cum = np.cumsum(counts)
    chunks, c0 = [], 0
    while c0 < C:
        base = cum[c0 - 1] if c0 else 0
        c1 = max(c0 + 1, int(np.searchsorted(cum, base + _AP_ENTRIES, side="right")))
        chunks.append((c0, min(C, c1)))
        c0 = c1
    return chunks


def _annotated_entries(d: _Inputs, keep: bool, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, col - c0, label)`` of the annotated entries of columns ``c0:c1`` (rows with a positive only if
    ``keep``), from ``d.entries`` when they cover all columns, else by one pass over the label columns."""
    N, C = d.y.shape
    if d.entries is not None and (c0, c1) == (0, C):
        flat, lab = d.entries
        r, c = np.divmod(flat, C)
    else:
        rs, cs, labs = [], [], []
        for rows in _row_blocks(N, _auto_chunk(c1 - c0, None, N, "block")):
            yb = np.ascontiguousarray(d.y[rows, c0:c1])
            f = _flat_nonzero(yb)
            rb, cb = np.divmod(f, c1 - c0)
            rs.append(rb + rows.start)
            cs.append(cb)
            labs.append(yb.reshape(-1)[f])
        r, c, lab = np.concatenate(rs), np.concatenate(cs), np.concatenate(labs)
    if keep:
        sel = d.has_pos[r]
        r, c, lab = r[sel], c[sel], lab[sel]
    return r, c, lab


def _ap_sorted(c: np.ndarray, v: np.ndarray, pos: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Masked AP and positive counts of ``b`` columns from their annotated entries (sklearn tie semantics).

    ``c`` (m,) = column in ``0..b-1``, ``v`` = score, ``pos`` = entry is ``+1`` (the others are ``-1``).
    """
    m = c.size
    if m == 0:
        return np.full(b, np.nan), np.zeros(b, dtype=np.int64)
    rank = np.empty(m, dtype=np.int64)
    rank[np.argsort(v)] = np.arange(m)  # score rank; equal scores get adjacent ranks
    order = np.argsort((c.astype(np.int64) << 32) - rank)  # column ascending, then score descending
    del rank
    c, v, pos = c[order], v[order], pos[order]
    del order
    idx = np.arange(m)
    tp = np.cumsum(pos, dtype=np.int64)  # inclusive, over the whole chunk
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


def _transpose_into(a: np.ndarray, rows: np.ndarray | None, cols: slice, out: np.ndarray) -> None:
    """``out[:] = a[rows, cols].T`` (all rows if ``rows`` is None), ``_T_ROWS`` source rows at a time: one strided
    copy of a whole column block reads each row's few bytes from a different page (TLB misses), ~4x slower."""
    n = out.shape[1]
    for r0 in range(0, n, _T_ROWS):
        r1 = min(n, r0 + _T_ROWS)
        out[:, r0:r1] = (a[r0:r1, cols] if rows is None else a[rows[r0:r1], cols]).T


def _positive_keys(d: _Inputs, keep: np.ndarray | None) -> np.ndarray:
    """``column * n + image`` (int64, ascending) of every positive, ``image`` counted among the ``n`` kept rows:
    one row-major pass over the labels (cheaper than a transposed copy of every label block)."""
    N, C = d.y.shape
    n = N if keep is None else keep.size
    inv = None
    if keep is not None:
        inv = np.full(N, -1, dtype=np.int64)
        inv[keep] = np.arange(n)
    parts = [np.zeros(0, dtype=np.int64)]
    for rows in _row_blocks(N, _auto_chunk(C, None, N, "block")):
        r, c = np.divmod(np.flatnonzero(d.y[rows] == 1), C)
        r += rows.start
        if inv is not None:  # rows that are not kept drop out
            r = inv[r]
            kept = r >= 0
            r, c = r[kept], c[kept]
        parts.append(c * n + r)
    return np.sort(np.concatenate(parts))


def _ap_dense(s: np.ndarray, q: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Masked AP and positive counts of ``b`` classes from ``b x n`` scores (one class per row, every image;
    C-contiguous; overwritten: sorted) and the flat positions ``q`` (ascending) of their positives. ``y`` = the
    ``b x n`` labels if some are ``0``, else None. Same numbers as ``_ap_sorted``, bit for bit.

    Rank-based: a positive with score ``t`` has precision ``#{positives >= t} / #{annotated >= t}`` (that is the
    precision at the end of its tie group), so each class needs only its scores *sorted* (a SIMD value sort, ~6x
    cheaper than an argsort) and its positives' scores; the labels never have to follow the sort.
    """
    b, n = s.shape
    pv = s.reshape(-1)[q]
    bounds = np.searchsorted(q, np.arange(b + 1) * n)  # class i's positives: q[bounds[i]:bounds[i + 1]]
    if y is not None:  # unannotated images sort below every (finite) score: never counted at any threshold
        np.putmask(s, y == 0, -np.inf)
    prec = np.empty(q.size)
    for i in range(b):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        if lo == hi:  # no positive: AP is nan, nothing to sort
            continue
        row = s[i]
        row.sort()  # in place, one class at a time (a class without a positive is never sorted)
        t = np.sort(pv[lo:hi])  # ascending
        tp = (hi - lo) - np.searchsorted(t, t, side="left")  # positives with a score >= t
        ann = n - np.searchsorted(row, t, side="left")  # annotated images with a score >= t
        prec[lo:hi] = (tp / ann)[::-1]  # in rank order (score descending), as _ap_sorted sums them
    n_pos = np.diff(bounds)
    ap_sum = np.bincount(q // n, weights=prec, minlength=b)  # sequential sum in rank order, as in _ap_sorted
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_pos > 0, ap_sum / np.maximum(n_pos, 1), np.nan)
    return ap, n_pos


def _average_precision(
    d: _Inputs, keep: np.ndarray | None, chunk_size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    N, C = d.y.shape
    n = N if keep is None else keep.size
    s = d.s.numpy()  # shares memory
    ap = np.full(C, np.nan)
    n_pos = np.zeros(C, dtype=np.int64)
    if d.n_annotated <= _DENSE_FRACTION * N * C or n == 0:  # sparse: the annotated entries only
        for c0, c1 in _ap_column_chunks(d, chunk_size):
            r, c, lab = _annotated_entries(d, keep is not None, c0, c1)  # keep = the rows with a positive
            ap[c0:c1], n_pos[c0:c1] = _ap_sorted(c, s[r, c + c0], lab == 1, c1 - c0)
        return ap, n_pos
    b = _auto_chunk(n, chunk_size, C, "chunk_size", budget=_AP_ENTRIES)
    masked = d.n_annotated < N * C
    # every label annotated and few positives (NUS-WIDE: ~1 %): list the positives once, transpose scores only
    keys = _positive_keys(d, keep) if not masked and d.n_true <= _AP_ENTRIES else None
    s_buf = np.empty((b, n), dtype=s.dtype)  # reused by every block
    y_buf = np.empty((b, n), dtype=np.int8) if keys is None else None
    for c0 in range(0, C, b):
        cols = slice(c0, min(C, c0 + b))
        sb = s_buf[: cols.stop - c0]
        _transpose_into(s, keep, cols, sb)
        if keys is not None:
            lo, hi = np.searchsorted(keys, [c0 * n, cols.stop * n])
            q, yb = keys[lo:hi] - c0 * n, None
        else:
            assert y_buf is not None
            yb = y_buf[: cols.stop - c0]
            _transpose_into(d.y, keep, cols, yb)
            q = np.flatnonzero(yb == 1)
        ap[cols], n_pos[cols] = _ap_dense(sb, q, yb if masked else None)
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


# --------------------------------------------------------------------------------------------- P/R/F1@K


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


def _tied_hits(s: np.ndarray, kth: np.ndarray, pos: np.ndarray, k: int) -> int:
    """Hits in the top-k of rows whose k-th largest score ``kth`` (m,) ties with the (k+1)-th: the entries above
    it, then the first tied entries in column order (the reference's stable tie-break)."""
    t = kth[:, None]
    gt = s > t
    eq = s == t
    need = k - gt.sum(axis=1, keepdims=True)  # tied slots, filled by the lowest column indices
    top = gt | (eq & (np.cumsum(eq, axis=1) <= need))
    return int(np.count_nonzero(top & pos))


def _topk_tp(s: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, ks: tuple[int, ...]) -> list[int]:
    """True positives in the top-K of each row of one ``n x C`` block, for every K (ties: lowest column first).

    ``s`` = scores of the block, ``y`` = all int8 labels (N x C), ``rows`` (n,) = the block's rows in ``y``.
    """
    C = s.shape[1]
    vals, idx = torch.topk(s, min(max(ks) + 1, C), dim=1)  # sorted descending; tie order undocumented
    pos = y[rows[:, None], idx] == 1
    tps = []
    for k in ks:
        if k == C:  # the whole row
            tps.append(int(pos.sum()))
            continue
        kth = vals[:, k - 1]
        amb = vals[:, k] == kth  # the (K+1)-th ties with the K-th: the top-K depends on the index order
        tp = int(pos[:, :k].sum(dim=1)[~amb].sum())  # unique top-K set = the first K topk indices
        if bool(amb.any()):
            a = amb.nonzero()[:, 0]
            tp += _tied_hits(s[a].numpy(), kth[a].numpy(), (y[rows[a]] == 1).numpy(), k)
        tps.append(tp)
    return tps


def _sort_tp(s: np.ndarray, y: np.ndarray, ks: tuple[int, ...]) -> list[int]:
    """``_topk_tp`` for short rows: the K-th largest score of each row from a full sort, the hits by comparing
    with it. ``s``, ``y`` = scores and int8 labels of one ``n x C`` block."""
    C = s.shape[1]
    desc = np.sort(s, axis=1)[:, ::-1]
    pos = y == 1
    tps = []
    for k in ks:
        if k == C:
            tps.append(int(np.count_nonzero(pos)))
            continue
        kth = desc[:, k - 1]
        amb = desc[:, k] == kth
        hits = np.count_nonzero((s >= kth[:, None]) & pos, axis=1)  # unique top-K set = the entries >= kth
        tp = int(hits[~amb].sum())
        if amb.any():
            tp += _tied_hits(s[amb], kth[amb], pos[amb], k)
        tps.append(tp)
    return tps


def _prf_at_k(
    d: _Inputs, keep: np.ndarray | None, ks: tuple[int, ...], chunk_size: int | None
) -> dict[str, float]:
    N, C = d.y.shape
    n = N if keep is None else keep.size
    rb = _auto_chunk(C, chunk_size, n, "chunk_size")
    tps = np.zeros(len(ks), dtype=np.int64)
    keep_t = torch.arange(N) if keep is None else torch.from_numpy(keep)
    if keep is not None and n:
        s_buf = torch.empty((min(rb, n), C), dtype=d.s.dtype)
    for rows in _row_blocks(n, rb):
        ix = keep_t[rows]
        if keep is None:
            sb = d.s[rows]
        else:
            sb = torch.index_select(d.s, 0, ix, out=s_buf[: ix.numel()])
        if C <= _SORT_MAX_C:
            tp = _sort_tp(sb.numpy(), d.y[rows] if keep is None else d.y[keep[rows]], ks)
        else:
            tp = _topk_tp(sb, d.yt, ix, ks)
        tps += np.asarray(tp, dtype=np.int64)
    n_true = d.n_true
    out: dict[str, float] = {}
    for k, tp in zip(ks, tps.tolist()):
        P = tp / (n * k) if n > 0 else float("nan")
        R = tp / n_true if n_true > 0 else float("nan")
        F1 = 2 * P * R / (P + R) if (P + R) > 0 else 0.0  # nan + x > 0 is False: F1 = 0 when P or R is nan
        out[f"P@{k}"], out[f"R@{k}"], out[f"F1@{k}"] = float(P), float(R), float(F1)
    return out


# --------------------------------------------------------------------------------------------- public API


def average_precision(scores: Any, labels: Any, *, chunk_size: int | None = None) -> np.ndarray:
    """Masked per-class AP, shape ``(C,)`` float64; ``nan`` for classes without a positive.

    Equal to ``sklearn.metrics.average_precision_score(labels[m, c] == 1, scores[m, c])`` with
    ``m = labels[:, c] != 0`` for every class with a positive (tied scores form one threshold). ``chunk_size``
    = columns per block (default: as many columns as hold about 4M annotated entries).
    """
    d = _prepare(scores, labels)
    return _average_precision(d, None, chunk_size)[0]


def mean_average_precision(
    scores: Any,
    labels: Any,
    *,
    weighted: bool = False,
    biam_compat: bool = False,
    image_filter: str = "all",
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """mAP over the classes with >= 1 positive among the kept images.

    Returns ``{"mAP", "n_excluded", "per_class", "n_positives", "n_images"}``: ``per_class`` = AP per class
    (``nan`` without a positive, also with ``biam_compat``), ``n_positives`` = ``+1`` count per class,
    ``n_images`` = images kept by ``image_filter``. ``biam_compat``: classes without a positive count as
    ``AP = 0`` in the mean (``n_excluded`` still counts them).
    """
    d = _prepare(scores, labels)
    keep = _kept_rows(d, image_filter)
    ap, n_pos = _average_precision(d, keep, chunk_size)
    out = _map_summary(ap, n_pos, weighted=weighted, biam_compat=biam_compat)
    out.update(per_class=ap, n_positives=n_pos, n_images=_n_images(d, keep))
    return out


def precision_recall_f1_at_k(
    scores: Any,
    labels: Any,
    ks: int | Sequence[int] = (3, 5),
    *,
    image_filter: str = "all",
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Overall (micro) ``P@K``, ``R@K``, ``F1@K`` for every K; keys ``"P@3"``, ``"R@3"``, ...

    ``chunk_size`` = rows per block (default: about 8M entries per block). ``K > C`` is rejected.
    """
    d = _prepare(scores, labels)
    ks_t = _check_ks(ks, d.y.shape[1])
    keep = _kept_rows(d, image_filter)
    return _prf_at_k(d, keep, ks_t, chunk_size)


def evaluate_multilabel(
    scores: Any,
    labels: Any,
    *,
    ks: int | Sequence[int] = (3, 5),
    image_filter: str = "all",
    chunk_size: int | None = None,
    row_chunk_size: int | None = None,
    weighted: bool = False,
    biam_compat: bool = False,
) -> dict[str, Any]:
    """mAP and P/R/F1@K on one label space and image set (validated and filtered once).

    Returns ``{"mAP", "n_excluded", "P@k", "R@k", "F1@k" (every k), "n_images"}``. ``chunk_size`` = columns per
    AP block (default: about 4M annotated entries), ``row_chunk_size`` = rows per top-K block (default: about 8M
    entries).
    """
    d = _prepare(scores, labels)
    ks_t = _check_ks(ks, d.y.shape[1])
    keep = _kept_rows(d, image_filter)
    ap, n_pos = _average_precision(d, keep, chunk_size)
    out: dict[str, Any] = _map_summary(ap, n_pos, weighted=weighted, biam_compat=biam_compat)
    out.update(_prf_at_k(d, keep, ks_t, row_chunk_size))
    out["n_images"] = _n_images(d, keep)
    return out


def biam_pooled_map(
    scores: Any, labels: Any, drop_unannotated_labels: bool = False, block_rows: int = 4096
) -> dict[str, Any]:
    """BiAM's Open Images "mAP" (``evaluate_openimages.py`` + ``util_openimages.compute_AP``), reproduced.

    ``scores``/``labels``: N x C over the evaluated label space, labels in {+1, -1, 0}. As BiAM: keep the images with
    a ``+1``; with ``drop_unannotated_labels`` (BiAM's GZSL and seen evaluations) keep the labels annotated in at
    least one kept image. For label c, take the images annotated for c and **every** annotated entry of those
    images, whatever its label (BiAM selects the rows, then flattens all their annotated columns), and compute the
    AP of that pooled list; 0 if no image is annotated for c or the pool has no positive. ``mAP`` = mean over the
    kept labels, ``mAP_weighted`` = weighted by the +1 count of each label (BiAM's "weighted"). Ties: tied scores
    form one threshold (sklearn's ``average_precision_score``), where BiAM's unstable sort leaves them to chance.

    Works on the annotated entries only (read in blocks of ``block_rows`` rows, no N x C temporaries); cost: the sum
    over images of (annotated labels per image)^2.
    """
    N0, C0 = labels.shape
    if tuple(scores.shape) != (N0, C0):
        raise ValueError(
            f"biam_pooled_map: scores {tuple(scores.shape)} and labels {(N0, C0)} differ in shape"
        )
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for b0 in range(0, N0, block_rows):
        yb = np.asarray(labels[b0 : b0 + block_rows])
        rr, cc = np.nonzero(yb)  # row-major: the entries of an image are contiguous
        sb = np.asarray(scores[b0 : b0 + block_rows])
        parts.append((rr + b0, cc, sb[rr, cc].astype(np.float64), yb[rr, cc] == 1))
    r, c, ent_s, ent_pos = (np.concatenate([p[i] for p in parts]) for i in range(4))
    kept_rows = np.zeros(N0, bool)
    kept_rows[r[ent_pos]] = True  # the images with a positive
    keep = kept_rows[r]
    r, c, ent_s, ent_pos = r[keep], c[keep], ent_s[keep], ent_pos[keep]
    if drop_unannotated_labels:
        cols, c = np.unique(c, return_inverse=True)
        C = cols.size
    else:
        C = C0
    _, r = np.unique(r, return_inverse=True)  # compact image index, order kept
    N = int(kept_rows.sum())
    order = np.argsort(-ent_s, kind="stable")
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    sorted_s = ent_s[order]
    group = np.concatenate([[0], np.cumsum(sorted_s[1:] != sorted_s[:-1])])  # tie group per sorted position
    pos_sorted = ent_pos[order]
    row_start = np.searchsorted(r, np.arange(N + 1))
    by_label = np.argsort(c, kind="stable")  # the entries of each label, images ascending
    label_start = np.searchsorted(c[by_label], np.arange(C + 1))
    ap = np.zeros(C)
    for j in range(C):
        rows_j = r[by_label[label_start[j] : label_start[j + 1]]]
        if rows_j.size == 0:
            continue
        lo, n = row_start[rows_j], row_start[rows_j + 1] - row_start[rows_j]
        # every entry of those images: the ranges [lo, lo + n) concatenated
        idx = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()))
        ranks = np.sort(rank[idx])
        pos = pos_sorted[ranks]
        n_pos = int(pos.sum())
        if n_pos == 0:
            continue
        g = group[ranks]
        end = np.flatnonzero(np.append(g[1:] != g[:-1], True))  # last position of each tie group
        tp = np.cumsum(pos)[end]
        hits = np.diff(np.concatenate([[0], tp]))
        ap[j] = float(np.sum(hits * tp / (end + 1)) / n_pos)
    n_pos_label = np.bincount(c[ent_pos], minlength=C)
    total = n_pos_label.sum()
    return {
        "mAP": float(ap.mean()) if C else float("nan"),
        "mAP_weighted": float((n_pos_label * ap).sum() / total) if total else float("nan"),
        "n_labels": int(C),
        "n_images": N,
    }
