"""Run folders and the library entry points behind the CLI (train, eval, predict, demo, data check)."""

from __future__ import annotations

import json
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
        raise FileExistsError(f"{run_dir} already exists: choose another name= or continue it with --resume {run_dir}")
    return run_dir


def train(config: str | Path | None, overrides: Sequence[str] = (), resume: str | Path | None = None) -> dict[str, Any]:
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


def run_config(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train + evaluate a validated config in ``run_dir`` (the setting's protocol); returns results.json's content."""
    if cfg.setting == "attribute":
        from unseen.attribute.task import AttributeRun

        results = AttributeRun(cfg, run_dir, resume=resume).run()
    else:
        raise NotImplementedError(f"setting '{cfg.setting}' is not implemented yet")
    results["run_dir"] = str(run_dir)
    return results


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Recompute a finished run's test metrics from its saved final model (or saved scores for closed-form models)."""
    from unseen.attribute.metrics import evaluate_attribute
    from unseen.attribute.task import AttributeRun, compute_scores, load_trained_model

    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    cfg = load_config(run_dir / "config.yaml")
    run = AttributeRun(cfg, run_dir)
    d = run.data
    test_idx = np.concatenate([d.test_seen_loc, d.test_unseen_loc])
    if cfg.model.name == "eszsl":
        scores = np.load(run_dir / "test_scores.npy").astype(np.float64)
    else:
        model, *_ = load_trained_model(run_dir)
        if cfg.features.cache:
            model.backbone = run._packed_backbone(model.backbone)
        model.to(run.device)
        scores = compute_scores(model, run.dataset(test_idx, train=False), run.class_attributes, run.device)
    gamma = results["selection"]["gamma_used"]
    return evaluate_attribute(scores, d.labels[test_idx], d.seen_classes, d.unseen_classes, gamma,
                              oracle=cfg.eval.oracle, ausuc_mode=cfg.eval.ausuc)


def predict(checkpoint: str | Path, images: Sequence[str | Path], classes: str = "all", topk: int = 5) -> list[dict]:
    """Top-k classes with scores for each image. ``checkpoint`` = a run folder (or a file inside it).

    ``classes``: ``all`` (GZSL space), ``seen``, ``unseen``, or comma-separated class names.
    """
    import torch
    from PIL import Image

    from unseen.attribute.task import load_trained_model
    from unseen.backbones import make_transforms

    run_dir = Path(checkpoint)
    if run_dir.is_file():
        run_dir = run_dir.parent.parent if run_dir.parent.name in ("final", "calib") else run_dir.parent
    model, cfg, sem, info = load_trained_model(run_dir)
    names = info["class_names"]
    if classes == "all":
        keep = np.arange(len(names))
    elif classes in ("seen", "unseen"):
        keep = sem[f"{classes}_classes"].numpy()
    else:
        wanted = [c.strip() for c in classes.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise ValueError(f"--classes: unknown class name(s) {unknown}; the run knows {len(names)} classes "
                             f"(e.g. {', '.join(names[:5])})")
        keep = np.array([names.index(c) for c in wanted])
    attrs = sem["class_attributes"][torch.as_tensor(keep)]
    seen = set(sem["seen_classes"].tolist())
    tf = make_transforms(info["image_size"], train=False)
    out = []
    for path in images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: image not found")
        x = tf(Image.open(path).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            s = model(x, attrs)["scores"][0]
        k = min(topk, len(keep))
        vals, idx = s.topk(k)
        out.append({"image": str(path), "top": [
            {"class": names[int(keep[i])], "score": float(v), "seen": int(keep[i]) in seen}
            for v, i in zip(vals.tolist(), idx.tolist())]})
    return out


DEMO_METHODS = {"attribute": ["demo_mgmrn", "demo_attn1", "demo_eszsl"]}


def demo(setting: str = "attribute", output_dir: str | Path = "runs", overrides: Sequence[str] = ()) -> str:
    """Train and evaluate every method of ``setting`` on the embedded benchmark; return the printed table."""
    from unseen import report

    if setting not in DEMO_METHODS:
        raise NotImplementedError(f"no demo for setting '{setting}' yet (available: {', '.join(DEMO_METHODS)})")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(output_dir) / f"demo-{setting}-{stamp}"
    rows, chance = [], None
    t0 = time.perf_counter()
    for name in DEMO_METHODS[setting]:
        cfg = load_config(resolve_config_path(f"{setting}/{name}"), [f"output_dir={root}", *overrides])
        cfg.name = cfg.model.name
        log.info("demo: %s", cfg.model.name)
        t = time.perf_counter()
        res = run_config(cfg, new_run_dir(cfg))
        m = res["metrics"]
        rows.append({"method": res["method"], "czsl": m["czsl_top1"], "U": m["U"], "S": m["S"], "H": m["H"],
                     "gamma": res["selection"]["gamma_used"], "oracle_H": res["oracle_test_selected"].get("oracle_H"),
                     "time": f"{time.perf_counter() - t:.0f}s"})
        chance = res["chance"]
    rows.append({"method": "chance (random scores)", "czsl": chance["czsl_top1"], "U": chance["U"], "S": chance["S"],
                 "H": chance["H"]})
    table = report.format_table(
        rows,
        [("method", "method"), ("czsl", "CZSL T1"), ("U", "U"), ("S", "S"), ("H", "H"), ("oracle_H", "H oracle*"),
         ("time", "time")],
        title=f"embedded attribute benchmark ({setting}): accuracies in %, gamma and epoch chosen on validation",
    )
    table += ("\n* oracle = gamma swept on the test set (the field's usual, optimistic number): for comparison only."
              f"\nrun folders and plots: {root}   total {time.perf_counter() - t0:.0f}s")
    (root / "summary.txt").write_text(table + "\n")
    return table
