"""Run folders and the library entry points behind the CLI (train, eval, predict, demo)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unseen.config import ConfigError, RunConfig, config_hash, load_config, load_run_config
from unseen.registry import get_task
from unseen.task import RunFolderClaim, open_run

log = logging.getLogger("unseen")

PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list[str]:
    """Runnable packaged configs (``setting/name``); ``_base_*`` fragments are only included by others."""
    return sorted(
        f"{f.parent.name}/{f.stem}" for f in PACKAGE_CONFIGS.glob("*/*.yaml") if not f.name.startswith("_")
    )


def resolve_config_path(name: str | Path) -> Path:
    """A path, or a packaged config name such as ``attribute/mgmrn_cub`` (``.yaml`` optional)."""
    p = Path(name)
    if p.is_file():
        return p
    stem = str(name)[:-5] if str(name).endswith(".yaml") else str(name)
    if stem in packaged_configs():
        return PACKAGE_CONFIGS / f"{stem}.yaml"
    raise FileNotFoundError(
        f"config '{name}' not found (a file path or one of: {', '.join(packaged_configs())})"
    )


def default_run_name(cfg: RunConfig) -> str:
    """``<model>_<dataset>_<time>``; the dataset part is the setting's (a czsl folder's benchmark, e.g.
    ``mit-states``, not ``czsl``: several of them can share an output folder), else ``data.name``."""
    dataset = get_task(cfg.setting).run_name_dataset(cfg)
    return f"{cfg.model.name}_{dataset}_{time.strftime('%Y%m%d-%H%M%S')}"


def new_run_dir(cfg: RunConfig) -> Path:
    """``output_dir/name``; never reuses an existing folder (use ``--resume`` to continue one)."""
    name = cfg.name or default_run_name(cfg)
    run_dir = Path(cfg.output_dir) / name
    if (
        os.environ.get("RANK", "0") == "0"
        and run_dir.is_dir()
        and any(f.name != ".lock" for f in run_dir.iterdir())
    ):
        raise FileExistsError(
            f"{run_dir} already exists: choose another name= or continue it with --resume {run_dir}"
        )
    return run_dir


def train(
    config: str | Path | None, overrides: Sequence[str] = (), resume: str | Path | None = None
) -> dict[str, Any]:
    """Train and evaluate one run; with ``resume`` continue the run folder (its saved config + overrides)."""
    if resume is not None:
        if config is not None:
            raise ConfigError(
                f"--resume {resume} continues that run with its saved config; do not also give a config ({config})"
            )
        run_dir = Path(resume)
        cfg = load_run_config(run_dir, list(overrides))
        finished = _finished(run_dir, cfg)
        if finished is not None:
            return finished
        return run_config(cfg, run_dir, resume=True)
    cfg = load_config(resolve_config_path(config) if config else None, list(overrides))
    return run_config(cfg, new_run_dir(cfg))


def _finished(run_dir: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The results of ``run_dir`` if it finished with exactly ``cfg`` (resuming it would only test the same model
    again), else None. A folder another process is writing to is refused as for any resume."""
    from unseen.report import read_results

    if not (run_dir / "results.json").is_file():
        return None
    results = read_results(run_dir)
    if results.get("config_hash") != config_hash(cfg):  # overrides, or a run killed after they were saved
        return None
    RunFolderClaim(run_dir, resume=True).release()
    log.info("%s is finished: nothing to resume (`unseen eval %s` recomputes its metrics)", run_dir, run_dir)
    return {**results, "run_dir": str(run_dir)}


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or ``0-4`` -> seeds (distinct, in order)."""
    seeds: list[int] = []
    try:
        for part in str(text).split(","):
            lo, _, hi = part.strip().partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ConfigError(f"--seeds: expected integers like 0,1,2 or 0-4, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct seeds, got {text!r}")
    return seeds


def train_seeds(
    config: str | Path, overrides: Sequence[str] = (), seeds: Sequence[int] = (0, 1, 2)
) -> tuple[Path, dict[str, Any]]:
    """One run per seed in ``output_dir/<name>/seed<S>``, then :func:`unseen.report.compare_runs` over them; the
    report is written next to the runs (``report.csv``, ``report.md``)."""
    from unseen import report

    path = resolve_config_path(config)
    first = load_config(path, list(overrides))
    sweep = Path(first.output_dir) / (first.name or default_run_name(first))
    if sweep.exists() and any(sweep.iterdir()):
        raise FileExistsError(f"{sweep} already exists: choose another name=")
    for seed in seeds:
        cfg = load_config(path, [*overrides, f"seed={seed}"])
        cfg.output_dir, cfg.name = str(sweep), f"seed{seed}"
        log.info("seed sweep: seed %d of %s", seed, list(seeds))
        run_config(cfg, new_run_dir(cfg))
    rep = report.compare_runs([sweep])
    report.write_report(rep, sweep / "report")
    return sweep, rep


def run_config(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train + evaluate a validated config in ``run_dir`` (the setting's task); returns results.json's content."""
    results = get_task(cfg.setting)(cfg, run_dir, resume=resume).run()
    results["run_dir"] = str(run_dir)
    return results


def run_folder(path: str | Path) -> Path:
    """The run folder holding ``path`` (the folder itself, or the nearest parent with a config.yaml)."""
    p = Path(path).resolve()
    for cand in (p, *p.parents):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"{path}: not a run folder or a file inside one (no config.yaml found)")


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Recompute a finished run's test metrics from its saved model (or saved scores for closed-form models)."""
    return open_run(run_folder(run_dir)).evaluate_saved()


def predict(
    checkpoint: str | Path, images: Sequence[str | Path], classes: str = "all", topk: int = 5
) -> list[dict]:
    """Top-k classes (attribute), labels (multilabel) or pairs (compositional) with scores for each image.

    ``checkpoint`` = a run folder (or a file inside it). ``classes``: ``all`` (GZSL space), ``seen``, ``unseen``,
    or comma-separated names. Returns ``[{"image", "top": [{"class", "score", "seen"}, ...]}, ...]``.
    """
    if topk < 1:
        raise ValueError(f"--topk: expected a positive number of classes, got {topk}")
    run_dir = run_folder(checkpoint)
    for path in images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: image not found")
    cfg = load_run_config(run_dir)
    return get_task(cfg.setting).predict(run_dir, [str(i) for i in images], classes, topk)


def demo_row(results: dict[str, Any], elapsed: str = "") -> dict[str, Any]:
    """One row of a demo table: the method, its headline metrics, its oracle block (labelled columns) and time."""
    return {
        "method": results["method"],
        **results["metrics"],
        **results.get("oracle_test_selected", {}),
        "time": elapsed,
    }


def demo(
    setting: str = "attribute",
    output_dir: str | Path = "runs",
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
) -> str:
    """Train and evaluate every method of ``setting`` on the embedded benchmark; return the printed table. With
    ``seeds``, every method runs once per training seed (world fixed) and the table shows mean ± std."""
    from unseen import report

    spec = get_task(setting).demo
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(output_dir) / f"demo-{setting}-{stamp}"
    rows: list[dict[str, Any]] = []
    chance = None
    t0 = time.perf_counter()
    sweep: list[int | None] = list(seeds) if seeds else [None]
    for seed in sweep:
        for name in spec.methods:
            extra = [] if seed is None else [f"seed={seed}"]
            cfg = load_config(
                resolve_config_path(f"{setting}/{name}"), [f"output_dir={root}", *overrides, *extra]
            )
            cfg.name = cfg.model.name if seed is None else f"{cfg.model.name}-seed{seed}"
            log.info("demo: %s", cfg.name)
            t = time.perf_counter()
            res = run_config(cfg, new_run_dir(cfg))
            rows.append(demo_row(res, f"{time.perf_counter() - t:.0f}s"))
            chance = res.get("chance")
    if seeds:
        rep = report.compare_runs([root])
        report.write_report(rep, root / "report")
        table = f"{spec.title}\n{rep['text']}"
    else:
        if chance is not None:
            rows.append({"method": "chance (random scores)", **chance, "time": ""})
        table = report.format_table(rows, spec.columns, title=spec.title)
    table += f"\n{spec.footer}\nrun folders and plots: {root}   total {time.perf_counter() - t0:.0f}s"
    (root / "summary.txt").write_text(table + "\n")
    return table
