"""The training engine on a toy problem: checkpoints, resume, episodic sampling, sub-steps, DDP on CPU."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from unseen.config import TrainConfig
from unseen.engine import Engine, EpisodicBatchSampler, lr_at
from unseen.io import load_safetensors, load_torch


class Toy(nn.Module):
    def __init__(self, substeps=None):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)
        self.drop = nn.Dropout(0.2)
        self._substeps = substeps or [None]

    def train_substeps(self):
        return self._substeps

    def forward(self, x, y=None, part=None):
        h = self.drop(torch.relu(self.a(x)))
        if part == "a":  # a sub-step that only trains `a` (through a detached head)
            return nn.functional.cross_entropy(nn.functional.linear(h, self.b.weight.detach()), y)
        return nn.functional.cross_entropy(self.b(h), y)


def toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return TensorDataset(x, y), y.numpy()


def loss_fn(model, batch, sub):
    x, y = batch
    return model(x, y, sub), {}


def evaluate_fn(data):
    def ev(model, epoch):
        model.eval()
        with torch.no_grad():
            x, y = data.tensors
            acc = float((model.b(torch.relu(model.a(x))).argmax(1) == y).float().mean())
        model.train()
        return {"acc": acc}

    return ev


def cfg(**kw):
    base = dict(epochs=4, batch_size=16, lr=0.05, optimizer="sgd", device="cpu", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_fit_writes_run_files_and_learns(tmp_path):
    data, labels = toy_data()
    torch.manual_seed(0)
    res = Engine(cfg(epochs=6), tmp_path, seed=0).fit(Toy(), data, loss_fn, evaluate_fn(data), select="acc")
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(6))
    assert lines[-1]["train/loss"] < lines[0]["train/loss"]
    assert res.best_score == max(r["val/acc"] for r in lines) and res.best_score > 0.5
    for f in ("last.safetensors", "best.safetensors", "last.state.pt"):
        assert (tmp_path / f).is_file()
    state = load_torch(tmp_path / "last.state.pt")  # weights_only=True round trip
    assert state["epoch"] == 5 and "optimizer" in state
    w = load_safetensors(tmp_path / "last.safetensors")
    assert set(w) == {"a.weight", "a.bias", "b.weight", "b.bias"}


@pytest.mark.parametrize("shots", [0, 2])
def test_resume_matches_uninterrupted(tmp_path, shots):
    data, labels = toy_data()
    kw = dict(shots=shots, batches_per_epoch=5 if shots else 0, batch_size=8 if shots else 16)
    torch.manual_seed(0)
    full = Toy()
    Engine(cfg(**kw), tmp_path / "full", seed=3).fit(
        full, data, loss_fn, evaluate_fn(data), select="acc", labels=labels
    )
    torch.manual_seed(0)
    cut = Toy()
    Engine(cfg(**kw), tmp_path / "cut", seed=3).fit(
        cut, data, loss_fn, evaluate_fn(data), select="acc", labels=labels, epochs=2
    )  # "killed" after 2 epochs
    torch.manual_seed(123)  # a different process state before resuming
    resumed = Toy()
    res = Engine(cfg(**kw), tmp_path / "cut", seed=3).fit(
        resumed, data, loss_fn, evaluate_fn(data), select="acc", labels=labels, resume=True
    )
    for (k, v1), v2 in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v1, v2), k
    a = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    b = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(s).items() if k != "train_time_s"} for s in a]
    assert strip == [{k: v for k, v in json.loads(s).items() if k != "train_time_s"} for s in b]
    assert len(res.history) == 4


def test_resume_without_checkpoint_is_an_error(tmp_path):
    data, labels = toy_data()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Engine(cfg(), tmp_path, seed=0).fit(Toy(), data, loss_fn, resume=True)


def test_substeps_take_one_optimizer_step_each(tmp_path):
    data, _ = toy_data(32)
    torch.manual_seed(0)
    model = Toy(substeps=["a", None])
    b_before = model.b.weight.detach().clone()
    eng = Engine(cfg(epochs=1, batch_size=32, momentum=0.0, weight_decay=0.0), tmp_path, seed=0)
    eng.fit(model, data, loss_fn)
    assert not torch.equal(model.b.weight, b_before)  # the second sub-step trained b
    with pytest.raises(ValueError, match="grad_accum"):
        Engine(cfg(grad_accum=2), tmp_path / "x", seed=0).fit(Toy(substeps=["a", None]), data, loss_fn)


def test_grad_accumulation_equals_big_batch(tmp_path):
    data, _ = toy_data(32)

    class NoDrop(Toy):
        def forward(self, x, y=None, part=None):
            return nn.functional.cross_entropy(self.b(torch.relu(self.a(x))), y)

    torch.manual_seed(0)
    m1 = NoDrop()
    m2 = NoDrop()
    m2.load_state_dict(m1.state_dict())
    Engine(cfg(epochs=1, batch_size=32, momentum=0.0, weight_decay=0.0), tmp_path / "a", 0).fit(
        m1, data, loss_fn
    )
    Engine(cfg(epochs=1, batch_size=16, grad_accum=2, momentum=0.0, weight_decay=0.0), tmp_path / "b", 0).fit(
        m2, data, loss_fn
    )
    for v1, v2 in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.allclose(v1, v2, atol=1e-6)


def test_episodic_sampler_ways_shots_and_determinism():
    labels = np.repeat(np.arange(10), 5)
    s = EpisodicBatchSampler(labels, ways=4, shots=2, n_batches=20, seed=1)
    batches = list(s)
    assert len(batches) == 20
    for b in batches:
        cls = labels[b]
        assert len(b) == 8 and len(set(cls)) == 4 and all((cls == c).sum() == 2 for c in set(cls))
    assert batches == list(s)  # same epoch -> same episodes
    s.set_epoch(1)
    assert batches != list(s)


def test_lr_schedule_and_release_shift():
    c = TrainConfig(lr=1.0, lr_step=10, lr_gamma=0.1)
    assert [lr_at(c, e) for e in (0, 9, 10, 19, 20)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    c.lr_shift_compat = True  # the release steps StepLR at epoch start: decays at epochs 9, 19, 29
    assert [lr_at(c, e) for e in (0, 8, 9, 18, 19)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_cosine_schedule_with_warmup():
    c = TrainConfig(lr=1.0, lr_schedule="cosine", warmup_epochs=2, min_lr=0.1, epochs=6)
    # warm-up 0.5, 1.0; then cosine over the 4 remaining epochs: t = 0, 1/4, 2/4, 3/4
    want = [0.5, 1.0] + [0.1 + 0.45 * (1 + math.cos(math.pi * t)) for t in (0, 0.25, 0.5, 0.75)]
    assert [lr_at(c, e) for e in range(6)] == pytest.approx(want)
    assert lr_at(c, 10) == pytest.approx(0.1)  # past the end: min_lr
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_at(TrainConfig(lr_schedule="linear"), 0)


DDP_SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    sys.path.insert(0, os.environ["TEST_DIR"])
    from test_engine import Toy, toy_data, loss_fn, cfg
    from unseen.engine import Engine
    out, which = sys.argv[1], sys.argv[2]
    data, labels = toy_data()
    torch.manual_seed(0)
    model = Toy()
    if which == "epsilon":  # features without a CLS token: the model's CLS stem gets no gradient
        from torch.utils.data import TensorDataset
        from unseen.registry import create_model
        import unseen.multilabel
        x, y, emb = torch.randn(64, 6, 16), torch.randint(-1, 2, (64, 5)).to(torch.int8), torch.randn(5, 12)
        data = TensorDataset(x, y)
        model = create_model(
            "epsilon", {"dim": 16, "heads": 2, "layers": 1}, "multilabel", in_dim=16, n_tokens=6, embed_dim=12
        )
        loss_fn = lambda m, b, s: model.loss(m(b[0], emb), b[1], emb)
    Engine(cfg(epochs=2), out, seed=0).fit(model, data, loss_fn)
    rank = torch.distributed.get_rank()
    torch.save({k: v for k, v in model.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))
""")


@pytest.mark.slow  # two torch processes (~10-17 s); the suite must stay under 3 minutes
@pytest.mark.parametrize("which", ["toy", "epsilon"])
def test_ddp_two_processes_on_cpu(tmp_path, which):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, TEST_DIR=str(Path(__file__).parent), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(29517 + (which == "epsilon")),
            str(script),
            str(tmp_path / "run"),
            which,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "run" / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "run" / "rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # gradients were averaged: replicas stay identical
    assert (
        len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    )  # rank 0 logs once per epoch
