"""Nothing silently wrong: torn checkpoints, concurrent runs, foreign weights, torn logs, progress off a terminal."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from test_engine import Toy, cfg, evaluate_fn, loss_fn, toy_data

from unseen import engine
from unseen.engine import Engine, LogProgress, load_state_checked, settle_checkpoint
from unseen.io import DataFormatError, save_safetensors
from unseen.task import RunFolderClaim


class Killed(BaseException):
    """Stands for kill -9: raised where the process would die; nothing after it runs."""


def _fit(run_dir: Path, epochs: int | None = None, resume: bool = False) -> Toy:
    data, labels = toy_data()
    torch.manual_seed(0)
    model = Toy()
    Engine(cfg(), run_dir, seed=3).fit(
        model, data, loss_fn, evaluate_fn(data), select="acc", epochs=epochs, resume=resume
    )
    return model


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(s).items() if k != "train_time_s"} for s in lines]


@pytest.mark.parametrize("window", ["before_weights_rename", "between_renames", "stray_tmp"])
def test_kill_in_the_checkpoint_window_resumes_to_the_same_run(tmp_path, monkeypatch, window):
    full = _fit(tmp_path / "full")
    cut = tmp_path / "cut"
    real_replace = os.replace
    calls = {"n": 0}

    def dying_replace(src, dst):
        # epoch 2's checkpoint: the 1st replace moves the new weights in, the 2nd the state
        if Path(dst).name in ("last.safetensors", "last.state.pt") and _epoch_of(src) == 2:
            calls["n"] += 1
            if window == "before_weights_rename" and calls["n"] == 1:
                raise Killed
            if window == "between_renames" and calls["n"] == 2:
                raise Killed
        return real_replace(src, dst)

    def _epoch_of(src):
        p = Path(src)
        if p.name == "last.state.pt.pending" and p.is_file():
            return torch.load(p, weights_only=True)["epoch"]
        pending = p.parent / "last.state.pt.pending"
        return torch.load(pending, weights_only=True)["epoch"] if pending.is_file() else -1

    if window != "stray_tmp":
        monkeypatch.setattr(engine.os, "replace", dying_replace)
        with pytest.raises(Killed):
            _fit(cut)
        monkeypatch.setattr(engine.os, "replace", real_replace)
        assert (cut / "last.state.pt.pending").is_file()  # the kill left the unit half-written
    else:
        _fit(cut, epochs=2)
        (cut / ".last.safetensors.abc123.tmp").write_bytes(b"half a file")  # a kill inside a write
        (cut / ".last.safetensors.new").write_bytes(b"half")
    resumed = _fit(cut, resume=True)
    for (k, v1), v2 in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v1, v2), k
    last_per_epoch = {r["epoch"]: r for r in _records(cut)}  # a redone epoch is logged again
    assert list(last_per_epoch.values()) == _records(tmp_path / "full")
    leftovers = [p.name for p in cut.iterdir() if p.name.endswith((".tmp", ".pending", ".new"))]
    assert leftovers == []


def test_mismatched_checkpoint_pair_is_refused(tmp_path):
    _fit(tmp_path, epochs=2)
    other = tmp_path / "other"
    _fit(other, epochs=1)
    (tmp_path / "last.safetensors").write_bytes((other / "last.safetensors").read_bytes())
    with pytest.raises(DataFormatError, match="not the weights .*last.state.pt was saved with"):
        _fit(tmp_path, resume=True)


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path, caplog):
    full = _fit(tmp_path / "full")
    _fit(tmp_path / "cut", epochs=2)
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "lr": 0.0')  # a kill in the middle of a line
    with caplog.at_level(logging.WARNING, logger="unseen"):
        resumed = _fit(tmp_path / "cut", resume=True)
    assert "metrics.jsonl: dropping its last line" in caplog.text
    assert _records(tmp_path / "cut") == _records(tmp_path / "full")
    assert torch.equal(full.a.weight, resumed.a.weight)
    csv_lines = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,lr,train_time_s") and len(csv_lines) == 5


def test_torn_metrics_line_in_the_middle_is_an_error(tmp_path):
    _fit(tmp_path, epochs=2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text(lines[0][:10] + "\n" + lines[1] + "\n")
    with pytest.raises(DataFormatError, match=r"metrics.jsonl: line 1 is not valid JSON"):
        _fit(tmp_path, resume=True)


def test_settle_without_a_checkpoint(tmp_path):
    assert settle_checkpoint(tmp_path) is False
    (tmp_path / "last.state.pt.pending").write_bytes(b"cut short")
    assert settle_checkpoint(tmp_path) is False and not (tmp_path / "last.state.pt.pending").exists()


def test_the_one_weights_loader_names_what_does_not_fit(tmp_path):
    model = Toy()
    good = tmp_path / "good.safetensors"
    save_safetensors(good, model.state_dict(), metadata={"model": "toy"})
    fresh = Toy()
    load_state_checked(fresh, good, "toy")
    assert torch.equal(fresh.a.weight, model.a.weight)
    foreign = tmp_path / "foreign.safetensors"
    save_safetensors(
        foreign, {"vocab": torch.zeros(3, 4), "a.weight": torch.zeros(2, 2)}, metadata={"model": "csp"}
    )
    before = fresh.a.weight.clone()
    with pytest.raises(DataFormatError) as err:
        load_state_checked(fresh, foreign, "toy")
    msg = str(err.value)
    assert str(foreign) in msg and "'toy'" in msg and "3 of the model's 4 tensors missing" in msg
    assert "1 tensors the model does not have (vocab)" in msg and "a.weight (2, 2) (model (16, 8))" in msg
    assert "written by a 'csp' model" in msg
    assert torch.equal(fresh.a.weight, before)  # nothing loaded
    partial = tmp_path / "head.safetensors"
    save_safetensors(partial, {k: v for k, v in model.state_dict().items() if k.startswith("b.")})
    load_state_checked(Toy(), partial, "toy", optional=("a.",))  # parts that are not saved may be absent
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(good.read_bytes()[:50])
    with pytest.raises(DataFormatError, match="cut.safetensors: not a complete safetensors file"):
        load_state_checked(Toy(), truncated, "toy")


def test_second_run_into_a_claimed_folder_is_refused_before_writing(tmp_path):
    run = tmp_path / "run"
    first = RunFolderClaim(run, resume=False)
    try:
        (run / "config.yaml").write_text("first run's file\n")
        before = sorted((p.name, p.read_bytes()) for p in run.iterdir())
        for resume in (False, True):  # a new run and a resume alike
            with pytest.raises(FileExistsError, match=f"another unseen process \\(pid {os.getpid()}\\)"):
                RunFolderClaim(run, resume=resume)
        assert sorted((p.name, p.read_bytes()) for p in run.iterdir()) == before
    finally:
        first.release()
    with pytest.raises(FileExistsError, match="already exists: choose another name"):
        RunFolderClaim(run, resume=False)  # released, but it holds a run
    RunFolderClaim(run, resume=True).release()  # resuming it is fine
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="a parent is a file"):
        RunFolderClaim(tmp_path / "afile" / "run", resume=False)


def test_claim_is_released_when_the_holder_dies(tmp_path):
    pid = (
        os.fork()
    )  # a forked child claims and dies (a fresh interpreter would spend seconds importing torch)
    if pid == 0:
        code = 1
        try:
            RunFolderClaim(tmp_path / "run", False)
            code = 9  # claimed; dies holding it
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 9
    assert (tmp_path / "run" / ".lock").read_text().strip() == str(pid)  # the child held the claim
    RunFolderClaim(tmp_path / "run", resume=True).release()  # the kill released the lock: resume can go on


def test_progress_lines_off_a_terminal(monkeypatch, caplog):
    clock = {"t": 0.0}
    monkeypatch.setattr(engine.time, "perf_counter", lambda: clock["t"])
    bar = LogProgress(range(100), desc="train epoch 1/3", unit="samples", scale=32)
    with caplog.at_level(logging.INFO, logger="unseen"):
        for i in bar:
            clock["t"] += 0.5  # 50 s in all: lines every 10 items once 5 s have passed
            bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[0].startswith(
        "train epoch 1/3: 10/100 (10%)  64.0 samples/s  loss=0.100"
    )
    assert lines[-1].endswith("eta 0m00s") and "eta 0m25s" in lines[4]  # 50/100 after 25 s
    caplog.clear()
    slow = LogProgress(range(3), desc="eval")
    with caplog.at_level(logging.INFO, logger="unseen"):
        for _ in slow:
            clock["t"] += 40  # fewer items than a tenth, but more than 30 s apart: a line each
    assert [r.getMessage()[:9] for r in caplog.records] == ["eval: 1/3", "eval: 2/3", "eval: 3/3"]


def test_engine_logs_progress_during_an_epoch(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(engine, "PROGRESS_MIN_S", 0.0)  # a toy epoch is fast: log every tenth at once
    data, _ = toy_data(n=320)
    with caplog.at_level(logging.INFO, logger="unseen"):
        Engine(cfg(epochs=1, progress=True), tmp_path / "train", seed=0).fit(Toy(), data, loss_fn)
    steps = [r.getMessage() for r in caplog.records if "samples/s" in r.getMessage()]
    assert len(steps) == 10 and steps[0].startswith("train epoch 1/1: 2/20 (10%)") and "loss=" in steps[0]


def test_training_does_not_depend_on_the_terminal(tmp_path, monkeypatch):
    """A tqdm bar (terminal), log lines (off one) or no progress: the same dropout masks, the same weights.
    tqdm.auto built a throwaway DataLoader iterator, one extra draw from the global RNG each epoch, only on a
    terminal (BiAM's demo mAP moved by a point with it)."""
    data, _ = toy_data()

    def weights(name, progress, terminal):
        monkeypatch.setattr(engine, "progress_enabled", lambda flag=True: flag and terminal)
        torch.manual_seed(0)
        model = Toy()
        Engine(cfg(epochs=2, progress=progress), tmp_path / name, seed=0).fit(model, data, loss_fn)
        return model.state_dict()

    quiet = weights("quiet", progress=False, terminal=False)
    for name, w in {"bar": weights("bar", True, True), "lines": weights("lines", True, False)}.items():
        assert all(torch.equal(quiet[k], w[k]) for k in quiet), name


def test_weights_loader_raises_for_old_checkpoint_layout(tmp_path):
    """A checkpoint written before the weights hash existed still resumes (no hash to verify)."""
    _fit(tmp_path, epochs=2)
    state = torch.load(tmp_path / "last.state.pt", weights_only=True)
    del state["weights_sha256"]
    torch.save(state, tmp_path / "last.state.pt")
    assert _fit(tmp_path, resume=True) is not None


def test_cli_run_into_a_folder_another_run_holds(tmp_path, capsys):
    from test_tracking import _cfg_overrides

    from unseen.cli import main

    run = tmp_path / "busy"
    holder = RunFolderClaim(run, resume=False)  # another run is writing here
    try:
        argv = ["train", "compositional/demo_zeroshot", *_cfg_overrides(tmp_path), "name=busy"]
        assert main(argv) == 2  # it has not written anything yet: the lock refuses the second run
        err = capsys.readouterr().err
        assert "another unseen process" in err and str(run) in err and "Traceback" not in err
        (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
        assert main(argv) == 2  # once it has written: refused as an existing run, before any work
        assert "already exists" in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == [".lock", "metrics.jsonl"]  # nothing written or lost
        assert main(["train", "--resume", str(run)]) == 2  # (its config.yaml is not there yet either)
    finally:
        holder.release()


def test_h5_files_go_through_one_guarded_open(tmp_path):
    import h5py
    import numpy as np

    from unseen.multilabel.data import BiAMH5Dataset

    empty, text, good = tmp_path / "empty.h5", tmp_path / "text.h5", tmp_path / "good.h5"
    empty.write_bytes(b"")
    text.write_text("not hdf5")
    with h5py.File(good, "w") as f:
        f["a-features"] = np.zeros((512, 196), np.float32)
        f["a-labels"] = np.ones(3, np.int8)
        f["b-labels"] = np.ones(3, np.int8)  # b's features are missing
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:700])
    for path in (empty, text, truncated):
        with pytest.raises(DataFormatError, match=f"{path.name}: not a readable HDF5 file"):
            BiAMH5Dataset(path)
    # no names file: an image with labels but no features is an error, not an image silently left out
    with pytest.raises(DataFormatError, match="key 'b-features' is missing"):
        BiAMH5Dataset(good)


def test_open_images_vectors_with_nan_name_the_file(tmp_path):
    from types import SimpleNamespace

    import numpy as np

    from unseen.multilabel.datasets import load_open_images_vectors

    labels = SimpleNamespace(
        seen_source_names=["a", "b"],
        unseen_source_names=["c"],
        seen_source_index=[0, 1],
        unseen_source_index=[0],
    )
    seen, unseen = np.ones((2, 4)), np.ones((1, 4))
    seen[1, 2] = np.nan
    np.savez(tmp_path / "vectors.npz", seen=seen, unseen=unseen)
    with pytest.raises(DataFormatError, match=r"vectors.npz: seen vectors: 1 rows hold NaN/inf .* row 1"):
        load_open_images_vectors(tmp_path / "vectors.npz", labels)
