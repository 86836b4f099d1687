"""CZSL evaluator at C-GQA scale: streaming (``unseen.compositional.metrics``) vs a dense reference.

Synthetic C-GQA-shaped problem (413 attributes x 674 objects; 7,555 closed-world pairs, of which 5,592 seen,
923 test-unseen and 1,040 val-unseen; 5,098 test images, ``--seen-frac`` of them with a seen GT pair). Scores
imitate CLIP logits: ``100 * cos`` with ``cos = 0.20 + 0.025 z`` (z standard normal), +0.005 on seen columns (a
trained model's seen bias), +0.08 on the GT column (+0.06 if unseen), computed in **float16** and upcast (CSP's
fp16 logits: a coarse grid with many exact ties).

(a) Closed world: eval mask = train + test pairs (6,515 columns). Three evaluators, interleaved, median of
    ``--repeats``:
    * **reference**: the algorithm of czsl ``models/common.py`` as copied by CSP, written plainly:
      per bias clone the float32 N x P matrix, add the bias to the unseen columns through a
      repeated N x P boolean mask, clone, fill the non-candidate columns with -1e10 through another repeated mask,
      ``argmax`` (first index); candidate biases, subsampling, trapezoid AUC, 0-guarded HM, CSP attr/obj accuracy;
    * **dense, vectorised**: the same predictions done well: one masked copy of the matrix, then per bias one
      broadcast add into a reused buffer and one ``argmax`` (to show what part of the gain is only the
      reference's overhead);
    * **streaming**: ``evaluate_scores`` (exact mode, k = 4) on 8,192-column blocks (here: the whole width).
    All three must give identical numbers (every curve point, AUC, HM, seen/unseen, attr/obj).
(b) Open world: all 278,362 pairs. The scores are produced on the fly in 5,098 x 8,192 blocks (34 blocks) and fed
    to (b1) ``StreamingEvaluator`` (exact mode) with the columns kept at a feasibility threshold and (b2)
    ``ThresholdSearch`` (50 thresholds, one pass); the dense reference is not run (a 5.7 GB float32 matrix plus
    its clones and N x P masks: ~20 GB). Reported: time with and without generating the scores, and the peak
    memory the evaluator adds on top of the current score block (tracemalloc; numpy allocations are traced, the
    small ``torch.topk`` outputs are not) and the process peak RSS.

(c) Merged near-ties (issue 12): the closed-world scores of (a) with, in ``--tie-frac`` of the rows, a cluster of
    ``--tie-m`` unseen candidates rewritten to distinct float32 scores within 0.45 ulp of ``fl(c + 1e3)`` below the
    row's best unseen score ``c`` (adding the 1e3 bias collapses them onto one value), the lower columns carrying
    the lower scores (the reference's first-index winner is then outside the stored top 4); half the time the
    cluster contains the unseen GT column. Timed: the reference (one run: it is the slow part), the exact
    evaluator with resolution (``evaluate_scores``), the same state without resolution (``StreamingEvaluator``
    + ``result()``: the numbers the evaluator used to report) and fast mode (flags only); median of ``--repeats``.

``--baseline PATH``: another copy of ``unseen/compositional/metrics.py`` (e.g. the version before a change) is
loaded and its ``evaluate_scores`` timed in the same interleaved loop in (a) and (c): speed ratios side by side in
one process, and whether its numbers are identical.

Peak memory in (a): ``VmHWM`` after resetting it (``/proc/self/clear_refs``) minus the resident set before the
call, after ``malloc_trim``; it counts torch and numpy allocations.

    python benchmarks/bench_czsl_evaluator.py                     # full size, ~5 minutes on 2 cores
    python benchmarks/bench_czsl_evaluator.py --n 1000 --ow-cols 40000 --repeats 2   # quick
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import platform
import re
import resource
import statistics
import sys
import time
import tracemalloc

import numpy as np
import torch

from unseen.compositional.metrics import (
    StreamingEvaluator,
    ThresholdSearch,
    evaluate_scores,
    open_world_keep_mask,
)

N_ATTR, N_OBJ = 413, 674
N_SEEN, N_TEST_UNSEEN, N_VAL_UNSEEN = 5592, 923, 1040


# --------------------------------------------------------------------------------------------- data


def make_problem(n: int, seen_frac: float, seed: int) -> dict:
    """C-GQA-shaped split: CW pairs embedded in the OW product (attr-major, sorted)."""
    rng = np.random.default_rng(seed)
    n_cw = N_SEEN + N_TEST_UNSEEN + N_VAL_UNSEEN
    ow_cw = np.sort(rng.choice(N_ATTR * N_OBJ, n_cw, replace=False))  # OW indices of the CW pairs
    role = rng.permutation(np.repeat([0, 1, 2], [N_SEEN, N_TEST_UNSEEN, N_VAL_UNSEEN]))  # seen/test/val
    pairs_cw = np.stack(np.divmod(ow_cw, N_OBJ), 1)
    seen = role == 0
    evm = role <= 1
    n_seen_s = int(round(n * seen_frac))
    y = np.r_[rng.choice(np.flatnonzero(seen), n_seen_s), rng.choice(np.flatnonzero(role == 1), n - n_seen_s)]
    y = rng.permutation(y)
    return {"pairs": pairs_cw, "seen": seen, "eval": evm, "y": y, "ow_cw": ow_cw}


def logits(
    rng: np.random.Generator,
    n: int,
    cols: np.ndarray,
    seen_col: np.ndarray,
    y_local: np.ndarray,
    y_seen: np.ndarray,
) -> np.ndarray:
    """``100 * cos`` in float16, upcast: a block of scores for ``len(cols)`` columns. ``y_local[i]`` = position of
    row i's GT column in the block or -1."""
    x = rng.standard_normal((n, cols.size), dtype=np.float32)
    x *= 0.025
    x += 0.20
    x[:, seen_col] += 0.005
    r = np.flatnonzero(y_local >= 0)
    x[r, y_local[r]] += np.where(y_seen[r], 0.08, 0.06).astype(np.float32)
    x *= 100
    return x.astype(np.float16).astype(np.float32)


# --------------------------------------------------------------------------------------------- evaluators


def reference_evaluate(
    S: torch.Tensor, pairs: np.ndarray, seen_mask: np.ndarray, eval_mask: np.ndarray, gt_pair: np.ndarray
) -> dict:
    """The reference algorithm (czsl models/common.py), dense, float32, argmax recomputed per bias."""
    n = S.shape[0]
    pairs_t = torch.from_numpy(pairs)
    seen = torch.from_numpy(seen_mask)
    evm = torch.from_numpy(eval_mask)
    y = torch.from_numpy(gt_pair)
    gt_attr, gt_obj = pairs_t[y, 0], pairs_t[y, 1]
    seen_ind = torch.nonzero(seen[y]).flatten()
    unseen_ind = torch.nonzero(~seen[y]).flatten()

    def predict(scores, bias):
        sc = scores.clone()
        mask = seen.repeat(n, 1)
        sc[~mask] += bias
        closed = sc.clone()
        closed[~evm.repeat(n, 1)] = -1e10
        return closed.argmax(dim=1)

    def process(pred):
        a = (pairs_t[pred, 0] == gt_attr).float()
        o = (pairs_t[pred, 1] == gt_obj).float()
        return a, o, a * o

    def mean(t):
        return float(t.mean()) if t.numel() else 0.0

    _, _, m_max = process(predict(S, 1e3))
    seen_max, unseen_max = mean(m_max[seen_ind]), mean(m_max[unseen_ind])
    diff = S[unseen_ind][:, seen].max(dim=1).values - S[torch.arange(n), y][unseen_ind]
    diff = torch.sort(diff[m_max[unseen_ind].bool()] - 1e-4)[0]
    biaslist = diff[:: max(len(diff) // 20, 1)]
    seen_acc, unseen_acc = [], []
    for b in biaslist:
        _, _, m = process(predict(S, b))
        seen_acc.append(mean(m[seen_ind]))
        unseen_acc.append(mean(m[unseen_ind]))
    seen_acc, unseen_acc = np.array(seen_acc + [seen_max]), np.array(unseen_acc + [unseen_max])
    hm = np.array([2 * s * u / (s + u) if s > 0 and u > 0 else 0.0 for s, u in zip(seen_acc, unseen_acc)])
    i = int(np.argmax(hm))
    unbiased = S.clone()
    unbiased[~evm.repeat(n, 1)] = -1e10
    a0, o0, _ = process(unbiased.argmax(dim=1))
    return _summary(
        np.trapezoid(seen_acc, unseen_acc),
        hm,
        seen_acc,
        unseen_acc,
        [float(b) for b in biaslist] + [1e3],
        i,
        mean(a0),
        mean(o0),
    )


def dense_vectorised(
    S: np.ndarray, pairs: np.ndarray, seen_mask: np.ndarray, eval_mask: np.ndarray, gt_pair: np.ndarray
) -> dict:
    """The same algorithm with one masked copy and one add + argmax per bias (float32 throughout)."""
    n = S.shape[0]
    y = gt_pair
    seen_s = seen_mask[y]
    masked = np.where(eval_mask, S, np.float32(-1e10)).astype(np.float32)
    buf = np.empty_like(masked)
    unseen_cols = eval_mask & ~seen_mask

    def correct(bias):
        row = np.where(unseen_cols, np.float32(bias), np.float32(0))
        np.add(masked, row, out=buf)  # +0 on seen columns; -1e10 + b stays -1e10-ish, far below
        return np.argmax(buf, 1) == y

    def mean(ok, sel):
        k, m = int(ok[sel].sum()), int(sel.sum())
        return float(np.float32(k) / np.float32(m)) if m else 0.0

    ok = correct(1e3)
    seen_max, unseen_max = mean(ok, seen_s), mean(ok, ~seen_s)
    sel = ok & ~seen_s
    best_seen = S[:, seen_mask].max(1)
    d = np.sort((best_seen[sel] - S[np.flatnonzero(sel), y[sel]]) - np.float32(1e-4))
    biaslist = d[:: max(d.size // 20, 1)]
    sa, ua = [], []
    for b in biaslist:
        ok = correct(b)
        sa.append(mean(ok, seen_s))
        ua.append(mean(ok, ~seen_s))
    sa, ua = np.array(sa + [seen_max]), np.array(ua + [unseen_max])
    hm = np.array([2 * s * u / (s + u) if s > 0 and u > 0 else 0.0 for s, u in zip(sa, ua)])
    i = int(np.argmax(hm))
    p0 = np.argmax(masked, 1)
    every = np.ones(n, bool)
    return _summary(
        np.trapezoid(sa, ua),
        hm,
        sa,
        ua,
        [float(b) for b in biaslist] + [1e3],
        i,
        mean(pairs[p0, 0] == pairs[y, 0], every),
        mean(pairs[p0, 1] == pairs[y, 1], every),
    )


def _summary(auc, hm, sa, ua, biases, i, attr, obj) -> dict:
    return {
        "auc": float(auc),
        "best_hm": float(hm[i]),
        "best_seen": float(sa.max()),
        "best_unseen": float(ua.max()),
        "hm_seen": float(sa[i]),
        "hm_unseen": float(ua[i]),
        "best_hm_bias": float(biases[i]),
        "attr_acc": attr,
        "obj_acc": obj,
        "biases": biases,
        "seen_curve": sa.tolist(),
        "unseen_curve": ua.tolist(),
    }


def streaming_summary(res) -> dict:
    d = res.to_dict()
    return {
        k: d[k]
        for k in (
            "auc",
            "best_hm",
            "best_seen",
            "best_unseen",
            "hm_seen",
            "hm_unseen",
            "best_hm_bias",
            "attr_acc",
            "obj_acc",
            "biases",
            "seen_curve",
            "unseen_curve",
        )
    }


def merge_near_ties(S: np.ndarray, prob: dict, frac: float, m: int, seed: int) -> tuple[np.ndarray, int]:
    """A copy of ``S`` with merged near-ties in ``frac`` of the rows (part (c) of the module docstring); also the
    number of rows whose cluster holds the GT column."""
    rng = np.random.default_rng(seed)
    S = S.copy()
    n = S.shape[0]
    un = np.flatnonzero(prob["eval"] & ~prob["seen"])
    y, seen = prob["y"], prob["seen"]
    n_gt = 0
    for i in rng.choice(n, int(round(frac * n)), replace=False):
        cl = rng.choice(un, m, replace=False)
        if not seen[y[i]] and y[i] not in cl and rng.random() < 0.5:
            cl[0] = y[i]
        cl = np.sort(cl)
        n_gt += int(y[i] in cl)
        c = S[i, un].max()
        # c + 1e3 is exact (c is on the fp16 grid): every score within half an ulp below c rounds onto it
        w = 0.45 * np.spacing(c + np.float32(1e3))
        steps = np.sort(rng.choice(int(w / np.spacing(c)), m, replace=False))[::-1]
        S[i, cl] = c - steps.astype(np.float32) * np.spacing(c)  # ascending with the column index
    return S, n_gt


def load_baseline(path: str | None):
    """Another copy of the metrics module, loaded under its own name (for side-by-side timing)."""
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("czsl_metrics_baseline", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up while the class is created
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def peak_extra_mb(fn) -> float:
    """Extra resident memory of ``fn()`` at its peak (MB): VmHWM after a reset minus VmRSS before."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024


# --------------------------------------------------------------------------------------------- runs


def closed_world(args: argparse.Namespace) -> dict:
    prob = make_problem(args.n, args.seen_frac, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    n, p = args.n, prob["pairs"].shape[0]
    S = logits(rng, n, np.arange(p), prob["seen"], prob["y"], prob["seen"][prob["y"]])
    St = torch.from_numpy(S)
    common = (prob["pairs"], prob["seen"], prob["eval"], prob["y"])
    runs = {
        "reference": lambda: reference_evaluate(St, *common),
        "dense_vectorised": lambda: dense_vectorised(S, *common),
        "streaming": lambda: streaming_summary(evaluate_scores(S, *common, chunk_cols=args.chunk_cols)),
    }
    base = load_baseline(args.baseline)
    if base is not None:
        runs["streaming_baseline"] = lambda: streaming_summary(
            base.evaluate_scores(S, *common, chunk_cols=args.chunk_cols)
        )
    times: dict[str, list[float]] = {k: [] for k in runs}
    out: dict[str, dict] = {}
    for _ in range(args.repeats):  # interleaved
        for k, fn in runs.items():
            t0 = time.perf_counter()
            out[k] = fn()
            times[k].append(time.perf_counter() - t0)
    peaks = {k: round(peak_extra_mb(fn), 1) for k, fn in runs.items()}
    full = evaluate_scores(S, *common, chunk_cols=args.chunk_cols)
    # ties at the top: rows whose best in-mask score is shared by >= 2 columns
    masked = np.where(prob["eval"], S, -np.inf)
    top = masked.max(1, keepdims=True)
    tied_rows = int(((masked == top).sum(1) > 1).sum())
    med = {k: statistics.median(v) for k, v in times.items()}
    extra = {}
    if base is not None:
        extra = {
            "time_ratio_vs_baseline": round(med["streaming"] / med["streaming_baseline"], 3),
            "identical_baseline": out["streaming"] == out["streaming_baseline"],
        }
    return {
        "N": n,
        "P": p,
        "eval_columns": int(prob["eval"].sum()),
        "seen_columns": int(prob["seen"].sum()),
        "seen_samples": int(prob["seen"][prob["y"]].sum()),
        "rows_with_tied_top": tied_rows,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "all_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "speedup_vs_reference": round(med["reference"] / med["streaming"], 1),
        "speedup_vs_dense_vectorised": round(med["dense_vectorised"] / med["streaming"], 1),
        "peak_extra_MB": peaks,
        "score_matrix_MB": round(S.nbytes / 2**20, 1),
        "identical_reference": out["streaming"] == out["reference"],
        "identical_dense_vectorised": out["streaming"] == out["dense_vectorised"],
        **extra,
        "n_ambiguous": full.n_ambiguous,
        "n_resolved": full.n_resolved,
        "result_x100": {
            k: round(100 * getattr(full, k), 2)
            for k in ("auc", "best_hm", "best_seen", "best_unseen", "attr_acc", "obj_acc")
        },
        "n_points": len(full.biases),
    }


def near_ties(args: argparse.Namespace) -> dict:
    prob = make_problem(args.n, args.seen_frac, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    n, p = args.n, prob["pairs"].shape[0]
    S0 = logits(rng, n, np.arange(p), prob["seen"], prob["y"], prob["seen"][prob["y"]])
    S, n_gt = merge_near_ties(S0, prob, args.tie_frac, args.tie_m, args.seed + 7)
    del S0
    common = (prob["pairs"], prob["seen"], prob["eval"], prob["y"])
    t0 = time.perf_counter()
    ref = reference_evaluate(torch.from_numpy(S), *common)
    t_ref = time.perf_counter() - t0

    def unresolved():
        ev = StreamingEvaluator(*common)
        for a in range(0, p, args.chunk_cols):
            ev.update(S[:, a : a + args.chunk_cols], cols=slice(a, a + args.chunk_cols))
        return ev.result()

    runs = {
        "exact_resolved": lambda: evaluate_scores(S, *common, chunk_cols=args.chunk_cols),
        "exact_unresolved": unresolved,
        "fast_flags_only": lambda: evaluate_scores(S, *common, exact=False, chunk_cols=args.chunk_cols),
    }
    base = load_baseline(args.baseline)
    if base is not None:
        runs["baseline_exact"] = lambda: base.evaluate_scores(S, *common, chunk_cols=args.chunk_cols)
    times: dict[str, list[float]] = {k: [] for k in runs}
    out = {}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            out[k] = fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "N": n,
        "P": p,
        "rows_with_merged_cluster": int(round(args.tie_frac * n)),
        "cluster_size": args.tie_m,
        "clusters_holding_the_gt": n_gt,
        "reference_s": round(t_ref, 3),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "speedup_vs_reference": round(t_ref / med["exact_resolved"], 1),
        "resolution_overhead": round(med["exact_resolved"] / med["exact_unresolved"], 3),
        "identical_reference": {k: streaming_summary(r) == ref for k, r in out.items()},
        "n_ambiguous": {k: r.n_ambiguous for k, r in out.items()},
        "n_resolved": {k: r.n_resolved for k, r in out.items() if hasattr(r, "n_resolved")},
        "auc_x100": {"reference": round(100 * ref["auc"], 4)}
        | {k: round(100 * r.auc, 4) for k, r in out.items()},
        "best_unseen_x100": {"reference": round(100 * ref["best_unseen"], 3)}
        | {k: round(100 * r.best_unseen, 3) for k, r in out.items()},
    }


def open_world(args: argparse.Namespace) -> dict:
    prob = make_problem(args.n, args.seen_frac, args.seed)
    n = args.n
    p_ow = N_ATTR * N_OBJ if args.ow_cols is None else args.ow_cols
    ow_cw = prob["ow_cw"]
    if p_ow < N_ATTR * N_OBJ:  # quick mode: keep the CW pairs, drop other OW pairs
        rng = np.random.default_rng(args.seed + 5)
        extra = rng.choice(np.setdiff1d(np.arange(N_ATTR * N_OBJ), ow_cw), p_ow - ow_cw.size, replace=False)
        cols_ow = np.sort(np.r_[ow_cw, extra])
    else:
        cols_ow = np.arange(p_ow)
    pairs = np.stack(np.divmod(cols_ow, N_OBJ), 1)
    pos_cw = np.searchsorted(cols_ow, ow_cw)
    seen = np.zeros(p_ow, bool)
    seen[pos_cw[prob["seen"]]] = True
    y = pos_cw[prob["y"]]
    rng = np.random.default_rng(args.seed + 2)
    f = rng.uniform(-0.135, 0.779, p_ow)  # C-GQA feasibility range (CompCos scores)
    f[pos_cw[~prob["seen"]]] = rng.uniform(
        0.2, 0.779, int((~prob["seen"]).sum())
    )  # real unseen pairs: plausible
    f[seen] = 0.0
    keep = open_world_keep_mask(seen, f, args.ow_threshold)
    y_seen = seen[y]

    def blocks():
        g = np.random.default_rng(args.seed + 3)
        for a in range(0, p_ow, args.chunk_cols):
            b = min(p_ow, a + args.chunk_cols)
            loc = y - a
            loc = np.where((loc >= 0) & (loc < b - a), loc, -1)
            yield slice(a, b), logits(g, n, np.arange(a, b), seen[a:b], loc, y_seen)

    out = {
        "N": n,
        "P": p_ow,
        "chunk": [n, args.chunk_cols],
        "kept_columns": int(keep.sum()),
        "seen_columns": int(seen.sum()),
    }
    chunk_mb = n * args.chunk_cols * 4 / 2**20
    out["score_block_MB"] = round(chunk_mb, 1)
    # generation alone
    t0 = time.perf_counter()
    for _ in blocks():
        pass
    out["generate_only_s"] = round(time.perf_counter() - t0, 2)
    for name in ("exact_evaluator", "threshold_search"):
        ev = (
            StreamingEvaluator(pairs, seen, keep, y)
            if name == "exact_evaluator"
            else ThresholdSearch(pairs, seen, f, y)
        )
        tracemalloc.start()
        extra_peak = 0
        t_upd = 0.0
        t0 = time.perf_counter()
        for cs, x in blocks():
            cur = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            t1 = time.perf_counter()
            ev.update(x, cols=cs)
            t_upd += time.perf_counter() - t1
            extra_peak = max(extra_peak, tracemalloc.get_traced_memory()[1] - cur)
            del x
        t1 = time.perf_counter()
        res = ev.result()
        t_res = time.perf_counter() - t1
        total = time.perf_counter() - t0
        tracemalloc.stop()
        state_mb = (
            sum(
                a.nbytes
                for a in vars(ev).values()
                if isinstance(a, np.ndarray) and a.ndim >= 1 and a.shape[0] == n
            )
            / 2**20
        )
        entry = {
            "total_with_generation_s": round(total, 2),
            "update_s": round(t_upd, 2),
            "result_s": round(t_res, 3),
            "evaluator_s": round(t_upd + t_res, 2),
            "extra_peak_beyond_block_MB": round(extra_peak / 2**20, 1),
            "state_MB": round(state_mb, 2),
        }
        if name == "exact_evaluator":
            entry.update(
                n_ambiguous=res.n_ambiguous,
                auc_x100=round(100 * res.auc, 3),
                best_hm_x100=round(100 * res.best_hm, 2),
                best_unseen_x100=round(100 * res.best_unseen, 2),
            )
        else:
            entry.update(
                best_threshold=res.threshold,
                best_val_auc_x100=round(100 * res.best_auc, 3),
                n_thresholds=len(res.thresholds),
            )
        out[name] = entry
    out["process_peak_rss_MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5098, help="test images")
    ap.add_argument("--seen-frac", type=float, default=0.5, help="fraction of images with a seen GT pair")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-cols", type=int, default=8192)
    ap.add_argument("--ow-cols", type=int, default=None, help="OW columns (default all 278,362)")
    ap.add_argument("--ow-threshold", type=float, default=0.3, help="feasibility threshold of run (b1)")
    ap.add_argument("--tie-frac", type=float, default=0.2, help="(c): fraction of rows with a merged cluster")
    ap.add_argument("--tie-m", type=int, default=8, help="(c): unseen scores per merged cluster")
    ap.add_argument("--baseline", default=None, help="another metrics.py to time side by side in (a) and (c)")
    ap.add_argument("--skip-ow", action="store_true")
    ap.add_argument("--skip-cw", action="store_true")
    ap.add_argument("--skip-ties", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    print(json.dumps({"env": info}), flush=True)
    if not args.skip_cw:
        print(json.dumps({"closed_world": closed_world(args)}, indent=1), flush=True)
    if not args.skip_ties:
        print(json.dumps({"near_ties": near_ties(args)}, indent=1), flush=True)
    if not args.skip_ow:
        print(json.dumps({"open_world": open_world(args)}, indent=1), flush=True)


if __name__ == "__main__":
    main()
