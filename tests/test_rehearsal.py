"""The full-size rehearsal (benchmarks/rehearsal.py) and the GPU check script (benchmarks/gpu_check.py) on CPU.

The rehearsal tests are `slow`: CUB writes the 11,788 images at their real paths; the czsl ones build MIT-States,
UT-Zappos and C-GQA at their real vocabulary and pair counts (one image per pair); Open Images has the real label
space and a few hundred feature rows in two shards. Each runs the README's commands (data check, train with the
real config + CPU-size overrides, --resume, eval, predict) as subprocesses. The replica builders' formats are
checked in the default suite."""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
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
    out = rh.main(
        ["--datasets", "CUB", "--no-nus", "--no-czsl", "--no-oi", "--work", str(tmp_path / "rehearsal")]
    )
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


# --------------------------------------------------------------------------------------------- czsl / Open Images
def _logs(out: dict) -> dict[str, str]:
    return {r["step"]: Path(r["log"]).read_text() for r in out["steps"]}


@pytest.mark.slow  # the slow czsl rehearsal runs `data check czsl` on the same replica
def test_czsl_replica_is_read_at_the_real_counts(tmp_path, capsys):
    """UT-Zappos (czsl's folder name ut-zap50k, legacy-format metadata with `_image`) passes `unseen data check
    czsl` with its asserted counts; MIT-States' and C-GQA's pair lists have the real seen/unseen structure."""
    import torch

    from unseen.cli import main
    from unseen.compositional.data import load_metadata

    rh = _load("rehearsal")
    info = rh.build_czsl(tmp_path, "ut-zappos", px=8, image_scale=0)
    assert Path(info["root"]).name == "ut-zap50k"
    assert main(["data", "check", "czsl", "--root", info["root"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "vocabulary: 16 attrs (states), 12 objs; pairs: 116 closed-world, 192 open-world" in lines
    assert "pairs: train 83; val 30 (seen 15, unseen 15); test 36 (seen 18, unseen 18)" in lines
    assert "known counts of ut-zappos (asserted): attrs, objs, train pairs: OK" in lines
    assert "images on disk: 149 of 149 found" in lines and lines[-1] == "OK"
    meta_path = Path(info["root"]) / "metadata_compositional-split-natural.t7"
    meta = load_metadata(meta_path)
    assert not zipfile.is_zipfile(meta_path)  # torch's pre-1.6 format, read with weights_only=True
    assert meta == torch.load(meta_path, weights_only=True) and all(
        e["_image"].endswith(".jpg") for e in meta
    )
    assert {e["image"].split("/")[0] for e in meta} == {f"{e['attr']}_{e['obj']}" for e in meta}
    for ds in ("mit-states", "cgqa"):
        spec = rh.CZSL[ds]
        train, val, test = rh._czsl_pairs(np.random.default_rng(0), spec)
        assert len(set(train)) == spec.train_pairs
        assert {a for a, _ in train} == set(range(spec.attrs)) and {o for _, o in train} == set(
            range(spec.objs)
        )
        for pairs, (n_seen, n_unseen) in ((val, spec.val_pairs), (test, spec.test_pairs)):
            assert len(set(pairs)) == len(pairs) and sum(p in set(train) for p in pairs) == n_seen
            assert len(pairs) - n_seen == n_unseen
        assert not (set(val) - set(train)) & (
            set(test) - set(train)
        )  # unseen val and test pairs are disjoint


def test_oi_replica_is_read(shared_data, tmp_path):
    """The Open Images replica (real label files, pickled vectors, two BiAM-layout shards + a test file, written
    with h5py) is read by the Open Images builder."""
    from unseen.multilabel.datasets import OpenImagesConfig, dataset_labels, prepare_open_images

    rh = _load("rehearsal")
    info = rh.build_open_images(tmp_path, n_train=20, n_shards=2, n_test=6, feature_shape=(8, 4))
    assert len(list(Path(info["train_h5"]).parent.glob("*.h5"))) == 2
    cfg = OpenImagesConfig(
        root=info["root"], vectors=info["vectors"], train_h5=info["train_h5"], test_h5=info["test_h5"],
        val_fraction=0.25, refit="retrain",
    )  # fmt: skip
    d = prepare_open_images(cfg).data
    assert (d.labels.n_seen, d.labels.n_unseen, d.embeddings.shape) == (7186, 400, (7586, 300))
    dropped = sum(i % 25 == 3 or i % 40 == 7 for i in range(20))  # no positive / more than 40 positives
    assert len(d.train_all) == 20 - dropped and (d.in_dim, d.n_tokens) == (8, 4)
    test = dataset_labels(d.test)
    assert test.shape == (6, 7586) and ((test[:, 7186:] == 1).sum(1) >= 1).all()
    assert ((test[:, 7186:] == -1).sum() > 0) and set(np.unique(test)) <= {-1, 0, 1}


@pytest.mark.slow
def test_rehearsal_czsl_mit_states_and_ut_zappos(shared_data, tmp_path):
    """MIT-States and UT-Zappos at their real vocabulary and pair counts (one image per pair): the README's
    compositional commands, closed and open world (data.glove, data.feasibility), with CLIP weights in OpenAI and
    open_clip layouts."""
    rh = _load("rehearsal")
    out = rh.main(
        ["--datasets", "", "--no-nus", "--no-oi", "--czsl-datasets", "mit-states,ut-zappos",
         "--czsl-image-scale", "0", "--work", str(tmp_path / "rehearsal")]
    )  # fmt: skip
    seq = ["train", "train --resume", "eval", "predict"]
    assert [r["step"] for r in out["steps"]] == [
        "MIT data check", *[f"MIT refiner {s}" for s in seq], *[f"MIT refiner OW {s}" for s in seq],
        "MIT csp OW train", "MIT zeroshot_clip OW train",
        "UT data check", "UT refiner OW train", "UT csp OW train", "UT zeroshot_clip OW train",
        "UT zeroshot_clip OW feasibility train",
    ]  # fmt: skip
    assert all(r["rc"] == 0 and r["peak_rss_mb"] > 0 for r in out["steps"])
    logs = _logs(out)
    check = logs["MIT data check"].splitlines()
    assert "known counts of mit-states (asserted): attrs, objs, train pairs, closed-world pairs: OK" in check
    assert "pairs: train 1262; val 600 (seen 300, unseen 300); test 800 (seen 400, unseen 400)" in check
    assert any(line.startswith("skipped metadata entries: attr 'NA' 26, set 'NA' 26") for line in check)
    assert check[-1] == "OK"
    runs = out["datasets"]["mit-states"]["runs"]
    assert not any(k.startswith("ow/") for k in runs["MIT refiner"]["metrics"])  # no data.glove: closed world
    for name, r in runs.items():
        results = json.loads((Path(r["run"]) / "results.json").read_text())
        assert results["dataset"] == "mit-states" and results["counts"]["ow_pairs"] == 28175
        if " OW" in name:
            assert results["open_world"]["unseen_pairs"] == 28175 - 1262
    for name in ("MIT refiner", "MIT refiner OW"):
        pred = logs[f"{name} predict"].splitlines()
        assert sum(line.endswith(".jpg") for line in pred) == 2
        assert sum(line.endswith("(unseen)") for line in pred) == 10
    ut = out["datasets"]["ut-zappos"]["runs"]
    assert all(r["metrics"]["ow/AUC"] >= 0 for r in ut.values())  # GloVe remap of UT-Zappos' dotted names
    # the OpenAI-layout archive the refiner runs loaded holds the random CLIP, fp16 where OpenAI stores fp16
    import torch

    from unseen.backbones import is_torchscript_archive
    from unseen.compositional.clip import create_clip

    weights = rh.clip_weights(tmp_path / "rehearsal", "openai")  # the file the runs used (made once)
    assert is_torchscript_archive(weights)
    torch.manual_seed(0)  # the seed clip_weights draws the random CLIP with
    want = create_clip(rh.CLIP_ARCH).state_dict()
    got = create_clip(rh.CLIP_ARCH, weights).state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v.half().float() if rh.openai_fp16(k) else v), k


@pytest.mark.slow
def test_rehearsal_czsl_cgqa_loads(shared_data, tmp_path):
    """C-GQA at its real vocabulary and pair counts (7,555 closed-world pairs, one image per pair): zero-shot CLIP
    from its packaged config, closed world."""
    rh = _load("rehearsal")
    out = rh.main(
        ["--datasets", "", "--no-nus", "--no-oi", "--czsl-datasets", "cgqa", "--czsl-methods", "zeroshot_clip",
         "--czsl-image-scale", "0", "--work", str(tmp_path / "rehearsal")]
    )  # fmt: skip
    assert [r["step"] for r in out["steps"]] == ["CGQA data check", "CGQA zeroshot_clip train"]
    assert all(r["rc"] == 0 for r in out["steps"])
    assert "known counts of cgqa (asserted): attrs, objs, train pairs: OK" in _logs(out)["CGQA data check"]
    run = out["datasets"]["cgqa"]["runs"]["CGQA zeroshot_clip"]
    assert json.loads((Path(run["run"]) / "results.json").read_text())["counts"]["cw_pairs"] == 7555


@pytest.mark.slow
def test_rehearsal_open_images(shared_data, tmp_path):
    """Open Images: the real label space, features in two shards (a glob), `multilabel/epsilon_open_images` with
    only the epochs reduced; eval reproduces the metrics; results.json has the biam_compat block."""
    rh = _load("rehearsal")
    out = rh.main(
        ["--datasets", "", "--no-nus", "--no-czsl", "--oi-train", "60", "--oi-test", "30",
         "--work", str(tmp_path / "rehearsal")]
    )  # fmt: skip
    assert [r["step"] for r in out["steps"]] == ["OI data check", "OI train", "OI eval"]
    assert all(r["rc"] == 0 for r in out["steps"])
    check = _logs(out)["OI data check"]
    assert "seen (classes-trainable.txt): 7186" in check and "GZSL: 7586 [seen | unseen]" in check
    oi = out["datasets"]["Open Images"]
    results = json.loads((Path(oi["run"]) / "results.json").read_text())
    assert results["label_space"] == {"n_seen": 7186, "n_unseen": 400}
    dropped = sum(i % 25 == 3 or i % 40 == 7 for i in range(60))
    assert results["selection"]["refit"]["images"] == 60 - dropped  # both shards read
    block = results["biam_compat"]
    assert block["zsl/n_labels"] == 400 and 0 <= block["zsl/mAP"] <= 1 and "pooled" in block["note"]
