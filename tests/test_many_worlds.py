"""benchmarks/many_worlds.py and benchmarks/calibration_study.py summaries, on synthetic run folders: means, sample
standard deviations, per-world ranks and calibration gaps recomputed independently."""

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


H = {  # (method, world, seed) -> H
    ("mgmrn", 0, 0): 0.30, ("mgmrn", 0, 1): 0.34, ("mgmrn", 1, 0): 0.20, ("mgmrn", 1, 1): 0.22,
    ("attn1", 0, 0): 0.31, ("attn1", 0, 1): 0.29, ("attn1", 1, 0): 0.25, ("attn1", 1, 1): 0.27,
    ("eszsl", 0, 0): 0.10, ("eszsl", 0, 1): 0.10, ("eszsl", 1, 0): 0.12, ("eszsl", 1, 1): 0.12,
}  # fmt: skip


def _fake_runs(out: Path) -> None:
    for (m, w, s), h in H.items():
        d = out / f"w{w}-s{s}-{m}"
        d.mkdir(parents=True)
        metrics = {"czsl_top1": h + 0.1, "U": h, "S": h, "H": h}
        results = {
            "metrics": metrics,
            "oracle_test_selected": {"oracle_H": h + 0.01},
            "chance": {"czsl_top1": 0.125, "U": 0.03, "S": 0.03, "H": 0.03},
        }
        (d / "results.json").write_text(json.dumps(results))
    (out / "w9-s0-mgmrn").mkdir()  # unfinished: no results.json, left out


def test_summary_means_stds_and_per_world_ranks(tmp_path):
    mw = _load("many_worlds")
    _fake_runs(tmp_path)
    text = mw.summarise(tmp_path, "attribute", ("mgmrn", "attn1", "eszsl"))
    assert text == (tmp_path / "summary.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    for m in ("mgmrn", "attn1", "eszsl"):
        hs = [100 * h for (m2, _, _), h in H.items() if m2 == m]
        cells = rows[m].strip("| ").split(" | ")
        assert cells[4] == f"{statistics.fmean(hs):.1f} ± {statistics.stdev(hs):.1f}"  # H
        gaps = [h - 3.0 for h in hs]
        assert cells[6] == f"{statistics.fmean(gaps):.1f} ± {statistics.stdev(gaps):.1f}" and cells[7] == "4"
    # world 0: attn1 30.0 < mgmrn 32.0 -> mgmrn first; world 1: attn1 26.0 > mgmrn 21.0
    assert "| 0 | 32.0 (1) | 30.0 (2) | 10.0 (3) |" in text
    assert "| 1 | 21.0 (2) | 26.0 (1) | 12.0 (3) |" in text
    assert "| mean rank | 1.50 | 1.50 | 3.00 |" in text


def test_calibration_gap_table():
    cs = _load("calibration_study")
    rows = [
        {
            "method": "mgmrn",
            "oracle": 0.40,
            "H": {"raw": 0.30, "scale": 0.35, "zscore": 0.39, "quantile": 0.38},
        },
        {
            "method": "mgmrn",
            "oracle": 0.42,
            "H": {"raw": 0.40, "scale": 0.41, "zscore": 0.36, "quantile": 0.42},
        },
        {
            "method": "eszsl",
            "oracle": 0.20,
            "H": {"raw": 0.20, "scale": 0.10, "zscore": 0.19, "quantile": 0.18},
        },
    ]
    text = cs.table(rows, "t")
    line = next(x for x in text.splitlines() if x.startswith("| raw |"))
    gaps = [10.0, 2.0]
    assert line.split(" | ")[1] == f"{statistics.fmean(gaps):.1f} ± {statistics.stdev(gaps):.1f}"
    assert line.split(" | ")[2] == "0.0"  # one eszsl run: no spread
    q = next(x for x in text.splitlines() if x.startswith("| quantile |"))
    all_gaps = [2.0, 0.0, 2.0]
    assert q.split(" | ")[3] == f"{statistics.fmean(all_gaps):.1f} ± {statistics.stdev(all_gaps):.1f}"


def test_jobs_and_cores_must_be_positive():
    mw = _load("many_worlds")
    assert mw.positive_int("3") == 3
    for bad in ("0", "-1", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="whole number >= 1"):
            mw.positive_int(bad)
