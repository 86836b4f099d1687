"""Multi-label metrics at Open Images GZSL scale: ``evaluate_multilabel`` vs a faithful per-label reference.

Synthetic data in GZSL order ``[7,186 seen | 400 unseen]`` (``--n``, ``--c`` and ``--unseen`` scale it down):
float32 scores (standard normal, +1 on positives) and int8 labels, mostly 0; per image a few ``+1`` / ``-1`` drawn
(Zipf-like frequencies) from the annotated classes only: ``--annotated-seen`` (default 4,728) of the seen classes
plus all unseen ones; ~10 % of the images get no positive (dropped by ``image_filter="has_positive"``).
Ties: the scores of ``--tie-rows`` (default 10 %) of the images are rounded to bfloat16 precision (what a model run
under bf16 autocast produces), which gives tied scores at the K-th place of the top-K and inside AP rankings; the
output counts them.

Two evaluations, both with ``image_filter="has_positive"`` (Open Images protocol), ``ks=(10, 20)``:
ZSL on the 400 unseen columns and GZSL on all of them. Reference:

* AP: for each label, keep the filtered images annotated for it and call ``sklearn.metrics.average_precision_score``
  (``--ref-labels`` evenly spaced labels if set; time extrapolated to all labels, stated in the output);
* P/R/F1@K: per-image loop (stable argsort of the row, top-K, count ``+1``) over the first ``--ref-rows``
  filtered images (default all); the fast function is run on the same rows for the comparison and the time is
  extrapolated when it is a subset.

Timings: median (and all) of ``--repeats`` runs of ``evaluate_multilabel`` for each ``--threads`` setting; the
reference runs once. Wall time and process CPU time (all threads) are both reported: on a machine busy with other
work the single-thread CPU-time ratio is the steadiest, and OpenMP's spin-waiting threads can make the multithreaded
torch ops many times slower: run with ``OMP_WAIT_POLICY=PASSIVE`` (recorded in the output) or ``--threads 1``.
Peak memory (with the last ``--threads`` setting): the process's resident-set high-water mark during a separate run
of ``evaluate_multilabel`` minus the resident set before it (Linux: ``/proc/self/clear_refs`` resets the mark;
``tracemalloc`` would miss torch's allocations). It counts every page the call touches: its temporaries and, for
inputs that are not float32/float64 + int8, the converted copies.

    python benchmarks/bench_multilabel_metrics.py --n 20000 --c 2000 --unseen 400 --annotated-seen 1200
    python benchmarks/bench_multilabel_metrics.py          # full size: ~4.8 GB for scores + labels, ~5 min

``--case nus``: dense multi-label AP at NUS-WIDE size (107,859 test images x [925 seen | 81 unseen] labels, every
entry labelled +-1; ``--zero-frac`` leaves a fraction unlabelled). Per class a positive rate drawn Zipf-like so
that an image has ~6 seen and ~1.9 unseen positives on average (the unseen figure is what LESA / BiAM imply; the
seen one is an assumption); float32 scores (standard normal, +1 on positives), ``--tie-rows`` of the images
rounded to bf16 precision (ties). ``mean_average_precision`` (GZSL: all labels; ZSL: the 81 unseen columns) is
timed side by side with a port of BiAM's ``util_nus.compute_AP`` to the CPU (per class: mask ``|label| == 1``,
torch sort descending, float32 cumulative TP / FP, ``sum(prec * hit) / n_pos``; labels as float32 tensors, as
BiAM's evaluation loop stores them), interleaved run by run in this process, for each ``--threads`` setting
(``torch.set_num_threads`` and ``threadpoolctl`` limits). ``--previous-rev REV`` also times the library's AP at
an older git revision (loaded with ``git show``; its numbers must be identical, bit for bit). BiAM breaks ties
by sort order and sums in float32, so its numbers differ slightly (stated in the output); sklearn on a few
labels is the exact check.

    python benchmarks/bench_multilabel_metrics.py --case nus --threads 1 2 --previous-rev <rev>   # ~2 GB, ~15 min
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
import types
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from unseen.multilabel.metrics import evaluate_multilabel, mean_average_precision, precision_recall_f1_at_k

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # only limits BLAS / OpenMP pools; numpy's sort is single-threaded anyway
    threadpool_limits = None


def make_data(
    n: int, c: int, n_unseen: int, n_annot_seen: int, seed: int, tie_rows: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_seen = c - n_unseen
    annotated = np.concatenate(
        [np.sort(rng.choice(n_seen, size=min(n_annot_seen, n_seen), replace=False)), np.arange(n_seen, c)]
    )
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
    tied = np.flatnonzero(rng.random(n) < tie_rows)
    for i in range(0, tied.size, 4096):
        r = tied[i : i + 4096]
        scores[r] = torch.from_numpy(scores[r]).bfloat16().float().numpy()  # bf16 precision: ties
    return scores, labels


def tie_stats(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]) -> dict:
    """How many kept images have a tie at the K-th place, and how many positives share their score with another
    annotated entry of the same class (a tie the AP must treat as one threshold)."""
    keep_mask = (labels == 1).any(axis=1)
    keep = np.flatnonzero(keep_mask)
    amb = dict.fromkeys(ks, 0)
    for i in range(0, keep.size, 2048):
        part = torch.topk(torch.from_numpy(scores[keep[i : i + 2048]]), max(ks) + 1, dim=1).values.numpy()
        for k in ks:
            if k < scores.shape[1]:
                amb[k] += int(np.count_nonzero(part[:, k - 1] == part[:, k]))
    r, c = np.nonzero(labels)
    r, c = r[keep_mask[r]], c[keep_mask[r]]
    v = scores[r, c]
    p = labels[r, c] == 1
    o = np.lexsort((v, c))
    c, v, p = c[o], v[o], p[o]
    same = np.zeros(c.size, dtype=bool)
    dup = (c[1:] == c[:-1]) & (v[1:] == v[:-1])
    same[1:] |= dup
    same[:-1] |= dup
    return {f"kept_images_tied_at_K{k}": n for k, n in amb.items()} | {
        "ap_positives_in_a_tie": int(np.count_nonzero(same & p)),
        "ap_positives": int(np.count_nonzero(p)),
    }


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def peak_extra_memory_mb(fn) -> tuple[float, str]:
    """Extra resident memory of ``fn()`` at its peak (MB) and how it was measured."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, or reusing them would not show
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark VmHWM to the current resident set
        before = _rss_kb("VmRSS")
        fn()
        return (_rss_kb("VmHWM") - before) / 1024, "VmHWM - VmRSS before"
    except OSError:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        return peak / 2**20, "tracemalloc (numpy only; misses torch allocations)"


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
    fast_runs = {}  # torch threads -> (median wall s, median CPU s, all wall s)
    for th in args.threads:
        torch.set_num_threads(th)
        times, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            res = evaluate_multilabel(scores, labels, ks=ks, image_filter="has_positive")
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        fast_runs[th] = (statistics.median(times), statistics.median(cpu), times)
    peak_mb, peak_how = peak_extra_memory_mb(
        lambda: evaluate_multilabel(scores, labels, ks=ks, image_filter="has_positive")
    )

    # reference AP (per label)
    C = scores.shape[1]
    keep = (labels == 1).any(axis=1)
    cols = (
        np.arange(C)
        if not args.ref_labels or args.ref_labels >= C
        else np.unique(np.linspace(0, C - 1, args.ref_labels).round().astype(np.int64))
    )
    t0, c0 = time.perf_counter(), time.process_time()
    ref_ap = reference_ap(scores, labels, keep, cols)
    t_ap, c_ap = time.perf_counter() - t0, time.process_time() - c0
    t_ap_all = t_ap * C / cols.size

    fast = mean_average_precision(scores, labels, image_filter="has_positive")["per_class"][cols]
    ap_diff = float(np.nanmax(np.abs(fast - ref_ap))) if np.isfinite(ref_ap).any() else 0.0
    ap_ok = bool(np.array_equal(np.isnan(fast), np.isnan(ref_ap)) and ap_diff <= 1e-9)
    ref_map = float(np.nanmean(ref_ap)) if cols.size == C else None

    # reference P/R/F1@K (per image, on a row subset)
    kept = np.flatnonzero(keep)
    sub = kept[: args.ref_rows] if args.ref_rows else kept
    s_sub, y_sub = scores[sub], labels[sub]
    t0, c0 = time.perf_counter(), time.process_time()
    ref_prf = reference_prf(s_sub, y_sub, ks)
    t_prf, c_prf = time.perf_counter() - t0, time.process_time() - c0
    t_prf_all = t_prf * kept.size / max(sub.size, 1)
    c_ref_all = c_ap * C / cols.size + c_prf * kept.size / max(sub.size, 1)
    fast_prf = precision_recall_f1_at_k(s_sub, y_sub, ks=ks)
    prf_ok = all(fast_prf[k] == v for k, v in ref_prf.items())

    t_ref = t_ap_all + t_prf_all
    return {
        "space": name,
        "N": int(scores.shape[0]),
        "C": int(C),
        "n_images_kept": res["n_images"],
        "result": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in res.items()},
        "fast": [
            {
                "torch_threads": th,
                "s_median": round(t, 3),
                "s_all": [round(x, 3) for x in ts],
                "cpu_s_median": round(c, 3),
                "speedup_est": round(t_ref / t, 1),
                "speedup_cpu_time_est": round(c_ref_all / c, 1),
            }
            for th, (t, c, ts) in fast_runs.items()
        ],
        "fast_peak_extra_MB": round(peak_mb, 1),
        "peak_measured_as": peak_how,
        "ref_ap_labels_timed": int(cols.size),
        "ref_ap_s": round(t_ap, 2),
        "ref_ap_s_all_labels": round(t_ap_all, 2),
        "ref_ap_extrapolated": bool(cols.size < C),
        "ref_mAP": None if ref_map is None else round(ref_map, 6),
        "mAP_abs_diff": None if ref_map is None else abs(ref_map - res["mAP"]),
        "ap_max_abs_diff": ap_diff,
        "ap_identical_1e-9": ap_ok,
        "ref_prf_rows_timed": int(sub.size),
        "ref_prf_s": round(t_prf, 2),
        "ref_prf_s_all_rows": round(t_prf_all, 2),
        "ref_prf_extrapolated": bool(sub.size < kept.size),
        "prf_identical_on_subset": prf_ok,
        "ref_total_s_est": round(t_ref, 2),
        "ref_cpu_s_est": round(c_ref_all, 2),
        "ties": tie_stats(scores, labels, ks),
    }


# --------------------------------------------------------------------------------------------- dense NUS case


def make_nus_data(
    n: int, c: int, n_unseen: int, seed: int, tie_rows: float, zero_frac: float
) -> tuple[np.ndarray, np.ndarray]:
    """Dense +-1 labels (``zero_frac`` of them 0) with Zipf-like per-class positive rates, float32 scores."""
    rng = np.random.default_rng(seed)
    n_seen = c - n_unseen
    rate = np.empty(c)
    for sl, per_image in ((slice(0, n_seen), 6.0), (slice(n_seen, c), 1.9)):
        w = rng.permutation(1.0 / np.arange(1, sl.stop - sl.start + 1) ** 0.8)
        rate[sl] = np.minimum(per_image * w / w.sum(), 0.5)
    scores = np.empty((n, c), dtype=np.float32)
    labels = np.empty((n, c), dtype=np.int8)
    for r0 in range(0, n, 4096):
        r1 = min(n, r0 + 4096)
        u = rng.random((r1 - r0, c), dtype=np.float32)
        lab = np.where(u < rate, 1, -1).astype(np.int8)
        if zero_frac:
            lab[rng.random((r1 - r0, c), dtype=np.float32) < zero_frac] = 0
        labels[r0:r1] = lab
        scores[r0:r1] = rng.standard_normal((r1 - r0, c), dtype=np.float32)
        scores[r0:r1] += lab == 1
    tied = np.flatnonzero(rng.random(n) < tie_rows)
    for i in range(0, tied.size, 4096):
        r = tied[i : i + 4096]
        scores[r] = torch.from_numpy(scores[r]).bfloat16().float().numpy()
    return scores, labels


def biam_compute_ap(pred: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    """BiAM's NUS-WIDE AP (``util_nus.compute_AP`` semantics) on the CPU: per class, the annotated images sorted
    by score descending (ties in sort order), float32 cumulative hits / misses, AP = sum of the precision at each
    hit / number of positives; a class without a positive keeps AP 0."""
    ap = torch.zeros(pred.shape[1])
    for j in range(pred.shape[1]):
        y = lab[:, j]
        if not bool((y > 0).any()):
            continue
        annotated = y.abs() == 1
        hit_all = y[annotated].clamp(0, 1)
        _, order = pred[:, j][annotated].sort(descending=True)
        hit = (hit_all[order] == 1).float()
        tp = hit.cumsum(0)
        fp = (1 - hit).cumsum(0)
        ap[j] = (hit * (tp / (tp + fp))).sum() / hit_all.sum()
    return ap


def load_previous(rev: str) -> types.ModuleType:
    """``unseen.multilabel.metrics`` as of git revision ``rev`` (read with ``git show``), as a module."""
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(
        ["git", "show", f"{rev}:src/unseen/multilabel/metrics.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    mod = types.ModuleType("unseen_metrics_previous")
    mod.__file__ = f"{rev}:src/unseen/multilabel/metrics.py"
    sys.modules[mod.__name__] = mod  # dataclass / NamedTuple machinery looks the module up
    exec(compile(text, mod.__file__, "exec"), mod.__dict__)
    return mod


def bench_nus(name: str, scores: np.ndarray, labels: np.ndarray, args: argparse.Namespace, prev) -> dict:
    C = scores.shape[1]
    cols = (
        np.arange(C)
        if not args.ref_labels or args.ref_labels >= C
        else np.unique(np.linspace(0, C - 1, args.ref_labels).round().astype(np.int64))
    )
    pred_t = torch.from_numpy(np.ascontiguousarray(scores[:, cols]))
    lab_t = torch.from_numpy(np.ascontiguousarray(labels[:, cols])).float()  # BiAM keeps float32 labels
    out: dict = {"space": name, "N": int(scores.shape[0]), "C": int(C), "ref_labels_timed": int(cols.size)}
    runs = []
    for th in args.threads:
        torch.set_num_threads(th)
        limit = threadpool_limits(limits=th) if threadpool_limits else nullcontext()
        with limit:
            t = {"ref": [], "fast": [], "prev": [], "ref_cpu": [], "fast_cpu": []}
            for _ in range(args.repeats):  # interleaved: a load change hits all of them alike
                t0, c0 = time.perf_counter(), time.process_time()
                ref = biam_compute_ap(pred_t, lab_t).double().numpy()
                t["ref"].append((time.perf_counter() - t0) * C / cols.size)
                t["ref_cpu"].append((time.process_time() - c0) * C / cols.size)
                t0, c0 = time.perf_counter(), time.process_time()
                fast = mean_average_precision(scores, labels)
                t["fast"].append(time.perf_counter() - t0)
                t["fast_cpu"].append(time.process_time() - c0)
                if prev is not None:
                    t0 = time.perf_counter()
                    old = prev.mean_average_precision(scores, labels)
                    t["prev"].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in t.items() if v}
        run = {
            "threads": th,
            "ref_s_median": round(med["ref"], 2),
            "fast_s_median": round(med["fast"], 3),
            "speedup": round(med["ref"] / med["fast"], 1),
            "speedup_cpu_time": round(med["ref_cpu"] / med["fast_cpu"], 1),
            "ref_s_all": [round(x, 2) for x in t["ref"]],
            "fast_s_all": [round(x, 3) for x in t["fast"]],
        }
        if prev is not None:
            run |= {
                "previous_s_median": round(med["prev"], 2),
                "previous_s_all": [round(x, 2) for x in t["prev"]],
                "speedup_vs_previous": round(med["prev"] / med["fast"], 1),
                "ref_over_previous": round(med["ref"] / med["prev"], 2),
            }
        runs.append(run)
    out["runs"] = runs
    out["ref_extrapolated"] = bool(cols.size < C)
    out["fast_peak_extra_MB"], out["peak_measured_as"] = peak_extra_memory_mb(
        lambda: mean_average_precision(scores, labels)
    )
    out["fast_peak_extra_MB"] = round(out["fast_peak_extra_MB"], 1)
    per_class = fast["per_class"]
    d = np.abs(per_class[cols] - ref)
    out["mAP"] = fast["mAP"]
    out["ref_mAP_over_timed_labels"] = float(ref.mean())
    out["max_abs_diff_vs_ref"] = float(d.max())
    out["labels_diff_vs_ref_over_1e-5"] = int((d > 1e-5).sum())
    sk = np.unique(np.linspace(0, C - 1, min(C, args.sklearn_labels)).round().astype(np.int64))
    sk_ap = reference_ap(scores, labels, np.ones(scores.shape[0], dtype=bool), sk)
    out["sklearn_labels_checked"] = int(sk.size)
    out["max_abs_diff_vs_sklearn"] = float(np.nanmax(np.abs(per_class[sk] - sk_ap)))
    if prev is not None:
        out["previous_rev"] = args.previous_rev
        out["previous_identical_bits"] = bool(
            np.array_equal(old["per_class"], per_class, equal_nan=True) and old["mAP"] == fast["mAP"]
        )
        out["previous_peak_extra_MB"] = round(
            peak_extra_memory_mb(lambda: prev.mean_average_precision(scores, labels))[0], 1
        )
    return out


def main_nus(args: argparse.Namespace) -> None:
    n, c = args.n or 107_859, args.c or 1_006
    n_unseen = 81 if args.unseen is None else args.unseen
    prev = load_previous(args.previous_rev) if args.previous_rev else None
    t0 = time.perf_counter()
    scores, labels = make_nus_data(n, c, n_unseen, args.seed, args.tie_rows, args.zero_frac)
    pos = labels == 1
    print(
        json.dumps(
            {
                "case": "nus (dense)",
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
                "numpy": np.__version__,
                "torch": torch.__version__,
                "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "N": n,
                "C": c,
                "gen_s": round(time.perf_counter() - t0, 1),
                "positives_per_image_seen": round(float(pos[:, : c - n_unseen].sum()) / n, 2),
                "positives_per_image_unseen": round(float(pos[:, c - n_unseen :].sum()) / n, 2),
                "unlabelled_fraction": round(float(np.count_nonzero(labels == 0)) / labels.size, 4),
                "rows_with_bf16_ties": args.tie_rows,
            }
        )
    )
    del pos
    spaces = [("ZSL", slice(c - n_unseen, c))] + ([] if args.skip_gzsl else [("GZSL", slice(0, c))])
    for name, sl in spaces:
        print(json.dumps(bench_nus(name, scores[:, sl], labels[:, sl], args, prev), indent=1), flush=True)
    print(
        json.dumps(
            {
                "process_ru_maxrss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "load_avg_1min_end": round(os.getloadavg()[0], 2),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["openimages", "nus"], default="openimages")
    ap.add_argument("--n", type=int, default=None, help="images (default: 125,436 / nus 107,859)")
    ap.add_argument("--c", type=int, default=None, help="labels (default: 7,586 / nus 1,006)")
    ap.add_argument("--unseen", type=int, default=None, help="unseen labels (default: 400 / nus 81)")
    ap.add_argument("--annotated-seen", type=int, default=4_728)
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--ref-labels", type=int, default=0, help="labels timed in the AP reference (0 = all)")
    ap.add_argument(
        "--ref-rows", type=int, default=0, help="images in the per-image P/R/F1 reference (0 = all)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tie-rows", type=float, default=0.1, help="fraction of images with bf16-rounded scores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-gzsl", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[0],
        help="torch intra-op thread counts to time the fast path with (0 = torch's default)",
    )
    ap.add_argument("--zero-frac", type=float, default=0.0, help="nus: fraction of unlabelled (0) entries")
    ap.add_argument("--previous-rev", default=None, help="nus: also time the AP of this git revision")
    ap.add_argument("--sklearn-labels", type=int, default=12, help="nus: labels checked against sklearn")
    args = ap.parse_args()
    args.threads = [t or torch.get_num_threads() for t in args.threads]
    if args.case == "nus":
        main_nus(args)
        return
    args.n, args.c = args.n or 125_436, args.c or 7_586
    args.unseen = 400 if args.unseen is None else args.unseen

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    scores, labels = make_data(args.n, args.c, args.unseen, args.annotated_seen, args.seed, args.tie_rows)
    t_gen = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
                "numpy": np.__version__,
                "torch": torch.__version__,
                "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "N": args.n,
                "C": args.c,
                "gen_s": round(t_gen, 1),
                "scores_GB": round(scores.nbytes / 1e9, 2),
                "labels_GB": round(labels.nbytes / 1e9, 2),
                "nonzero_labels_per_image": round(float(np.count_nonzero(labels)) / args.n, 2),
            }
        )
    )
    zsl = bench("ZSL", scores[:, args.c - args.unseen :], labels[:, args.c - args.unseen :], args)
    print(json.dumps(zsl, indent=1))
    if not args.skip_gzsl:
        gzsl = bench("GZSL", scores, labels, args)
        print(json.dumps(gzsl, indent=1))
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "process_ru_maxrss_GB": round(rss1 / 2**20, 2),
                "ru_maxrss_before_data_GB": round(rss0 / 2**20, 2),
                "load_avg_1min_end": round(os.getloadavg()[0], 2),
                "note": "ru_maxrss covers the whole process (data, references, fast path)",
            }
        )
    )


if __name__ == "__main__":
    main()
