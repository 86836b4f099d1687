"""Carrying the validation gamma to the final model (eval.gamma_transfer) and the validation-level protocol
(eval.split=val): the rules against brute-force definitions, and their wiring in a run."""

import json
from pathlib import Path

import numpy as np
import pytest
from test_attribute_run import COMMON

from unseen import runs
from unseen.attribute.metrics import GAMMA_TRANSFERS, gzsl_accuracy, seen_margins, transfer_gamma
from unseen.config import ConfigError


def test_margins_decide_the_calibrated_prediction():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 7))
    seen, unseen = np.array([0, 2, 3, 5]), np.array([1, 4, 6])
    m = seen_margins(scores, seen, unseen)
    for i in range(5):
        assert m[i] == pytest.approx(max(scores[i, c] for c in seen) - max(scores[i, c] for c in unseen))
    # an image goes to an unseen class at gamma exactly when its margin is below gamma
    labels = np.where(m < 0.3, 1, 0)  # label unseen class 1 where the margin says "unseen", else seen class 0
    for gamma in (0.3, -0.5, 1.0):
        pred_unseen = scores[:, seen].max(1) - gamma < scores[:, unseen].max(1)
        assert np.array_equal(pred_unseen, m < gamma)
    assert gzsl_accuracy(scores, labels, seen, unseen, 0.3).U > 0  # the evaluator follows the same rule


def test_transfer_rules_against_their_definitions():
    rng = np.random.default_rng(1)
    src = rng.normal(2.0, 1.5, size=501)
    tgt = 3.0 * rng.normal(2.0, 1.5, size=801) + 4.0  # the same shape on another scale and offset
    g = 1.2
    assert transfer_gamma(g, src, tgt, "raw") == g
    assert transfer_gamma(g, src, tgt, "scale") == pytest.approx(g * tgt.std() / src.std())
    z = (g - src.mean()) / src.std()
    assert transfer_gamma(g, src, tgt, "zscore") == pytest.approx(tgt.mean() + z * tgt.std())
    q = transfer_gamma(g, src, tgt, "quantile")
    # the same share of training images sent to the unseen side (up to one image of the target's resolution)
    assert abs(np.mean(tgt < q) - np.mean(src < g)) <= 1.0 / len(tgt) + 1e-12
    # an exact affine copy transfers exactly under zscore and quantile
    assert transfer_gamma(g, src, 3 * src + 4, "zscore") == pytest.approx(3 * g + 4)
    assert transfer_gamma(src[10], src, 3 * src + 4, "quantile") == pytest.approx(3 * src[10] + 4, abs=0.05)
    # a degenerate source carries no scale: the raw gamma
    assert transfer_gamma(g, np.ones(5), tgt, "scale") == g
    with pytest.raises(ValueError, match="gamma transfer rule"):
        transfer_gamma(g, src, tgt, "median")


@pytest.fixture(scope="module")
def val_level_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    res = runs.train(
        "attribute/demo_attn1",
        [*COMMON, "eval.split=val", "eval.gamma_transfer=quantile", f"output_dir={out}", "name=v"],
    )
    return Path(res["run_dir"]), res


@pytest.mark.slow  # a tiny run plus rescoring (~12 s); the zscore default runs in every attribute run test
def test_validation_level_reads_no_test_image(val_level_run):
    from unseen.attribute.task import AttributeTask
    from unseen.config import load_config

    run_dir, _ = val_level_run
    cfg = load_config(run_dir / "config.yaml")
    task = AttributeTask(cfg, run_dir)
    full = task.spec.splits
    d = task.data
    # xlsa17's train_loc/val_loc also hold the test_seen images: the validation level keeps to trainval
    assert set(full.test_seen_loc.tolist()) & set(full.train_loc.tolist())
    tv = set(full.trainval_loc.tolist())
    val_unseen = np.array(sorted(set(full.val_loc.tolist()) & tv))
    test_images = set(full.test_seen_loc) | set(full.test_unseen_loc)
    for loc in (d.trainval_loc, d.test_seen_loc, d.test_unseen_loc, d.train_loc, d.val_loc):
        assert not test_images & set(loc.tolist())
    assert np.array_equal(d.test_unseen_loc, val_unseen)
    assert set(d.labels[d.test_seen_loc].tolist()) == set(d.labels[d.trainval_loc].tolist())
    assert sorted([*d.test_seen_loc, *d.trainval_loc]) == sorted(tv - set(val_unseen.tolist()))
    # a subset of the training classes plays val_loc: disjoint from the rest, all inside trainval
    pseudo = set(d.labels[d.val_loc].tolist())
    assert pseudo and pseudo < set(d.labels[d.trainval_loc].tolist())
    assert not pseudo & set(d.labels[d.train_loc].tolist())
    assert np.array_equal(np.sort(np.concatenate([d.train_loc, d.val_loc])), d.trainval_loc)
    scores = np.load(run_dir / "test_scores.npy")
    assert len(scores) == len(d.test_seen_loc) + len(d.test_unseen_loc)
    saved = json.loads((run_dir / "results.json").read_text())
    assert "VALIDATION LEVEL" in saved["selection"]["rule"]


@pytest.mark.slow  # a tiny run plus rescoring (~12 s); the zscore default runs in every attribute run test
def test_transferred_gamma_is_the_rule_on_both_models(val_level_run):
    """The quantile rule, recomputed by brute force from the calibration model at its best epoch (on its own
    training images) and the final model (on trainval)."""
    from unseen.attribute.task import AttributeTask
    from unseen.config import load_config

    run_dir, _ = val_level_run
    sel = json.loads((run_dir / "results.json").read_text())["selection"]
    assert sel["gamma_transfer"] == "quantile" and set(sel["gamma_candidates"]) == set(GAMMA_TRANSFERS)
    assert sel["gamma_used"] == sel["gamma"] == sel["gamma_candidates"]["quantile"]
    assert sel["gamma_candidates"]["raw"] == sel["gamma_val"]

    cfg = load_config(run_dir / "config.yaml")
    task = AttributeTask(cfg, run_dir)
    d = task.data
    split = d.validation_split(task.spec.val_holdout, seed=cfg.seed)

    def margins(weights, idx, seen, unseen):
        model = task.build_model()
        task.restore_weights(model, weights)
        s = task.scores(model, task.dataset(idx, train=False), "t")
        return np.array([s[i, seen].max() - s[i, unseen].max() for i in range(len(s))])

    src = margins(run_dir / "calib/best.safetensors", split.train, split.seen_classes, split.unseen_classes)
    tgt = margins(run_dir / "final/last.safetensors", d.trainval_loc, d.seen_classes, d.unseen_classes)
    share = (np.sum(src < sel["gamma_val"]) + np.sum(src <= sel["gamma_val"])) / (2 * len(src))
    assert sel["gamma_used"] == pytest.approx(np.quantile(tgt, share))
    # and the headline numbers are at that gamma
    m = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert m["gamma"] == sel["gamma_used"]


def test_release_report_cannot_run_at_validation_level(tmp_path):
    with pytest.raises(ConfigError, match="eval.split=val"):
        runs.train("attribute/demo_attn1", [*COMMON, "eval.split=val", "eval.report=release"])
