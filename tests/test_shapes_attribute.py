"""The embedded attribute world: determinism, the exact xlsa17 layout, split semantics, new combinations."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from unseen.shapes import (
    DATASET_NAME,
    PROPERTIES,
    AttributeWorldConfig,
    WorldExistsError,
    attribute_names,
    attribute_word_vectors,
    build_attribute_world,
    draw_object,
    export_attribute_world,
    verify_attribute_world,
)

TINY = AttributeWorldConfig(
    seed=3,
    n_classes=10,
    n_unseen=2,
    n_val=2,
    images_per_class=5,
    image_size=32,
    n_pretrain_classes=3,
    pretrain_images_per_class=2,
)
LOCS = ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    return export_attribute_world(tmp_path_factory.mktemp("w") / "SHAPES", TINY)


def _mat(root: Path) -> dict:
    return scipy.io.loadmat(root / "att_splits.mat")


def _loc0(m: dict, key: str) -> np.ndarray:
    return m[key].astype(np.int64).ravel() - 1


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_seed_dependent(world_dir, tmp_path):
    again = export_attribute_world(tmp_path / "again" / "SHAPES", TINY)
    assert _all_files(again) == _all_files(world_dir)  # byte-identical, .mat header included
    other = export_attribute_world(tmp_path / "other" / "SHAPES", replace(TINY, seed=4))
    fp = json.loads((world_dir / "world.json").read_text())["fingerprint"]
    assert json.loads((other / "world.json").read_text())["fingerprint"] != fp
    assert verify_attribute_world(world_dir) == fp


def test_mat_fields_dtypes_shapes(world_dir):
    m = _mat(world_dir)
    C, A = TINY.n_classes, len(attribute_names())
    names = [str(np.squeeze(x)) for x in m["allclasses_names"].ravel()]
    assert m["allclasses_names"].shape == (C, 1) and names == _lines(world_dir / "allclasses.txt")
    for key in ("att", "original_att"):
        assert m[key].shape == (A, C) and m[key].dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(m["att"], axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        m["att"], m["original_att"] / np.linalg.norm(m["original_att"], axis=0), atol=1e-12
    )
    orig = m["original_att"]
    assert orig.min() >= 0 and orig.max() <= 100
    start = 0
    for _, _, values in PROPERTIES:  # every property's value frequencies sum to 100 %
        np.testing.assert_allclose(orig[start : start + len(values)].sum(0), 100.0, atol=1e-9)
        start += len(values)
    n = TINY.n_classes * TINY.images_per_class
    for key in LOCS:
        assert m[key].dtype == np.uint16 and m[key].ndim == 2 and m[key].shape[1] == 1, key
        assert m[key].min() >= 1 and m[key].max() <= n, key  # 1-based
    w2v = np.load(world_dir / f"{DATASET_NAME}_attribute.npy")
    assert w2v.shape == (A, 64) and w2v.dtype == np.float32
    assert _lines(world_dir / "attributes.txt") == attribute_names()


def test_splits_disjoint_and_counts(world_dir):
    m = _mat(world_dir)
    lst = json.loads((world_dir / "image_list.json").read_text())
    assert lst["index_base"] == 0
    labels = np.asarray(lst["labels"])
    n = TINY.n_classes * TINY.images_per_class
    assert len(lst["image_files"]) == len(labels) == n
    tv, ts, tu = (_loc0(m, k) for k in LOCS[:3])
    for key, arr in zip(LOCS[:3], (tv, ts, tu)):
        assert sorted(lst[key]) == sorted(arr.tolist()), key  # JSON (0-based) == mat - 1
    assert not set(tv) & set(ts) and not set(tv) & set(tu) and not set(ts) & set(tu)
    assert len(tv) + len(ts) + len(tu) == n
    seen, unseen = np.unique(labels[tv]), np.unique(labels[tu])
    assert np.array_equal(seen, np.unique(labels[ts])) and not set(seen) & set(unseen)
    assert len(unseen) == TINY.n_unseen and len(seen) == TINY.n_classes - TINY.n_unseen
    assert len(tu) == TINY.n_unseen * TINY.images_per_class
    k = round(TINY.test_seen_fraction * TINY.images_per_class)
    for c in seen:
        assert np.sum(labels[ts] == c) == k and np.sum(labels[tv] == c) == TINY.images_per_class - k
    tr, va = _loc0(m, "train_loc"), _loc0(m, "val_loc")
    assert set(tr) | set(va) == set(tv) | set(ts) and not set(tr) & set(va)
    assert not set(labels[tr]) & set(labels[va]) and len(np.unique(labels[va])) == TINY.n_val


def test_class_lists_match_locs(world_dir):
    m = _mat(world_dir)
    labels = np.asarray(json.loads((world_dir / "image_list.json").read_text())["labels"])
    names = _lines(world_dir / "allclasses.txt")

    def cls(key: str) -> set[str]:
        return {names[c] for c in np.unique(labels[_loc0(m, key)])}

    assert set(_lines(world_dir / "trainclasses1.txt")) == cls("train_loc")
    assert set(_lines(world_dir / "valclasses1.txt")) == cls("val_loc")
    assert set(_lines(world_dir / "trainvalclasses.txt")) == cls("trainval_loc") == cls("test_seen_loc")
    assert set(_lines(world_dir / "testclasses.txt")) == cls("test_unseen_loc")


def test_unseen_are_new_combinations_of_training_values(world_dir):
    meta = json.loads((world_dir / "world.json").read_text())
    classes = meta["classes"]
    train = [c for c in classes if c["role"] == "train"]
    train_values = {(part, prop, v) for c in train for part, d in c["modal"].items() for prop, v in d.items()}
    held = [c for c in classes if c["role"] in ("unseen", "val")]
    assert len(held) == TINY.n_unseen + TINY.n_val
    for c in held:
        values = {(part, prop, v) for part, d in c["modal"].items() for prop, v in d.items()}
        assert values <= train_values, c["name"]
        assert all(c["modal"] != t["modal"] for t in train)
    descriptions = [json.dumps(c["modal"], sort_keys=True) for c in classes + meta["pretrain_classes"]]
    assert len(set(descriptions)) == len(descriptions)  # pretraining species differ from every class
    # the same guarantee holds for the default demo size and other seeds
    for seed in range(5):
        w = build_attribute_world(AttributeWorldConfig(seed=seed))
        have = {(j, w.classes[c].modal[j]) for c in w.train for j in range(len(PROPERTIES))}
        assert all(
            (j, w.classes[c].modal[j]) in have for c in w.unseen + w.val for j in range(len(PROPERTIES))
        )


def test_images_exist_with_configured_size(world_dir):
    lst = json.loads((world_dir / "image_list.json").read_text())
    pre = json.loads((world_dir / "pretrain" / "pretrain_list.json").read_text())
    assert len(pre["image_files"]) == TINY.n_pretrain_classes * TINY.pretrain_images_per_class
    assert sorted(set(pre["labels"])) == list(range(TINY.n_pretrain_classes))
    for rel in lst["image_files"] + pre["image_files"]:
        with Image.open(world_dir / rel) as im:
            assert im.size == (TINY.image_size, TINY.image_size) and im.mode == "RGB"
    names = _lines(world_dir / "allclasses.txt")
    for rel, lab in zip(lst["image_files"], lst["labels"]):
        assert rel.startswith(f"images/{names[lab]}/")
    ia = np.load(world_dir / "image_attributes.npy")
    assert ia.shape == (len(lst["labels"]), len(attribute_names())) and (ia.sum(1) == len(PROPERTIES)).all()


def test_cache_reuse_and_refusal(world_dir, tmp_path):
    stamp = (world_dir / "att_splits.mat").stat().st_mtime_ns
    assert export_attribute_world(world_dir, TINY) == world_dir
    assert (world_dir / "att_splits.mat").stat().st_mtime_ns == stamp
    with pytest.raises(WorldExistsError, match="different attribute world"):
        export_attribute_world(world_dir, replace(TINY, seed=99))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(WorldExistsError, match="refusing to overwrite"):
        export_attribute_world(foreign, TINY)
    assert (foreign / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp folders left behind


def test_word_vectors_share_words():
    w = attribute_word_vectors().astype(np.float64)
    names = attribute_names()
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    i, j, k = (
        names.index("head::colour::red"),
        names.index("body::colour::red"),
        names.index("body::shape::circle"),
    )
    assert w[i] @ w[j] > w[i] @ w[k]
    np.testing.assert_array_equal(attribute_word_vectors(), attribute_word_vectors())


def test_bad_config_rejected(tmp_path):
    with pytest.raises(ValueError, match="n_classes"):
        export_attribute_world(tmp_path / "x", replace(TINY, n_classes=4, n_unseen=2, n_val=1))
    assert not (tmp_path / "x").exists()


def test_draw_object_covers_its_shape():
    canvas = np.zeros((40, 40, 3), dtype=np.float32)
    mask = draw_object(canvas, (20, 20), 10, "square", "red", "stripes", 0.0, np.random.default_rng(0))
    assert mask[20, 20] == 1.0 and mask[2, 2] == 0.0
    assert canvas[20, 20].max() > 0 and canvas[2, 2].max() == 0.0
