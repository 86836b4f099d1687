"""Attribute ZSL/GZSL metrics: per-class accuracy, CZSL, calibrated stacking, exact and grid sweeps, AUSUC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unseen.attribute.metrics import (
    GridTooLargeError,
    GZSLResult,
    Sweep,
    ausuc,
    czsl_accuracy,
    evaluate_attribute,
    gamma_sweep,
    gzsl_accuracy,
    oracle_grid_sweep,
    per_class_accuracy,
    select_gamma,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


# ----------------------------------------------------------------------------------------------- fixtures


def make_problem(seed: int, n: int = 160, integer: bool = False, signal: float = 1.5):
    """Random GZSL problem. 12 columns: seen {0, 2, 5, 7, 8, 11}, unseen {1, 4, 9, 10}; column 3 and 6 belong to
    neither list (ignored); seen class 8 and unseen class 10 have no image."""
    rng = np.random.default_rng(seed)
    seen = np.array([0, 2, 5, 7, 8, 11])
    unseen = np.array([1, 4, 9, 10])
    with_images = np.array([0, 2, 5, 7, 11, 1, 4, 9])
    labels = rng.choice(with_images, size=n)
    if integer:  # heavy ties: small integers
        scores = rng.integers(-3, 4, size=(n, 12)).astype(np.float64)
        scores[np.arange(n), labels] += rng.integers(0, 3, size=n)
    else:
        scores = rng.normal(size=(n, 12))
        scores[np.arange(n), labels] += signal
        scores[:, seen] += 0.7  # seen bias, as a trained model has
    return scores, labels, seen, unseen


def ref_full_argmax(scores, labels, seen, unseen, gamma, dtype=np.float64):
    """Direct GZSL evaluation: shift the seen columns, argmax over [seen ; unseen] with first-index ties."""
    x = np.asarray(scores, dtype=dtype)
    cols = np.concatenate([seen, unseen])
    adj = x[:, cols].copy()
    adj[:, : len(seen)] -= dtype(gamma)
    pred = cols[np.argmax(adj, axis=1)]
    m = np.isin(labels, seen)
    S = per_class_accuracy(labels[m], pred[m]) if m.any() else math.nan
    U = per_class_accuracy(labels[~m], pred[~m]) if (~m).any() else math.nan
    H = 2 * S * U / (S + U) if S + U > 0 else 0.0
    return S, U, H


def ref_grid(scores, labels, seen, unseen, step=0.01):
    """The release's loop, literally: gamma_k = float32(k * step), float32 subtraction, full argmax per gamma.

    Start at 0; step down while the last point has U > 0; then from 0 step up while the last point has S > 0;
    the best H in evaluation order (strict improvement)."""

    def ev(k):
        g = np.float32(k * step)
        S, U, H = ref_full_argmax(scores, labels, seen, unseen, g, dtype=np.float32)
        return (k, float(g), S, U, H)

    start = ev(0)
    pts, best = [start], start
    last, k = start, 0
    while last[3] > 0:
        k -= 1
        last = ev(k)
        pts.append(last)
        best = last if last[4] > best[4] else best
    last, k = start, 0
    while last[2] > 0:
        k += 1
        last = ev(k)
        pts.append(last)
        best = last if last[4] > best[4] else best
    pts.sort()
    return pts, best


def same(a, b) -> bool:
    return (a == b) or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def assert_same_result(r: GZSLResult, S, U, H):
    assert same(r.S, S) and same(r.U, U) and same(r.H, H), (r, (S, U, H))


# ----------------------------------------------------------------------------------------------- per-class accuracy


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(25))
def test_per_class_accuracy_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    n_cls = int(rng.integers(1, 40))
    present = rng.choice(n_cls + 10, size=n_cls, replace=False)  # class ids with gaps
    y_true = rng.choice(present, size=n)
    y_pred = np.where(
        rng.random(n) < 0.5, y_true, rng.integers(0, n_cls + 15, size=n)
    )  # incl. absent classes
    ours = per_class_accuracy(y_true, y_pred)
    ref = sklearn_metrics.balanced_accuracy_score(y_true, y_pred)
    assert ours == ref  # same classes, same order, same mean: bit-identical
    assert 0.0 <= ours <= 1.0


def test_per_class_accuracy_small_and_torch():
    y = np.array([0, 0, 0, 1, 5, 5])
    p = np.array([0, 1, 1, 1, 5, 7])  # class 0: 1/3, class 1: 1, class 5: 1/2; class 7 only predicted
    assert per_class_accuracy(y, p) == pytest.approx((1 / 3 + 1 + 0.5) / 3)
    assert per_class_accuracy(torch.tensor(y), torch.tensor(p)) == per_class_accuracy(y, p)
    assert math.isnan(per_class_accuracy(np.array([], dtype=int), np.array([], dtype=int)))
    with pytest.raises(ValueError):
        per_class_accuracy(y, p[:-1])


# ----------------------------------------------------------------------------------------------- CZSL / GZSL by hand


def test_czsl_hand_computed_with_ties():
    unseen = np.array([1, 3, 4])
    scores = np.array(
        [
            [9.0, 1.0, 0.0, 2.0, 0.5, 0.0],  # col 0 (seen) ignored -> 3
            [0.0, 5.0, 0.0, 5.0, 5.0, 0.0],  # tie among unseen -> lowest id 1
            [0.0, 0.0, 0.0, 1.0, 3.0, 9.0],  # -> 4
            [0.0, 2.0, 0.0, 2.0, 1.0, 0.0],  # tie 1/3 -> 1
        ]
    )
    labels = np.array([3, 1, 3, 3])
    # class 3: images 0 (ok), 2 (->4, wrong), 3 (->1, wrong) = 1/3; class 1: image 1 ok = 1
    assert czsl_accuracy(scores, labels, unseen) == pytest.approx((1 / 3 + 1.0) / 2)
    assert czsl_accuracy(
        torch.tensor(scores, dtype=torch.float32), torch.tensor(labels), unseen
    ) == pytest.approx((1 / 3 + 1.0) / 2)
    with pytest.raises(ValueError):
        czsl_accuracy(scores, np.array([0, 1, 3, 3]), unseen)  # a seen label in CZSL


def test_gzsl_hand_computed_ties_and_breakpoint():
    seen, unseen = np.array([0, 2]), np.array([1, 3])
    scores = np.array(
        [
            # c0   c1   c2   c3
            [2.0, 2.0, 1.0, 0.0],  # label 0: seen/unseen tie (delta 0) -> seen at gamma <= 0
            [1.0, 0.0, 1.0, 0.5],  # label 2: seen tie 0 vs 2 -> 0 (wrong); delta 0.5
            [0.0, 3.0, 1.0, 1.0],  # label 1: delta -2 -> unseen 1 unless gamma <= -2
            [0.0, 1.0, 1.5, 1.0],  # label 3: unseen tie 1 vs 3 -> 1 (wrong); delta 0.5
        ]
    )
    labels = np.array([0, 2, 1, 3])
    r = gzsl_accuracy(scores, labels, seen, unseen, 0.0)
    # S: class 0 right, class 2 wrong -> 0.5; U: class 1 right, class 3 predicted seen 2 -> wrong -> 0.5
    assert_same_result(r, 0.5, 0.5, 0.5)
    assert r.gamma == 0.0
    # gamma exactly at the breakpoint 0.5: seen still wins for images 1 and 3; just above it they flip
    assert_same_result(gzsl_accuracy(scores, labels, seen, unseen, 0.5), 0.0, 0.5, 0.0)
    assert gzsl_accuracy(scores, labels, seen, unseen, 0.5000001).U == 0.5
    # gamma just above 0: image 0 flips to unseen 1 -> S = 0, H guard
    assert_same_result(gzsl_accuracy(scores, labels, seen, unseen, 1e-9), 0.0, 0.5, 0.0)
    # gamma = -2 (breakpoint of image 2): everything seen -> U = 0, S = 0.5
    assert_same_result(gzsl_accuracy(scores, labels, seen, unseen, -2.0), 0.5, 0.0, 0.0)
    for g in (-2.5, -2.0, -1.0, 0.0, 1e-9, 0.25, 0.5, 0.75):
        assert_same_result(
            gzsl_accuracy(scores, labels, seen, unseen, g), *ref_full_argmax(scores, labels, seen, unseen, g)
        )


def test_h_zero_guard_and_missing_sides():
    seen, unseen = np.array([0]), np.array([1])
    scores = np.array([[0.0, 1.0], [1.0, 0.0]])
    r = gzsl_accuracy(scores, np.array([0, 1]), seen, unseen, 0.0)  # both wrong
    assert_same_result(r, 0.0, 0.0, 0.0)
    r = gzsl_accuracy(scores, np.array([0, 0]), seen, unseen, 0.0)  # no unseen image
    assert r.S == 0.5 and math.isnan(r.U) and r.H == 0.0
    r = gzsl_accuracy(scores, np.array([1, 1]), seen, unseen, 0.0)  # no seen image
    assert math.isnan(r.S) and r.U == 0.5 and r.H == 0.0
    sw = gamma_sweep(scores, np.array([1, 1]), seen, unseen)
    assert np.all(np.isnan(sw.S)) and np.all(sw.H == 0) and math.isnan(ausuc(sw))
    gr = oracle_grid_sweep(scores, np.array([1, 1]), seen, unseen)
    assert np.all(np.isnan(gr.S)) and np.all(gr.H == 0)


def test_seen_mask_and_input_validation():
    scores, labels, seen, unseen = make_problem(0, n=40)
    mask = np.isin(labels, seen)
    a = gzsl_accuracy(scores, labels, seen, unseen, 0.3)
    b = gzsl_accuracy(
        torch.tensor(scores),
        torch.tensor(labels),
        torch.tensor(seen),
        list(unseen),
        0.3,
        seen_mask=torch.tensor(mask),
    )
    assert a == b
    with pytest.raises(ValueError, match="neither seen nor unseen"):
        gzsl_accuracy(scores, np.full(40, 3), seen, unseen, 0.0)
    with pytest.raises(ValueError, match="disjoint"):
        gzsl_accuracy(scores, labels, seen, np.append(unseen, 0), 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        bad = scores.copy()
        bad[0, 0] = np.nan
        gzsl_accuracy(bad, labels, seen, unseen, 0.0)


# ----------------------------------------------------------------------------------------------- exact sweep


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_exact_sweep_matches_brute_force(seed, integer):
    scores, labels, seen, unseen = make_problem(seed, integer=integer)
    sw = gamma_sweep(scores, labels, seen, unseen)
    assert sw.mode == "exact"
    delta = scores[:, seen].max(1) - scores[:, unseen].max(1)
    np.testing.assert_array_equal(sw.gammas[:-1], np.unique(delta))
    assert sw.gammas[-1] > delta.max()
    assert sw.U[0] == 0.0 and sw.S[-1] == 0.0  # all-seen and all-unseen states are included
    for j, g in enumerate(sw.gammas):
        for gg in (g, sw.robust_gammas[j]):
            assert_same_result(gzsl_accuracy(scores, labels, seen, unseen, gg), sw.S[j], sw.U[j], sw.H[j])
        if j:
            assert sw.gammas[j - 1] < sw.robust_gammas[j] <= g
    assert sw.robust_gammas[0] < sw.gammas[0]
    # the full argmax agrees: at the interior points always, at the breakpoints themselves when the
    # arithmetic is exact (integer scores; with real-valued scores s - (s - u) need not round back to u)
    for j in range(len(sw.gammas)):
        points = (sw.robust_gammas[j], sw.gammas[j]) if integer else (sw.robust_gammas[j],)
        for gg in points:
            assert_same_result(
                GZSLResult(sw.S[j], sw.U[j], sw.H[j], 0.0), *ref_full_argmax(scores, labels, seen, unseen, gg)
            )
    # best is the maximum over any gamma, and its robust gamma reproduces it
    dense = np.linspace(delta.min() - 1, delta.max() + 1, 301)
    brute = [gzsl_accuracy(scores, labels, seen, unseen, g).H for g in dense]
    assert sw.best.H == sw.H.max() >= max(brute)
    assert sw.best.H == sw.H[sw.best_index]
    r = gzsl_accuracy(scores, labels, seen, unseen, sw.best.gamma)
    assert (r.S, r.U, r.H) == (sw.best.S, sw.best.U, sw.best.H)
    g, res = select_gamma(scores, labels, seen, unseen)
    assert g == sw.best.gamma and res == sw.best


def test_exact_sweep_robust_gamma_hand_case():
    seen, unseen = np.array([0]), np.array([1])
    # deltas: -1 (label 1, correct when unseen wins), 1 (label 0), 3 (label 0)
    scores = np.array([[0.0, 1.0], [1.0, 0.0], [3.0, 0.0]])
    labels = np.array([1, 0, 0])
    sw = gamma_sweep(scores, labels, seen, unseen)
    np.testing.assert_array_equal(sw.gammas, [-1.0, 1.0, 3.0, 4.0])
    np.testing.assert_array_equal(sw.S, [1.0, 1.0, 0.5, 0.0])
    np.testing.assert_array_equal(sw.U, [0.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(sw.robust_gammas, [-2.0, 0.0, 2.0, 4.0])
    # best state holds on (-1, 1]: robust gamma 0
    assert sw.best == GZSLResult(1.0, 1.0, 1.0, 0.0)


# ----------------------------------------------------------------------------------------------- grid sweep


@pytest.mark.parametrize(
    "seed,step,integer",
    [
        (0, 0.01, False),
        (1, 0.01, False),
        (2, 0.05, False),
        (3, 0.05, False),
        (4, 0.01, True),
        (5, 0.25, True),
        (6, 0.1, False),
        (7, 0.03, False),
    ],
)
def test_grid_sweep_matches_direct_loop(seed, step, integer):
    scores, labels, seen, unseen = make_problem(seed, n=120, integer=integer)
    if not integer:
        scores = scores.astype(np.float32)
    pts, best = ref_grid(scores, labels, seen, unseen, step)
    gr = oracle_grid_sweep(scores, labels, seen, unseen, step=step)
    assert gr.mode == "grid"
    np.testing.assert_array_equal(gr.gammas, [p[1] for p in pts])
    np.testing.assert_array_equal(gr.S, [p[2] for p in pts])
    np.testing.assert_array_equal(gr.U, [p[3] for p in pts])
    np.testing.assert_array_equal(gr.H, [p[4] for p in pts])
    assert gr.best == GZSLResult(best[2], best[3], best[4], best[1])
    assert gr.U.min() == 0.0 and gr.S.min() == 0.0
    assert gamma_sweep(scores, labels, seen, unseen).best.H >= gr.best.H


def test_grid_sweep_torch_and_no_negative_steps():
    # U(0) = 0 already: no negative steps; S reaches 0 at k = 1
    seen, unseen = np.array([0]), np.array([1])
    scores = np.array([[1.0, 0.0], [1.0, 0.5]], dtype=np.float32)
    labels = np.array([0, 1])
    pts, best = ref_grid(scores, labels, seen, unseen)
    gr = oracle_grid_sweep(torch.tensor(scores), torch.tensor(labels), seen, unseen)
    np.testing.assert_array_equal(gr.gammas, [p[1] for p in pts])
    assert gr.gammas[0] == 0.0
    assert gr.best == GZSLResult(best[2], best[3], best[4], best[1])


def test_grid_too_large():
    scores, labels, seen, unseen = make_problem(0, n=30)
    with pytest.raises(GridTooLargeError):
        oracle_grid_sweep(scores * 1e4, labels, seen, unseen, max_points=1000)
    out = evaluate_attribute(scores * 1e5, labels, seen, unseen, 0.0)  # falls back, never raises
    assert math.isnan(out["oracle_H"]) and out["oracle_exact_H"] > 0 and out["ausuc"] > 0


# ----------------------------------------------------------------------------------------------- AUSUC


def test_ausuc_hand_computed():
    S = np.array([0.8, 0.8, 0.6, 0.2, 0.0])
    U = np.array([0.0, 0.1, 0.4, 0.6, 0.9])
    sw = Sweep(np.arange(5.0), S, U, np.zeros(5), GZSLResult(0, 0, 0, 0), 0, "grid", np.arange(5.0))
    # trapezoids: 0.1*0.8 + 0.3*0.7 + 0.2*0.4 + 0.3*0.1
    assert ausuc(sw) == pytest.approx(0.08 + 0.21 + 0.08 + 0.03)
    # order of the points does not matter (sorted by U)
    perm = np.array([3, 0, 4, 2, 1])
    sw2 = Sweep(sw.gammas, S[perm], U[perm], sw.H, sw.best, 0, "grid", sw.gammas)
    assert ausuc(sw2) == pytest.approx(ausuc(sw))


def test_ausuc_on_sweeps():
    scores, labels, seen, unseen = make_problem(3)
    sw = gamma_sweep(scores, labels, seen, unseen)
    o = np.argsort(sw.U, kind="stable")
    manual = sum((sw.U[o][i + 1] - sw.U[o][i]) * (sw.S[o][i + 1] + sw.S[o][i]) / 2 for i in range(len(o) - 1))
    assert ausuc(sw) == pytest.approx(manual, abs=1e-12)
    gr = oracle_grid_sweep(scores, labels, seen, unseen)
    assert 0 < ausuc(gr) <= 1 and ausuc(gr) == pytest.approx(ausuc(sw), abs=0.02)
    # perfect classifier: area 1
    seen2, unseen2 = np.array([0, 1]), np.array([2])
    y = np.array([0, 1, 2, 2])
    perfect = np.eye(3)[y]
    assert ausuc(gamma_sweep(perfect, y, seen2, unseen2)) == 1.0
    assert ausuc(oracle_grid_sweep(perfect, y, seen2, unseen2)) == 1.0


# ----------------------------------------------------------------------------------------------- evaluate_attribute


def test_evaluate_attribute_keys_and_values():
    scores, labels, seen, unseen = make_problem(1)
    out = evaluate_attribute(scores, labels, seen, unseen, 0.4)
    assert set(out) == {
        "czsl_top1",
        "S",
        "U",
        "H",
        "gamma",
        "S_gamma0",
        "U_gamma0",
        "H_gamma0",
        "ausuc",
        "oracle_S",
        "oracle_U",
        "oracle_H",
        "oracle_gamma",
        "oracle_exact_H",
    }
    assert all(isinstance(v, float) for v in out.values())
    r = gzsl_accuracy(scores, labels, seen, unseen, 0.4)
    assert (out["S"], out["U"], out["H"], out["gamma"]) == (r.S, r.U, r.H, 0.4)
    r0 = gzsl_accuracy(scores, labels, seen, unseen, 0.0)
    assert (out["S_gamma0"], out["U_gamma0"], out["H_gamma0"]) == (r0.S, r0.U, r0.H)
    m = np.isin(labels, unseen)
    assert out["czsl_top1"] == czsl_accuracy(scores[m], labels[m], unseen)
    gr = oracle_grid_sweep(scores, labels, seen, unseen)
    assert (out["oracle_S"], out["oracle_U"], out["oracle_H"], out["oracle_gamma"]) == tuple(gr.best)
    assert out["ausuc"] == ausuc(gr)
    assert out["oracle_exact_H"] == gamma_sweep(scores, labels, seen, unseen).best.H >= out["oracle_H"]
    assert all(0 <= out[k] <= 1 for k in out if k not in ("gamma", "oracle_gamma"))

    short = evaluate_attribute(
        torch.tensor(scores), torch.tensor(labels), seen, unseen, 0.4, oracle=False, ausuc_mode="exact"
    )
    assert not any(k.startswith("oracle") for k in short)
    assert short["ausuc"] == ausuc(gamma_sweep(scores, labels, seen, unseen))
    with pytest.raises(ValueError):
        evaluate_attribute(scores, labels, seen, unseen, 0.4, ausuc_mode="bogus")


def test_evaluate_attribute_without_unseen_images():
    scores, labels, seen, unseen = make_problem(2)
    m = np.isin(labels, seen)
    out = evaluate_attribute(scores[m], labels[m], seen, unseen, 0.0)
    assert math.isnan(out["czsl_top1"]) and math.isnan(out["U"]) and out["H"] == 0.0
    assert out["S"] > 0 and math.isnan(out["ausuc"]) and out["oracle_H"] == 0.0
