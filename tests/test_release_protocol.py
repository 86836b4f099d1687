"""The papers' reporting protocols, kept apart from the validation protocol: the Mg-MRN release's test-selected
report (``eval.report=release``), checked against a brute-force re-run of the release's loops over the saved
per-epoch test scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from unseen import runs
from unseen.attribute.metrics import release_epoch_metrics, release_selection

WORLD = (
    "{seed: 1, n_classes: 10, n_unseen: 3, n_val: 2, images_per_class: 10, image_size: 32, "
    "n_pretrain_classes: 4, pretrain_images_per_class: 10}"
)
TINY = [
    f"data.world={WORLD}",
    "data.pretrain_epochs=1",
    "model.tiny_widths=[8,16,16]",
    "model.width=16",
    "model.model_dim=8",
    "model.n_parts=2",
]
EPOCHS = 3
# the release's schedule (model.grouping etc.) at toy size: SGD, 2-shot episodes, StepLR stepped at epoch start
RELEASE = [
    "model.grouping=collapsed",
    "model.step_mode=sequential",
    "train.optimizer=sgd",
    "train.lr=0.01",
    "train.shots=2",
    "train.batch_size=8",
    "train.batches_per_epoch=4",
    "train.lr_step=2",
    "train.lr_shift_compat=true",
    "train.amp=false",
    f"train.epochs={EPOCHS}",
]


# --------------------------------------------------------------------------------------------- brute force
def _per_class(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over the classes present in y of their top-1 accuracy (the release's get_accuracy)."""
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def _release_loop(
    scores: np.ndarray, y: np.ndarray, seen: np.ndarray, unseen: np.ndarray, is_seen: np.ndarray
):
    """The release's cal_AUSUC written out: gamma = 0, then -0.01, -0.02, ... until U = 0, then +0.01, ... until
    S = 0; the seen columns shifted by float32(k * 0.01) in float32; best H with the first point kept on ties."""
    s32 = scores.astype(np.float32)
    cols = np.concatenate([seen, unseen])  # [seen ascending ; unseen ascending], argmax ties to the first

    def at(k: int) -> tuple[float, float, float, float]:
        g = np.float32(k * 0.01)
        x = s32[:, cols].copy()
        x[:, : len(seen)] -= g
        pred = cols[np.argmax(x, axis=1)]
        S, U = _per_class(y[is_seen], pred[is_seen]), _per_class(y[~is_seen], pred[~is_seen])
        return S, U, (2 * S * U / (S + U) if S + U > 0 else 0.0), float(g)

    S0, U0, H0, _ = at(0)
    best = (S0, U0, H0, 0.0)
    for direction, side in ((-1, 1), (1, 0)):  # side: which accuracy must stay > 0 to go on
        if (S0, U0)[side] > 1e-12:
            k = 0
            while True:
                k += direction
                p = at(k)
                if round(p[2], 12) > round(best[2], 12):
                    best = p
                if not p[side] > 1e-12:
                    break
    return best


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_release_epoch_metrics_equal_the_release_loop_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    seen, unseen = np.array([0, 2, 3, 5, 7]), np.array([1, 4, 6])
    y = np.concatenate([rng.choice(seen, 60), rng.choice(unseen, 40)])
    is_seen = np.arange(100) < 60
    scores = np.round(rng.normal(size=(100, 8)), 3) * 3 + 1.5 * np.isin(np.arange(8), seen)  # with ties
    r = release_epoch_metrics(scores, y, seen, unseen)
    S, U, H, g = _release_loop(scores, y, seen, unseen, is_seen)
    assert (r["S"], r["U"], r["gamma"]) == pytest.approx((S, U, g), abs=1e-12)
    assert r["H"] == pytest.approx(H, abs=1e-12)
    t1 = balanced_accuracy_score(y[~is_seen], unseen[np.argmax(scores[~is_seen][:, unseen], axis=1)])
    assert r["czsl_top1"] == pytest.approx(t1, abs=1e-12)


def test_release_selection_keeps_the_first_best_and_skips_nan():
    rec = [
        {"epoch": 0, "czsl_top1": 0.5, "S": 0.1, "U": 0.2, "H": 0.3, "gamma": 0.0},
        {"epoch": 1, "czsl_top1": 0.7, "S": 0.4, "U": 0.5, "H": 0.45, "gamma": 1.5},
        {"epoch": 2, "czsl_top1": 0.7, "S": 0.6, "U": 0.4, "H": 0.45, "gamma": -0.3},  # ties: epoch 1 stays
        {"epoch": 3, "czsl_top1": float("nan"), "S": 0.9, "U": 0.9, "H": float("nan"), "gamma": 0.0},
    ]
    sel = release_selection(rec)
    assert sel == {
        "czsl_top1": 0.7,
        "czsl_top1_epoch": 1,
        "S": 0.4,
        "U": 0.5,
        "H": 0.45,
        "gamma": 1.5,
        "epoch": 1,
    }
    with pytest.raises(ValueError, match="no per-epoch"):
        release_selection([])


# --------------------------------------------------------------------------------------------- a release run
@pytest.fixture(scope="module")
def release_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    res = runs.train(
        "attribute/demo_mgmrn", [*TINY, *RELEASE, "eval.report=release", f"output_dir={out}", "name=rel"]
    )
    return Path(res["run_dir"]), res


def test_release_block_equals_a_brute_force_loop_over_the_saved_epochs(release_run):
    from unseen.attribute.task import AttributeTask
    from unseen.config import load_config

    run_dir, res = release_run
    saved = json.loads((run_dir / "results.json").read_text())
    block = saved["release_test_selected"]
    assert "TEST" in block["note"] and block["label"] == "test-selected (as the release reports)"
    assert block["schedule_as_released"] is True and block["deviations_from_release"] == {}
    # the headline is still the validation protocol's, untouched by the release block
    assert "validation" in saved["selection"]["rule"] and not any("release" in k for k in saved["metrics"])

    d = AttributeTask(load_config(run_dir / "config.yaml"), run_dir).data
    n_seen_img = len(d.test_seen_loc)
    y = d.labels[np.concatenate([d.test_seen_loc, d.test_unseen_loc])]
    is_seen = np.arange(len(y)) < n_seen_img
    files = sorted((run_dir / "release" / "test_scores").glob("epoch_*.npy"))
    # every epoch of the full schedule (train.epochs), whatever epoch validation chose
    assert [f.name for f in files] == [f"epoch_{e:03d}.npy" for e in range(EPOCHS)]
    brute = []
    for e, f in enumerate(files):
        s = np.load(f)
        assert s.dtype == np.float32 and s.shape == (len(y), d.n_classes)
        S, U, H, g = _release_loop(s, y, d.seen_classes, d.unseen_classes, is_seen)
        t1 = balanced_accuracy_score(
            y[~is_seen], d.unseen_classes[np.argmax(s[~is_seen][:, d.unseen_classes], axis=1)]
        )
        brute.append({"epoch": e, "czsl_top1": t1, "S": S, "U": U, "H": H, "gamma": g})
    for got, want in zip(block["per_epoch"], brute, strict=True):
        assert got == pytest.approx(want, abs=1e-12)
    t1s = np.round([b["czsl_top1"] for b in brute], 12)
    hs = np.round([b["H"] for b in brute], 12)
    e_t1, e_h = int(np.argmax(t1s)), int(np.argmax(hs))  # argmax: the first epoch on ties, as the release
    assert block["czsl_top1_epoch"] == e_t1 and block["czsl_top1"] == pytest.approx(brute[e_t1]["czsl_top1"])
    assert block["epoch"] == e_h
    for k in ("S", "U", "H", "gamma"):
        assert block[k] == pytest.approx(brute[e_h][k], abs=1e-12), k
    # the test-selected model is kept, labelled by its folder; the release log names its numbers test_*
    assert (run_dir / "release" / "best.safetensors").is_file()
    lines = [json.loads(s) for s in (run_dir / "release" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(EPOCHS)) and all("val/test_H" in r for r in lines)


def test_final_run_is_a_prefix_of_the_release_run(release_run):
    """Same seed, data order and initialisation: the release run at the validation-chosen epoch is the final model,
    so its per-epoch test numbers there equal the validation block's test numbers."""
    run_dir, res = release_run
    e = res["selection"]["epoch"]
    rec = res["release_test_selected"]["per_epoch"][e]
    assert rec["czsl_top1"] == pytest.approx(res["metrics"]["czsl_top1"], abs=1e-12)
    assert rec["H"] == pytest.approx(res["oracle_test_selected"]["oracle_H"], abs=1e-12)
    assert rec["gamma"] == pytest.approx(res["oracle_test_selected"]["oracle_gamma"], abs=1e-12)


def test_release_report_is_refused_or_labelled_where_it_does_not_apply(tmp_path):
    from unseen.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"eval\.report: expected one of validation, release, got 'paper'"):
        load_config(runs.resolve_config_path("attribute/demo_mgmrn"), ["eval.report=paper"])
    # ESZSL has no epochs: the block says so instead of inventing a selection
    res = runs.train(
        "attribute/demo_eszsl",
        [*TINY[:2], "model.tiny_widths=[8,16,16]", "eval.report=release", f"output_dir={tmp_path}"],
    )
    assert res["release_test_selected"]["note"].startswith("not applicable")


@pytest.mark.parametrize("ds", ["cub", "sun", "awa2"])
def test_release_presets_are_the_release_as_released(ds):
    from unseen.attribute.task import RELEASE_MODEL, RELEASE_TRAIN
    from unseen.config import load_config

    cfg = load_config(runs.resolve_config_path(f"attribute/mgmrn_{ds}_release"))
    paper = load_config(runs.resolve_config_path(f"attribute/mgmrn_{ds}"))
    assert cfg.eval.report == "release" and cfg.eval.gamma == "val" and cfg.eval.calibrate
    assert cfg.train.amp is False  # the release trains in fp32
    for k, v in RELEASE_MODEL.items():
        have = getattr(cfg.model, k)
        assert (list(have) if isinstance(have, list) else have) == v, k
    for k, v in RELEASE_TRAIN.items():
        assert getattr(cfg.train, k) == v, k
    # everything else (data, hyper-parameters, seed) is the paper config's
    for key in ("lr", "lr_step", "lr_gamma", "epochs", "batches_per_epoch", "batch_size", "weight_decay"):
        assert getattr(cfg.train, key) == getattr(paper.train, key), key
    assert (cfg.seed, cfg.data, cfg.model.tau, cfg.model.lam) == (
        paper.seed,
        paper.data,
        paper.model.tau,
        paper.model.lam,
    )


@pytest.mark.slow  # two more runs: report=release must not change anything but its own block
def test_release_mode_leaves_the_validation_results_unchanged(release_run, tmp_path):
    run_dir, res = release_run
    off = runs.train("attribute/demo_mgmrn", [*TINY, *RELEASE, f"output_dir={tmp_path}", "name=off"])
    on = json.loads((run_dir / "results.json").read_text())
    off_saved = json.loads((Path(off["run_dir"]) / "results.json").read_text())
    drop = {"wall_time_s", "config_hash", "release_test_selected"}
    assert {k: v for k, v in on.items() if k not in drop} == {
        k: v for k, v in off_saved.items() if k not in drop
    }
    assert not (Path(off["run_dir"]) / "release").exists() and "release_test_selected" not in off_saved
