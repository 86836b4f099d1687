"""The embedded attribute benchmark over several training seeds (world fixed): mean ± std per method.

One demo run is one draw; the protocol asks for mean ± std over >= 3 seeds before methods are compared.

    python benchmarks/demo_seeds.py --seeds 0 1 2 --output-dir runs/seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from unseen import runs
from unseen.config import load_config

KEYS = ("czsl_top1", "U", "S", "H")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output-dir", default="runs/demo-seeds")
    p.add_argument("--json", default="")
    args = p.parse_args()
    out: dict[str, dict[str, list[float]]] = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for name in runs.DEMO_METHODS["attribute"]:
            cfg = load_config(runs.resolve_config_path(f"attribute/{name}"),
                              [f"seed={seed}", f"output_dir={args.output_dir}", f"name={name}-seed{seed}"])
            res = runs.run_config(cfg, runs.new_run_dir(cfg))
            row = out.setdefault(res["method"], {k: [] for k in KEYS})
            for k in KEYS:
                row[k].append(res["metrics"][k])
            print(f"seed {seed} {res['method']:6s} " + " ".join(f"{k}={100 * res['metrics'][k]:.1f}" for k in KEYS),
                  flush=True)
    print(f"\nmean ± std over seeds {args.seeds} (%; gamma and epoch chosen on validation), {time.perf_counter() - t0:.0f}s")
    print("method | " + " | ".join(KEYS))
    for method, row in out.items():
        cells = [f"{100 * statistics.mean(v):.1f} ± {100 * statistics.stdev(v):.1f}" if len(v) > 1 else f"{100 * v[0]:.1f}"
                 for v in row.values()]
        print(f"{method} | " + " | ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
