"""Evaluation metrics for attribute-based ZSL / GZSL: per-class top-1 CZSL, GZSL S / U / H, calibrated
stacking.

Conventions (shared by every function here):

* Class ids are global 0-based ids. A score matrix is ``N x C`` over **all** classes in global order;
  ``seen_classes`` / ``unseen_classes`` are int arrays of class ids (sorted and de-duplicated here, must be
  disjoint). Columns in neither list are ignored (never predicted). Every label must be a seen or an unseen id.
* Inputs may be numpy arrays or torch tensors (any device); everything is computed with numpy.
* Accuracies are **per-class mean top-1** fractions in ``[0, 1]``: averaged over the classes *present* in the
  evaluated images (= ``sklearn.metrics.balanced_accuracy_score``), never per sample.
* A metric over an empty set of images is ``nan`` (e.g. ``S`` when there is no seen image); the harmonic mean
  ``H = 2SU/(S+U)`` is ``0`` when ``S + U = 0`` or when ``S`` or ``U`` is ``nan``.
* Ties always go to the first column: CZSL argmax over the unseen ids in ascending order; GZSL argmax over
  the columns ordered ``[seen ascending ; unseen ascending]`` (so a seen/unseen tie goes to seen).

Calibrated stacking (Chao et al., ECCV'16): ``pred = argmax_c [score(x, c) - gamma * 1[c in seen]]``.
``gamma`` is in **score units** (the same units as the score matrix, so it depends on the model's scale).
Per sample let ``s_i`` / ``u_i`` be the best seen / unseen score: the seen side wins iff
``s_i - gamma >= u_i``. In float64 (``gzsl_accuracy``, ``gamma_sweep``, ``select_gamma``) this is evaluated as
``delta_i >= gamma`` with ``delta_i = s_i - u_i`` (one rounding), so the exact sweep and the point evaluation
agree bit for bit. The reference grid (``oracle_grid_sweep``) reproduces the release instead: float32 scores,
``gamma_k = float32(k * step)`` and ``float32(s_i - gamma_k) >= u_i``.

Sweeps: S(gamma) is non-increasing and U(gamma) non-decreasing step functions with breakpoints ``delta_i``;
``gamma_sweep`` evaluates them exactly at every breakpoint (O(N log N + N * C), no re-run of the argmax per
gamma); ``oracle_grid_sweep`` evaluates the release's 0.01 grid (vectorised with the per-sample thresholds).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "GZSLResult",
    "Sweep",
    "GridTooLargeError",
    "per_class_accuracy",
    "czsl_accuracy",
    "gzsl_accuracy",
    "gamma_sweep",
    "oracle_grid_sweep",
    "ausuc",
    "evaluate_attribute",
    "select_gamma",
    "harmonic_mean",
    "release_epoch_metrics",
    "release_selection",
]


class GZSLResult(NamedTuple):
    """GZSL accuracies at one calibration value. ``S``/``U``/``H`` are fractions; ``gamma`` is in score units."""

    S: float
    U: float
    H: float
    gamma: float


@dataclass(frozen=True, eq=False)
class Sweep:
    """S/U/H as functions of gamma, evaluated at the points ``gammas`` (ascending).

    ``mode == "exact"``: ``gammas`` = every distinct breakpoint ``delta`` (the seen side still wins at
    ``gamma = delta``; ``gammas[0]`` is the all-seen state, ``U = 0``) plus one point above the largest (the
    all-unseen state, ``S = 0``). The state of point ``j`` holds on ``(gammas[j-1], gammas[j]]``
    (``(-inf, gammas[0]]`` for the first, ``(max delta, +inf)`` for the last); ``robust_gammas[j]`` is a value
    inside that interval (its midpoint, ``gammas[0] - 1.0`` for the first, ``gammas[-1]`` for the last).

    ``mode == "grid"``: ``gammas`` = the reference grid points ``float32(k * step)`` for every ``k`` the release
    evaluates (a contiguous range of ``k`` including ``0``); ``robust_gammas`` = ``gammas``.

    ``best`` = the point with the largest ``H`` (see the sweep functions for tie-breaking and for the reported
    ``best.gamma``); ``best_index`` indexes the arrays.
    """

    gammas: np.ndarray
    S: np.ndarray
    U: np.ndarray
    H: np.ndarray
    best: GZSLResult
    best_index: int
    mode: str
    robust_gammas: np.ndarray


class GridTooLargeError(ValueError):
    """The reference gamma grid would need more points than allowed (scores on a very large scale)."""


# --------------------------------------------------------------------------------------------- helpers


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view/copy of a numpy array, a torch tensor (any device/dtype) or a sequence."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        t = x.detach().cpu()
        if t.is_floating_point() and t.dtype not in _torch_numpy_floats():
            t = t.double()  # bfloat16 / float16: numpy has no bfloat16
        return t.numpy()
    return np.asarray(x)


def _torch_numpy_floats() -> tuple:
    import torch

    return (torch.float32, torch.float64)


def _int_array(x: Any, what: str) -> np.ndarray:
    """1-D int64 array of class ids (integer dtype, or integer-valued floats)."""
    a = np.asarray(_to_numpy(x))
    if a.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array, got shape {a.shape}")
    if a.size == 0 or np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64, copy=False)
    if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        return a.astype(np.int64)
    raise ValueError(f"{what}: expected integer class ids, got dtype {a.dtype}")


def _mean_accuracy(correct: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Row-wise per-class mean accuracy: ``mean_c correct[r, c] / n[c]`` (nan when there is no class).

    The single place where per-class accuracies are averaged, so that the sweeps reproduce
    ``per_class_accuracy`` bit for bit.
    """
    correct = np.ascontiguousarray(correct)
    if correct.shape[1] == 0:
        return np.full(correct.shape[0], np.nan)
    return np.ascontiguousarray(correct / n).mean(axis=1)


def harmonic_mean(S: Any, U: Any) -> Any:
    """``2SU/(S+U)``; ``0`` where ``S + U == 0`` or where ``S`` or ``U`` is nan. Scalars in, float out."""
    S_a = np.asarray(S, dtype=np.float64)
    U_a = np.asarray(U, dtype=np.float64)
    denom = S_a + U_a
    ok = np.isfinite(denom) & (denom > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        H = np.where(ok, 2.0 * S_a * U_a / np.where(ok, denom, 1.0), 0.0)
    return float(H) if H.ndim == 0 else H


def _classes(x: Any, C: int, what: str) -> np.ndarray:
    a = np.unique(_int_array(x, what))
    if a.size and (a[0] < 0 or a[-1] >= C):
        raise ValueError(f"{what}: class ids must lie in [0, {C}), got range [{a[0]}, {a[-1]}]")
    return a


class _Prepared(NamedTuple):
    scores: np.ndarray  # N x C, dtype as requested
    labels: np.ndarray  # int64 (N,)
    seen: np.ndarray
    unseen: np.ndarray
    seen_img: np.ndarray  # bool (N,): images evaluated in S
    unseen_img: np.ndarray  # bool (N,): images evaluated in U


def _prepare(
    scores: Any,
    labels: Any,
    seen_classes: Any,
    unseen_classes: Any,
    seen_mask: Any = None,
    dtype: type = np.float64,
) -> _Prepared:
    x = np.asarray(_to_numpy(scores))
    if x.ndim != 2:
        raise ValueError(f"scores: expected an N x C matrix, got shape {x.shape}")
    x = x.astype(dtype, copy=False)
    N, C = x.shape
    y = _int_array(labels, "labels")
    if y.shape[0] != N:
        raise ValueError(f"labels: expected {N} labels (one per score row), got {y.shape[0]}")
    seen = _classes(seen_classes, C, "seen_classes")
    unseen = _classes(unseen_classes, C, "unseen_classes")
    if seen.size == 0 or unseen.size == 0:
        raise ValueError("GZSL needs at least one seen and one unseen class")
    if np.intersect1d(seen, unseen).size:
        raise ValueError("seen_classes and unseen_classes must be disjoint")
    is_seen_label = np.isin(y, seen)
    bad = ~(is_seen_label | np.isin(y, unseen))
    if bad.any():
        raise ValueError(
            f"labels: {int(bad.sum())} label(s) are neither seen nor unseen class ids (e.g. {int(y[bad][0])})"
        )
    cols = np.concatenate([seen, unseen])
    if not np.all(np.isfinite(x[:, cols])):
        raise ValueError("scores: non-finite values in the seen/unseen columns")
    if seen_mask is None:
        seen_img = is_seen_label
    else:
        seen_img = np.asarray(_to_numpy(seen_mask)).astype(bool).reshape(-1)
        if seen_img.shape[0] != N:
            raise ValueError(f"seen_mask: expected {N} entries, got {seen_img.shape[0]}")
    return _Prepared(x, y, seen, unseen, seen_img, ~seen_img)


def _best(x: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise max over ``cols`` (ascending) and the class id reached first."""
    sub = x[:, cols]
    idx = np.argmax(sub, axis=1)
    return sub[np.arange(x.shape[0]), idx], cols[idx]


class _Reduced(NamedTuple):
    s: np.ndarray
    s_cls: np.ndarray
    u: np.ndarray
    u_cls: np.ndarray


def _reduce(p: _Prepared) -> _Reduced:
    s, s_cls = _best(p.scores, p.seen)
    u, u_cls = _best(p.scores, p.unseen)
    return _Reduced(s, s_cls, u, u_cls)


def _state_curves(p: _Prepared, r: _Reduced, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S and U for every state of the rule "seen wins for sample i iff t_i >= g".

    Only "relevant" samples can ever be correct: seen images whose best seen class is their label (correct
    while the seen side wins) and unseen images whose best unseen class is their label (correct once the
    unseen side wins). With ``T`` = their sorted distinct thresholds (m values), state ``q`` (``0..m``) is the
    set of points ``g`` with exactly ``q`` thresholds below ``g``; query with ``searchsorted(T, g, 'left')``.
    Per-class correct counts of all states come from one cumulative sum (integers, exact); S and U are then
    averaged exactly as ``per_class_accuracy`` does. Returns ``(T, S_state, U_state)``.
    """
    y = p.labels
    cs, inv_s = np.unique(y[p.seen_img], return_inverse=True)
    cu, inv_u = np.unique(y[p.unseen_img], return_inverse=True)
    n_s = np.bincount(inv_s, minlength=cs.size)
    n_u = np.bincount(inv_u, minlength=cu.size)
    ok_s = (r.s_cls == y)[p.seen_img]
    ok_u = (r.u_cls == y)[p.unseen_img]
    t_s = t[p.seen_img][ok_s]
    t_u = t[p.unseen_img][ok_u]
    T = np.unique(np.concatenate([t_s, t_u]))
    m = T.size
    # seen-correct sample with threshold index j is correct in states 0..j
    A = np.zeros((m + 1, cs.size), dtype=np.int64)
    np.add.at(A, (np.searchsorted(T, t_s), inv_s[ok_s]), 1)
    counts_s = np.cumsum(A[::-1], axis=0)[::-1]
    # unseen-correct sample with threshold index j is correct in states j+1..m
    B = np.zeros((m + 1, cu.size), dtype=np.int64)
    np.add.at(B, (np.searchsorted(T, t_u) + 1, inv_u[ok_u]), 1)
    counts_u = np.cumsum(B, axis=0)
    return T, _mean_accuracy(counts_s, n_s), _mean_accuracy(counts_u, n_u)


# --------------------------------------------------------------------------------------------- metrics


def per_class_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean over the classes present in ``y_true`` of the per-class top-1 accuracy (a fraction in [0, 1]).

    Classes that occur only in ``y_pred`` are ignored (equals ``sklearn.metrics.balanced_accuracy_score``).
    Returns ``nan`` for empty input.
    """
    yt = _int_array(y_true, "y_true")
    yp = _int_array(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred differ in length: {yt.shape[0]} vs {yp.shape[0]}")
    if yt.size == 0:
        return float("nan")
    classes, inv = np.unique(yt, return_inverse=True)
    n = np.bincount(inv, minlength=classes.size)
    correct = np.bincount(inv[yt == yp], minlength=classes.size)
    return float(_mean_accuracy(correct[None, :], n)[0])


def czsl_accuracy(scores: Any, labels: Any, unseen_classes: Any) -> float:
    """Conventional ZSL top-1: argmax over the unseen columns only (ascending ids, first index on ties),
    per-class mean over the given images (whose labels must all be unseen ids). ``nan`` if there are no rows.
    """
    x = np.asarray(_to_numpy(scores))
    if x.ndim != 2:
        raise ValueError(f"scores: expected an N x C matrix, got shape {x.shape}")
    y = _int_array(labels, "labels")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"labels: expected {x.shape[0]} labels (one per score row), got {y.shape[0]}")
    unseen = _classes(unseen_classes, x.shape[1], "unseen_classes")
    if unseen.size == 0:
        raise ValueError("CZSL needs at least one unseen class")
    bad = ~np.isin(y, unseen)
    if bad.any():
        raise ValueError(
            f"labels: {int(bad.sum())} CZSL label(s) are not unseen class ids (e.g. {int(y[bad][0])})"
        )
    if y.size == 0:
        return float("nan")
    pred = unseen[np.argmax(x[:, unseen].astype(np.float64, copy=False), axis=1)]
    return per_class_accuracy(y, pred)


def _gzsl_from(p: _Prepared, r: _Reduced, delta: np.ndarray, gamma: float) -> GZSLResult:
    pred = np.where(delta >= gamma, r.s_cls, r.u_cls)
    S = per_class_accuracy(p.labels[p.seen_img], pred[p.seen_img])
    U = per_class_accuracy(p.labels[p.unseen_img], pred[p.unseen_img])
    return GZSLResult(S, U, harmonic_mean(S, U), float(gamma))


def gzsl_accuracy(
    scores: Any, labels: Any, seen_classes: Any, unseen_classes: Any, gamma: float, seen_mask: Any = None
) -> GZSLResult:
    """GZSL S/U/H with calibrated stacking at ``gamma`` (score units; subtracted from the seen scores).

    Prediction: argmax over ``[seen ascending ; unseen ascending]`` of ``score - gamma * 1[seen]``, first column
    on ties, computed through the per-sample reduction (seen side wins iff ``s_i - u_i >= gamma``, float64).
    ``S`` = per-class mean over the images whose label is seen (or where ``seen_mask`` is true), ``U`` = over the
    other images (label unseen / ``seen_mask`` false). A side with no images is ``nan`` and then ``H = 0``.
    """
    p = _prepare(scores, labels, seen_classes, unseen_classes, seen_mask)
    r = _reduce(p)
    return _gzsl_from(p, r, r.s - r.u, float(gamma))


def _interval_midpoint(lo: float, hi: float) -> float:
    """A value inside ``(lo, hi]`` (``lo`` may be -inf, ``hi`` may be +inf): midpoint, else hi - 1 / lo + 1."""
    if math.isinf(lo) and math.isinf(hi):
        return 0.0
    if math.isinf(lo):
        return hi - 1.0
    if math.isinf(hi):
        return max(lo + 1.0, float(np.nextafter(lo, np.inf)))
    mid = lo / 2.0 + hi / 2.0
    return mid if lo < mid <= hi else hi


def gamma_sweep(
    scores: Any, labels: Any, seen_classes: Any, unseen_classes: Any, *, seen_mask: Any = None
) -> Sweep:
    """Exact calibrated-stacking sweep over all breakpoints (float64; see ``Sweep`` for the points).

    Cost O(N log N + N * C): one per-sample reduction, a sort of the breakpoints and one cumulative sum of
    per-class correct counts (each sample changes its prediction once). ``S/U/H`` at ``gammas[j]`` and at
    ``robust_gammas[j]`` equal ``gzsl_accuracy`` there exactly.

    ``best``: the largest ``H``, ties to the smallest gamma. ``best.gamma`` is a robust value inside the
    optimal interval: the maximal run of consecutive points with the same ``(S, U)`` as the best point spans
    ``(lo, hi]``; the reported gamma is its midpoint (``hi - 1.0`` if the run starts at the all-seen state,
    ``lo + 1.0`` if it ends at the all-unseen state). Applying ``best.gamma`` reproduces ``best``.
    """
    p = _prepare(scores, labels, seen_classes, unseen_classes, seen_mask)
    if p.labels.size == 0:
        raise ValueError("gamma_sweep: no samples")
    r = _reduce(p)
    delta = r.s - r.u
    d = np.unique(delta)
    top = max(float(d[-1]) + 1.0, float(np.nextafter(d[-1], np.inf)))
    gammas = np.append(d, top)
    T, S_state, U_state = _state_curves(p, r, delta)
    q = np.searchsorted(T, gammas, side="left")
    S, U = S_state[q], U_state[q]
    H = harmonic_mean(S, U)
    lower = np.concatenate([[-np.inf], d])  # state j holds on (lower[j], gammas[j]]
    with np.errstate(invalid="ignore", over="ignore"):
        mid = lower[:-1] / 2.0 + d / 2.0
    inside = (lower[:-1] < mid) & (mid <= d)
    robust = np.append(np.where(inside, mid, d), top)
    robust[0] = float(d[0]) - 1.0
    bi = int(np.argmax(H))
    # widen to the run of identical (S, U) around the best point
    same = _eq_nan(S, S[bi]) & _eq_nan(U, U[bi])
    j0 = bi
    while j0 > 0 and same[j0 - 1]:
        j0 -= 1
    j1 = bi
    while j1 + 1 < len(gammas) and same[j1 + 1]:
        j1 += 1
    hi = np.inf if j1 == len(gammas) - 1 else float(gammas[j1])
    g_best = _interval_midpoint(float(lower[j0]), hi)
    best = GZSLResult(float(S[bi]), float(U[bi]), float(H[bi]), g_best)
    return Sweep(gammas, S, U, H, best, bi, "exact", robust)


def _eq_nan(a: np.ndarray, v: float) -> np.ndarray:
    return (a == v) | (np.isnan(a) & np.isnan(v))


def _grid_thresholds(s: np.ndarray, u: np.ndarray, step: float, bound: int) -> np.ndarray:
    """Per sample the largest k with ``float32(s - float32(k * step)) >= u`` (s, u float32), clamped to
    ``[-bound - 2, bound + 1]`` (a clamped value behaves like the true one on every k in ``[-bound, bound]``).
    The predicate is monotone in k (float32 rounding is monotone), so an estimate plus galloping and bisection
    finds it exactly.
    """
    L, R = -bound - 2, bound + 1

    def pred(k: np.ndarray) -> np.ndarray:
        g = (k.astype(np.float64) * step).astype(np.float32)
        return (s - g) >= u

    with np.errstate(over="ignore", invalid="ignore"):
        est = np.floor((s.astype(np.float64) - u.astype(np.float64)) / step)
    lo = np.clip(est, L, R).astype(np.int64)
    w = 1
    while True:  # make pred(lo) true (or lo == L)
        bad = (lo > L) & ~pred(lo)
        if not bad.any():
            break
        lo[bad] = np.maximum(lo[bad] - w, L)
        w *= 2
    hi = lo + 1
    w = 1
    while True:  # make pred(hi) false (or hi == R + 1, never evaluated)
        bad = (hi <= R) & pred(np.minimum(hi, R))
        if not bad.any():
            break
        lo[bad] = hi[bad]
        hi[bad] = np.minimum(hi[bad] + w, R + 1)
        w *= 2
    while True:
        open_ = hi - lo > 1
        if not open_.any():
            break
        mid = lo + (hi - lo) // 2
        pm = pred(mid)
        lo = np.where(open_ & pm, mid, lo)
        hi = np.where(open_ & ~pm, mid, hi)
    return lo


def oracle_grid_sweep(
    scores: Any,
    labels: Any,
    seen_classes: Any,
    unseen_classes: Any,
    step: float = 0.01,
    *,
    seen_mask: Any = None,
    max_points: int = 1_000_000,
) -> Sweep:
    """The release's reference gamma grid (test-oracle, as in ReZSL / Mg-MRN), computed without re-running the
    argmax per gamma.

    Scores are cast to float32; ``gamma_k = float32(k * step)`` is subtracted from the seen scores in float32.
    The release evaluates ``k = 0``, then ``k = -1, -2, ...`` while the last evaluated point has ``U > 0`` (so it
    stops at the first point with ``U = 0``), then ``k = 1, 2, ...`` while the last evaluated point has ``S > 0``
    (a nan side counts as not > 0). ``best`` = largest ``H`` with the first point in that evaluation order on
    ties (start point included); ``best.gamma`` is the grid value. Arrays are in ascending gamma.

    Each sample's prediction switches once, at the largest ``k`` where the seen side still wins; these
    thresholds (exact, float32 semantics) give the whole grid in O(N log N + N * C + grid size). The seen class
    a sample gets is the float32 argmax of the unshifted seen scores (the release's shifted argmax differs only
    when float32 rounding of ``score - gamma`` merges two distinct seen scores). Raises ``GridTooLargeError``
    if more than ``max_points`` points would be needed.
    """
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    p = _prepare(scores, labels, seen_classes, unseen_classes, seen_mask, dtype=np.float32)
    if p.labels.size == 0:
        raise ValueError("oracle_grid_sweep: no samples")
    r = _reduce(p)
    y = p.labels
    ok_s = p.seen_img & (r.s_cls == y)
    ok_u = p.unseen_img & (r.u_cls == y)
    rel = ok_s | ok_u
    K = np.zeros(y.size, dtype=np.int64)
    K[rel] = _grid_thresholds(r.s[rel], r.u[rel], float(step), int(max_points))
    # U(k) > 0 iff some unseen-correct sample has K < k; S(k) > 0 iff some seen-correct sample has K >= k.
    k_lo = min(0, int(K[ok_u].min())) if ok_u.any() else 0
    k_hi = max(0, int(K[ok_s].max()) + 1) if ok_s.any() else 0
    n_points = k_hi - k_lo + 1
    if n_points > max_points:
        raise GridTooLargeError(
            f"the gamma grid with step {step} would need {n_points} points "
            f"(> max_points={max_points}); the scores span a very large range — use the "
            "exact sweep (gamma_sweep) or a larger step"
        )
    ks = np.arange(k_lo, k_hi + 1, dtype=np.int64)
    T, S_state, U_state = _state_curves(p, r, K)
    q = np.searchsorted(T, ks, side="left")
    S, U = S_state[q], U_state[q]
    H = harmonic_mean(S, U)
    gammas = (ks.astype(np.float64) * step).astype(np.float32).astype(np.float64)
    order = np.concatenate(
        [np.arange(-k_lo, -1, -1), np.arange(1 - k_lo, n_points)]
    )  # k = 0, -1, .., k_lo, 1, ..
    bi = int(order[np.argmax(H[order])])
    best = GZSLResult(float(S[bi]), float(U[bi]), float(H[bi]), float(gammas[bi]))
    return Sweep(gammas, S, U, H, best, bi, "grid", gammas.copy())


def ausuc(sweep: Sweep) -> float:
    """Area under the seen-vs-unseen accuracy curve: the sweep's points sorted by U, trapezoid rule over
    (U, S). Both sweeps contain the end points ``(U=0, S_max)`` (all seen) and ``(U_max, S=0)`` (all unseen).
    ``nan`` if S or U is nan (no seen or no unseen images).
    """
    S = np.asarray(sweep.S, dtype=np.float64)
    U = np.asarray(sweep.U, dtype=np.float64)
    if S.size == 0 or np.isnan(S).any() or np.isnan(U).any():
        return float("nan")
    o = np.argsort(U, kind="stable")
    return float(np.trapezoid(S[o], U[o]))


def select_gamma(
    scores: Any, labels: Any, seen_classes: Any, unseen_classes: Any, *, seen_mask: Any = None
) -> tuple[float, GZSLResult]:
    """Calibration on validation: ``(gamma, result)`` of the exact sweep's best H (robust gamma, see
    ``gamma_sweep``)."""
    sw = gamma_sweep(scores, labels, seen_classes, unseen_classes, seen_mask=seen_mask)
    return sw.best.gamma, sw.best


GAMMA_TRANSFERS = ("raw", "scale", "zscore", "quantile")


def seen_margins(scores: Any, seen_classes: Any, unseen_classes: Any) -> np.ndarray:
    """Per image, the best seen-class score minus the best unseen-class score (float64): calibrated stacking at
    ``gamma`` predicts an unseen class exactly when this margin is below ``gamma``."""
    x = np.asarray(scores, dtype=np.float64)
    seen = np.asarray(seen_classes, dtype=np.int64)
    unseen = np.asarray(unseen_classes, dtype=np.int64)
    return x[:, seen].max(1) - x[:, unseen].max(1)


def transfer_gamma(gamma: float, source: np.ndarray, target: np.ndarray, rule: str) -> float:
    """Carry a calibration offset chosen on one model (``source`` = its seen-unseen margins on its own training
    images) to another (``target`` = the same on the other model's training images), whose scores may sit on
    another scale.

    ``raw``: unchanged. ``scale``: in units of the margins' standard deviation. ``zscore``: the same number of
    standard deviations from the mean margin. ``quantile``: the same fraction of training images sent to the
    unseen classes (margin < gamma; ties counted half), read off the target's margins by linear interpolation.
    """
    if rule not in GAMMA_TRANSFERS:
        raise ValueError(f"gamma transfer rule must be one of {GAMMA_TRANSFERS}, got {rule!r}")
    s = np.sort(np.asarray(source, dtype=np.float64))
    t = np.sort(np.asarray(target, dtype=np.float64))
    if rule == "raw" or not len(s) or not len(t):
        return float(gamma)
    s_std, t_std = float(s.std()), float(t.std())
    if rule == "quantile":
        below = np.searchsorted(s, gamma, "left") + np.searchsorted(s, gamma, "right")
        return float(np.quantile(t, below / (2 * len(s))))
    if s_std == 0.0:  # a degenerate source carries no scale
        return float(gamma)
    if rule == "scale":
        return float(gamma * t_std / s_std)
    return float(t.mean() + (gamma - s.mean()) * t_std / s_std)


def evaluate_attribute(
    scores: Any,
    labels: Any,
    seen_classes: Any,
    unseen_classes: Any,
    gamma: float,
    *,
    oracle: bool = True,
    ausuc_mode: str = "grid",
    seen_mask: Any = None,
) -> dict[str, float]:
    """Test-set metrics (fractions in [0, 1]) as a flat dict.

    ``scores``: rows = the test images (test_seen and test_unseen), columns = all classes in global order;
    ``labels``: their global class ids; ``gamma``: the validation-chosen (or fixed) calibration in score units.

    Keys: ``czsl_top1`` (CZSL on the unseen images, unseen columns only); ``S``, ``U``, ``H``, ``gamma`` at the
    given gamma; ``S_gamma0``, ``U_gamma0``, ``H_gamma0``; ``ausuc`` (``ausuc_mode`` "grid" = the release's grid,
    comparable; "exact" = breakpoints); with ``oracle``: ``oracle_S``, ``oracle_U``, ``oracle_H``, ``oracle_gamma``
    (test-swept reference grid) and ``oracle_exact_H`` (test-swept exact sweep). If the scores span a range too
    large for the grid, the grid numbers are nan (and "grid" AUSUC falls back to the exact sweep) with a warning.
    """
    if ausuc_mode not in ("grid", "exact"):
        raise ValueError(f"ausuc_mode must be 'grid' or 'exact', got {ausuc_mode!r}")
    p = _prepare(scores, labels, seen_classes, unseen_classes, seen_mask)
    x, y, seen, unseen = p.scores, p.labels, p.seen, p.unseen
    r = _reduce(p)
    delta = r.s - r.u
    at = _gzsl_from(p, r, delta, float(gamma))
    at0 = _gzsl_from(p, r, delta, 0.0)
    czsl = czsl_accuracy(x[p.unseen_img], y[p.unseen_img], unseen) if p.unseen_img.any() else float("nan")
    out: dict[str, float] = {
        "czsl_top1": czsl,
        "S": at.S,
        "U": at.U,
        "H": at.H,
        "gamma": float(gamma),
        "S_gamma0": at0.S,
        "U_gamma0": at0.U,
        "H_gamma0": at0.H,
    }
    grid = exact = None
    if oracle or ausuc_mode == "grid":
        try:
            grid = oracle_grid_sweep(x, y, seen, unseen, seen_mask=p.seen_img)
        except GridTooLargeError as exc:
            log.warning("oracle grid skipped: %s", exc)
    if oracle or ausuc_mode == "exact" or grid is None:
        exact = gamma_sweep(x, y, seen, unseen, seen_mask=p.seen_img)
    out["ausuc"] = ausuc(grid if (ausuc_mode == "grid" and grid is not None) else exact)
    if oracle:
        nan = float("nan")
        g = grid.best if grid is not None else GZSLResult(nan, nan, nan, nan)
        out.update(
            oracle_S=g.S, oracle_U=g.U, oracle_H=g.H, oracle_gamma=g.gamma, oracle_exact_H=exact.best.H
        )
    return out


# --------------------------------------------------------------------------------------------- release protocol


def release_epoch_metrics(
    scores: Any,
    labels: Any,
    seen_classes: Any,
    unseen_classes: Any,
    *,
    seen_mask: Any = None,
    step: float = 0.01,
) -> dict[str, float]:
    """One epoch of the Mg-MRN release's test-time report (``inferencer.eval_zs_gzsl``), on the TEST set.

    ``czsl_top1``: CZSL on the unseen images (unseen columns only). ``S``, ``U``, ``H``, ``gamma``: the best H of the
    release's reference grid (``oracle_grid_sweep``: float32, gamma_k = float32(k * step), k = 0, -1, ... then 1,
    ...; first point on ties). Fractions in [0, 1]; gamma in score units. ``nan`` S/U/H/gamma when the grid would be
    too large (warning), as in ``evaluate_attribute``.
    """
    p = _prepare(scores, labels, seen_classes, unseen_classes, seen_mask)
    czsl = (
        czsl_accuracy(p.scores[p.unseen_img], p.labels[p.unseen_img], p.unseen)
        if p.unseen_img.any()
        else float("nan")
    )
    try:
        g = oracle_grid_sweep(p.scores, p.labels, p.seen, p.unseen, step, seen_mask=p.seen_img).best
    except GridTooLargeError as exc:
        log.warning("release grid skipped: %s", exc)
        nan = float("nan")
        g = GZSLResult(nan, nan, nan, nan)
    return {"czsl_top1": czsl, "S": g.S, "U": g.U, "H": g.H, "gamma": g.gamma}


def release_selection(per_epoch: Any) -> dict[str, Any]:
    """The release's bookkeeping over epochs (``train.py``): the best-ever T1, and S/U/H/gamma of the epoch with the
    best H. Both keep the first epoch on ties (the release updates on a strict ``>``); nan values never win.

    ``per_epoch``: records ``{"epoch", "czsl_top1", "S", "U", "H", "gamma"}`` (``release_epoch_metrics`` + epoch),
    in training order. Returns ``czsl_top1`` + ``czsl_top1_epoch`` and ``S``, ``U``, ``H``, ``gamma``, ``epoch``
    (0-based epochs; ``-1`` and nan when no epoch has a finite value).
    """
    recs = list(per_epoch)
    if not recs:
        raise ValueError("release_selection: no per-epoch records")
    nan = float("nan")
    best_t1, t1_epoch = -math.inf, -1
    best_h: dict[str, Any] = {"S": nan, "U": nan, "H": nan, "gamma": nan, "epoch": -1}
    for r in recs:
        t1, h = float(r["czsl_top1"]), float(r["H"])
        if t1 > best_t1:  # nan compares False: never selected
            best_t1, t1_epoch = t1, int(r["epoch"])
        if h > (best_h["H"] if best_h["epoch"] >= 0 else -math.inf):
            best_h = {k: float(r[k]) for k in ("S", "U", "H", "gamma")} | {"epoch": int(r["epoch"])}
    return {
        "czsl_top1": best_t1 if t1_epoch >= 0 else nan,
        "czsl_top1_epoch": t1_epoch,
        **best_h,
    }
