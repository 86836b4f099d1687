"""Day-to-day tooling: metrics.csv and TensorBoard from a run, `unseen report` and seed sweeps, --version."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from test_compositional_run import _cfg

from unseen import runs
from unseen.cli import main
from unseen.config import dump_yaml, load_config


def test_run_writes_csv_and_tensorboard_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(tmp_path, "csp", ["train.log_to=[csv, tensorboard]"])
    res = runs.run_config(cfg, runs.new_run_dir(cfg))
    run_dir = Path(res["run_dir"])
    rows = list(csv.DictReader((run_dir / "train" / "metrics.csv").open()))
    jsonl = [json.loads(x) for x in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [int(r["epoch"]) for r in rows] == [r["epoch"] for r in jsonl] == [0, 1]
    assert [float(r["val/AUC"]) for r in rows] == [r["val/AUC"] for r in jsonl]
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = acc.Tags()
    assert [e.value for e in acc.Scalars("train/val/AUC")] == pytest.approx([r["val/AUC"] for r in jsonl])
    assert [e.step for e in acc.Scalars("train/train/loss")] == [0, 1]
    assert acc.Scalars("test/cw/AUC")[0].value == pytest.approx(res["metrics"]["cw/AUC"])
    assert "plots/seen_unseen_curve" in tags["images"]
    again = runs.evaluate_run(
        run_dir
    )  # the saved CSP model reproduces its metrics (its end-to-end test is slow)
    assert all(again[k] == pytest.approx(v, abs=1e-12) for k, v in res["metrics"].items())


def test_unknown_or_missing_tracking_backend(tmp_path, monkeypatch):
    import builtins

    from unseen.config import ConfigError

    with pytest.raises(
        ConfigError, match="train.log_to: expected one of csv, tensorboard, wandb, got 'mlflow'"
    ):
        _cfg(tmp_path, "csp", ["train.log_to=[mlflow]"])
    real_import = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb":
            raise ImportError("no wandb here")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    cfg = _cfg(tmp_path, "csp", ["train.log_to=[csv, wandb]"])
    with pytest.raises(ConfigError, match=r"wandb is not installed: pip install 'unseen\[wandb\]'"):
        runs.run_config(cfg, runs.new_run_dir(cfg))
    assert not (tmp_path / "csp" / "config.yaml").exists()  # refused before any work


def _fake_run(root: Path, name: str, seed: int, metrics: dict, overrides=()) -> Path:
    """A finished run folder as the task writes it (real config.yaml, results.json with the common block)."""
    cfg = load_config(runs.resolve_config_path("attribute/demo_mgmrn"), [f"seed={seed}", *overrides])
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(dump_yaml(cfg))
    res = {
        "setting": "attribute",
        "method": "mgmrn",
        "dataset": "shapes",
        "metrics": metrics,
        "selection": {"rule": "epoch by val H", "epoch": 3},
        "oracle_test_selected": {"note": "TEST", "oracle_H": metrics["H"] + 0.05},
        "seed": seed,
    }
    (d / "results.json").write_text(json.dumps(res))
    return d


def test_report_groups_seeds_into_mean_and_std(tmp_path, capsys):
    vals = {0: (0.30, 0.20, 0.25), 1: (0.34, 0.22, 0.27), 2: (0.29, 0.25, 0.26)}
    for seed, (t1, u, h) in vals.items():
        _fake_run(tmp_path / "sweep", f"seed{seed}", seed, {"czsl_top1": t1, "U": u, "S": 0.5, "H": h})
    _fake_run(
        tmp_path / "other", "lr", 0, {"czsl_top1": 0.1, "U": 0.1, "S": 0.1, "H": 0.1}, ["train.lr=0.01"]
    )
    assert (
        main(["report", str(tmp_path / "sweep"), str(tmp_path / "oth*"), "--output", str(tmp_path / "rep")])
        == 0
    )
    out = capsys.readouterr().out
    h = [100 * v[2] for v in vals.values()]
    expected = f"{statistics.fmean(h):.1f} ± {statistics.stdev(h):.1f}"
    assert expected in out and "attribute: mean ± std over seeds (%)" in out
    lines = [line for line in out.splitlines() if line.startswith("mgmrn")]
    assert len(lines) == 2  # a different lr is another experiment, not another seed
    assert "selection: epoch by val H" in out
    rows = list(csv.DictReader((tmp_path / "rep.csv").open()))
    row = next(r for r in rows if r["metric"] == "H" and r["n"] == "3")
    assert float(row["mean"]) == pytest.approx(statistics.fmean(h)) and row["seeds"] == "0 1 2"
    assert float(row["std"]) == pytest.approx(statistics.stdev(h))
    oracle = next(r for r in rows if r["metric"] == "oracle_H" and r["n"] == "3")
    assert float(oracle["mean"]) == pytest.approx(statistics.fmean(h) + 5)
    md = (tmp_path / "rep.md").read_text()
    assert "| method | dataset | n | CZSL T1 | U | S | H | H oracle* |" in md and expected in md


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing*")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_seed_sweep_from_the_cli(tmp_path, capsys):
    over = [str(x) for x in _cfg_overrides(tmp_path)]
    assert main(["train", "compositional/demo_zeroshot", *over, "name=sweep", "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["seed0", "seed1"]
    assert [json.loads((sweep / s / "results.json").read_text())["seed"] for s in ("seed0", "seed1")] == [
        0,
        1,
    ]
    assert "compositional: mean ± std over seeds (%)" in out and (sweep / "report.md").is_file()
    assert main(["train", "compositional/demo_zeroshot", "--seeds", "0,0"]) == 2
    assert "distinct seeds" in capsys.readouterr().err


def _cfg_overrides(out: Path) -> list[str]:
    from test_compositional_run import PRETRAIN, WORLD

    return [f"data.world={WORLD}", f"data.pretrain={PRETRAIN}", f"output_dir={out}", "eval.batch_size=32"]


def test_version(capsys):
    import unseen

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"unseen {unseen.__version__}"


def test_wandb_offline_run(tmp_path, monkeypatch):
    """W&B (optional extra, not in dev): an offline run under the run folder, no network."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _cfg(tmp_path, "csp", ["train.log_to=[csv, wandb]"])
    res = runs.run_config(cfg, runs.new_run_dir(cfg))
    offline = list((Path(res["run_dir"]) / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
