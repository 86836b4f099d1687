"""Multi-label metrics at Open Images GZSL scale: ``evaluate_multilabel`` vs a faithful per-label reference.

Synthetic data in GZSL order ``[7,186 seen | 400 unseen]`` (``--n``, ``--c`` and ``--unseen`` scale it down):
float32 scores (standard normal, +1 on positives) and int8 labels, mostly 0; per image a few ``+1`` / ``-1`` drawn
(Zipf-like frequencies) from the annotated classes only: ``--annotated-seen`` (default 4,728) of the seen classes
plus all unseen ones; ~10 % of the images get no positive (dropped by ``image_filter="has_positive"``).

Two evaluations, both with ``image_filter="has_positive"`` (Open Images protocol), ``ks=(10, 20)``:
ZSL on the 400 unseen columns and GZSL on all of them. Reference:

* AP: for each label, keep the filtered images annotated for it and call ``sklearn.metrics.average_precision_score``
  (``--ref-labels`` evenly spaced labels if set; time extrapolated to all labels, stated in the output);
* P/R/F1@K: per-image loop (stable argsort of the row, top-K, count ``+1``) over the first ``--ref-rows``
  filtered images; the fast function is run on the same rows for the comparison and the time is extrapolated.

Peak memory: ``tracemalloc`` peak (numpy allocations are traced) of a separate run of ``evaluate_multilabel``
above the memory held before it; timings are from untraced runs (best of ``--repeats``).

    python benchmarks/bench_multilabel_metrics.py --n 20000 --c 2000 --unseen 400 --annotated-seen 1200
    python benchmarks/bench_multilabel_metrics.py          # full size: ~4.8 GB for scores + labels
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
import tracemalloc

import numpy as np
from sklearn.metrics import average_precision_score

from unseen.multilabel.metrics import evaluate_multilabel, precision_recall_f1_at_k


def make_data(n: int, c: int, n_unseen: int, n_annot_seen: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_seen = c - n_unseen
    annotated = np.concatenate([np.sort(rng.choice(n_seen, size=min(n_annot_seen, n_seen), replace=False)),
                                np.arange(n_seen, c)])
    w = 1.0 / np.arange(1, annotated.size + 1) ** 0.8  # Zipf-like class frequencies
    w[annotated >= n_seen] *= 3.0  # unseen classes somewhat frequent (ZSL has enough images)
    w = rng.permutation(w)
    w /= w.sum()
    labels = np.zeros((n, c), dtype=np.int8)
    has_pos = rng.random(n) < 0.9
    n_pos = np.where(has_pos, 1 + rng.poisson(1.5, n), 0)
    n_neg = rng.poisson(3.0, n)
    rows_p = np.repeat(np.arange(n), n_pos)
    rows_n = np.repeat(np.arange(n), n_neg)
    labels[rows_n, annotated[rng.choice(annotated.size, rows_n.size, p=w)]] = -1
    labels[rows_p, annotated[rng.choice(annotated.size, rows_p.size, p=w)]] = 1  # positives win collisions
    scores = np.empty((n, c), dtype=np.float32)
    for r0 in range(0, n, 4096):
        r1 = min(n, r0 + 4096)
        scores[r0:r1] = rng.standard_normal((r1 - r0, c), dtype=np.float32)
        scores[r0:r1] += labels[r0:r1] == 1
    return scores, labels


def reference_ap(scores: np.ndarray, labels: np.ndarray, keep: np.ndarray, cols: np.ndarray) -> np.ndarray:
    out = np.full(cols.size, np.nan)
    for j, c in enumerate(cols):
        y = labels[:, c][keep]
        s = scores[:, c][keep]
        m = y != 0
        if (y[m] == 1).any():
            out[j] = average_precision_score(y[m] == 1, s[m])
    return out


def reference_prf(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    n = scores.shape[0]
    n_true = int((labels == 1).sum())
    tp = dict.fromkeys(ks, 0)
    kmax = max(ks)
    for i in range(n):
        order = np.argsort(-scores[i], kind="stable")[:kmax]
        hit = labels[i, order] == 1
        for k in ks:
            tp[k] += int(hit[:k].sum())
    out = {}
    for k in ks:
        P, R = tp[k] / (n * k), tp[k] / n_true
        out[f"P@{k}"], out[f"R@{k}"], out[f"F1@{k}"] = P, R, (2 * P * R / (P + R) if P + R > 0 else 0.0)
    return out


def bench(name: str, scores: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> dict:
    ks = tuple(args.ks)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = evaluate_multilabel(scores, labels, ks=ks, image_filter="has_positive")
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    evaluate_multilabel(scores, labels, ks=ks, image_filter="has_positive")
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()

    # reference AP (per label)
    C = scores.shape[1]
    keep = (labels == 1).any(axis=1)
    cols = np.arange(C) if not args.ref_labels or args.ref_labels >= C else \
        np.unique(np.linspace(0, C - 1, args.ref_labels).round().astype(np.int64))
    t0 = time.perf_counter()
    ref_ap = reference_ap(scores, labels, keep, cols)
    t_ap = time.perf_counter() - t0
    t_ap_all = t_ap * C / cols.size
    from unseen.multilabel.metrics import mean_average_precision

    fast = mean_average_precision(scores, labels, image_filter="has_positive")["per_class"][cols]
    ap_diff = float(np.nanmax(np.abs(fast - ref_ap))) if np.isfinite(ref_ap).any() else 0.0
    ap_ok = bool(np.array_equal(np.isnan(fast), np.isnan(ref_ap)) and ap_diff <= 1e-9)
    ref_map = float(np.nanmean(ref_ap)) if cols.size == C else None

    # reference P/R/F1@K (per image, on a row subset)
    kept = np.flatnonzero(keep)
    sub = kept[: args.ref_rows]
    s_sub, y_sub = scores[sub], labels[sub]
    t0 = time.perf_counter()
    ref_prf = reference_prf(s_sub, y_sub, ks)
    t_prf = time.perf_counter() - t0
    t_prf_all = t_prf * kept.size / max(sub.size, 1)
    fast_prf = precision_recall_f1_at_k(s_sub, y_sub, ks=ks)
    prf_ok = all(fast_prf[k] == v for k, v in ref_prf.items())

    return {
        "space": name, "N": int(scores.shape[0]), "C": int(C), "n_images_kept": res["n_images"],
        "result": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in res.items()},
        "fast_s_best": round(min(times), 3), "fast_s_all": [round(t, 3) for t in times],
        "fast_peak_tracemalloc_MB": round(peak / 2**20, 1),
        "ref_ap_labels_timed": int(cols.size),
        "ref_ap_s": round(t_ap, 2), "ref_ap_s_all_labels": round(t_ap_all, 2),
        "ref_ap_extrapolated": bool(cols.size < C),
        "ref_mAP": None if ref_map is None else round(ref_map, 6),
        "ap_max_abs_diff": ap_diff, "ap_identical_1e-9": ap_ok,
        "ref_prf_rows_timed": int(sub.size), "ref_prf_s": round(t_prf, 2),
        "ref_prf_s_all_rows": round(t_prf_all, 2), "ref_prf_extrapolated": bool(sub.size < kept.size),
        "prf_identical_on_subset": prf_ok,
        "ref_total_s_est": round(t_ap_all + t_prf_all, 2),
        "speedup_est": round((t_ap_all + t_prf_all) / min(times), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=125_436)
    ap.add_argument("--c", type=int, default=7_586)
    ap.add_argument("--unseen", type=int, default=400)
    ap.add_argument("--annotated-seen", type=int, default=4_728)
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--ref-labels", type=int, default=0, help="labels timed in the AP reference (0 = all)")
    ap.add_argument("--ref-rows", type=int, default=5_000, help="images in the per-image P/R/F1 reference")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-gzsl", action="store_true")
    args = ap.parse_args()

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    scores, labels = make_data(args.n, args.c, args.unseen, args.annotated_seen, args.seed)
    t_gen = time.perf_counter() - t0
    print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cpus",
                      "numpy": np.__version__, "N": args.n, "C": args.c, "gen_s": round(t_gen, 1),
                      "scores_GB": round(scores.nbytes / 1e9, 2), "labels_GB": round(labels.nbytes / 1e9, 2),
                      "nonzero_labels_per_image": round(float(np.count_nonzero(labels)) / args.n, 2)}))
    zsl = bench("ZSL", scores[:, args.c - args.unseen:], labels[:, args.c - args.unseen:], args)
    print(json.dumps(zsl, indent=1))
    if not args.skip_gzsl:
        gzsl = bench("GZSL", scores, labels, args)
        print(json.dumps(gzsl, indent=1))
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"process_ru_maxrss_GB": round(rss1 / 2**20, 2), "ru_maxrss_before_data_GB": round(rss0 / 2**20, 2),
                      "note": "ru_maxrss covers the whole process (data, references, fast path)"}))


if __name__ == "__main__":
    main()
