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


@pytest.mark.parametrize("method", ["zeroshot", "csp", "refiner"])
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

    cfg = _cfg(tmp_path, "zeroshot")
    res = runs.run_config(cfg, runs.new_run_dir(cfg))
    n_obj = res["counts"]["objs"]
    # unbiased random top-1 pair: object right about 1/|O| of the time (loose bound for a small test set)
    assert abs(res["chance"]["cw/obj"] - 1 / n_obj) < 0.2
    assert np.isfinite(res["chance"]["ow/AUC"])


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
