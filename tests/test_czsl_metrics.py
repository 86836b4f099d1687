"""Streaming CZSL evaluator vs a dense re-implementation of the reference algorithm (czsl ``models/common.py``, as
CSP and Troika use it).

The oracle below follows that algorithm: a dense float32 torch matrix; at every bias clone the scores, add the
bias to the unseen columns through a repeated N x P boolean mask, set the columns outside the eval mask to -1e10,
take ``argmax`` (first maximal column; never ``topk``, whose tie order is unspecified on small rows), compare with
the GT attr/obj; candidate biases from the unbiased max seen score minus the GT score minus 1e-4, sorted,
subsampled with step ``max(len // 20, 1)``, then the 1e3 point; accuracies are torch float means; trapezoid AUC,
0-guarded HM. Open world: the reference evaluator with the infeasible unseen columns excluded, per threshold.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from unseen.compositional.metrics import (
    StreamingEvaluator,
    ThresholdSearch,
    evaluate_scores,
    feasibility_thresholds,
    open_world_keep_mask,
)
from unseen.io import DataFormatError

# --------------------------------------------------------------------------------------------- oracle


def _mean(t: torch.Tensor) -> float:
    return float(t.mean()) if t.numel() else 0.0  # the library's documented rule for an empty sample set


def reference_predict(S: torch.Tensor, seen: torch.Tensor, evm: torch.Tensor, bias) -> torch.Tensor:
    """Biased, eval-masked top-1 column per row, as the reference computes it."""
    n = S.shape[0]
    sc = S.clone()
    mask = seen.repeat(n, 1)
    sc[~mask] += bias
    closed = sc.clone()
    closed[~evm.repeat(n, 1)] = -1e10
    return closed.argmax(dim=1)


def reference_evaluate(scores, pairs, seen_mask, eval_mask, gt_pair, *, dtype=torch.float32, attr_obj="csp"):
    S = torch.as_tensor(np.asarray(scores)).to(dtype)
    n = S.shape[0]
    pairs_t = torch.as_tensor(np.asarray(pairs))
    seen = torch.as_tensor(np.asarray(seen_mask, bool))
    evm = torch.as_tensor(np.asarray(eval_mask, bool))
    y = torch.as_tensor(np.asarray(gt_pair))
    gt_attr, gt_obj = pairs_t[y, 0], pairs_t[y, 1]
    seen_ind = torch.nonzero(seen[y]).flatten()
    unseen_ind = torch.nonzero(~seen[y]).flatten()

    def process(pred):
        attr_match = (pairs_t[pred, 0] == gt_attr).to(dtype)
        obj_match = (pairs_t[pred, 1] == gt_obj).to(dtype)
        return attr_match, obj_match, attr_match * obj_match

    attr_max, obj_max, match_max = process(reference_predict(S, seen, evm, 1e3))
    seen_max, unseen_max = _mean(match_max[seen_ind]), _mean(match_max[unseen_ind])
    correct_scores = S[torch.arange(n), y][unseen_ind]
    max_seen_scores = S[unseen_ind][:, seen].max(dim=1).values
    diff = max_seen_scores - correct_scores
    diff = diff[match_max[unseen_ind].bool()] - 1e-4
    diff = torch.sort(diff)[0]
    biaslist = diff[:: max(len(diff) // 20, 1)]
    seen_acc, unseen_acc = [], []
    for b in biaslist:
        _, _, m = process(reference_predict(S, seen, evm, b))
        seen_acc.append(_mean(m[seen_ind]))
        unseen_acc.append(_mean(m[unseen_ind]))
    seen_acc.append(seen_max)
    unseen_acc.append(unseen_max)
    seen_acc, unseen_acc = np.array(seen_acc), np.array(unseen_acc)
    hm = np.array([2 * s * u / (s + u) if s > 0 and u > 0 else 0.0 for s, u in zip(seen_acc, unseen_acc)])
    idx = int(np.argmax(hm))
    if attr_obj == "csp":
        unbiased = S.clone()
        unbiased[~evm.repeat(n, 1)] = -1e10
        attr_m, obj_m, _ = process(unbiased.argmax(dim=1))
    else:
        attr_m, obj_m = attr_max, obj_max
    return {
        "auc": float(np.trapezoid(seen_acc, unseen_acc)),
        "best_hm": float(hm[idx]),
        "best_seen": float(seen_acc.max()),
        "best_unseen": float(unseen_acc.max()),
        "hm_seen": float(seen_acc[idx]),
        "hm_unseen": float(unseen_acc[idx]),
        "best_hm_bias": 1e3 if idx == len(biaslist) else float(biaslist[idx]),
        "attr_acc": _mean(attr_m),
        "obj_acc": _mean(obj_m),
        "seen_at_max_bias": seen_max,
        "unseen_at_max_bias": unseen_max,
        "biases": [float(b) for b in biaslist] + [1e3],
        "seen_curve": seen_acc.tolist(),
        "unseen_curve": unseen_acc.tolist(),
        "hm_curve": hm.tolist(),
    }


def assert_same(res, ref: dict) -> None:
    got = res.to_dict()
    for k, v in ref.items():
        assert got[k] == v, (k, got[k], v)


# --------------------------------------------------------------------------------------------- random cases


def random_case(rng: np.random.Generator, grid: bool = True):
    n_attr, n_obj = (int(v) for v in rng.integers(2, 9, 2))
    allp = np.array(list(itertools.product(range(n_attr), range(n_obj))))
    p = int(rng.integers(2, min(len(allp), 90) + 1))
    pairs = allp[np.sort(rng.choice(len(allp), p, replace=False))]
    seen = rng.random(p) < rng.uniform(0.2, 0.8)
    seen[rng.integers(p)] = True
    evm = seen | (rng.random(p) < rng.uniform(0.3, 1.0))
    n = int(rng.integers(1, 60))
    inside = np.flatnonzero(evm)
    y = rng.choice(inside, n)
    outside = rng.random(n) < 0.1  # a few GT pairs outside the candidates (open world, excluded pairs)
    y[outside] = rng.integers(0, p, int(outside.sum()))
    if grid:
        levels, step = int(rng.integers(2, 10)), 2.0 ** -int(rng.integers(0, 4))
        s = (rng.integers(0, levels, (n, p)) - levels // 2) * step
        s[np.arange(n), y] += rng.integers(0, 3, n) * step
        # unseen columns lower on average, so that positive biases matter
        s[:, ~seen] -= rng.integers(0, 3) * step
    else:
        s = rng.standard_normal((n, p)) * rng.uniform(0.1, 10)
        s[np.arange(n), y] += rng.uniform(0, 3)
    return pairs, seen, evm, y, s.astype(np.float32)


def _parts(n: int, rng: np.random.Generator, keep: np.ndarray | None = None) -> list:
    idx = np.arange(n) if keep is None else np.flatnonzero(keep)
    k = int(rng.integers(1, min(4, idx.size) + 1))
    if keep is None and rng.random() < 0.5:
        cuts = (
            np.r_[0, np.sort(rng.choice(np.arange(1, n), k - 1, replace=False)), n] if k > 1 else np.r_[0, n]
        )
        return [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
    return [a for a in np.array_split(rng.permutation(idx), k) if a.size]


def stream(ev, scores: np.ndarray, rng: np.random.Generator) -> None:
    """Feed random row x column blocks in random order; sometimes skip the columns that are not read."""
    n, p = scores.shape
    prob = ev.prob
    keep = None if rng.random() < 0.5 else (prob.seen | prob.unseen_eval)
    blocks = [(r, c) for r in _parts(n, rng) for c in _parts(p, rng, keep)]
    for i in rng.permutation(len(blocks)):
        r, c = blocks[i]
        rr = np.arange(n)[r] if isinstance(r, slice) else r
        cc = np.arange(p)[c] if isinstance(c, slice) else c
        block = scores[np.ix_(rr, cc)]
        kind = rng.integers(3)
        if kind == 1:
            block = torch.from_numpy(block)
        elif kind == 2:
            block = block.astype(np.float64)  # converted back to float32 (exact here)
        ev.update(block, r, c)


# --------------------------------------------------------------------------------------------- tests


def test_streaming_equals_reference_on_tied_grids():
    rng = np.random.default_rng(0)
    n_auc = n_pts = 0
    for _ in range(200):
        pairs, seen, evm, y, s = random_case(rng)
        attr_obj = "csp" if rng.random() < 0.7 else "czsl"
        ev = StreamingEvaluator(pairs, seen, evm, y, pairs[y, 0], pairs[y, 1], attr_obj=attr_obj)
        stream(ev, s, rng)
        res = ev.result()
        assert res.n_ambiguous == 0  # coarse grids: no two unseen scores within one ulp
        assert_same(res, reference_evaluate(s, pairs, seen, evm, y, attr_obj=attr_obj))
        fast = StreamingEvaluator(pairs, seen, evm, y, exact=False, attr_obj=attr_obj)
        stream(fast, s, rng)
        fr = fast.result()
        assert fr.n_ambiguous == 0 and fr.to_dict()["seen_curve"] == res.to_dict()["seen_curve"]
        assert fr.auc == res.auc and fr.biases.tolist() == res.biases.tolist()
        n_auc += res.auc > 0
        n_pts += len(res.biases) > 2
    assert n_auc > 60 and n_pts > 30  # the cases exercise real sweeps, not only the degenerate point


def test_streaming_equals_reference_continuous_and_float64():
    rng = np.random.default_rng(1)
    for _ in range(60):
        pairs, seen, evm, y, s = random_case(rng, grid=False)
        ev = StreamingEvaluator(pairs, seen, evm, y)
        stream(ev, s, rng)
        res = ev.result(rescore=lambda rows, s=s: s[rows])
        assert res.n_ambiguous == 0
        assert_same(res, reference_evaluate(s, pairs, seen, evm, y))
        ev64 = StreamingEvaluator(pairs, seen, evm, y, dtype="float64")
        stream(ev64, s, rng)
        assert_same(ev64.result(), reference_evaluate(s, pairs, seen, evm, y, dtype=torch.float64))


def _tight_case(rng: np.random.Generator):
    """Scores packed within ~1e-5 of a per-row base: below float32 resolution once 1e3 is added."""
    p = int(rng.integers(4, 40))
    pairs = np.array(list(itertools.product(range(p), range(1))))
    seen = rng.random(p) < 0.4
    seen[0] = True
    evm = seen | (rng.random(p) < 0.8)
    n = 80
    y = rng.choice(np.flatnonzero(evm), n)
    base = rng.choice([0.5, 3.0, 20.0, 1023.999], n)[:, None]
    # spread ~1e-5 (rounding onto the 6.1e-5 float32 grid near 1024, where the biased sums cross into 2^10)
    spread = np.where(base > 1000, 6.2e-5, 1e-5)
    s = base + spread * rng.integers(0, 12, (n, p))
    s[:, seen] -= spread * rng.integers(0, 3)
    return pairs, seen, evm, y, s.astype(np.float32)


def test_tightly_packed_scores_are_flagged_not_silently_wrong():
    rng = np.random.default_rng(2)
    flagged = disagreements = 0
    for _ in range(40):
        pairs, seen, evm, y, s = _tight_case(rng)
        ev = StreamingEvaluator(pairs, seen, evm, y, topk=int(rng.integers(2, 5)))
        stream(ev, s, rng)
        res = ev.result()
        S, st, et = torch.from_numpy(s), torch.from_numpy(seen), torch.from_numpy(evm)
        for b in list(res.biases) + [0.0]:
            bias = torch.tensor(b, dtype=torch.float32) if b != 1e3 else 1e3
            ref = reference_predict(S, st, et, bias).numpy()
            pred, amb, unc = ev.predict(b)
            wrong = (pred == y) != (ref == y)
            assert not (wrong & ~amb).any()  # every correctness difference is flagged
            assert not ((pred != ref) & ~unc).any()  # every prediction difference is flagged as uncertain
            assert not (amb & ~unc).any()
            assert set(np.flatnonzero(amb)) <= set(res.ambiguous_samples.tolist())
            disagreements += int(wrong.sum())
            if b == 0.0:
                assert not unc.any() and (pred == ref).all()  # nothing rounds at b = 0
        flagged += res.n_ambiguous
        assert res.n_ambiguous == res.ambiguous_samples.size
        ref_res = reference_evaluate(s, pairs, seen, evm, y)
        if res.n_ambiguous == 0:
            assert_same(res, ref_res)
        resolved = ev.result(rescore=lambda rows, s=s: s[rows])  # exact mode resolves what it flagged
        assert resolved.n_ambiguous == 0 and resolved.n_resolved >= res.n_ambiguous
        assert_same(resolved, ref_res)
    assert flagged > 0 and disagreements > 0  # the cases do hit rounding merges that change the outcome


def test_rounding_merge_hand_case():
    # columns 0..9; seen: 5 (score 1000.5) and 6; unseen: the rest. At b = 1e3 the unseen scores 0.5 (col 9),
    # 0.49999 (col 8) and 0.49998 (col 1) all round onto 1000.5, tying with the seen column 5: the reference
    # predicts column 1 (first index). With k = 2 the evaluator stores only columns 9 and 8 and cannot know.
    pairs = np.array([[a, 0] for a in range(10)])
    seen = np.zeros(10, bool)
    seen[[5, 6]] = True
    s = np.zeros((2, 10), np.float32)
    s[:, 9], s[:, 8], s[:, 1], s[:, 5] = 0.5, 0.49999, 0.49998, 1000.5
    y = np.array([5, 1])  # a seen sample (wrong in the reference) and an unseen one (right in the reference)
    ref = reference_predict(
        torch.from_numpy(s), torch.from_numpy(seen), torch.ones(10, dtype=torch.bool), 1e3
    )
    assert ref.tolist() == [1, 1]
    for k, ambiguous in ((2, True), (4, False)):  # k = 4 also stores the 0 scores, which do not merge
        ev = StreamingEvaluator(pairs, seen, np.ones(10, bool), y, topk=k)
        ev.update(s)
        pred, amb, unc = ev.predict(1e3)
        assert amb.tolist() == [ambiguous, ambiguous] and unc.tolist() == [ambiguous, ambiguous]
        assert pred.tolist() == ([5, 5] if ambiguous else [1, 1])  # k = 2: best guess min(5, 8)
        res = ev.result(rescore=lambda rows: s[rows])
        assert res.n_resolved == (2 if ambiguous else 0) and res.n_ambiguous == 0
        assert_same(res, reference_evaluate(s, pairs, seen, np.ones(10, bool), y))
        pred, amb, unc = ev.predict(1e3)  # resolved samples are exact at any bias, not only the curve's
        assert pred.tolist() == [1, 1] and not amb.any() and not unc.any()


# --------------------------------------------------------------------------------------------- merged near-ties


def merged_case(rng: np.random.Generator, n: int = 200, dtype=np.float32):
    """Deliberate rounding merges of more than 4 unseen scores (more than ``topk``'s default can hold).

    Per row a base ``c`` and a cluster of 5-9 unseen columns with distinct scores in ``(c - w, c]``, ``w`` = 0.45
    or 1 unit in the last place of ``c + 1e3``: adding the bias collapses them onto one value, or onto two values
    1 ulp apart. Within a cluster the lower columns carry the lower scores, so the reference's first-index winner
    is the lowest-scored cluster column, outside any top 4. Row kinds: ``merged`` (GT = that column: only the
    merge can make it correct at 1e3), ``stolen`` (GT = the cluster's best column: correct at small biases, wrong at
    1e3), ``plain`` (GT = the unseen maximum, no cluster), ``seen``, and ``seen_tie`` (GT seen, scored exactly
    ``fl(c + 1e3)``: a seen/unseen tie at the max-bias point). Returns the case and the cluster columns per row.
    """
    n_attr, n_obj = 8, 9
    pairs = np.array(list(itertools.product(range(n_attr), range(n_obj))))
    p = len(pairs)
    seen = np.zeros(p, bool)
    seen[rng.choice(p, 2 * p // 5, replace=False)] = True
    evm = seen | (rng.random(p) < 0.9)
    un, sn = np.flatnonzero(evm & ~seen), np.flatnonzero(seen)
    s = rng.uniform(-2.0, -1.0, (n, p)).astype(dtype)  # everything else far below
    y = np.empty(n, np.int64)
    clusters = []
    kinds = rng.choice(["merged", "stolen", "plain", "seen", "seen_tie"], n, p=[0.35, 0.15, 0.2, 0.2, 0.1])
    for i, kind in enumerate(kinds):
        c = dtype(rng.choice([0.5, 0.75, 3.0]) if rng.random() < 0.5 else rng.uniform(0.3, 4.0))
        s[i, un] = c - dtype(rng.uniform(0.05, 0.5))  # other unseen candidates: no merge with c
        ps = rng.choice(sn)
        s[i, ps] = c + dtype(rng.uniform(0.1, 1.5))  # best seen: wins at b = 0
        cl = np.array([], np.int64)
        if kind != "plain":
            m = int(rng.integers(5, 10))
            cl = np.sort(rng.choice(un, m, replace=False))
            w = rng.choice([0.45, 1.0]) * np.spacing(c + dtype(1e3))
            steps = np.sort(rng.choice(int(w / np.spacing(c)), m, replace=False))[::-1]
            s[i, cl] = c - steps * np.spacing(c)  # ascending with the column index, top = c
        if kind == "merged":
            y[i] = cl[0]
        elif kind == "stolen":
            y[i] = cl[-1]
        elif kind == "plain":
            y[i] = rng.choice(un)
            s[i, y[i]] = c
        else:
            y[i] = ps
            if kind == "seen_tie":
                s[i, ps] = c + dtype(1e3)
        clusters.append(cl)
    return (pairs, seen, evm, y, s), clusters


def _check_merges(s: np.ndarray, clusters: list) -> None:
    """The construction really merges > 4 distinct scores onto values at most 1 ulp apart."""
    one = s.dtype.type(1e3)
    n_big = 0
    for i, cl in enumerate(clusters):
        if cl.size:
            v = s[i, cl]
            biased = np.unique(v + one)
            assert np.unique(v).size == cl.size > 4
            assert biased.size <= 2 and biased[-1] - biased[0] <= np.spacing(biased[0])
            n_big += 1
    assert n_big > 0


def _resolve_in_blocks(ev, s: np.ndarray, rng: np.random.Generator):
    """Resolve through the public API: flagged rows in random column blocks, random order, until none is left."""
    res = ev.result()
    rounds = 0
    while res.n_ambiguous:
        rows = res.ambiguous_samples
        blocks = _parts(s.shape[1], rng)
        for i in rng.permutation(len(blocks)):
            c = blocks[i]
            cc = np.arange(s.shape[1])[c] if isinstance(c, slice) else c
            ev.resolve(torch.from_numpy(s[np.ix_(rows, cc)]), rows, c)
        res = ev.result()
        rounds += 1
    return res, rounds


def test_merged_near_ties_200_images_resolved_equal_reference():
    # the failure: > topk unseen scores merged by the 1e3 bias; flagged, but the numbers were wrong
    rng = np.random.default_rng(12)
    (pairs, seen, evm, y, s), clusters = merged_case(rng, n=200)
    _check_merges(s, clusters)
    ref = reference_evaluate(s, pairs, seen, evm, y)
    assert ref["auc"] > 0 and len(ref["biases"]) > 10

    # the top-4 state alone: what the evaluator used to report
    unresolved = StreamingEvaluator(pairs, seen, evm, y)
    unresolved.update(s)
    before = unresolved.result()
    assert before.n_ambiguous > 20 and before.auc != ref["auc"]  # a real difference, not only a flag

    res = evaluate_scores(s, pairs, seen, evm, y, chunk_cols=17)
    assert res.n_ambiguous == 0 and res.ambiguous_per_point.sum() == 0
    assert_same(res, ref)
    assert res.to_dict() == evaluate_scores(torch.from_numpy(s), pairs, seen, evm, y, chunk_rows=33).to_dict()

    # only flagged rows are recomputed: the first request is exactly the flagged set, later ones only new flags
    asked: list[np.ndarray] = []
    flagged = set(before.ambiguous_samples.tolist())

    def rescore(rows):
        asked.append(rows)
        return s[rows]

    ev = StreamingEvaluator(pairs, seen, evm, y)
    ev.update(s)
    out = ev.result(rescore=rescore)
    assert_same(out, ref)
    assert asked[0].tolist() == sorted(flagged)
    recomputed = np.concatenate(asked)
    assert np.unique(recomputed).size == recomputed.size == out.n_resolved < len(y) // 2
    kinds_recomputed = {bool(clusters[i].size) for i in recomputed}
    assert kinds_recomputed == {True}  # rows without a merge cluster are never re-read

    # the czsl attr/obj convention reads the b = 1e3 predictions themselves: also exact after resolving
    czsl = evaluate_scores(s, pairs, seen, evm, y, attr_obj="czsl")
    assert czsl.n_ambiguous == 0
    assert_same(czsl, reference_evaluate(s, pairs, seen, evm, y, attr_obj="czsl"))


def test_merged_near_ties_random_cases():
    rng = np.random.default_rng(13)
    n_flagged = n_rounds = 0
    for i in range(8):
        dt = np.float64 if i % 4 == 3 else np.float32
        (pairs, seen, evm, y, s), clusters = merged_case(rng, n=int(rng.integers(20, 80)), dtype=dt)
        _check_merges(s, clusters)
        name, tdt = ("float64", torch.float64) if dt is np.float64 else ("float32", torch.float32)
        attr_obj = "czsl" if i % 3 == 0 else "csp"
        ref = reference_evaluate(s, pairs, seen, evm, y, dtype=tdt, attr_obj=attr_obj)
        ev = StreamingEvaluator(
            pairs, seen, evm, y, topk=int(rng.integers(2, 6)), dtype=name, attr_obj=attr_obj
        )
        stream(ev, s, rng)
        n_flagged += ev.result().n_ambiguous
        res, rounds = _resolve_in_blocks(ev, s, rng)
        n_rounds += rounds
        assert res.n_ambiguous == 0
        assert_same(res, ref)
        for b in list(res.biases) + [0.0]:  # resolved samples: every prediction equals the reference's
            bias = torch.tensor(b, dtype=tdt) if b != 1e3 else 1e3
            want = reference_predict(torch.from_numpy(s), torch.from_numpy(seen), torch.from_numpy(evm), bias)
            pred, _, unc = ev.predict(b)
            assert ((pred == want.numpy()) | unc).all()
    assert n_flagged > 0 and n_rounds > 0


def test_fast_mode_flags_or_resolves_merged_near_ties():
    rng = np.random.default_rng(14)
    n_flag = n_diff = 0
    for i in range(5):
        (pairs, seen, evm, y, s), _ = merged_case(rng, n=200 if i == 0 else 60)
        ref = reference_evaluate(s, pairs, seen, evm, y)
        fast = StreamingEvaluator(pairs, seen, evm, y, exact=False)
        stream(fast, s, rng)
        res = fast.result()
        assert res.n_ambiguous == res.ambiguous_samples.size > 0  # flagged, never silent
        S, st, et = torch.from_numpy(s), torch.from_numpy(seen), torch.from_numpy(evm)
        for b in sorted(set(res.biases.tolist()) | set(ref["biases"]) | {0.0}):
            bias = torch.tensor(b, dtype=torch.float32) if b != 1e3 else 1e3
            want = reference_predict(S, st, et, bias).numpy()
            pred, amb, unc = fast.predict(b)
            wrong = (pred == y) != (want == y)
            assert not (wrong & ~amb).any() and not ((pred != want) & ~unc).any()
            n_diff += int(wrong.sum())
        n_flag += res.n_ambiguous
        assert evaluate_scores(s, pairs, seen, evm, y, exact=False).to_dict() == res.to_dict()  # flags only
        resolved = fast.result(rescore=lambda rows, s=s: s[rows])  # fast state + resolution = exact too
        assert resolved.n_ambiguous == 0
        assert_same(resolved, ref)
    assert n_flag > 0 and n_diff > 0  # the fast mode's best guesses do differ: the flags matter


def test_resolution_repeats_when_the_candidate_biases_move():
    # A (unseen, GT column 2): a cluster of 6 merged at 1e3 (k = 2 cannot settle it); resolved, A becomes correct
    # at 1e3 and adds the bias d_A ~ -700.5. B (unseen, GT column 8): 3 scores near -400 that do not all merge at
    # 1e3 (B is certainly wrong there) but merge at d_A, where magnitudes grow past 1024: B is flagged only once
    # A is resolved, and needs a second round.
    f32 = np.float32
    p = 11
    pairs = np.array([[a, 0] for a in range(p)])
    seen = np.zeros(p, bool)
    seen[[0, 1]] = True
    s = np.full((2, p), -2000.0, f32)
    c = f32(0.5)
    s[0, 2:8] = c - np.arange(5, -1, -1).astype(f32) * np.spacing(c) * 50  # ascending with the column
    s[0, :2], s[0, 8:] = (-700.0, -800.0), -900.0
    d_a = (s[0, :2].max() - s[0, 2]) - f32(1e-4)  # the reference's candidate bias, in float32
    assert np.unique(s[0, 2:8]).size == 6 and np.unique(s[0, 2:8] + f32(1e3)).size == 1
    step = abs(np.spacing(f32(-400.0)))
    for shift in range(64):  # the first triple near -400 that merges at d_A but not at 1e3
        v = f32(-400.0) - f32(shift) * step - np.arange(3).astype(f32) * step  # descending
        if np.unique(v + d_a).size == 1 and v[2] + f32(1e3) != v[0] + f32(1e3):
            break
    else:
        raise AssertionError("no triple found")
    s[1, 8:], s[1, :2] = v[::-1], (-5000.0, -5001.0)  # the lowest score at the lowest column (B's GT)
    y, evm = np.array([2, 8]), np.ones(p, bool)
    ref = reference_evaluate(s, pairs, seen, evm, y)
    assert ref["biases"] == [float(d_a), 1e3]

    ev = StreamingEvaluator(pairs, seen, evm, y, topk=2)
    ev.update(s)
    first = ev.result()
    assert first.ambiguous_samples.tolist() == [0] and first.biases.tolist() == [1e3]
    asked: list[list[int]] = []
    res = ev.result(rescore=lambda rows: (asked.append(rows.tolist()), s[rows])[1])
    assert asked == [[0], [1]] and res.n_resolved == 2 and res.n_ambiguous == 0
    assert_same(res, ref)
    assert_same(evaluate_scores(s, pairs, seen, evm, y, topk=2), ref)


def test_resolve_errors():
    rng = np.random.default_rng(15)
    (pairs, seen, evm, y, s), _ = merged_case(rng, n=30)
    ev = StreamingEvaluator(pairs, seen, evm, y)
    ev.update(s)
    rows = ev.result().ambiguous_samples
    assert rows.size
    half = s.shape[1] // 2
    ev.resolve(s[rows, :half], rows, slice(0, half))
    with pytest.raises(DataFormatError, match="resolve: sample"):
        ev.result()  # the other half of the columns has not arrived
    ev.resolve(s[rows, half:], rows, slice(half, None))
    assert ev.result().n_resolved == rows.size
    other = StreamingEvaluator(pairs, seen, evm, y)
    other.update(s)
    changed = s[rows].copy()
    changed[:, evm & ~seen] += 1.0  # not the streamed scores
    other.resolve(changed, rows)
    with pytest.raises(DataFormatError, match="differs from the streamed"):
        other.result()
    with pytest.raises(DataFormatError, match="NaN"):
        bad = s[rows].copy()
        bad[0, np.flatnonzero(evm & ~seen)[0]] = np.nan
        StreamingEvaluator(pairs, seen, evm, y).resolve(bad, rows)


def test_edge_cases():
    rng = np.random.default_rng(3)
    pairs = np.array(list(itertools.product(range(3), range(4))))
    seen = np.zeros(12, bool)
    seen[[0, 3, 5, 6, 9]] = True
    evm = seen.copy()
    evm[[1, 2, 7]] = True
    n = 30
    s = rng.integers(0, 5, (n, 12)).astype(np.float32)
    # no unseen sample correct even at 1e3: their GT columns score far below everything
    y = rng.choice(np.flatnonzero(evm), n)
    s2 = s.copy()
    s2[:, ~seen] = -5000.0
    res = evaluate_scores(s2, pairs, seen, evm, y, chunk_cols=5)
    assert (
        (~seen[y]).any() and res.auc == 0.0 and res.biases.tolist() == [1e3] and res.unseen_at_max_bias == 0
    )
    assert_same(res, reference_evaluate(s2, pairs, seen, evm, y))
    # no unseen sample at all
    ys = rng.choice(np.flatnonzero(seen), n)
    res = evaluate_scores(s, pairs, seen, evm, ys, chunk_rows=7)
    assert res.n_unseen_samples == 0 and res.auc == 0.0 and res.best_unseen == 0.0 and res.best_hm == 0.0
    assert_same(res, reference_evaluate(s, pairs, seen, evm, ys))
    # every column seen
    alls = np.ones(12, bool)
    res = evaluate_scores(s, pairs, alls, alls, y)
    assert res.n_unseen_samples == 0 and len(res.biases) == 1
    assert res.seen_at_max_bias == pytest.approx(np.mean(np.argmax(s, 1) == y))
    assert_same(res, reference_evaluate(s, pairs, alls, alls, y))


def test_hand_computed_case():
    # 2 attrs x 2 objs; columns (0,0) seen, (0,1) unseen, (1,0) seen, (1,1) unseen (outside the mask)
    pairs = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    seen = np.array([True, False, True, False])
    evm = np.array([True, True, True, False])
    y = np.array([0, 1, 1, 2])
    s = np.array(
        [
            [3, 1, 2, 9],  # seen, correct unless b > 2
            [2, 1, 0, 0],  # unseen, correct once 1 + b > 2 (b > 1)
            [1, 1, 0, 0],  # unseen, tie with column 0 at b = 0; correct once b > 0
            [2, 0, 2, 0],
        ],  # seen, tie between columns 0 and 2: column 0 wins -> wrong
        np.float32,
    )
    res = evaluate_scores(s, pairs, seen, evm, y)
    d = sorted(
        [np.float32(np.float32(2 - 1) - np.float32(1e-4)), np.float32(np.float32(1 - 1) - np.float32(1e-4))]
    )
    assert res.biases.tolist() == [float(d[0]), float(d[1]), 1e3]
    assert res.seen_curve.tolist() == [0.5, 0.5, 0.0] and res.unseen_curve.tolist() == [0.0, 0.5, 1.0]
    assert res.auc == pytest.approx(0.5 * 0.5 + 0.5 * 0.25)
    assert res.best_hm == 0.5 and res.best_hm_bias == float(d[1])
    # CSP attr/obj at b = 0: predictions 0, 0, 0 (tie -> first), 0; GT attrs 0,0,0,1 and objs 0,1,1,0
    assert res.attr_acc == 0.75 and res.obj_acc == 0.5
    czsl = evaluate_scores(s, pairs, seen, evm, y, attr_obj="czsl")  # b = 1e3: predictions 1, 1, 1, 1
    assert czsl.attr_acc == 0.75 and czsl.obj_acc == 0.5 and czsl.auc == res.auc


def test_chunking_does_not_change_anything():
    rng = np.random.default_rng(4)
    pairs, seen, evm, y, s = random_case(rng)
    ref = evaluate_scores(s, pairs, seen, evm, y).to_dict()
    for rows, cols in [(1, 1), (3, 7), (None, 2), (5, None)]:
        assert (
            evaluate_scores(
                torch.from_numpy(s), pairs, seen, evm, y, chunk_rows=rows, chunk_cols=cols
            ).to_dict()
            == ref
        )


def test_bad_inputs_raise():
    pairs = np.array([[0, 0], [0, 1], [1, 0]])
    seen = np.array([True, False, False])
    evm = np.array([True, True, False])
    y = np.array([0, 1])
    with pytest.raises(DataFormatError, match="pairs"):
        StreamingEvaluator(np.array([[0, 0], [0, 0]]), [True, False], [True, True], [0])
    with pytest.raises(DataFormatError, match="eval_mask"):
        StreamingEvaluator(pairs, seen, np.array([False, True, True]), y)
    with pytest.raises(DataFormatError, match="seen_mask"):
        StreamingEvaluator(pairs, np.zeros(3, bool), evm, y)
    with pytest.raises(DataFormatError, match="gt_attr"):
        StreamingEvaluator(pairs, seen, evm, y, gt_attr=np.array([0, 1]))
    with pytest.raises(DataFormatError, match="gt_pair"):
        StreamingEvaluator(pairs, seen, evm, np.array([0, 3]))
    ev = StreamingEvaluator(pairs, seen, evm, y)
    with pytest.raises(DataFormatError, match="NaN"):
        ev.update(np.array([[1.0, np.nan, 0.0], [1.0, 2.0, 0.0]], np.float32))
    ev = StreamingEvaluator(pairs, seen, evm, y)
    with pytest.raises(DataFormatError, match="block shape"):
        ev.update(np.zeros((2, 2), np.float32))
    ev.update(np.zeros((2, 1), np.float32), cols=slice(0, 1))
    with pytest.raises(DataFormatError, match="received"):
        ev.result()
    ev.update(np.zeros((2, 2), np.float32), cols=[1, 0])  # column 0 twice
    with pytest.raises(DataFormatError, match="duplicated"):
        ev.result()


# --------------------------------------------------------------------------------------------- open world


def _ow_case(rng: np.random.Generator):
    pairs, seen, _, y, s = random_case(rng)
    p = len(pairs)
    y = rng.integers(0, p, len(y))
    f = rng.integers(0, 7, p) / 8.0 - 0.125  # coarse: many columns exactly on a threshold
    f[seen] = 0.0
    return pairs, seen, y, s, f


def test_threshold_search_equals_brute_force():
    rng = np.random.default_rng(5)
    chosen = 0
    for i in range(40):
        pairs, seen, y, s, f = _ow_case(rng)
        if (~seen).sum() == 0:
            continue
        # linspace thresholds (50 once, else 8 to keep the brute force short) or grid values (ties f == th)
        n_th = 50 if i == 0 else 8
        th = None if i % 2 == 0 else np.unique(np.r_[f[~seen], f[~seen] + 0.01])[:9]
        ts = ThresholdSearch(pairs, seen, f, y, thresholds=th, n_thresholds=n_th)
        stream(ts, s, rng)
        out = ts.result()
        ths = feasibility_thresholds(f, seen, n=n_th) if th is None else th
        assert out.thresholds.tolist() == list(ths)
        brute = []
        for t in ths:
            keep = seen | (f >= t)
            ref = reference_evaluate(s, pairs, seen, keep, y)
            brute.append(ref["auc"])
        assert out.aucs.tolist() == brute
        best = None
        for t, a in enumerate(brute):  # the reference's loop: first strict improvement over 0
            if a > (0.0 if best is None else brute[best]):
                best = t
        assert out.best_index == best
        keep = seen | (f >= ths[best]) if best is not None else np.ones(len(f), bool)
        assert (out.keep_mask == keep).all()
        assert_same(out.val_result, reference_evaluate(s, pairs, seen, keep, y))
        # the exact test-time evaluator on the kept columns agrees with the search's result at that threshold
        ev = StreamingEvaluator(pairs, seen, out.keep_mask, y)
        stream(ev, s, rng)
        assert ev.result().to_dict()["seen_curve"] == out.val_result.to_dict()["seen_curve"]
        chosen += best is not None
    assert chosen > 10


def test_feasibility_thresholds_one_implementation_for_both_call_sites():
    # the formula of the removed unseen.compositional.data.feasibility_thresholds (linspace over unseen pairs)
    def former_data_helper(f, seen_mask, n=50):
        f = np.asarray(f, np.float64).ravel()
        u = f[~np.asarray(seen_mask, bool).ravel()]
        return np.linspace(u.min(), u.max(), n)

    rng = np.random.default_rng(8)
    for i in range(20):
        pairs, seen, y, _, f = _ow_case(rng)
        if seen.all():
            continue
        f = rng.uniform(-0.2, 0.8, len(f)).astype(np.float32 if i % 2 else np.float64)
        f[seen] = 0.0
        n = 50 if i % 3 else 7
        want = former_data_helper(f, seen, n)
        np.testing.assert_array_equal(feasibility_thresholds(f, seen, n=n), want)  # data-level callers
        ts = ThresholdSearch(pairs, seen, f, y, n_thresholds=n)  # the evaluator's default thresholds
        np.testing.assert_array_equal(ts.thresholds, want)
        em = rng.random(len(f)) < 0.7
        if (em & ~seen).any():
            em |= seen
            ts = ThresholdSearch(pairs, seen, f, y, eval_mask=em, n_thresholds=n)
            np.testing.assert_array_equal(ts.thresholds, feasibility_thresholds(f, seen, em, n))


def test_threshold_search_keeps_everything_when_all_auc_zero():
    rng = np.random.default_rng(6)
    pairs, seen, y, s, f = _ow_case(rng)
    s[:, ~seen] = -5000.0  # no unseen sample can ever be correct
    ts = ThresholdSearch(pairs, seen, f, y)
    stream(ts, s, rng)
    out = ts.result()
    assert (out.aucs == 0).all() and out.best_index is None and out.threshold is None
    assert out.keep_mask.all()
    assert (open_world_keep_mask(seen, f, None) == out.keep_mask).all()


def test_removed_columns_are_excluded_not_multiplied_by_zero():
    # negative scores: the CSP quirk (logits * (feasible + seen)) turns removed columns into 0, the row maximum
    rng = np.random.default_rng(7)
    pairs = np.array(list(itertools.product(range(4), range(5))))
    seen = rng.random(20) < 0.4
    f = rng.uniform(-0.1, 0.8, 20)
    f[seen] = 0
    y = rng.integers(0, 20, 40)
    s = -rng.uniform(1, 5, (40, 20)).astype(np.float32)
    keep = open_world_keep_mask(seen, f, 0.4)
    ev = StreamingEvaluator(pairs, seen, keep, y)
    stream(ev, s, rng)
    res = ev.result()
    assert_same(res, reference_evaluate(s, pairs, seen, keep, y))
    for b in res.biases:
        pred, _, _ = ev.predict(b)
        assert keep[pred].all()
    quirk = s * ((f >= 0.4).astype(np.float32) + seen)  # CSP: logits * (1[f >= th] + seen_mask)
    qpred = reference_predict(
        torch.from_numpy(quirk), torch.from_numpy(seen), torch.ones(20, dtype=torch.bool), 1e3
    ).numpy()
    assert not keep[qpred].all()  # the quirk would predict removed pairs here
