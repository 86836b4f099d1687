"""Compositional ZSL evaluation: the czsl/CSP bias-sweep evaluator in streaming form (the semantics of
ExplainableML/czsl's ``Evaluator``, as CSP, Troika and CAMS copy it, in memory independent of the pair count).

Conventions (every class and function here):

* Columns ``0..P-1`` follow the candidate list ``pairs`` (``P x 2`` int array: attribute index, object index per
  column; sorted in practice). ``seen_mask[p]``: column ``p`` is a train pair. ``eval_mask[p]``: column ``p`` is a
  candidate (closed world: train + val or train + test pairs; open world: the kept columns, see
  :func:`open_world_keep_mask`). Every seen column must be in the eval mask (true of every czsl candidate set;
  the streaming state relies on it).
* Samples ``0..N-1``: ``gt_pair[n]`` indexes ``pairs``; a sample is *seen* iff its ground-truth pair is a train pair.
  A prediction is correct iff it is the ground-truth column (pairs are unique, so this is "attr and obj match").
* Scores are the unbiased model scores, higher = better; fed as blocks (any rows x any columns, any order) to
  :meth:`StreamingEvaluator.update`. Only the seen and in-mask unseen columns are read; every one of them must
  reach every sample exactly once. NaN or +inf in a read column is an error; -inf is allowed (never predicted).

The reference algorithm, reproduced exactly: at bias ``b`` add ``b`` to every unseen column, set the columns
outside the eval mask to ``-1e10``, predict the top-1 column (ties: see the tie rule below). ``b = 1e3`` gives the
max-bias point. Candidate biases: for every unseen sample correct at ``1e3``,
``d = (max seen score) - (GT score) - 1e-4``; sorted, subsampled with step ``max(len // 20, 1)``; the curve is
(seen acc, unseen acc) at each candidate, then the max-bias point. AUC = trapezoid (``np.trapezoid``) of seen
over unseen accuracy; HM per point ``2su/(s+u)`` (``0`` when either is 0); best HM = its first maximum.
``best_seen`` / ``best_unseen`` are the maxima of the curves (``best_unseen`` is the max-bias point whenever the
curve is monotone, as it is without rounding merges).

Tie rule (our convention): among tied top-1 columns the lowest index, i.e. the one first in ``pairs``, wins
(``argmax``'s documented behaviour). The reference takes ``torch.topk(k=1)``, whose tie order is unspecified and is
not stable: on CPU it selects with ``nth_element`` when a row has fewer than 64 * k columns, and then often
returns a later tied column (seen with torch 2.14 on rows of 8 to 63 columns; from 64 columns on, k = 1 returned
the first one). The two agree on benchmark-sized candidate sets.

Arithmetic (``dtype="float32"``, default) is the reference's: float32 scores, float32 additions of the bias and of
``-1e-4``, accuracies = the float32 mean ``float32(k) / float32(n)`` (what ``tensor.float().mean()`` returns),
converted to Python floats; AUC and HM in float64. ``dtype="float64"`` does the additions and means in float64
(not the reference; rounding merges practically never occur). Accuracy over an empty sample set is ``0.0`` (the
reference returns NaN there); with no unseen sample correct at ``1e3`` the curve is the single max-bias point and
AUC is 0.

Streaming: per sample the evaluator keeps the best seen score and its first column, the best unseen in-mask scores
and the GT score: ``O(N k)`` memory for any ``P``. The seen/unseen winner at any bias is exact (``fl(x + b)`` is
monotone, so the biased unseen maximum is ``fl(u + b)``). The unseen column at bias ``b`` is the first column among
those whose biased score rounds onto ``fl(u + b)``; two different scores can round together ("rounding merge", only
when they are within one float32 ulp of ``|u + b|``: 6.1e-5 below 1024), and then a lower-scored column with a
smaller index takes the prediction. A sample's prediction is *certified* at ``b`` when the seen side wins strictly
or the largest unseen score not stored does not round onto ``fl(u + b)``; otherwise it is *flagged*.

* Exact mode (default): keeps the ``k`` best *distinct* unseen scores with the first column of each (``k = topk``).
  Flagged samples are **resolved**: their rows are recomputed in full (:meth:`StreamingEvaluator.resolve`, or a
  ``rescore`` callback to :meth:`StreamingEvaluator.result`; :func:`evaluate_scores` does it from the matrix it
  holds). A resolved sample keeps the records of its unseen row (the columns whose score exceeds every score
  before them in ``pairs`` order; the first column rounding onto ``fl(u + b)`` is always one of them), so its
  prediction is exact at every bias. Resolving can change the candidate biases, so flagging and resolving repeat
  until no unresolved sample is flagged: the numbers then equal the reference's. Only flagged rows are re-read.
* Fast mode (``exact=False``): keeps the best unseen score, its first column and the second-largest distinct
  unseen score (the certificate). Flagged samples are reported, never resolved.

``CZSLResult.n_ambiguous`` counts the samples still flagged and unresolved (indices in ``ambiguous_samples``; the
best guess, the first stored merged column, is used for them): each curve point can be off by at most its
``ambiguous_per_point`` count over the seen/unseen sample count; ``n_resolved`` counts the recomputed rows.
Scores on an fp16 grid (CLIP logits computed in fp16) never merge; at ``b = 0`` nothing rounds, so the unbiased
predictions are always exact.

Attribute/object accuracy: ``attr_obj="csp"`` (default; CSP, Troika, CAMS): the top-1 eval-masked pair at ``b = 0``
vs the GT attribute (object), over all samples. ``attr_obj="czsl"``: the same at ``b = 1e3`` (czsl's
``closed_attr_match``).

Open world: :class:`ThresholdSearch` finds, in one pass over the validation scores, the AUC at each of
the 50 feasibility thresholds (infeasible unseen columns are *excluded*, never multiplied by 0; seen columns are
always kept) and picks the first best (strict ``>``). If every AUC is 0 nothing is removed (CSP keeps its initial
threshold -10, i.e. every pair). The test run is then a :class:`StreamingEvaluator` with
``eval_mask = open_world_keep_mask(...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from unseen.io import DataFormatError

__all__ = [
    "MAX_BIAS",
    "CZSLResult",
    "StreamingEvaluator",
    "evaluate_scores",
    "ThresholdSearch",
    "ThresholdSearchResult",
    "feasibility_thresholds",
    "open_world_keep_mask",
]

MAX_BIAS = 1e3  # the reference's max-bias point (czsl/CSP ``--bias`` default, hard-coded in Troika)
BIAS_EPS = 1e-4  # candidate bias = (best seen) - (GT score) - 1e-4
N_BINS = 20  # subsampling step = max(len(candidates) // 20, 1)
MASK_FILL = -1e10  # the reference's value for columns outside the eval mask
_DTYPES = {"float32": np.float32, "float64": np.float64}


# --------------------------------------------------------------------------------------------- results


@dataclass(eq=False)
class CZSLResult:
    """Evaluator output. Accuracies are fractions in ``[0, 1]`` (papers print them x100)."""

    auc: float  # area under the (unseen acc, seen acc) curve
    best_hm: float  # max over the curve points of the harmonic mean
    best_seen: float  # max seen accuracy over the curve (the point at the smallest candidate bias)
    best_unseen: float  # max unseen accuracy over the curve (the max-bias point)
    hm_seen: float  # seen accuracy at the best-HM point
    hm_unseen: float  # unseen accuracy at the best-HM point
    best_hm_bias: float  # the bias of the best-HM point (1e3 if it is the max-bias point)
    attr_acc: float  # attribute accuracy by ``attr_obj_convention``
    obj_acc: float  # object accuracy by ``attr_obj_convention``
    attr_obj_convention: str  # "csp" (b = 0) or "czsl" (b = 1e3)
    seen_at_max_bias: float  # seen accuracy at b = 1e3
    unseen_at_max_bias: float  # unseen accuracy at b = 1e3
    biases: np.ndarray  # (M,) float64: the candidate biases in sweep order, then 1e3
    seen_curve: np.ndarray  # (M,) float64 seen accuracy per point
    unseen_curve: np.ndarray  # (M,) float64 unseen accuracy per point
    hm_curve: np.ndarray  # (M,) float64 harmonic mean per point
    n_samples: int
    n_seen_samples: int
    n_unseen_samples: int
    dtype: str  # arithmetic: "float32" (reference) or "float64"
    n_ambiguous: int | None  # samples flagged at >= 1 point and not resolved; None if not checked
    ambiguous_samples: np.ndarray | None = None  # their indices (int64, ascending)
    ambiguous_per_point: np.ndarray | None = None  # (M,) unresolved flagged count per curve point
    n_resolved: int = 0  # samples whose rows were recomputed in full (exact at every point)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (arrays as lists), e.g. for JSON."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = v.tolist() if isinstance(v, np.ndarray) else v
        return out


@dataclass(eq=False)
class ThresholdSearchResult:
    """Open-world threshold selection on validation scores."""

    thresholds: np.ndarray  # (T,) float64 ascending candidate thresholds
    aucs: np.ndarray  # (T,) float64 validation AUC with the unseen columns of feasibility < threshold removed
    best_index: int | None  # first index of the best AUC (strict >); None if every AUC is 0
    threshold: float | None  # thresholds[best_index]; None = keep every column
    best_auc: float  # AUC at the chosen threshold (0.0 if none)
    keep_mask: np.ndarray  # (P,) bool: eval-mask columns kept at the chosen threshold (seen always kept)
    val_result: CZSLResult  # the full validation result at the chosen threshold (no ambiguity check)
    results: list[CZSLResult] = field(default_factory=list)  # per threshold, same order as ``thresholds``


# --------------------------------------------------------------------------------------------- validation


def _np(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise DataFormatError(f"{what}: cannot be read as an array ({e})") from e


def _bool_vector(x: Any, p: int, what: str) -> np.ndarray:
    a = _np(x, what)
    if a.shape != (p,):
        raise DataFormatError(f"{what}: expected shape ({p},) (one entry per column of pairs), got {a.shape}")
    if a.dtype != np.bool_:
        if not np.issubdtype(a.dtype, np.integer) or not np.isin(a, (0, 1)).all():
            raise DataFormatError(f"{what}: expected a boolean vector (or 0/1 integers), got dtype {a.dtype}")
        a = a.astype(bool)
    return a


def _index_vector(x: Any, n: int | None, upper: int, what: str) -> np.ndarray:
    a = _np(x, what)
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        raise DataFormatError(f"{what}: expected a 1-D integer vector of length {n}, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise DataFormatError(f"{what}: expected integer indices, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= upper):
        raise DataFormatError(f"{what}: indices must lie in [0, {upper}), got range [{a.min()}, {a.max()}]")
    return a


class _Problem:
    """Validated evaluation inputs shared by the evaluator and the threshold search."""

    def __init__(self, pairs: Any, seen_mask: Any, eval_mask: Any, gt_pair: Any, gt_attr: Any, gt_obj: Any):
        pr = _np(pairs, "pairs")
        if pr.ndim != 2 or pr.shape[1] != 2 or pr.shape[0] == 0 or not np.issubdtype(pr.dtype, np.integer):
            raise DataFormatError(
                f"pairs: expected a non-empty P x 2 integer array (attr, obj), got {pr.dtype} {pr.shape}"
            )
        if np.unique(pr, axis=0).shape[0] != pr.shape[0]:
            raise DataFormatError("pairs: expected unique (attr, obj) rows, found duplicates")
        self.pairs = pr.astype(np.int64)
        self.P = pr.shape[0]
        self.seen = _bool_vector(seen_mask, self.P, "seen_mask")
        self.eval = _bool_vector(eval_mask, self.P, "eval_mask")
        if not self.seen.any():
            raise DataFormatError("seen_mask: selects no column (a compositional split has train pairs)")
        if (self.seen & ~self.eval).any():
            j = int(np.flatnonzero(self.seen & ~self.eval)[0])
            raise DataFormatError(
                f"eval_mask: every seen column must be a candidate, column {j} is seen but "
                "outside the eval mask"
            )
        self.y = _index_vector(gt_pair, None, self.P, "gt_pair")
        self.N = self.y.shape[0]
        for what, given, col in (("gt_attr", gt_attr, 0), ("gt_obj", gt_obj, 1)):
            if given is not None:
                g = _np(given, what)
                if g.shape != (self.N,):
                    raise DataFormatError(f"{what}: expected shape ({self.N},) like gt_pair, got {g.shape}")
                bad = np.flatnonzero(g != self.pairs[self.y, col])
                if bad.size:
                    n = int(bad[0])
                    raise DataFormatError(
                        f"{what}: sample {n} has {what} {g[n]} but its gt_pair {self.y[n]} is "
                        f"{tuple(self.pairs[self.y[n]])} (expected pairs[gt_pair, {col}])"
                    )
        self.unseen_eval = self.eval & ~self.seen  # unseen candidate columns
        self.seen_sample = self.seen[self.y]  # (N,) GT is a train pair
        self.n_used = int(self.seen.sum() + self.unseen_eval.sum())  # columns each sample must receive


def _rows_sel(rows: Any, n: int, what: str) -> tuple[slice | np.ndarray, int]:
    """Normalise a row/column selector to a contiguous slice or a unique int64 index array."""
    if rows is None:
        return slice(0, n), n
    if isinstance(rows, slice):
        start, stop, step = rows.indices(n)
        if step == 1:
            return slice(start, max(start, stop)), max(0, stop - start)
        rows = np.arange(start, stop, step)
    a = _index_vector(rows, None, n, what)
    if np.unique(a).size != a.size:
        raise DataFormatError(f"{what}: contains duplicate indices")
    return a, a.size


def _chunk_numpy(scores: Any, dtype: type) -> np.ndarray:
    """A 2-D numpy view/copy of a score block: float32 stays (also in float64 mode: the values and their order are
    the same), float64 becomes float32 in float32 mode (the reference's matrix is float32), float16/bfloat16 and
    integers become float32 (exact)."""
    if isinstance(scores, torch.Tensor):
        t = scores.detach()
        if t.dtype not in (torch.float32, torch.float64):
            t = t.to(torch.float32)
        a = t.cpu().numpy()
    else:
        a = np.asarray(scores)
        if a.dtype == np.bool_ or not (
            np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
        ):
            raise DataFormatError(f"scores: expected a real matrix, got dtype {a.dtype}")
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float32)
    if a.ndim != 2:
        raise DataFormatError(f"scores: expected a 2-D block (rows x columns), got shape {a.shape}")
    if a.dtype == np.float64 and dtype == np.float32:
        a = a.astype(np.float32)
    return a


# --------------------------------------------------------------------------------------------- streaming


def _better(v: np.ndarray, j: np.ndarray, v0: np.ndarray, j0: np.ndarray) -> np.ndarray:
    """(v, j) replaces (v0, j0): larger value, or equal value and smaller column (first-index rule)."""
    return (v > v0) | ((v == v0) & (j < j0))


def _sort_desc(v: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    o = np.lexsort((j, -v), axis=1)  # value descending, then column ascending
    return np.take_along_axis(v, o, 1), np.take_along_axis(j, o, 1)


def _distinct_topk(v: np.ndarray, j: np.ndarray, k: int, sentinel: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the ``k`` largest distinct values of ``v`` (descending, -inf padded), each with the smallest ``j``
    that carries it among the given entries (sentinel padded)."""
    v, j = _sort_desc(v, j)
    dup = np.zeros(v.shape, bool)
    dup[:, 1:] = v[:, 1:] == v[:, :-1]
    v = np.where(dup, -np.inf, v).astype(v.dtype, copy=False)
    j = np.where(dup | np.isneginf(v), sentinel, j)
    v, j = _sort_desc(v, j)
    if v.shape[1] < k:
        pad = k - v.shape[1]
        v = np.concatenate([v, np.full((v.shape[0], pad), -np.inf, v.dtype)], 1)
        j = np.concatenate([j, np.full((j.shape[0], pad), sentinel, j.dtype)], 1)
    return v[:, :k], j[:, :k]


def _block_distinct_topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``x`` (R x C, C >= 1): the ``k`` largest distinct values and the first position of each
    (positions index ``x``'s columns; -1 = none), and the row maximum as ``torch.topk`` sees it (NaN first, for the
    finiteness check). One ``torch.topk`` of width ``4k``; rows whose top ``4k`` hold fewer than ``k`` distinct
    values strictly above the last one (heavy ties) are redone with ``k`` exact passes."""
    r, c = x.shape
    width = min(c, 4 * k)
    top = torch.topk(torch.from_numpy(x), width, dim=1, largest=True, sorted=True)
    tv, ti = top.values.numpy(), top.indices.numpy().astype(np.int64)
    v, j = _distinct_topk(tv, ti, k, -1)
    if width < c:
        # every occurrence of a value > the width-th largest is among the topk output, so its first position is
        # exact; the smallest returned value may have occurrences outside it.
        n_above = (v > tv[:, -1:]).sum(1)
        redo = np.flatnonzero(n_above < k)
        if redo.size:
            y = x[redo]
            ar = np.arange(redo.size)
            for t in range(k):
                a = np.argmax(y, 1)
                m = y[ar, a]
                v[redo, t] = m
                j[redo, t] = np.where(np.isneginf(m), -1, a)
                y[y >= m[:, None]] = -np.inf
    return v, j, tv[:, 0]


class _Stream:
    """Shared streaming part: row/column bookkeeping, the seen side, the GT score and the coverage count."""

    def __init__(self, prob: _Problem, dtype: str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
        self.prob = prob
        self.dtype_name = dtype
        self.dt = _DTYPES[dtype]
        n = prob.N
        self.s = np.full(n, -np.inf, self.dt)  # best seen score
        self.ps = np.full(n, prob.P, np.int64)  # its first column
        self.g = np.full(n, np.nan, self.dt)  # GT score
        self.count = np.zeros(n, np.int64)  # read columns received

    def _block(self, scores: Any, rows: Any, cols: Any) -> tuple[np.ndarray, Any, int, Any, int]:
        """A score block as numpy with its row and column selectors, checked against each other."""
        x = _chunk_numpy(scores, self.dt)
        r, nr = _rows_sel(rows, self.prob.N, "rows")
        c, nc = _rows_sel(cols, self.prob.P, "cols")
        if x.shape != (nr, nc):
            raise DataFormatError(f"scores: block shape {x.shape} does not match rows x cols = ({nr}, {nc})")
        return x, r, nr, c, nc

    def update(self, scores: Any, rows: Any = None, cols: Any = None) -> None:
        """Merge a score block: ``scores[i, c]`` is the score of sample ``rows[i]`` for column ``cols[c]``.
        ``rows`` / ``cols``: ``None`` (all), a slice or an integer index array (any order, no duplicates).
        Columns that are neither seen nor in the eval mask may be included (ignored) or left out. Torch tensors
        (any device) are copied to the CPU; all work is numpy (plus ``torch.topk`` on CPU). After an error
        (NaN, shape) the state is undefined: start a new evaluator."""
        prob = self.prob
        x, r, nr, c, nc = self._block(scores, rows, cols)
        if nr == 0 or nc == 0:
            return
        col_ids = np.arange(c.start, c.stop) if isinstance(c, slice) else c
        row_ids = np.arange(r.start, r.stop) if isinstance(r, slice) else r

        def local(mask: np.ndarray) -> np.ndarray:  # chunk positions of the masked columns, in pairs order
            pos = np.flatnonzero(mask[col_ids])
            return pos if isinstance(c, slice) else pos[np.argsort(col_ids[pos], kind="stable")]

        loc_seen, loc_un = local(prob.seen), local(prob.unseen_eval)
        if loc_seen.size:
            xs = x if loc_seen.size == nc and isinstance(c, slice) else np.take(x, loc_seen, axis=1)
            a = np.argmax(xs, 1)
            v = xs[np.arange(nr), a].astype(self.dt)
            self._check_finite(v, row_ids)
            j = col_ids[loc_seen[a]]
            upd = _better(v, j, self.s[r], self.ps[r])
            self.s[r] = np.where(upd, v, self.s[r])
            self.ps[r] = np.where(upd, j, self.ps[r])
        if loc_un.size:
            self._update_unseen(x, r, row_ids, col_ids, loc_un)
        # GT scores
        y = prob.y[row_ids]
        if isinstance(c, slice):
            pos = y - c.start
            ok = (pos >= 0) & (pos < nc)
        else:
            srt = np.argsort(col_ids)
            k = np.minimum(np.searchsorted(col_ids[srt], y), nc - 1)
            pos = srt[k]
            ok = col_ids[pos] == y
        if ok.any():
            self.g[row_ids[ok]] = x[np.flatnonzero(ok), pos[ok]]
        self.count[r] += loc_seen.size + loc_un.size

    def _check_finite(self, v: np.ndarray, row_ids: np.ndarray) -> None:
        bad = np.isnan(v) | np.isposinf(v)
        if bad.any():
            n = int(row_ids[np.flatnonzero(bad)[0]])
            raise DataFormatError(
                f"scores: sample {n} has a NaN or +inf score in an evaluated column (scores must be finite)"
            )

    def _update_unseen(
        self, x: np.ndarray, r: Any, row_ids: np.ndarray, col_ids: np.ndarray, loc: np.ndarray
    ) -> None:
        raise NotImplementedError

    def _check_complete(self) -> None:
        prob = self.prob
        bad = np.flatnonzero(self.count != prob.n_used)
        if bad.size:
            n = int(bad[0])
            raise DataFormatError(
                f"scores: sample {n} received {self.count[n]} evaluated column scores, expected "
                f"{prob.n_used} (every seen and in-mask unseen column once); {bad.size} samples "
                "incomplete or duplicated"
            )
        low = np.flatnonzero(~(self.s > MASK_FILL))
        if low.size:
            raise DataFormatError(
                f"scores: sample {int(low[0])} has best seen score {self.s[low[0]]} <= -1e10 (the "
                "reference's fill value for excluded columns); scores must be far above it"
            )


class StreamingEvaluator(_Stream):
    """The reference bias-sweep evaluator fed by score blocks; ``O(N * topk)`` memory for any number of columns.

    Args:
        pairs: ``P x 2`` (attr index, obj index) per column.
        seen_mask: ``(P,)`` bool, train pairs.
        eval_mask: ``(P,)`` bool, candidate columns (must contain every seen column).
        gt_pair: ``(N,)`` ground-truth column per sample; ``gt_attr`` / ``gt_obj`` optional, checked against it.
        exact: keep the ``topk`` best distinct unseen scores per sample; samples they cannot settle are flagged
            and resolved from their full rows (:meth:`resolve`, or ``result(rescore=...)``). ``False`` (fast):
            keep the best unseen score and the second distinct one; unsettled samples are flagged only.
        topk: ``k`` of exact mode (>= 2).
        dtype: ``"float32"`` (reference arithmetic) or ``"float64"``.
        attr_obj: ``"csp"`` (attr/obj accuracy at ``b = 0``) or ``"czsl"`` (at ``b = 1e3``).
    """

    def __init__(
        self,
        pairs: Any,
        seen_mask: Any,
        eval_mask: Any,
        gt_pair: Any,
        gt_attr: Any = None,
        gt_obj: Any = None,
        *,
        exact: bool = True,
        topk: int = 4,
        dtype: str = "float32",
        attr_obj: Literal["csp", "czsl"] = "csp",
    ):
        if attr_obj not in ("csp", "czsl"):
            raise ValueError(f"attr_obj: expected 'csp' or 'czsl', got {attr_obj!r}")
        if exact and (not isinstance(topk, int) or topk < 2):
            raise ValueError(f"topk: exact mode needs an integer >= 2, got {topk!r}")
        super().__init__(_Problem(pairs, seen_mask, eval_mask, gt_pair, gt_attr, gt_obj), dtype)
        self.exact = exact
        self.k = topk if exact else 1
        self.attr_obj = attr_obj
        n = self.prob.N
        self.uv = np.full((n, self.k), -np.inf, self.dt)  # best distinct unseen scores, descending
        self.ui = np.full((n, self.k), self.prob.P, np.int64)  # first column of each (P = none)
        # fast mode's certificate: the largest unseen score below uv[:, 0] (exact mode uses uv[:, -1])
        self.u2 = None if exact else np.full(n, -np.inf, self.dt)
        self._res: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # sample -> (record v, record j, #cols)
        self._res_state: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # compiled, see _resolved

    def _update_unseen(
        self, x: np.ndarray, r: Any, row_ids: np.ndarray, col_ids: np.ndarray, loc: np.ndarray
    ) -> None:
        self._res_state = None
        xu = np.take(x, loc, axis=1)
        if self.k == 1:
            a = np.argmax(xu, 1)
            v = xu[np.arange(xu.shape[0]), a]
            self._check_finite(v, row_ids)
            # the block's second-largest distinct score; with the merge below the certificate stays exact
            below = np.where(xu < v[:, None], xu, xu.dtype.type(-np.inf)).max(1).astype(self.dt)
            v = v.astype(self.dt)
            j = col_ids[loc[a]]
            u0, p0 = self.uv[r, 0], self.ui[r, 0]
            upd = _better(v, j, u0, p0)
            top = np.where(upd, v, u0)
            lose = np.where(upd, u0, v)  # the other side's maximum: below the new one unless equal
            u2 = self.u2
            assert u2 is not None  # fast mode
            u2[r] = np.maximum(np.maximum(u2[r], below), np.where(lose < top, lose, -np.inf))
            self.uv[r, 0] = top
            self.ui[r, 0] = np.where(upd, j, p0)
            return
        v, pos, top = _block_distinct_topk(xu, self.k)
        self._check_finite(top, row_ids)
        j = np.where(pos >= 0, col_ids[loc[np.maximum(pos, 0)]], self.prob.P)
        v = v.astype(self.dt)
        self.uv[r], self.ui[r] = _distinct_topk(
            np.concatenate([self.uv[r], v], 1), np.concatenate([self.ui[r], j], 1), self.k, self.prob.P
        )

    def resolve(self, scores: Any, rows: Any, cols: Any = None) -> None:
        """Recompute samples from their full rows: ``scores[i, c]`` is the score of sample ``rows[i]`` for column
        ``cols[c]`` (selectors as in :meth:`update`; the same values as streamed). Over one or more calls, every
        unseen eval-mask column of each such sample must arrive exactly once (other columns are ignored). A
        resolved sample is exact at every bias; usually the rows to resolve are ``result().ambiguous_samples``.
        """
        prob = self.prob
        x, r, nr, c, nc = self._block(scores, rows, cols)
        if nr == 0:
            return
        col_ids = np.arange(c.start, c.stop) if isinstance(c, slice) else c
        row_ids = np.arange(r.start, r.stop) if isinstance(r, slice) else r
        pos = np.flatnonzero(prob.unseen_eval[col_ids])
        pos = pos[np.argsort(col_ids[pos], kind="stable")]  # pairs order
        xu = np.take(x, pos, axis=1).astype(self.dt, copy=False)
        ju = col_ids[pos]
        bad = np.isnan(xu) | np.isposinf(xu)
        if bad.any():
            n = int(row_ids[np.flatnonzero(bad.any(1))[0]])
            raise DataFormatError(
                f"scores: sample {n} has a NaN or +inf score in an evaluated column (scores must be finite)"
            )
        rec = _record_mask(xu)
        self._res_state = None
        for i, n in enumerate(row_ids.tolist()):
            v, j = xu[i, rec[i]], ju[rec[i]]
            old = self._res.get(n)
            if old is None:
                self._res[n] = (v, j, pos.size)
            else:
                vv, jj = np.concatenate([old[0], v]), np.concatenate([old[1], j])
                o = np.argsort(jj, kind="stable")
                vv, jj = vv[o], jj[o]
                keep = _record_mask(vv[None])[0]  # records of a union = records of the parts' records
                self._res[n] = (vv[keep], jj[keep], old[2] + pos.size)

    def _resolved(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(rows, V, J)``: the resolved samples and their records padded to a rectangle (``-inf`` / ``P``)."""
        if self._res_state is not None or not self._res:
            return self._res_state
        prob = self.prob
        n_un = int(prob.unseen_eval.sum())
        rows = np.array(sorted(self._res), np.int64)
        width = max(1, max(e[0].size for e in self._res.values()))
        V = np.full((rows.size, width), -np.inf, self.dt)
        J = np.full((rows.size, width), prob.P, np.int64)
        for i, n in enumerate(rows.tolist()):
            v, j, got = self._res[n]
            if got != n_un:
                raise DataFormatError(
                    f"resolve: sample {n} received {got} unseen candidate column scores, expected {n_un} "
                    "(every unseen eval-mask column once)"
                )
            top = v[-1] if v.size else -np.inf  # the last record is the row maximum at its first column
            if top != self.uv[n, 0] or (v.size and j[-1] != self.ui[n, 0]):
                raise DataFormatError(
                    f"resolve: sample {n}'s best unseen score {top} differs from the streamed one "
                    f"{self.uv[n, 0]} (or its column does): resolve needs the same scores as update"
                )
            V[i, : v.size], J[i, : j.size] = v, j
        self._res_state = (rows, V, J)
        return self._res_state

    def _last(self) -> np.ndarray:
        """Every unseen score not stored is <= this (the certificate's bound)."""
        return self.uv[:, -1] if self.u2 is None else self.u2

    def predict(self, bias: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Top-1 eval-masked column per sample at ``bias`` (added in the evaluator's dtype).

        Returns ``(pred, ambiguous, uncertain)``: ``pred`` (N,) int64 column (the best guess where undetermined);
        ``ambiguous`` (N,) bool: correctness may differ from the reference (rounding merge not settled by the
        stored candidates and the sample not resolved); ``uncertain`` (N,) bool: the predicted column itself may
        differ."""
        self._check_complete()
        return _predict(self, self.uv, self.ui, bias, self._last(), self._resolved())

    def result(self, rescore: Callable[[np.ndarray], Any] | None = None) -> CZSLResult:
        """The full bias-sweep result from the accumulated state (the stream may continue afterwards).

        ``rescore``: resolves flagged samples until none is left (the numbers then equal the reference's).
        ``rescore(rows)`` returns the scores of samples ``rows`` for every column (``len(rows) x P``) or a pair
        ``(scores, cols)`` as :meth:`resolve` takes. Without it, flagged samples are reported in
        ``n_ambiguous``."""
        self._check_complete()
        while True:
            res = _evaluate_state(self, self.uv, self.ui, self.attr_obj, self._last(), self._resolved())
            if rescore is None or not res.n_ambiguous:
                return res
            rows = res.ambiguous_samples
            assert rows is not None
            out = rescore(rows.copy())
            scores, cols = out if isinstance(out, tuple) else (out, None)
            self.resolve(scores, rows, cols)


def _record_mask(x: np.ndarray) -> np.ndarray:
    """Per row, the entries greater than every entry before them. The first column whose biased score reaches
    the biased row maximum is always such a record (``fl(x + b)`` is monotone), for every bias."""
    rec = np.zeros(x.shape, bool)
    if x.shape[1]:
        rec[:, 0] = x[:, 0] > -np.inf
        rec[:, 1:] = x[:, 1:] > np.maximum.accumulate(x, axis=1)[:, :-1]
    return rec


def _predict(
    st: _Stream,
    uv: np.ndarray,
    ui: np.ndarray,
    bias: float,
    last: np.ndarray | None = None,
    res: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``last``: every unseen score not in ``uv`` is <= it (``None``: not checked); ``res``: resolved samples."""
    prob, dt = st.prob, st.dt
    b = dt(bias)
    t = uv[:, 0] + b  # fl(u + b): the biased unseen maximum (Lemma 1)
    seen_w, unseen_w = st.s > t, t > st.s
    tie = ~seen_w & ~unseen_w
    if uv.shape[1] == 1:
        pub = ui[:, 0].copy()
    else:
        pub = np.where(uv + b == t[:, None], ui, prob.P).min(1)  # first stored column rounding onto fl(u + b)
    unc = None
    if last is not None:
        # unsettled: a column not stored (score <= last) might round onto fl(u + b) with a smaller index
        unc = ~seen_w & ~((last + b) < t)
        if res is not None:
            rr, V, J = res
            pub[rr] = np.where(V + b == t[rr, None], J, prob.P).min(1)  # exact: the first record reaching it
            unc[rr] = False
    pred = np.where(seen_w, st.ps, np.where(unseen_w, pub, np.minimum(st.ps, pub)))
    if unc is None:
        return pred, None, None
    y, ps = prob.y, st.ps
    gt_in = prob.unseen_eval[y] & ((st.g + b) == t)  # unseen GT rounds onto the winning value
    amb_unseen = unc & ~prob.seen_sample & gt_in & (y <= pub) & ~(tie & (ps < y))
    amb_seen = unc & tie & prob.seen_sample & (ps == y) & (ps < pub)
    return pred, amb_unseen | amb_seen, unc


def _mean(k: int, n: int, dt: type) -> float:
    """The reference's accuracy: ``float32(k) / float32(n)`` (torch's float mean of 0/1 values) in float32 mode."""
    if n == 0:
        return 0.0
    return float(dt(k) / dt(n))


def _hm(s: float, u: float) -> float:
    return 2.0 * s * u / (s + u) if s > 0 and u > 0 else 0.0


def _evaluate_state(
    st: _Stream,
    uv: np.ndarray,
    ui: np.ndarray,
    attr_obj: str,
    last: np.ndarray | None = None,
    res: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> CZSLResult:
    prob, dt = st.prob, st.dt
    seen_s, unseen_s = prob.seen_sample, ~prob.seen_sample
    n_seen, n_unseen = int(seen_s.sum()), int(unseen_s.sum())
    check = last is not None
    amb_any = np.zeros(prob.N, bool)

    def point(b: float) -> tuple[float, float, int, np.ndarray, np.ndarray | None]:
        pred, amb, unc = _predict(st, uv, ui, b, last, res)
        ok = pred == prob.y
        na = 0
        if amb is not None:
            amb_any[amb] = True
            na = int(amb.sum())
        return (
            _mean(int(ok[seen_s].sum()), n_seen, dt),
            _mean(int(ok[unseen_s].sum()), n_unseen, dt),
            na,
            pred,
            unc,
        )

    s_max, u_max, na_max, pred_max, unc_max = point(MAX_BIAS)
    sel = (pred_max == prob.y) & unseen_s
    d = np.sort((st.s[sel] - st.g[sel]) - dt(BIAS_EPS))  # computed in dt: float32 as the reference
    biases = d[:: max(d.size // N_BINS, 1)]
    seen_c, unseen_c, amb_c = [], [], []
    for b in biases:
        s, u, na, _, _ = point(b)
        seen_c.append(s)
        unseen_c.append(u)
        amb_c.append(na)
    seen_c.append(s_max)
    unseen_c.append(u_max)
    amb_c.append(na_max)
    seen_a, unseen_a = np.array(seen_c, np.float64), np.array(unseen_c, np.float64)
    hm = np.array([_hm(s, u) for s, u in zip(seen_c, unseen_c)], np.float64)
    i = int(np.argmax(hm))
    bias_all = np.concatenate([biases.astype(np.float64), [MAX_BIAS]])

    if attr_obj == "csp":
        pred_ao, _, _ = _predict(st, uv, ui, 0.0)  # exact: no rounding at b = 0
    else:
        pred_ao = pred_max
        if unc_max is not None:
            amb_any |= unc_max
    pa = prob.pairs[pred_ao]
    ga = prob.pairs[prob.y]
    attr = _mean(int((pa[:, 0] == ga[:, 0]).sum()), prob.N, dt)
    obj = _mean(int((pa[:, 1] == ga[:, 1]).sum()), prob.N, dt)
    amb_idx = np.flatnonzero(amb_any) if check else None
    return CZSLResult(
        auc=float(np.trapezoid(seen_a, unseen_a)),
        best_hm=float(hm[i]),
        best_seen=float(seen_a.max()),
        best_unseen=float(unseen_a.max()),
        hm_seen=float(seen_a[i]),
        hm_unseen=float(unseen_a[i]),
        best_hm_bias=float(bias_all[i]),
        attr_acc=attr,
        obj_acc=obj,
        attr_obj_convention=attr_obj,
        seen_at_max_bias=s_max,
        unseen_at_max_bias=u_max,
        biases=bias_all,
        seen_curve=seen_a,
        unseen_curve=unseen_a,
        hm_curve=hm,
        n_samples=prob.N,
        n_seen_samples=n_seen,
        n_unseen_samples=n_unseen,
        dtype=st.dtype_name,
        n_ambiguous=None if amb_idx is None else int(amb_idx.size),
        ambiguous_samples=amb_idx,
        ambiguous_per_point=np.array(amb_c, np.int64) if check else None,
        n_resolved=0 if res is None else int(res[0].size),
    )


def _blocks(n: int, size: int | None) -> Iterator[slice]:
    size = n if size is None else size
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"chunk size: expected a positive integer, got {size!r}")
    for a in range(0, n, size):
        yield slice(a, min(n, a + size))


def evaluate_scores(
    scores: Any,
    pairs: Any,
    seen_mask: Any,
    eval_mask: Any,
    gt_pair: Any,
    gt_attr: Any = None,
    gt_obj: Any = None,
    *,
    exact: bool = True,
    topk: int = 4,
    dtype: str = "float32",
    attr_obj: Literal["csp", "czsl"] = "csp",
    chunk_rows: int | None = None,
    chunk_cols: int | None = 8192,
) -> CZSLResult:
    """Evaluate a dense ``N x P`` score matrix (numpy or torch, any device) by streaming it in blocks of
    ``chunk_rows x chunk_cols`` (``None`` = whole extent). Same arguments and result as
    :class:`StreamingEvaluator`; the numbers do not depend on the block sizes. Exact mode resolves every flagged
    sample from its row of ``scores`` (``n_ambiguous == 0``: the reference's numbers); fast mode flags them."""
    ev = StreamingEvaluator(
        pairs,
        seen_mask,
        eval_mask,
        gt_pair,
        gt_attr,
        gt_obj,
        exact=exact,
        topk=topk,
        dtype=dtype,
        attr_obj=attr_obj,
    )
    shape = tuple(scores.shape)
    if shape != (ev.prob.N, ev.prob.P):
        raise DataFormatError(
            f"scores: expected shape ({ev.prob.N}, {ev.prob.P}) (samples x pairs), got {shape}"
        )
    for rs in _blocks(ev.prob.N, chunk_rows):
        for cs in _blocks(ev.prob.P, chunk_cols):
            ev.update(scores[rs, cs], rs, cs)
    res = ev.result()
    while exact and res.n_ambiguous:  # resolving may move the candidate biases and flag other samples
        flagged = res.ambiguous_samples
        assert flagged is not None
        for i in range(0, flagged.size, chunk_rows or flagged.size):
            rows = flagged[i : i + (chunk_rows or flagged.size)]
            for cs in _blocks(ev.prob.P, chunk_cols):
                ev.resolve(_take_rows(scores, rows, cs), rows, cs)
        res = ev.result()
    return res


def _take_rows(scores: Any, rows: np.ndarray, cols: slice) -> Any:
    """``scores[rows, cols]`` for a numpy array or a torch tensor on any device (only that block is copied)."""
    if isinstance(scores, torch.Tensor):
        return scores[:, cols][torch.from_numpy(rows).to(scores.device)]
    return scores[:, cols][rows]


# --------------------------------------------------------------------------------------------- open world


def feasibility_thresholds(
    feasibility: Any, seen_mask: Any, eval_mask: Any = None, n: int = 50
) -> np.ndarray:
    """``np.linspace(min, max, n)`` (float64) of the feasibility over the unseen columns (of the eval mask, if
    given): the reference's candidate thresholds (CSP excludes seen pairs with +-10 offsets)."""
    seen = _bool_vector(seen_mask, len(seen_mask), "seen_mask")
    f = _feasibility(feasibility, seen.size)
    cand = ~seen if eval_mask is None else _bool_vector(eval_mask, seen.size, "eval_mask") & ~seen
    if not cand.any():
        raise DataFormatError("feasibility: there is no unseen column to threshold")
    fu = f[cand].astype(np.float64)
    if not np.isfinite(fu).all():
        raise DataFormatError("feasibility: expected finite values for every unseen column")
    return np.linspace(fu.min(), fu.max(), n)


def _feasibility(feasibility: Any, p: int) -> np.ndarray:
    f = _np(feasibility, "feasibility")
    if f.shape != (p,) or not np.issubdtype(f.dtype, np.floating):
        raise DataFormatError(
            f"feasibility: expected a float vector of shape ({p},) in pairs order, got {f.dtype} {f.shape}"
        )
    return f


def open_world_keep_mask(
    seen_mask: Any, feasibility: Any, threshold: float | None, eval_mask: Any = None
) -> np.ndarray:
    """Columns kept at ``threshold``: every seen column, plus the unseen eval-mask columns (all columns if
    ``eval_mask`` is None) with ``feasibility >= threshold`` (compared in float64). ``threshold=None`` keeps every
    column. Use the result as ``eval_mask``: removed columns are excluded, not multiplied by 0."""
    seen = _bool_vector(seen_mask, len(seen_mask), "seen_mask")
    base = np.ones_like(seen) if eval_mask is None else _bool_vector(eval_mask, seen.size, "eval_mask")
    if threshold is None:
        return base | seen
    f = _feasibility(feasibility, seen.size).astype(np.float64)
    return seen | (base & (f >= float(threshold)))


class ThresholdSearch(_Stream):
    """Open-world threshold selection in one pass over the validation scores.

    Each unseen eval-mask column ``j`` goes to bucket ``beta(j) = #{t : thresholds[t] <= f_j}``; the state keeps per
    sample and bucket the best score and its first column (``N x (T+1)``); the column set kept at threshold ``t``
    (1-based) is the buckets ``>= t``, so its best unseen score is a suffix maximum. ``result()`` gives the AUC at
    every threshold, identical to running the reference evaluator with the infeasible unseen columns excluded
    (rounding merges not checked: see the module docstring; they need two unseen scores within one float32 ulp).

    Args: as :class:`StreamingEvaluator` (``eval_mask`` = the open-world candidates before filtering, default all
    columns), plus ``feasibility`` ``(P,)`` in pairs order and ``thresholds`` (ascending; default
    :func:`feasibility_thresholds` with ``n_thresholds``).
    """

    def __init__(
        self,
        pairs: Any,
        seen_mask: Any,
        feasibility: Any,
        gt_pair: Any,
        gt_attr: Any = None,
        gt_obj: Any = None,
        *,
        eval_mask: Any = None,
        thresholds: Any = None,
        n_thresholds: int = 50,
        dtype: str = "float32",
        attr_obj: Literal["csp", "czsl"] = "csp",
    ):
        if attr_obj not in ("csp", "czsl"):
            raise ValueError(f"attr_obj: expected 'csp' or 'czsl', got {attr_obj!r}")
        p = _np(pairs, "pairs").shape[0]
        em = np.ones(p, bool) if eval_mask is None else eval_mask
        super().__init__(_Problem(pairs, seen_mask, em, gt_pair, gt_attr, gt_obj), dtype)
        prob = self.prob
        self.f = _feasibility(feasibility, prob.P).astype(np.float64)
        if not np.isfinite(self.f[prob.unseen_eval]).all():
            raise DataFormatError("feasibility: expected finite values for every unseen candidate column")
        if thresholds is None:
            th = feasibility_thresholds(self.f, prob.seen, prob.eval, n_thresholds)
        else:
            th = _np(thresholds, "thresholds").astype(np.float64)
            if th.ndim != 1 or th.size == 0 or not (np.diff(th) > 0).all():
                raise DataFormatError(f"thresholds: expected a non-empty strictly ascending vector, got {th}")
        self.thresholds = th
        self.attr_obj = attr_obj
        self.bucket = np.searchsorted(th, self.f, side="right")  # #{t : th_t <= f}
        nb = th.size + 1
        self.bv = np.full((prob.N, nb), -np.inf, self.dt)  # best unseen score per bucket
        self.bi = np.full((prob.N, nb), prob.P, np.int64)  # its first column

    def _update_unseen(
        self, x: np.ndarray, r: Any, row_ids: np.ndarray, col_ids: np.ndarray, loc: np.ndarray
    ) -> None:
        bk = self.bucket[col_ids[loc]]
        o = np.lexsort((col_ids[loc], bk))  # by bucket, then pairs order
        loc, bk = loc[o], bk[o]
        xp = np.take(x, loc, axis=1)  # one gather (row-local); a gather per bucket would miss the cache
        edges = np.flatnonzero(np.diff(bk)) + 1
        ar = np.arange(x.shape[0])
        for a, e in zip(np.r_[0, edges], np.r_[edges, bk.size]):
            seg = xp[:, a:e].copy()  # contiguous: argmax along a strided slice is several times slower
            am = np.argmax(seg, 1)
            v = seg[ar, am].astype(self.dt)
            self._check_finite(v, row_ids)
            j = col_ids[loc[a + am]]
            b = int(bk[a])
            upd = _better(v, j, self.bv[r, b], self.bi[r, b])
            self.bv[r, b] = np.where(upd, v, self.bv[r, b])
            self.bi[r, b] = np.where(upd, j, self.bi[r, b])

    def result(self) -> ThresholdSearchResult:
        """AUC per threshold, the first best (strict >), and the validation result there."""
        self._check_complete()
        nb = self.bv.shape[1]
        uv, ui = self.bv[:, nb - 1].copy(), self.bi[:, nb - 1].copy()
        per_t: list[CZSLResult | None] = [None] * (nb - 1)
        keep_all = None
        for b in range(nb - 1, -1, -1):  # suffix maximum over buckets >= b
            if b < nb - 1:
                upd = _better(self.bv[:, b], self.bi[:, b], uv, ui)
                uv = np.where(upd, self.bv[:, b], uv)
                ui = np.where(upd, self.bi[:, b], ui)
            res = _evaluate_state(self, uv[:, None], ui[:, None], self.attr_obj)
            if b >= 1:
                per_t[b - 1] = res
            else:
                keep_all = res
        results = [r for r in per_t if r is not None]
        aucs = np.array([r.auc for r in results], np.float64)
        best, best_auc = None, 0.0
        for t, a in enumerate(aucs):
            if a > best_auc:
                best, best_auc = t, float(a)
        th = None if best is None else float(self.thresholds[best])
        keep = open_world_keep_mask(self.prob.seen, self.f, th, self.prob.eval)
        assert keep_all is not None
        return ThresholdSearchResult(
            thresholds=self.thresholds.copy(),
            aucs=aucs,
            best_index=best,
            threshold=th,
            best_auc=best_auc,
            keep_mask=keep,
            val_result=keep_all if best is None else results[best],
            results=results,
        )
