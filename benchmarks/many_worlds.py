"""Run a setting's demo methods over many embedded worlds and training seeds, then summarise (issue 13).

    python benchmarks/many_worlds.py attribute --worlds 0-4 --seeds 0,1,2 --out bench/worlds-attribute --jobs 2
    python benchmarks/many_worlds.py attribute --preset hard --worlds 0-4 --seeds 0 --out bench/worlds-attribute-hard
    python benchmarks/many_worlds.py attribute --worlds 0-4 --seeds 0 --out bench/valworlds-attribute eval.split=val

Each (world, seed, method) is one ordinary `unseen train <setting>/demo_<method>` run in
``OUT/w<world>-s<seed>-<method>`` (a finished one is kept and not rerun, so the script can be stopped and
restarted). The first run of every world builds it (render, pretraining) alone; the rest run ``--jobs`` at a time,
each with ``cores / jobs`` threads (``--cores``: all of the machine's unless told, e.g. to run two settings side by
side). The summary (``OUT/summary.md``) gives, per method, the mean ± std over all runs,
the per-world means with each method's rank in that world, and the gap to chance; ``--preset hard`` uses the
setting's harder world (fewer training images, more clutter or attribute overlap).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from unseen.registry import get_task
from unseen.runs import parse_seeds

# the harder world of each setting: fewer training images and more clutter / attribute overlap
HARD = {
    "attribute": [
        "data.world.images_per_class=24",
        "data.world.attribute_noise=0.2",
        "data.world.min_class_distance=1",
        "data.world.clutter=0.9",
    ],
    "multilabel": ["data.world.n_train=1200", "data.world.clutter=1.5", "data.world.max_distractors=3"],
    "compositional": [
        "data.world.train_images=8",
        "data.world.clutter=1.0",
        "data.world.distractor_prob=0.5",
    ],
}
RANK_KEY = {"attribute": "H", "multilabel": "zsl/mAP", "compositional": "cw/AUC"}  # ranks worlds by this


def demo(setting: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The setting's demo methods (config names without ``demo_``) and metric columns."""
    spec = get_task(setting).demo
    methods = tuple(m.removeprefix("demo_") for m in spec.methods)
    return methods, tuple(c for c in spec.columns if c[0] not in ("method", "time"))


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def parse_range(text: str) -> list[int]:
    if "-" in text and "," not in text:
        lo, hi = (int(v) for v in text.split("-"))
        return list(range(lo, hi + 1))
    return parse_seeds(text)


def run_one(
    setting: str, method: str, world: int, seed: int, out: Path, extra: list[str], threads: int
) -> float:
    name = f"w{world}-s{seed}-{method}"
    if (out / name / "results.json").is_file():
        return 0.0
    if (out / name).exists():  # an unfinished run: resume it
        cmd = [sys.executable, "-m", "unseen", "train", "--resume", str(out / name)]
    else:
        cmd = [
            sys.executable, "-m", "unseen", "train", f"{setting}/demo_{method}",
            f"data.world.seed={world}", f"seed={seed}", f"output_dir={out}", f"name={name}",
            "train.progress=false", *extra,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise RuntimeError(f"{name} failed (exit {rc}); see {out / f'{name}.log'}")
    took = time.perf_counter() - t0
    print(f"{name}: {took:.0f} s", flush=True)
    return took


def run_all(args: argparse.Namespace, out: Path) -> None:
    extra = (HARD[args.setting] if args.preset == "hard" else []) + args.overrides
    jobs = [(m, w, s) for w in args.worlds for s in args.seeds for m in args.methods]
    cores = args.cores
    # the cheapest method (listed last) builds each world and its pretrained backbone, alone
    builder = args.methods[-1]
    firsts = {w: next(j for j in jobs if j[1] == w and j[0] == builder) for w in args.worlds}
    for job in firsts.values():
        run_one(args.setting, *job, out, extra, cores)
    rest = [j for j in jobs if j not in firsts.values()]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda j: run_one(args.setting, *j, out, extra, max(1, cores // args.jobs)), rest))


def load(out: Path, setting: str, methods: tuple[str, ...]) -> dict[tuple[str, int, int], dict]:
    runs = {}
    for path in sorted(out.glob("w*-s*-*/results.json")):
        w, s, m = path.parent.name.split("-", 2)
        if m in methods:
            runs[(m, int(w[1:]), int(s[1:]))] = json.loads(path.read_text())
    return runs


def value(r: dict, key: str) -> float:
    """A headline metric, or one of the labelled test-selected (oracle) block."""
    return r["metrics"][key] if key in r["metrics"] else r["oracle_test_selected"][key]


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def summarise(out: Path, setting: str, methods: tuple[str, ...]) -> str:
    runs = load(out, setting, methods)
    if not runs:
        raise SystemExit(f"no finished runs under {out}")
    worlds = sorted({w for _, w, _ in runs})
    cols = demo(setting)[1]
    lines = [f"{len(runs)} runs, worlds {worlds}; mean ± std over all (world, seed) runs, in %", ""]
    key = RANK_KEY[setting]
    head = " | ".join(c for _, c in cols)
    lines += [f"| method | {head} | {key} - chance | n |", "|---" * (len(cols) + 3) + "|"]
    for m in methods:
        rs = [r for (m2, _, _), r in runs.items() if m2 == m]
        if rs:
            cells = " | ".join(fmt([value(r, k) for r in rs]) for k, _ in cols)
            gap = fmt([value(r, key) - r["chance"][key] for r in rs])
            lines.append(f"| {m} | {cells} | {gap} | {len(rs)} |")
    chance = next(iter(runs.values())).get("chance", {})
    if chance:
        cells = " | ".join(f"{100 * chance[k]:.1f}" if k in chance else "–" for k, _ in cols)
        lines.append(f"| chance (one world) | {cells} | | |")
    lines += ["", f"Per world: mean {key} over seeds (rank in that world)", ""]
    lines += ["| world | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    ranks: dict[str, list[int]] = {m: [] for m in methods}
    for w in worlds:
        means = {}
        for m in methods:
            vals = [value(r, key) for (m2, w2, _), r in runs.items() if m2 == m and w2 == w]
            if vals:
                means[m] = statistics.fmean(vals)
        order = sorted(means, key=lambda m: -means[m])
        for m in means:
            ranks[m].append(order.index(m) + 1)
        lines.append(
            f"| {w} | "
            + " | ".join(
                f"{100 * means[m]:.1f} ({order.index(m) + 1})" if m in means else "–" for m in methods
            )
            + " |"
        )
    lines.append(
        "| mean rank | "
        + " | ".join(f"{statistics.fmean(ranks[m]):.2f}" if ranks[m] else "–" for m in methods)
        + " |"
    )
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("setting", choices=sorted(HARD))
    p.add_argument("--worlds", type=parse_range, default=[0, 1, 2, 3, 4])
    p.add_argument("--seeds", type=parse_range, default=[0, 1, 2])
    p.add_argument("--methods", type=lambda s: tuple(s.split(",")), default=None)
    p.add_argument("--preset", choices=("default", "hard"), default="default")
    p.add_argument("--jobs", type=positive_int, default=2)
    p.add_argument(
        "--cores",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="threads in all (builders use them all)",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every run (e.g. eval.split=val)")
    args = p.parse_intermixed_args()
    args.methods = args.methods or demo(args.setting)[0]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        t0 = time.perf_counter()
        run_all(args, args.out)
        print(f"all runs: {time.perf_counter() - t0:.0f} s")
    print(summarise(args.out, args.setting, args.methods))


if __name__ == "__main__":
    main()
