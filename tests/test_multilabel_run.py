"""Multi-label runs end to end on a synthetic NUS-WIDE folder in the real layout (label lists, GloVe npz, BiAM h5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unseen.multilabel.data import write_biam_h5

TAGS = ["sky", "tree", "car", "dog", "sun", "road", "cat", "boat", "bird", "house", "lake", "flower"]
CONCEPTS = ["dog", "cat", "beach", "snow", "rain", "night"]  # dog, cat are also tags (not seen labels then)
C_FEAT, N_TOK, DIM = 16, 16, 16


def _world(root: Path, seed: int = 0, n_train: int = 240, n_test: int = 60) -> None:
    """Labels are planted: each label has a prototype (a mix of its words' vectors) added to one random token."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "TagList1k.txt").write_text("\n".join(TAGS) + "\n")
    (root / "Concepts81.txt").write_text("\r\n".join(CONCEPTS) + "\r\n")  # CRLF, as BiAM's copy
    words = {w: rng.normal(size=DIM) for w in sorted(set(TAGS) | set(CONCEPTS))}
    np.savez(
        root / "glove300_tags1k_concepts81.npz",
        tags1k=np.stack([words[t] for t in TAGS]).astype(np.float32),
        concepts81=np.stack([words[c] for c in CONCEPTS]).astype(np.float32),
    )
    seen = [t for t in TAGS if t not in CONCEPTS]
    space = seen + CONCEPTS
    mix = rng.normal(size=(DIM, C_FEAT)) / np.sqrt(DIM)

    def items(n: int, test: bool, tag: str):
        for i in range(n):
            present = rng.random(len(space)) < 0.25
            x = 0.5 * rng.normal(size=(C_FEAT, N_TOK))
            for c in np.flatnonzero(present):
                x[:, rng.integers(N_TOK)] += 3 * words[space[c]] @ mix
            y = np.where(present, 1, -1).astype(np.int8)
            yield f"{tag}/img_{i:04d}.jpg", x.astype(np.float32), (y if test else y[: len(seen)])

    write_biam_h5(root / "nus_wide_train.h5", items(n_train, False, "train"), feature_shape=(C_FEAT, N_TOK))
    write_biam_h5(root / "nus_wide_test.h5", items(n_test, True, "test"), feature_shape=(C_FEAT, N_TOK))


@pytest.fixture(scope="module")
def nus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nus")
    _world(root)
    return root


def _cfg(root: Path, out: Path, model: str, extra: list[str] | None = None):
    from unseen.config import load_config
    from unseen.runs import resolve_config_path

    name = {"epsilon": "epsilon_nus_wide", "biam": "biam_nus_wide"}.get(model, "epsilon_nus_wide")
    over = [
        f"data.root={root}",
        f"output_dir={out}",
        "train.epochs=3",
        "train.warmup_epochs=1",
        "train.device=cpu",
        "eval.batch_size=64",
        f"name={model}",
    ]
    if model == "epsilon":
        over += ["model.dim=32", "model.heads=4", "model.layers=1"]
    elif model == "biam":
        over += ["model.dim=16", "model.heads=4"]
    else:
        over += ["model.name=global_linear"]
    if model != "global_linear":
        return load_config(resolve_config_path(f"multilabel/{name}"), over + (extra or []))
    base = [o for o in over if not o.startswith("model.")]
    return load_config(
        None,
        [
            "setting=multilabel",
            "data.name=nus_wide",
            "model.name=global_linear",
            "train.lr=0.01",
            "train.optimizer=adam",
            *base,
            *(extra or []),
        ],
    )


@pytest.mark.parametrize("model", ["epsilon", "biam", "global_linear"])
def test_run_end_to_end_and_eval_reproduces(nus_root: Path, tmp_path: Path, model: str) -> None:
    from unseen import runs

    cfg = _cfg(nus_root, tmp_path, model)
    res = runs.run_config(cfg, runs.new_run_dir(cfg))
    run_dir = Path(res["run_dir"])
    m = res["metrics"]
    assert res["label_space"] == {"n_seen": 10, "n_unseen": 6}
    for space in ("zsl", "gzsl"):
        for k in ("mAP", "F1@3", "F1@5", "P@3", "R@5"):
            assert 0.0 <= m[f"{space}/{k}"] <= 1.0
    assert m["zsl/n_images"] == m["gzsl/n_images"] == 60  # NUS: every test image counts
    # the epoch was chosen on validation (val keys only in metrics.jsonl; the selected epoch's val F1@5 is the max)
    hist = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert all(not any(k.startswith("test") for k in h) for h in hist)
    best = max(h["val/F1@5"] for h in hist)
    assert res["selection"]["val_F1@5"] == best
    assert hist[res["selection"]["epoch"]]["val/F1@5"] == best
    # unseen eval recomputes the same numbers from the saved model
    again = runs.evaluate_run(run_dir)
    for k, v in m.items():
        assert again[k] == pytest.approx(v, abs=1e-12), k
    assert (run_dir / "plots" / "unseen_label_ap.png").is_file()
    assert "chance" in res and res["chance"]["zsl/mAP"] < 0.6
    # the NUS-WIDE configs refit on all training images; a config without data.refit keeps the 80% model
    refit = model != "global_linear"
    assert ("refit" in res["selection"]) == refit and (run_dir / "refit").is_dir() == refit
    assert "biam_compat" not in res  # an Open Images switch
    if model == "biam":  # another model's weights in the run folder: refused, naming the file
        from unseen.io import DataFormatError, load_safetensors, save_safetensors

        own = load_safetensors(run_dir / "model.safetensors")
        save_safetensors(tmp_path / "foreign.safetensors", dict(sorted(own.items())[1:]))
        (run_dir / "model.safetensors").write_bytes((tmp_path / "foreign.safetensors").read_bytes())
        with pytest.raises(
            DataFormatError, match="model.safetensors: not weights of this run's model 'biam'"
        ):
            runs.evaluate_run(run_dir)


@pytest.mark.slow  # a learning test
def test_epsilon_learns_the_planted_world(nus_root: Path, tmp_path: Path) -> None:
    """Trained on seen labels only, Epsilon-R ranks labels well above random scores (GZSL); the toy's unseen label
    vectors are random, so zero-shot transfer here is weak by construction (the demo world tests transfer)."""
    from unseen import runs

    cfg = _cfg(nus_root, tmp_path, "epsilon", ["train.epochs=8", "train.lr=0.002"])
    res = runs.run_config(cfg, runs.new_run_dir(cfg))
    assert res["metrics"]["gzsl/mAP"] > res["chance"]["gzsl/mAP"] + 0.15
    assert res["metrics"]["zsl/mAP"] > res["chance"]["zsl/mAP"]


def test_missing_feature_file_and_bad_label_length(nus_root: Path, tmp_path: Path) -> None:
    from unseen import runs
    from unseen.io import DataFormatError

    cfg = _cfg(nus_root, tmp_path, "epsilon", [f"data.test_h5={tmp_path / 'nope.h5'}"])
    with pytest.raises(DataFormatError, match="nope.h5"):
        runs.run_config(cfg, tmp_path / "r1")
    bad = tmp_path / "bad.h5"
    rng = np.random.default_rng(0)
    write_biam_h5(
        bad,
        [("x/a.jpg", rng.normal(size=(C_FEAT, N_TOK)).astype(np.float32), np.ones(13, np.int8))],
        feature_shape=(C_FEAT, N_TOK),
    )
    cfg = _cfg(nus_root, tmp_path, "epsilon", [f"data.test_h5={bad}"])
    with pytest.raises(DataFormatError, match="x_a.jpg-labels"):
        runs.run_config(cfg, tmp_path / "r2")


def test_embedded_world_run_and_predict_from_image_files(tmp_path: Path) -> None:
    """The demo pipeline at toy size: rendered world -> extractor trained on seen tags -> `unseen extract` layout ->
    NUS-WIDE reader -> Epsilon -> `predict` rebuilds the extractor from the sidecar and ranks labels of image files."""
    from unseen import runs
    from unseen.config import load_config
    from unseen.runs import resolve_config_path

    world = (
        "{seed: 3, n_colours: 5, n_shapes: 5, n_categories: 18, n_unseen: 5, n_train: 60, n_test: 24, "
        "image_size: 48, supersample: 1, max_distractors: 1}"
    )
    cfg = load_config(
        resolve_config_path("multilabel/demo_epsilon"),
        [
            f"data.world={world}",
            "data.extractor={epochs: 1, widths: [8, 16, 24]}",
            f"output_dir={tmp_path}",
            "train.epochs=2",
            "model.dim=32",
            "model.layers=1",
            "model.groups=3",
            "model.global_groups=3",
        ],
    )
    res = runs.run_config(cfg, runs.new_run_dir(cfg))
    run_dir = Path(res["run_dir"])
    assert res["world"]["extractor"]["widths"] == [8, 16, 24]
    assert 0.0 <= res["world"]["extractor_val_seen_mAP"] <= 1.0
    for k in ("zsl/mAP", "gzsl/mAP", "zsl/F1@3", "gzsl/F1@5"):
        assert 0.0 <= res["metrics"][k] <= 1.0
    weights = Path(res["features"]["weights_file"])  # <world>/features-<hash>/extractor.safetensors
    img = sorted((weights.parents[1] / "images" / "test").glob("*.png"))[0]
    top = runs.predict(run_dir, [str(img)], "all", 5)[0]["top"]
    assert len(top) == 5 and [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    unseen_only = runs.predict(run_dir, [str(img)], "unseen", 10)[0]["top"]
    assert len(unseen_only) == 5 and not any(t["seen"] for t in unseen_only)


# --------------------------------------------------------------------------------------------- refit, BiAM pooled AP
def test_refit_trains_on_all_training_images_for_the_chosen_epochs(nus_root, tmp_path, monkeypatch):
    """data.refit=retrain (the NUS-WIDE configs' default): a fresh model on every training name with a positive seen
    label, for exactly selection.epoch + 1 epochs, and that model is the one saved and tested."""
    import h5py
    import torch

    from unseen import runs
    from unseen.engine import Engine
    from unseen.io import load_safetensors
    from unseen.multilabel.task import MultilabelTask
    from unseen.task import Fitted

    calls = []
    real_fit = Engine.fit

    def spy(self, model, train_set, loss_fn, evaluate=None, **kw):
        calls.append((self.run_dir.name, len(train_set), kw["epochs"], evaluate is None))
        return real_fit(self, model, train_set, loss_fn, evaluate, **kw)

    monkeypatch.setattr(Engine, "fit", spy)
    cfg = _cfg(nus_root, tmp_path, "epsilon")
    assert cfg.data.refit == "retrain"
    res = runs.run_config(cfg, runs.new_run_dir(cfg))
    run_dir = Path(res["run_dir"])
    with h5py.File(nus_root / "nus_wide_train.h5") as f:  # independent count: names with a +1 seen label
        n_all = sum(int((f[k][()] == 1).any()) for k in f if k.endswith("-labels"))
    e = res["selection"]["epoch"]
    assert calls[0][0] == "train" and calls[0][1] < n_all and calls[0][2] == 3
    assert calls[1] == ("refit", n_all, e + 1, True) and len(calls) == 2
    assert res["selection"]["refit"]["epochs"] == e + 1 and res["selection"]["refit"]["images"] == n_all
    assert "retrained on all training images" in res["selection"]["rule"]
    assert len((run_dir / "refit" / "metrics.jsonl").read_text().splitlines()) == e + 1
    saved, refit = (
        load_safetensors(run_dir / "model.safetensors"),
        load_safetensors(run_dir / "refit/last.safetensors"),
    )
    best80 = load_safetensors(run_dir / "train" / "best.safetensors")
    assert saved.keys() == refit.keys() and all(torch.equal(saved[k], refit[k]) for k in saved)
    assert any(not torch.equal(saved[k], best80[k]) for k in saved)
    # the test metrics are those of the refit weights (rebuilt here from refit/last.safetensors)
    task = MultilabelTask(cfg, run_dir)
    model = task.build_model()
    model.load_state_dict(refit)
    again = task.test(Fitted(model, {})).metrics
    assert again == pytest.approx(res["metrics"], abs=1e-12)


def test_refit_config_errors(nus_root, tmp_path):
    from unseen.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.refit: expected one of none, retrain, got 'finetune'"):
        _cfg(nus_root, tmp_path, "epsilon", ["data.refit=finetune"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'biam_compat'"):  # an Open Images-only switch
        _cfg(nus_root, tmp_path, "epsilon", ["data.biam_compat=true"])


def _biam_loop(scores: np.ndarray, labels: np.ndarray, drop_unannotated: bool) -> tuple[float, float]:
    """akshitac8/BiAM evaluate_openimages.py + util_openimages.compute_AP, written out (sklearn AP on each pool)."""
    from sklearn.metrics import average_precision_score

    keep = (labels == 1).any(1)
    s, y = scores[keep], labels[keep]
    if drop_unannotated:
        cols = (y != 0).any(0)
        s, y = s[:, cols], y[:, cols]
    ap = np.zeros(y.shape[1])
    for c in range(y.shape[1]):
        rows = y[:, c] != 0
        pool_y, pool_s = y[rows], s[rows]
        mask = pool_y != 0
        if (pool_y == 1).sum() == 0:
            continue
        ap[c] = average_precision_score(pool_y[mask] == 1, pool_s[mask])
    n_pos = (y == 1).sum(0)
    return float(ap.mean()), float((n_pos * ap).sum() / n_pos.sum())


def test_biam_pooled_map_equals_biams_loop():
    from unseen.multilabel.metrics import biam_pooled_map

    rng = np.random.default_rng(0)
    for trial in range(3):
        n, c = 120, 30
        labels = np.where(rng.random((n, c)) < 0.15, rng.choice([1, -1], size=(n, c), p=[0.4, 0.6]), 0)
        labels[:, 3] = 0  # a label nobody annotated: AP 0, averaged in unless dropped
        labels[:, 5] = np.where(labels[:, 5] != 0, -1, 0)  # annotated, never positive
        labels = labels.astype(np.int8)
        scores = np.round(rng.normal(size=(n, c)), 1 if trial else 3)  # trial 1, 2: many ties
        for drop in (False, True):
            got = biam_pooled_map(
                scores, labels, drop_unannotated_labels=drop, block_rows=7 if trial else 4096
            )
            want = _biam_loop(scores.astype(np.float64), labels, drop)
            assert (got["mAP"], got["mAP_weighted"]) == pytest.approx(want, abs=1e-12)
            assert got["n_images"] == int((labels == 1).any(1).sum())
            assert got["n_labels"] == (int((labels[(labels == 1).any(1)] != 0).any(0).sum()) if drop else c)
    # pooling differs from the per-class AP: not the same number (why the block is kept apart)
    from unseen.multilabel.metrics import mean_average_precision

    per_class = mean_average_precision(scores, labels, image_filter="has_positive")["mAP"]
    assert abs(biam_pooled_map(scores, labels)["mAP"] - per_class) > 1e-3


def _oi_world(root: Path, seed: int = 0) -> None:
    """A tiny Open Images folder: 8 seen / 6 unseen source labels (4 evaluated), vectors, train and test h5."""
    from unseen.multilabel.data import write_biam_h5

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    seen = [f"/m/s{i}" for i in range(8)]
    unseen = [f"/m/u{i}" for i in range(6)]
    (root / "classes-trainable.txt").write_text("\n".join(seen) + "\n")
    (root / "unseen_labels.txt").write_text("\n".join(unseen) + "\n")
    (root / "top_400_unseen.csv").write_bytes(b"\xef\xbb\xbf4\r\n0\r\n2\r\n5\r\n")
    vec_s, vec_u = rng.normal(size=(8, DIM)), rng.normal(size=(6, DIM))
    np.savez(root / "vectors.npz", seen=vec_s.astype(np.float32), unseen=vec_u.astype(np.float32))
    mix = rng.normal(size=(DIM, C_FEAT)) / np.sqrt(DIM)

    def items(n: int, tag: str):
        for i in range(n):
            ls = np.where(rng.random(8) < 0.3, 1, np.where(rng.random(8) < 0.3, -1, 0)).astype(np.int8)
            lu = np.where(rng.random(6) < 0.3, 1, np.where(rng.random(6) < 0.3, -1, 0)).astype(np.int8)
            x = 0.5 * rng.normal(size=(C_FEAT, N_TOK))
            for v in [*vec_s[ls == 1], *vec_u[lu == 1]]:
                x[:, rng.integers(N_TOK)] += 3 * v @ mix
            yield f"{tag}{i:04d}", x.astype(np.float32), {"seenlabels": ls, "unseenlabels": lu}

    write_biam_h5(root / "train.h5", items(200, "tr"), feature_shape=(C_FEAT, N_TOK))
    write_biam_h5(root / "test.h5", items(80, "te"), feature_shape=(C_FEAT, N_TOK))


def test_open_images_run_reports_the_biam_pooled_map_apart(tmp_path):
    from unseen import runs
    from unseen.config import load_config
    from unseen.multilabel.datasets import dataset_labels
    from unseen.multilabel.task import MultilabelTask

    root = tmp_path / "oi"
    _oi_world(root)
    cfg = load_config(
        runs.resolve_config_path("multilabel/epsilon_open_images"),
        [
            f"data.root={root}",
            f"data.vectors={root / 'vectors.npz'}",
            f"data.train_h5={root / 'train.h5'}",
            f"data.test_h5={root / 'test.h5'}",
            "data.val_fraction=0.2",
            "data.ks=[2, 3]",
            "data.select_metric=F1@2",
            f"output_dir={tmp_path}",
            "train.epochs=2",
            "train.device=cpu",
            "model.dim=32",
            "model.heads=4",
            "model.layers=1",
        ],
    )
    assert cfg.data.biam_compat and cfg.data.refit == "retrain"  # the packaged Open Images config's defaults
    res = runs.run_config(cfg, runs.new_run_dir(cfg))
    block = res["biam_compat"]
    assert "pooled" in block["note"] and "not comparable" in block["note"]
    assert not any("pooled" in k or "biam" in k for k in res["metrics"])  # the metrics keep the per-class AP
    scores = np.load(Path(res["run_dir"]) / "test_scores.npy")
    task = MultilabelTask(cfg, Path(res["run_dir"]))
    labels = dataset_labels(task.data.test)
    n_seen = task.n_seen
    assert (block["zsl/mAP"], block["zsl/mAP_weighted"]) == pytest.approx(
        _biam_loop(scores[:, n_seen:].astype(np.float64), labels[:, n_seen:], False), abs=1e-12
    )
    assert (block["gzsl/mAP"], block["gzsl/mAP_weighted"]) == pytest.approx(
        _biam_loop(scores.astype(np.float64), labels, True), abs=1e-12
    )
    assert block["zsl/n_labels"] == 4 and block["zsl/n_images"] == res["metrics"]["zsl/n_images"]
