"""Run folders and the library entry points behind the CLI (train, eval, predict, demo, data check)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unseen.config import RunConfig, load_config

log = logging.getLogger("unseen")

PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"


def resolve_config_path(name: str | Path) -> Path:
    """A path, or a packaged config name such as ``attribute/mgmrn_cub`` (``.yaml`` optional)."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (PACKAGE_CONFIGS / f"{name}", PACKAGE_CONFIGS / f"{name}.yaml"):
        if cand.is_file():
            return cand
    available = sorted(str(f.relative_to(PACKAGE_CONFIGS))[:-5] for f in PACKAGE_CONFIGS.glob("*/*.yaml"))
    raise FileNotFoundError(f"config '{name}' not found (a file path or one of: {', '.join(available)})")


def new_run_dir(cfg: RunConfig) -> Path:
    """``output_dir/name``; never reuses an existing folder (use ``--resume`` to continue one)."""
    name = cfg.name or f"{cfg.model.name}_{cfg.data.name}_{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.output_dir) / name
    if os.environ.get("RANK", "0") == "0" and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(
            f"{run_dir} already exists: choose another name= or continue it with --resume {run_dir}"
        )
    return run_dir


def train(
    config: str | Path | None, overrides: Sequence[str] = (), resume: str | Path | None = None
) -> dict[str, Any]:
    """Train and evaluate one run; with ``resume`` continue the run folder (its saved config + overrides)."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml", list(overrides))
    else:
        cfg = load_config(resolve_config_path(config) if config else None, list(overrides))
        run_dir = new_run_dir(cfg)
    return run_config(cfg, run_dir, resume is not None)


SETTINGS = ("attribute", "multilabel", "compositional")


def _task(setting: str) -> Any:
    """The setting's task module: ``run_class``, ``evaluate_saved(run_dir)``, ``predict_images(...)``,
    ``demo_row(results)`` / ``DEMO_COLUMNS`` / ``DEMO_TITLE`` / ``DEMO_METHODS``."""
    import importlib

    if setting not in SETTINGS:
        raise ValueError(f"unknown setting '{setting}' (one of {', '.join(SETTINGS)})")
    return importlib.import_module(f"unseen.{setting}.task")


def run_config(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train + evaluate a validated config in ``run_dir`` (the setting's protocol); returns results.json's content."""
    results = _task(cfg.setting).run_class(cfg, run_dir, resume=resume).run()
    results["run_dir"] = str(run_dir)
    return results


def _run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder holding ``checkpoint`` (the folder itself, or the nearest parent with a config.yaml)."""
    p = Path(checkpoint).resolve()
    for cand in (p, *p.parents):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"{checkpoint}: not a run folder or a file inside one (no config.yaml found)")


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Recompute a finished run's test metrics from its saved model (or saved scores for closed-form models)."""
    run_dir = _run_dir_of(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    return _task(cfg.setting).evaluate_saved(run_dir)


def predict(
    checkpoint: str | Path, images: Sequence[str | Path], classes: str = "all", topk: int = 5
) -> list[dict]:
    """Top-k classes (attribute), labels (multilabel) or pairs (compositional) with scores for each image.

    ``checkpoint`` = a run folder (or a file inside it). ``classes``: ``all`` (GZSL space), ``seen``, ``unseen``,
    or comma-separated names. Returns ``[{"image", "top": [{"class", "score", "seen"}, ...]}, ...]``.
    """
    run_dir = _run_dir_of(checkpoint)
    for path in images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: image not found")
    cfg = load_config(run_dir / "config.yaml")
    return _task(cfg.setting).predict_images(run_dir, [str(i) for i in images], classes, topk)


def select_classes(names: Sequence[str], seen: Sequence[int], classes: str) -> np.ndarray:
    """Indices for ``--classes``: all | seen | unseen | comma-separated names (unknown names are an error)."""
    seen_set = set(int(i) for i in seen)
    if classes == "all":
        return np.arange(len(names))
    if classes in ("seen", "unseen"):
        want = classes == "seen"
        return np.array([i for i in range(len(names)) if (i in seen_set) == want])
    wanted = [c.strip() for c in classes.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ValueError(
            f"--classes: unknown class name(s) {unknown}; the run knows {len(names)} "
            f"(e.g. {', '.join(list(names)[:5])})"
        )
    return np.array([list(names).index(c) for c in wanted])


def demo(setting: str = "attribute", output_dir: str | Path = "runs", overrides: Sequence[str] = ()) -> str:
    """Train and evaluate every method of ``setting`` on the embedded benchmark; return the printed table."""
    from unseen import report

    task = _task(setting)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(output_dir) / f"demo-{setting}-{stamp}"
    rows, chance = [], None
    t0 = time.perf_counter()
    for name in task.DEMO_METHODS:
        cfg = load_config(resolve_config_path(f"{setting}/{name}"), [f"output_dir={root}", *overrides])
        cfg.name = cfg.model.name
        log.info("demo: %s", cfg.model.name)
        t = time.perf_counter()
        res = run_config(cfg, new_run_dir(cfg))
        rows.extend(task.demo_rows(res, f"{time.perf_counter() - t:.0f}s"))
        chance = res.get("chance")
    if chance is not None:
        rows.extend(task.demo_rows({"method": "chance (random scores)", "metrics": chance}, ""))
    table = report.format_table(rows, task.DEMO_COLUMNS, title=task.DEMO_TITLE)
    table += f"\n{task.DEMO_FOOTER}\nrun folders and plots: {root}   total {time.perf_counter() - t0:.0f}s"
    (root / "summary.txt").write_text(table + "\n")
    return table
