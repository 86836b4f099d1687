"""Compositional runs end to end on a tiny embedded world (czsl layout, read back by the czsl reader)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

WORLD = (
    "{seed: 1, n_states: 5, n_objects: 5, n_val_unseen: 2, n_test_unseen: 3, n_val_seen: 2, n_test_seen: 3, "
    "train_images: 4, val_images: 3, test_images: 3, pretrain_images: 2, n_na_images: 2}"
)
PRETRAIN = "{steps: 3, batch_size: 16, warmup: 1}"


def _cfg(out: Path, method: str, extra: list[str] | None = None):
    from unseen.config import load_config
    from unseen.runs import resolve_config_path

    over = [
        f"data.world={WORLD}",
        f"data.pretrain={PRETRAIN}",
        f"output_dir={out}",
        f"name={method}",
        "train.epochs=2",
        "train.batch_size=16",
        "eval.batch_size=32",
    ]
    if method == "refiner":
        over += ["model.n_queries=4", "model.refine_blocks=2"]
    return load_config(resolve_config_path(f"compositional/demo_{method}"), over + (extra or []))


# csp is slow here: test_tracking trains it through the same protocol in the default suite
@pytest.mark.parametrize("method", ["zeroshot", pytest.param("csp", marks=pytest.mark.slow), "refiner"])
def test_run_end_to_end_and_eval_reproduces(tmp_path: Path, method: str) -> None:
    from unseen import runs

    cfg = _cfg(tmp_path, method)
    res = runs.run_config(cfg, runs.new_run_dir(cfg))
    run_dir = Path(res["run_dir"])
    m = res["metrics"]
    for world in ("cw", "ow"):
        for k in ("AUC", "HM", "S", "U", "attr", "obj"):
            assert 0.0 <= m[f"{world}/{k}"] <= 1.0, (world, k)
    assert res["open_world"]["unseen_pairs"] == res["counts"]["ow_pairs"] - res["counts"]["train_pairs"]
    if method != "zeroshot":  # the epoch was chosen on validation AUC
        hist = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
        best = max(h["val/AUC"] for h in hist)
        assert res["selection"]["val_AUC"] == best
    again = runs.evaluate_run(run_dir)
    for k, v in m.items():
        assert again[k] == pytest.approx(v, abs=1e-12), k
    assert (run_dir / "plots" / "seen_unseen_curve.png").is_file()
    if method == "refiner":
        assert (run_dir / "plots" / "query_attention.png").is_file()
    top = runs.predict(run_dir, [str(next((Path(res["data_root"]) / "images").rglob("*.png")))], topk=3)
    assert len(top[0]["top"]) == 3 and all(" " in t["class"] for t in top[0]["top"])
    scores = [t["score"] for t in top[0]["top"]]
    assert scores == sorted(scores, reverse=True)
    if method != "zeroshot":
        _foreign_weights_are_refused(run_dir, tmp_path)


def _foreign_weights_are_refused(run_dir: Path, tmp_path: Path) -> None:
    """Weights of another model (a tensor of another shape, or another setting's) end `unseen eval` / `predict` with
    exit 2 and one line naming the file; results.json stays as it was."""
    import contextlib
    import io
    import shutil

    from unseen.cli import main
    from unseen.io import load_safetensors, save_safetensors

    own = load_safetensors(run_dir / "model.safetensors")
    first = sorted(own)[0]
    cases = {
        "shape": ({**own, first: own[first].flatten()[:1]}, "1 with other shapes"),
        "attribute": ({"backbone.conv1.weight": torch.zeros(4, 3, 3, 3)}, "tensors the model does not have"),
    }
    image = next(run_dir.parent.rglob("*.png"))
    for name, (tensors, expected) in cases.items():
        other = tmp_path / f"foreign-{name}"
        shutil.copytree(run_dir, other)
        save_safetensors(other / "model.safetensors", tensors)
        before = (other / "results.json").read_bytes()
        for argv in (["eval", str(other)], ["predict", str(other), str(image)]):
            buf = io.StringIO()
            with contextlib.redirect_stderr(buf):
                assert main(argv) == 2
            err = buf.getvalue()
            assert len(err.strip().splitlines()) == 1, err
            assert (
                f"{other / 'model.safetensors'}: not weights of this run's model" in err and expected in err
            )
        assert (other / "results.json").read_bytes() == before


def test_chance_row_is_near_uniform(tmp_path: Path) -> None:
    from unseen import runs
    from unseen.compositional.data import load_czsl
    from unseen.compositional.task import _pairs_tensor, _result_dict

    cfg = _cfg(tmp_path, "zeroshot")
    res = runs.run_config(cfg, runs.new_run_dir(cfg))
    n_obj = res["counts"]["objs"]
    # unbiased random top-1 pair: object right about 1/|O| of the time (loose bound for a small test set)
    assert abs(res["chance"]["cw/obj"] - 1 / n_obj) < 0.2
    assert np.isfinite(res["chance"]["ow/AUC"])
    # the run's chance row is the earlier dense computation's, value for value (closed world, then open world
    # from the same Generator)
    d = load_czsl(res["data_root"])
    rng = np.random.default_rng(cfg.seed)
    cw = _dense_chance(
        rng,
        _pairs_tensor(d.pair_attr, d.pair_obj).numpy(),
        d.seen_mask(),
        d.eval_mask("test"),
        d.targets("test"),
        d.test.attr,
        d.test.obj,
    )
    ow = _dense_chance(
        rng,
        np.stack(np.divmod(np.arange(d.n_open_pairs), d.n_objs), 1),
        d.seen_mask("open"),
        np.ones(d.n_open_pairs, bool),
        d.targets("test", "open"),
        d.test.attr,
        d.test.obj,
    )
    expected = {
        **{f"cw/{k}": v for k, v in _result_dict(cw).items()},
        **{f"ow/{k}": v for k, v in _result_dict(ow).items()},
    }
    assert json.dumps(res["chance"]) == json.dumps(expected)


# --------------------------------------------------------------------------------------------- chance row


def _dense_chance(rng, pairs, seen, mask, gt, gt_attr, gt_obj):
    """The chance computation as it was: one dense N x P float32 draw, streamed to the evaluator at once."""
    from unseen.compositional.metrics import StreamingEvaluator

    s = rng.random((len(gt), len(pairs)), dtype=np.float32)
    ev = StreamingEvaluator(pairs, seen, mask, gt, gt_attr, gt_obj)
    ev.update(s)
    return ev.result()


class _SpyRng:
    """A numpy Generator that records every ``random`` draw's shape (and the draws, with ``keep``)."""

    def __init__(self, seed: int, keep: bool = False) -> None:
        self.gen, self.keep = np.random.default_rng(seed), keep
        self.shapes: list[tuple[int, ...]] = []
        self.draws: list[np.ndarray] = []

    def random(self, size, dtype=np.float64):
        x = self.gen.random(size, dtype=dtype)
        self.shapes.append(x.shape)
        if self.keep:
            self.draws.append(x)
        return x


def _chance_problem(rng: np.random.Generator, n_attr: int, n_obj: int, n: int, closed: bool):
    """A closed-world-like (a subset of the pairs, eval mask a subset of them) or open-world-like (every pair, all
    candidates) problem with random seen pairs and ground truths."""
    pairs = np.stack(np.divmod(np.arange(n_attr * n_obj), n_obj), 1)
    if closed:
        pairs = pairs[np.sort(rng.choice(len(pairs), len(pairs) * 2 // 3, replace=False))]
    p = len(pairs)
    seen = rng.random(p) < 0.3
    seen[0] = True
    mask = seen | (rng.random(p) < 0.7) if closed else np.ones(p, bool)
    gt = rng.choice(np.flatnonzero(mask), n)
    return pairs, seen, mask, gt, pairs[gt, 0], pairs[gt, 1]


def test_blocked_chance_equals_the_dense_matrix_bit_for_bit() -> None:
    """Row blocks of a Generator's float32 draws are the rows of one dense draw (odd sizes included, where a
    32-bit half of a 64-bit output carries over between draws), so the chance numbers are unchanged: closed
    world then open world from one Generator, for block sizes from one row to everything at once."""
    from unseen.compositional.task import chance_result

    for seed in (0, 1, 2):
        r = np.random.default_rng(100 + seed)
        cw = _chance_problem(r, 7, 9, 37, closed=True)  # 42 pairs
        ow = _chance_problem(r, 7, 9, 37, closed=False)  # 63 pairs: odd row length
        ref = np.random.default_rng(seed)
        dense = [_dense_chance(ref, *cw), _dense_chance(ref, *ow)]
        state_after = ref.bit_generator.state
        g = np.random.default_rng(seed)  # the earlier code's two matrices
        matrices = [g.random((37, 42), dtype=np.float32), g.random((37, 63), dtype=np.float32)]
        for block in (1, 3 * 42 - 1, 5 * 63, 10**9):
            spy = _SpyRng(seed, keep=True)
            blocked = [chance_result(spy, *cw, block=block), chance_result(spy, *ow, block=block)]  # type: ignore[arg-type]
            for got, want in zip(blocked, dense):
                assert json.dumps(got.to_dict()) == json.dumps(want.to_dict()), (seed, block)
            assert spy.gen.bit_generator.state == state_after  # the draws that follow are unchanged too
            n_cw = sum(1 for s in spy.shapes if s[1] == 42)
            for m, draws in zip(matrices, (spy.draws[:n_cw], spy.draws[n_cw:])):
                assert np.array_equal(np.concatenate(draws).view(np.uint32), m.view(np.uint32))


def test_chance_draws_one_block_at_a_time_and_memory_does_not_grow() -> None:
    """120,000 pairs: every draw is whole rows of at most one block, and the traced peak stays far below the
    dense matrix (the earlier path held it and a copy: ~2x) and does not grow with the number of images."""
    import tracemalloc

    from unseen.compositional.task import chance_result

    block = 1 << 18  # 1 MiB of float32: 2 rows of 120,000 pairs
    peaks = {}
    for n in (24, 96):
        problem = _chance_problem(np.random.default_rng(5), 300, 400, n, closed=False)
        spy = _SpyRng(0)
        tracemalloc.start()
        try:
            res = chance_result(spy, *problem, block=block)  # type: ignore[arg-type]
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert res.n_samples == n
        assert all(s[1] == 120_000 and s[0] * s[1] <= block for s in spy.shapes)
        assert sum(s[0] for s in spy.shapes) == n
    dense_bytes = 96 * 120_000 * 4  # 44 MiB
    assert peaks[96] < dense_bytes / 4, peaks
    assert peaks[96] - peaks[24] < 2 * block * 4, peaks  # independent of N: the block, not the matrix


def test_chance_result_takes_one_row_when_a_row_exceeds_the_block() -> None:
    from unseen.compositional.task import chance_result

    problem = _chance_problem(np.random.default_rng(6), 5, 7, 4, closed=False)
    spy = _SpyRng(0)
    chance_result(spy, *problem, block=10)  # type: ignore[arg-type]
    assert spy.shapes == [(1, 35)] * 4


def test_task_stream_resolves_merged_near_ties_exactly() -> None:
    """The run's evaluation path (scores streamed batch by batch from a model, flagged rows re-scored from their
    batches) equals the dense reference on >4-way merged near-ties, with nothing left ambiguous."""
    from test_czsl_metrics import assert_same, merged_case, reference_evaluate
    from torch.utils.data import DataLoader, TensorDataset

    from unseen.compositional.metrics import StreamingEvaluator
    from unseen.compositional.task import rescorer, stream_scores

    (pairs, seen, evm, y, s), _ = merged_case(np.random.default_rng(12), n=200)
    cand = np.flatnonzero(evm)

    class Lookup(torch.nn.Module):  # "images" are sample ids; the scores come from the case's matrix
        def encode_pairs(self, p, chunk):
            return None

        def encode_images(self, ids):
            return ids

        def score(self, ids, cache):
            return {"scores": torch.from_numpy(s[ids.numpy()][:, cand])}

    model, loader = Lookup(), DataLoader(TensorDataset(torch.arange(len(y))), batch_size=32)
    ev = StreamingEvaluator(pairs, seen, evm, y)
    pt = torch.from_numpy(pairs[cand])
    stream_scores(model, loader, pt, [(ev, cand)], torch.device("cpu"), 16)
    assert ev.result().n_ambiguous > 20  # the stream alone leaves them flagged
    res = ev.result(rescore=rescorer(model, loader, pt, cand, torch.device("cpu"), 16))
    assert res.n_ambiguous == 0 and res.n_resolved > 20
    assert_same(res, reference_evaluate(s, pairs, seen, evm, y))


# --------------------------------------------------------------------------------------------- czsl folders


@pytest.mark.parametrize(
    ("name", "overrides", "dataset"),
    [
        ("compositional/refiner_mit_states", ["data.root=/data/mit-states"], "mit-states"),
        ("compositional/csp_ut_zappos", ["data.root=/data/ut-zap50k/"], "ut-zappos"),
        ("compositional/refiner_cgqa", ["data.root=/data/C-GQA"], "cgqa"),
        ("compositional/zeroshot_clip_cgqa", ["data.root=/data/my-copy"], "my-copy"),  # not a known benchmark
        ("compositional/demo_csp", [], "shapes"),
        ("attribute/demo_mgmrn", [], None),  # None: data.name, as before
        ("multilabel/demo_epsilon", [], None),
    ],
)
def test_default_run_name_names_the_dataset(tmp_path: Path, name: str, overrides: list[str], dataset) -> None:
    import re

    from unseen import runs
    from unseen.config import load_config

    cfg = load_config(runs.resolve_config_path(name), [*overrides, f"output_dir={tmp_path}"])
    run_dir = runs.new_run_dir(cfg)
    want = dataset or cfg.data.name
    assert run_dir.parent == tmp_path
    assert re.fullmatch(rf"{re.escape(cfg.model.name)}_{re.escape(want)}_\d{{8}}-\d{{6}}", run_dir.name)
    cfg.name = "mine"  # a given name is kept as it is
    assert runs.new_run_dir(cfg).name == "mine"


def test_czsl_folder_run_without_open_world(tmp_path: Path, caplog, monkeypatch) -> None:
    """The embedded world read as a user's czsl folder (data.name=czsl, no GloVe): data.image_size other than the
    CLIP's is refused before the data is read; the run folder is named after the dataset, the dataset summary is
    logged once, no open world is evaluated and the chance row has no ow/ keys."""
    import logging

    import unseen.compositional.datasets as ds
    from unseen import runs
    from unseen.config import ConfigError, load_config
    from unseen.registry import get_dataset_entry

    shapes = _cfg(tmp_path, "zeroshot")
    prep = get_dataset_entry("shapes", "compositional").builder(shapes.data, shapes.model)
    root, weights = prep.data.czsl.root, prep.suggestions["clip_weights"]
    out = tmp_path / "czsl-runs"
    path = runs.resolve_config_path("compositional/zeroshot_clip_mit_states")
    over = [
        f"data.root={root}",
        "model.clip_arch=unseen-tiny-clip",
        f"model.clip_weights={weights}",
        f"output_dir={out}",
        "eval.batch_size=32",
    ]

    def not_read(*args, **kwargs):
        raise AssertionError("the data was read before the config error")

    refused = r"data\.image_size=32: the frozen CLIP unseen-tiny-clip reads 64-pixel images only; set data\.image_size to 64 or 0"
    with monkeypatch.context() as mp:
        mp.setattr(ds, "load_czsl", not_read)
        with pytest.raises(ConfigError, match=refused):
            runs.train(path, [*over, "data.image_size=32"])
    assert not out.exists()
    with (
        monkeypatch.context() as mp
    ):  # an architecture without a local config: refused once the CLIP is built
        mp.setattr(ds, "clip_config_image_size", lambda arch: None)
        with pytest.raises(ConfigError, match=refused):
            runs.train(path, [*over, "data.image_size=32", "name=late"])

    caplog.set_level(logging.INFO, logger="unseen")
    caplog.clear()  # the builder above logged it too
    cfg = load_config(path, [*over, "data.image_size=64"])  # the CLIP's own size: accepted
    res = runs.run_config(cfg, runs.new_run_dir(cfg))
    run_dir = Path(res["run_dir"])
    assert res["dataset"] == root.name and run_dir.name.startswith(f"zeroshot_clip_{root.name}_")
    summary = [
        r
        for r in caplog.records
        if r.getMessage().startswith(f"{root.name}: ") and " OW pairs" in r.getMessage()
    ]
    assert len(summary) == 1, [r.getMessage() for r in summary]
    assert res["open_world"] is None and sorted(res["metrics"]) == sorted(f"cw/{k}" for k in _CW_KEYS)
    assert sorted(res["chance"]) == sorted(res["metrics"])  # no open-world chance without an open world
    assert json.loads((run_dir / "vocab.json").read_text())["image_size"] == 64


_CW_KEYS = ("AUC", "HM", "S", "U", "attr", "obj", "hm_seen", "hm_unseen")
