"""The full-size rehearsal (benchmarks/rehearsal.py) and the GPU check script (benchmarks/gpu_check.py) on CPU.

The rehearsal test is `slow`: it writes the 11,788 CUB images at their real paths and runs the README's commands
(data check, train with the real config + CPU-size overrides, --resume, eval, predict) as subprocesses."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    # benchmarks/ is not a package: load the script as a module
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _check_rows(out: dict, models: set[str]) -> None:
    assert {r["model"].split(" ")[0] for r in out["rows"]} == models
    for r in out["rows"]:
        assert "error" not in r, r
        for phase in ("train", "eval"):
            assert r[phase]["steps"] >= 1 and r[phase]["images_per_s"] > 0 and r[phase]["peak_mb"] > 0


def test_gpu_check_cpu_small_mgmrn(tmp_path):
    """The GPU script's Mg-MRN path, from the real config's model section, at tiny size (AMP: the slow test)."""
    gc = _load("gpu_check")
    out = gc.main(
        ["--device", "cpu", "--small", "--models", "mgmrn", "--precisions", "fp32", "--steps", "1",
         "--warmup", "0",
         "--output", str(tmp_path / "gpu")]
    )  # fmt: skip
    _check_rows(out, {"Mg-MRN"})
    assert [r["precision"] for r in out["rows"]] == ["fp32"]
    md = (tmp_path / "gpu.md").read_text()
    assert out["device"] in md and "sequential" in md  # the config's step_mode, not a default
    assert json.loads((tmp_path / "gpu.json").read_text())["small"] is True


@pytest.mark.slow
def test_gpu_check_cpu_small_all():
    gc = _load("gpu_check")
    out = gc.main(["--device", "cpu", "--small", "--steps", "1", "--warmup", "0"])
    _check_rows(out, {"Mg-MRN", "Refiner-R"})
    assert [r["precision"] for r in out["rows"]] == ["fp32", "bf16 AMP"] * 2


@pytest.mark.slow
def test_rehearsal_cub_full_layout(shared_data, tmp_path):
    """CUB at its real layout (all 11,788 files), the README's commands run as a user would; every step passes."""
    rh = _load("rehearsal")
    out = rh.main(["--datasets", "CUB", "--no-nus", "--work", str(tmp_path / "rehearsal")])
    steps = {r["step"]: r for r in out["steps"]}
    assert list(steps) == ["CUB data check", "CUB train", "CUB train --resume", "CUB eval", "CUB predict"]
    assert all(r["rc"] == 0 and r["wall_s"] > 0 and r["peak_rss_mb"] > 0 for r in out["steps"])
    logs = {k: Path(r["log"]).read_text() for k, r in steps.items()}
    assert "images 11788, all 11788 image files found" in logs["CUB data check"]
    assert "OK" in logs["CUB data check"].splitlines()[-1]
    run = out["datasets"]["CUB"]["run"]
    assert (Path(run) / "results.json").is_file()
    # eval recomputes the test metrics from the saved model: the same numbers as the training run reported
    trained = json.loads(logs["CUB train"][logs["CUB train"].rfind('{\n  "run_dir"') :])["metrics"]
    evaluated = json.loads(logs["CUB eval"][logs["CUB eval"].find("{") :])
    for k in ("czsl_top1", "S", "U", "H"):
        assert evaluated[k] == pytest.approx(trained[k], abs=1e-6)
    pred = logs["CUB predict"].splitlines()
    assert sum(line.endswith(".jpg") for line in pred) == 2
    assert sum("(unseen)" in line for line in pred) == 10  # --classes unseen --topk 5, two images
