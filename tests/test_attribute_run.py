"""End to end on a tiny embedded world: train -> results/plots -> eval -> predict, and the CLI's error paths."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unseen import runs
from unseen.cli import main

WORLD = "{seed: 1, n_classes: 10, n_unseen: 3, n_val: 2, images_per_class: 10, image_size: 32, n_pretrain_classes: 4, pretrain_images_per_class: 10}"
COMMON = [
    f"data.world={WORLD}",
    "data.pretrain_epochs=1",
    "train.epochs=2",
    "train.batch_size=16",
    "model.tiny_widths=[8,16,16]",
    "model.width=16",
    "model.model_dim=8",
    "model.n_parts=2",
]


@pytest.fixture(scope="module")
def mgmrn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    res = runs.train("attribute/demo_mgmrn", [*COMMON, f"output_dir={out}", "name=m"])
    return Path(res["run_dir"]), res


def test_run_folder_and_results(mgmrn_run):
    run_dir, res = mgmrn_run
    for f in (
        "config.yaml",
        "results.json",
        "semantics.safetensors",
        "classes.json",
        "test_scores.npy",
        "calib/metrics.jsonl",
        "calib/best.safetensors",
        "calib/last.safetensors",
        "final/last.safetensors",
        "plots/gzsl_gamma_curve.png",
        "plots/attention_maps.png",
    ):
        assert (run_dir / f).is_file(), f
    saved = json.loads((run_dir / "results.json").read_text())
    m = saved["metrics"]
    assert set(m) >= {"czsl_top1", "S", "U", "H", "gamma", "S_gamma0", "U_gamma0", "H_gamma0", "ausuc"}
    assert all(0.0 <= m[k] <= 1.0 for k in ("czsl_top1", "S", "U", "H"))
    # the selection rule is stated; gamma and epoch come from validation, the oracle block is apart
    sel = saved["selection"]
    assert "validation" in sel["rule"] and sel["gamma_used"] == sel["gamma"] == m["gamma"]
    assert 0 <= sel["epoch"] < 2
    assert "TEST" in saved["oracle_test_selected"]["note"] and not any(k.startswith("oracle") for k in m)
    # the release's test-selected report is opt-in (eval.report=release): nothing of it by default
    assert "release_test_selected" not in saved and not (run_dir / "release").exists()
    assert saved["world"]["n_classes"] == 10 and saved["seed"] == 0 and saved["versions"]["torch"]
    # final run trained for the validation-chosen number of epochs
    lines = (run_dir / "final" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == sel["epoch"] + 1
    # headline H is recomputed from the saved scores with the saved gamma
    from unseen.attribute.metrics import gzsl_accuracy
    from unseen.attribute.task import AttributeTask
    from unseen.config import load_config

    run = AttributeTask(load_config(run_dir / "config.yaml"), run_dir)
    d = run.data
    idx = np.concatenate([d.test_seen_loc, d.test_unseen_loc])
    r = gzsl_accuracy(
        np.load(run_dir / "test_scores.npy").astype(np.float64),
        d.labels[idx],
        d.seen_classes,
        d.unseen_classes,
        sel["gamma"],
    )
    assert r.H == pytest.approx(m["H"], abs=1e-6)


def test_eval_reproduces_results(mgmrn_run):
    run_dir, res = mgmrn_run
    again = runs.evaluate_run(run_dir)
    for k in ("czsl_top1", "S", "U", "H"):
        assert again[k] == pytest.approx(res["metrics"][k], abs=1e-6), k


def test_predict_top_k(mgmrn_run):
    run_dir, _ = mgmrn_run
    info = json.loads((run_dir / "classes.json").read_text())
    cfg_root = json.loads((run_dir / "results.json").read_text())
    from unseen.attribute.task import AttributeTask
    from unseen.config import load_config

    d = AttributeTask(load_config(run_dir / "config.yaml"), run_dir).data
    img = d.image_files[int(d.test_unseen_loc[0])]
    out = runs.predict(run_dir, [img], classes="unseen", topk=2)
    assert len(out) == 1 and len(out[0]["top"]) == 2
    assert all(not t["seen"] for t in out[0]["top"])
    assert out[0]["top"][0]["score"] >= out[0]["top"][1]["score"]
    names = [info["class_names"][i] for i in d.unseen_classes[:2]]
    sub = runs.predict(run_dir / "final" / "last.safetensors", [img], classes=",".join(names), topk=5)
    assert {t["class"] for t in sub[0]["top"]} == set(names)
    with pytest.raises(ValueError, match="unknown class name"):
        runs.predict(run_dir, [img], classes="no_such_class")
    assert cfg_root["method"] == "mgmrn"


def test_run_folder_is_never_overwritten(mgmrn_run, tmp_path):
    run_dir, _ = mgmrn_run
    with pytest.raises(FileExistsError, match="--resume"):
        runs.train("attribute/demo_mgmrn", [*COMMON, f"output_dir={run_dir.parent}", "name=m"])


def test_eszsl_run_and_frozen_cached_attn1(tmp_path):
    res = runs.train(
        "attribute/demo_eszsl", [*COMMON[:2], "model.tiny_widths=[8,16,16]", f"output_dir={tmp_path}"]
    )
    assert {"alpha", "beta", "gamma", "val_H"} <= set(res["selection"])
    res2 = runs.train(
        "attribute/demo_attn1", [*COMMON, "features.cache=true", f"output_dir={tmp_path}", "name=frozen"]
    )
    assert 0.0 <= res2["metrics"]["H"] <= 1.0
    again = runs.evaluate_run(res2["run_dir"])
    assert again["H"] == pytest.approx(res2["metrics"]["H"], abs=1e-6)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "unseen", *args], capture_output=True, text=True, timeout=120
    )


def test_resuming_a_finished_run_leaves_it_as_it_is(mgmrn_run, monkeypatch, tmp_path):
    from unseen.engine import Engine

    run_dir, res = mgmrn_run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    monkeypatch.setattr(Engine, "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = runs.train(None, [], resume=run_dir)
    assert again["metrics"] == res["metrics"] and again["run_dir"] == str(run_dir)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before
    # an override that changes the config continues the run (here: would train again)
    import shutil

    other = shutil.copytree(run_dir, tmp_path / "copy")
    with pytest.raises(pytest.fail.Exception, match="trained again"):
        runs.train(None, ["train.epochs=3"], resume=other)


def test_cli_errors_are_specific_and_without_traceback(tmp_path, capsys):
    p = _cli("train", "attribute/demo_mgmrn", "model.n_levelz=2")  # one real process: no traceback escapes
    assert p.returncode == 2 and "unknown key(s) 'n_levelz'" in p.stderr and "valid keys:" in p.stderr
    assert "Traceback" not in p.stderr
    # the same error path in-process (a subprocess per case costs seconds of imports)
    assert main(["train", "no/such_config"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "attribute/demo_mgmrn" in err and "Traceback" not in err
    assert main(["data", "check", "xlsa17", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "att_splits.mat: file not found" in err and "Traceback" not in err


def test_cli_output_into_a_closed_pipe_stops_quietly():
    """`unseen list | head -1`: the reader leaves before the output is written; no traceback, exit 141."""
    p = subprocess.Popen(
        [sys.executable, "-m", "unseen", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    p.stdout.close()  # before the child has printed anything: its first write meets a closed pipe
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141 and err == ""


def test_cli_list_and_data_check(shared_data, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mgmrn" in out and "eszsl" in out and "attn1" in out and "xlsa17" in out and "shapes" in out
    root = shared_data / "xlsa17" / "CUB"
    assert (
        main(
            [
                "data",
                "check",
                "xlsa17",
                "--root",
                str(root),
                "--image-list",
                str(shared_data / "image_lists" / "CUB.json.gz"),
            ]
        )
        == 2
    )  # the images themselves are not here
    assert "not found" in capsys.readouterr().err


def test_backbone_pretraining_is_deterministic(tmp_path):
    import hashlib

    import torch
    import yaml

    from unseen.attribute.datasets import pretrain_tiny_backbone
    from unseen.config import build_dataclass
    from unseen.shapes import AttributeWorldConfig, export_attribute_world

    cfg = build_dataclass(AttributeWorldConfig, yaml.safe_load(WORLD))
    digests = []
    for i, noise in enumerate((3, 11)):
        root = export_attribute_world(tmp_path / f"w{i}", cfg)
        torch.randn(noise)  # whatever ran before must not change the result
        digests.append(
            hashlib.sha256(pretrain_tiny_backbone(root, [8, 16, 16], 32, 1, seed=1).read_bytes()).hexdigest()
        )
    assert digests[0] == digests[1]


@pytest.mark.slow  # three runs (~19 s); the engine-level kill tests in test_run_safety stay in the default suite
def test_killed_run_resumes_to_the_same_results(tmp_path, monkeypatch):
    """Kill a run mid-way (after an epoch's metrics line, before its checkpoint), resume it, compare."""
    from unseen.engine import Engine

    overrides = [*COMMON, "train.epochs=3", f"output_dir={tmp_path}"]
    full = runs.train("attribute/demo_attn1", [*overrides, "name=full"])

    real_save = Engine.save_checkpoint
    calls = {"n": 0}

    def dying_save(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # calibration run, epoch 1: metrics line written, checkpoint not
            raise KeyboardInterrupt
        return real_save(self, *a, **k)

    monkeypatch.setattr(Engine, "save_checkpoint", dying_save)
    with pytest.raises(KeyboardInterrupt):
        runs.train("attribute/demo_attn1", [*overrides, "name=cut"])
    monkeypatch.setattr(Engine, "save_checkpoint", real_save)
    assert not (tmp_path / "cut" / "results.json").exists()
    resumed = runs.train(None, [], resume=tmp_path / "cut")
    assert resumed["selection"]["epoch"] == full["selection"]["epoch"]
    for k in ("czsl_top1", "S", "U", "H", "gamma"):
        assert resumed["metrics"][k] == pytest.approx(full["metrics"][k], abs=1e-9), k
    cut_lines = [
        json.loads(s) for s in (tmp_path / "cut" / "calib" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in cut_lines] == [0, 1, 1, 2]  # the killed epoch was redone, not lost


def test_foreign_weights_and_bad_images_are_one_line_errors(mgmrn_run, tmp_path, capsys):
    """Weights of another model in a run folder, and images that cannot be read: exit 2, one line naming the file,
    nothing written."""
    import shutil

    import torch

    from unseen.io import save_safetensors

    run_dir, _ = mgmrn_run
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    weights = other / "final" / "last.safetensors"
    save_safetensors(weights, {"vocab": torch.zeros(3, 4)}, metadata={"model": "csp"})
    before = (other / "results.json").read_bytes()
    assert main(["eval", str(other)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{weights}: not weights of this run's model 'mgmrn'" in err
    assert "tensors the model does not have (vocab)" in err and "written by a 'csp' model" in err
    assert (other / "results.json").read_bytes() == before
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for image in (bad, empty):
        assert main(["predict", str(run_dir), str(image)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{image}: image unreadable" in err
    assert main(["predict", str(run_dir), str(bad), "--topk", "-1"]) == 2
    assert "--topk: expected a positive number" in capsys.readouterr().err
