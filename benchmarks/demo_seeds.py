"""An embedded benchmark over several training seeds (world and pretrained backbone fixed): mean ± std per method.

One demo run is one draw; the protocol asks for mean ± std over >= 3 seeds before methods are compared.

    python benchmarks/demo_seeds.py --setting attribute --seeds 0 1 2 --output-dir runs/seeds
    python benchmarks/demo_seeds.py --setting compositional --seeds 0 1 2

Columns are the demo table's (``get_task(setting).demo``); selection rules are the demo's
(epoch, calibration and open-world threshold chosen on validation; test evaluated once per run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from unseen import runs
from unseen.config import load_config
from unseen.registry import get_task, list_settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", default="attribute", choices=list_settings())
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output-dir", default="runs/demo-seeds")
    p.add_argument("--json", default="", help="also write the per-seed values here")
    args = p.parse_args()
    demo = get_task(args.setting).demo
    keys = [(k, label.strip()) for k, label in demo.columns if k not in ("method", "time")]
    out: dict[str, dict[str, list[float]]] = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for name in demo.methods:
            cfg = load_config(
                runs.resolve_config_path(f"{args.setting}/{name}"),
                [f"seed={seed}", f"output_dir={args.output_dir}", f"name={name}-seed{seed}"],
            )
            res = runs.run_config(cfg, runs.new_run_dir(cfg))
            row = runs.demo_row(res)
            vals = out.setdefault(row["method"], {k: [] for k, _ in keys})
            for k, _ in keys:
                if row.get(k) is not None:
                    vals[k].append(float(row[k]))
            print(
                f"seed {seed} {row['method']:14s} "
                + " ".join(f"{label}={100 * row[k]:.1f}" for k, label in keys if row.get(k) is not None),
                flush=True,
            )
    print(
        f"\n{args.setting}: mean ± std over seeds {args.seeds} (%; selection on validation), "
        f"{time.perf_counter() - t0:.0f}s"
    )
    print("| method | " + " | ".join(label for _, label in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for method, row in out.items():
        cells = [
            (
                f"{100 * statistics.mean(v):.1f} ± {100 * statistics.stdev(v):.1f}"
                if len(v) > 1
                else f"{100 * v[0]:.1f}"
                if v
                else ""
            )
            for v in row.values()
        ]
        print(f"| {method} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
