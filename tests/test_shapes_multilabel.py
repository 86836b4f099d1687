"""The multi-label world: determinism, label semantics, occlusion labels, export read back through the real readers."""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import replace

import numpy as np
import pytest

from unseen.io import file_sha256
from unseen.multilabel.data import (
    BiAMH5Dataset,
    h5_name,
    l2_normalize_rows,
    load_biam_names,
    load_nus_wide_glove,
    load_nus_wide_labels,
)
from unseen.shapes.common import WorldExistsError, load_world_meta
from unseen.shapes.multilabel_world import (
    GLOVE_FILE,
    IMAGE_DIR,
    Category,
    MultilabelWorldConfig,
    SceneObject,
    build_multilabel_world,
    category_vector,
    clean_labels,
    export_multilabel_world,
    noisy_tags,
    render_scene,
    verify_multilabel_world,
)

TINY = MultilabelWorldConfig(
    seed=3,
    n_colours=4,
    n_shapes=4,
    n_categories=12,
    n_unseen=3,
    n_train=30,
    n_test=20,
    image_size=48,
    supersample=1,
    max_distractors=1,
)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    return export_multilabel_world(tmp_path_factory.mktemp("mlw") / "world", TINY)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_world_is_deterministic(world_dir, tmp_path):
    again = export_multilabel_world(tmp_path / "again", TINY)
    assert _files(again) == _files(world_dir)
    for rel in _files(world_dir):
        assert file_sha256(again / rel) == file_sha256(world_dir / rel), rel
    verify_multilabel_world(world_dir)
    other = build_multilabel_world(replace(TINY, seed=4))
    assert [c.name for c in other.unseen] != [c.name for c in build_multilabel_world(TINY).unseen] or [
        c.name for c in other.seen
    ] != [c.name for c in build_multilabel_world(TINY).seen]


def test_existing_world_is_reused_and_others_are_refused(world_dir, tmp_path):
    before = (world_dir / "world.json").stat().st_mtime_ns
    assert export_multilabel_world(world_dir, TINY) == world_dir
    assert (world_dir / "world.json").stat().st_mtime_ns == before
    with pytest.raises(WorldExistsError, match="different multi-label world"):
        export_multilabel_world(world_dir, replace(TINY, tag_drop=0.3))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(WorldExistsError, match="no world.json"):
        export_multilabel_world(foreign, TINY)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="n_unseen"):
        replace(TINY, n_unseen=11).validate()
    with pytest.raises(ValueError, match="max_objects"):
        replace(TINY, min_objects=3, max_objects=2).validate()
    with pytest.raises(ValueError, match="visible_unknown"):
        replace(TINY, visible_hidden=0.5, visible_unknown=0.2).validate()


def test_unseen_categories_are_described_by_seen_words():
    for cfg in (TINY, MultilabelWorldConfig()):
        w = build_multilabel_world(cfg)
        assert len(w.unseen) == cfg.n_unseen and len(w.seen) == cfg.n_categories - cfg.n_unseen
        seen_names = {c.name for c in w.seen}
        assert not seen_names & {c.name for c in w.unseen}
        for u in w.unseen:  # brute force over the seen names' words
            for word in u.name.split("_"):
                assert sum(word in s.split("_") for s in seen_names) >= cfg.min_word_support, (u.name, word)


def test_semantic_vectors_follow_the_words():
    """A category is closer to categories sharing a word than to those sharing none; rows are GloVe-like."""
    w = build_multilabel_world(MultilabelWorldConfig())
    cats = w.label_categories
    vec = l2_normalize_rows(np.stack([category_vector(c, w.config.semantic_noise) for c in cats]))
    raw_norms = [np.linalg.norm(category_vector(c, w.config.semantic_noise)) for c in cats]
    assert 5.0 <= min(raw_norms) and max(raw_norms) <= 7.0
    cos = vec @ vec.T
    for i, u in enumerate(cats):
        share = [cos[i, j] for j, c in enumerate(cats) if j != i and set(c.words) & set(u.words)]
        none = [cos[i, j] for j, c in enumerate(cats) if not set(c.words) & set(u.words)]
        assert min(share) > max(none)
    # independent of the world seed (word meaning is fixed)
    c = Category("red", "star")
    assert np.array_equal(category_vector(c, 0.35), category_vector(Category("red", "star"), 0.35))


def test_occlusion_gives_unknown_and_hidden_labels():
    """Geometry oracle: a square hiding all but a circular segment of a circle -> the segment's area fraction."""
    cfg = replace(
        TINY,
        image_size=100,
        supersample=1,
        clutter=0.0,
        occluder_prob=0.0,
        colour_jitter=0.0,
        pixel_noise=0.0,
    )
    half = 20.0 * math.sqrt(
        2.0
    )  # circumradius of an axis-aligned square of half-side 20: x in 26..66, y in 30..70
    objs = [
        SceneObject(Category("red", "circle"), 0, (30.0, 50.0), 10.0, 0.0, "solid"),
        SceneObject(Category("black", "circle"), 3, (55.0, 55.0), 6.0, 0.0, "solid"),  # under the square
        SceneObject(Category("blue", "circle"), 1, (80.0, 20.0), 3.0, 0.0, "solid"),
        SceneObject(Category("green", "square"), 2, (46.0, 50.0), half, 0.0, "solid"),
        SceneObject(Category("blue", "circle"), 1, (62.0, 50.0), 5.0, 0.0, "solid"),
    ]  # in front of the square
    render_scene(objs, cfg, np.random.default_rng(0))
    r, h = 10.0, 6.0  # the red circle keeps the segment x < 26, of height 6
    segment = r * r * math.acos((r - h) / r) - (r - h) * math.sqrt(2 * r * h - h * h)
    assert abs(objs[0].visible - segment / (math.pi * r * r)) < 0.05  # ~0.25
    assert objs[1].visible < 0.02
    assert abs(objs[3].visible - (1 - math.pi * 25 / 1600)) < 0.03  # the blue circle in front covers ~5%
    lab, best = clean_labels(objs, cfg, 5)
    # 0.25 visible: unknown; one clear blue circle is enough; hidden: -1; label 4 has no object: -1
    assert lab.tolist() == [0, 1, 1, -1, -1]
    assert best[1] == max(o.visible for o in objs if o.label == 1)


def test_tag_noise_rates():
    cfg = replace(TINY, tag_drop=0.3, tag_false=0.05)
    rng = np.random.default_rng(0)
    clean = rng.choice(np.array([-1, 0, 1], np.int8), size=(4000, 20), p=[0.7, 0.1, 0.2])
    noisy = noisy_tags(clean, cfg, rng)
    assert np.array_equal(noisy[clean == 0], clean[clean == 0])
    assert abs((noisy[clean == 1] == -1).mean() - 0.3) < 0.02
    assert abs((noisy[clean == -1] == 1).mean() - 0.05) < 0.01


def test_export_reads_back_through_the_nus_wide_readers(world_dir):
    meta = load_world_meta(world_dir)
    world = build_multilabel_world(TINY)
    ls = load_nus_wide_labels(world_dir)
    assert ls.seen_names == [c.name for c in world.seen] and ls.unseen_names == [c.name for c in world.unseen]
    assert ls.names == [lab["name"] for lab in meta["labels"]]
    in_tags = [c.name for c in world.unseen if c.name in world.taglist]
    assert len(ls.overlap_source_index) == len(in_tags) == meta["counts"]["unseen_in_taglist"]
    seen_w, unseen_w = load_nus_wide_glove(world_dir / GLOVE_FILE, ls)
    expect = l2_normalize_rows(
        np.stack([category_vector(c, TINY.semantic_noise) for c in world.label_categories])
    )
    assert np.allclose(np.concatenate([seen_w, unseen_w]), expect, atol=1e-6)
    with open(
        world_dir / GLOVE_FILE, "rb"
    ) as f:  # overlapping tag rows equal the concept rows, as in NUS-WIDE
        tags, concepts = pickle.load(f)
    assert np.array_equal(tags[ls.overlap_source_index], concepts[ls.overlap_unseen_index])

    train = load_biam_names(world_dir / "img_names.pkl")
    test = load_biam_names(world_dir / "test_img_names.pkl")
    assert len(train) == TINY.n_train and len(test) == TINY.n_test and not set(train) & set(test)
    files = {
        h5_name(p.relative_to(world_dir / IMAGE_DIR).as_posix())
        for p in (world_dir / IMAGE_DIR).rglob("*.png")
    }
    assert files == set(train) | set(test)
    ytr, yte = np.load(world_dir / "train_labels.npy"), np.load(world_dir / "test_labels.npy")
    assert ytr.dtype == np.int8 and ytr.shape == (TINY.n_train, ls.n_seen)  # seen labels only in training
    assert yte.dtype == np.int8 and yte.shape == (TINY.n_test, ls.n_labels)
    assert meta["counts"]["train"] + meta["counts"]["val"] == TINY.n_train
    assert meta["counts"]["val"] == TINY.n_train - round(TINY.n_train * 0.8)
    assert json.loads(json.dumps(meta["config"])) == {k: getattr(TINY, k) for k in meta["config"]}
    assert (world_dir / "README.md").read_text().count(f"seed: {TINY.seed}") == 1


def test_unseen_objects_appear_unlabelled_in_training(world_dir):
    gt = np.load(world_dir / "ground_truth.npz")
    ns = len(build_multilabel_world(TINY).seen)
    ytr, yte = np.load(world_dir / "train_labels.npy"), np.load(world_dir / "test_labels.npy")
    assert (gt["train_clean"][:, ns:] == 1).any()  # unseen categories are drawn in training images ...
    assert ytr.shape[1] == ns  # ... but the training label vectors have no column for them
    # seen tags differ from the truth only by tag noise (never on unknowns); test unseen labels are clean
    for tags, clean in ((ytr, gt["train_clean"][:, :ns]), (yte[:, :ns], gt["test_clean"][:, :ns])):
        diff = tags != clean
        assert np.all(clean[diff] != 0) and np.all(tags[diff] == -clean[diff])
    assert np.array_equal(yte[:, ns:], gt["test_clean"][:, ns:])


def test_h5_written_from_the_world_reads_back(world_dir, tmp_path):
    """The world's labels through write_biam_h5 -> BiAMH5Dataset in the NUS test layout (features synthetic)."""
    from unseen.multilabel.data import write_biam_h5

    ls = load_nus_wide_labels(world_dir)
    names = load_biam_names(world_dir / "test_img_names.pkl")
    yte = np.load(world_dir / "test_labels.npy")
    rng = np.random.default_rng(0)
    feats = rng.random((len(names), 8, 9), dtype=np.float32)
    items = [(n, feats[i], {"labels": yte[i], "labels_81": yte[i, ls.n_seen :]}) for i, n in enumerate(names)]
    write_biam_h5(tmp_path / "t.h5", items, feature_shape=(8, 9))
    ds = BiAMH5Dataset(tmp_path / "t.h5", names, n_labels=ls.n_labels, feature_shape=(8, 9))
    x, y = ds[len(names) - 1]
    assert x.shape == (9, 8) and np.array_equal(y.numpy(), yte[-1])
    ds.close()
