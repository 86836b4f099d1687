"""The embedded compositional world (czsl layout, split semantics, word vectors) and the tiny-CLIP pretraining."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from unseen.compositional.clip import create_clip
from unseen.compositional.pretrain import (
    CLIPPretrainConfig,
    load_pretrain_data,
    pretrain_clip,
    pretrain_key,
    pretrained_path,
    pretrained_tiny_clip,
    zero_shot_accuracy,
)
from unseen.io import DataFormatError
from unseen.shapes.common import WorldExistsError
from unseen.shapes.compositional_world import (
    SPLIT_NAME,
    CompositionalWorldConfig,
    build_compositional_world,
    cached_compositional_world,
    concept_vectors,
    export_compositional_world,
    verify_compositional_world,
    world_key,
)

TINY = CompositionalWorldConfig(
    seed=5,
    n_states=6,
    n_objects=8,
    n_val_unseen=3,
    n_test_unseen=3,
    n_val_seen=3,
    n_test_seen=3,
    train_images=2,
    val_images=2,
    test_images=2,
    pretrain_images=3,
    n_na_images=2,
    image_size=32,
)
SETS = ("train", "val", "test")
#: pretraining recipe for the random 32 px test CLIP (seconds on CPU)
TINY_PRETRAIN = CLIPPretrainConfig(arch="unseen-test-clip", steps=30, batch_size=16, lr=3e-3, warmup=3)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    return export_compositional_world(tmp_path_factory.mktemp("cw") / "shapes-czsl", TINY)


def _pairs(root: Path, name: str) -> list[tuple[str, str]]:
    lines = (root / SPLIT_NAME / f"{name}_pairs.txt").read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines:
        toks = line.split()
        assert len(toks) == 2, line
        out.append((toks[0], toks[1]))
    return out


def _meta(root: Path) -> list[dict]:
    return torch.load(root / f"metadata_{SPLIT_NAME}.t7", weights_only=True)


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _glove(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for line in (root / "glove.txt").read_text(encoding="utf-8").splitlines():
        parts = line.split(" ")
        out[parts[0]] = np.asarray(parts[1:], dtype=np.float64)
    return out


# --------------------------------------------------------------------------------------------- the world
def test_deterministic_and_seed_dependent(world_dir, tmp_path):
    again = export_compositional_world(tmp_path / "again" / "shapes-czsl", TINY)
    assert _all_files(again) == _all_files(world_dir)  # byte-identical, metadata .t7 included
    assert export_compositional_world(world_dir, TINY) == world_dir  # an existing identical world is reused
    verify_compositional_world(world_dir)
    other = build_compositional_world(replace(TINY, seed=6))
    assert (
        other.train_pairs != build_compositional_world(TINY).train_pairs
        or other.val_unseen != build_compositional_world(TINY).val_unseen
    )


def test_czsl_layout(world_dir):
    meta = _meta(world_dir)
    assert isinstance(meta, list) and meta
    listed = {s: _pairs(world_dir, s) for s in SETS}
    for s in SETS:
        assert listed[s] and len(set(listed[s])) == len(listed[s])
    for e in meta:
        assert set(e) == {"image", "attr", "obj", "set"} and all(isinstance(v, str) for v in e.values())
        assert e["set"] in (*SETS, "NA")
        path = world_dir / "images" / e["image"]
        assert path.is_file(), e
        assert Path(e["image"]).parent.name == f"{e['attr']}_{e['obj']}"  # images/<state>_<object>/<file>
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (TINY.image_size, TINY.image_size)
    kept = [e for e in meta if e["attr"] != "NA" and e["set"] != "NA"]
    for s in SETS:  # every kept entry's pair is listed for its set, and every listed pair has images
        got = {(e["attr"], e["obj"]) for e in kept if e["set"] == s}
        assert got == set(listed[s]), s
        n = {"train": TINY.train_images, "val": TINY.val_images, "test": TINY.test_images}[s]
        assert sum(e["set"] == s for e in kept) == n * len(listed[s])
    assert sum(e["set"] == "NA" for e in meta) + sum(e["attr"] == "NA" for e in meta) == TINY.n_na_images
    assert len({e["image"] for e in meta}) == len(meta)  # no image is listed twice
    counts = json.loads((world_dir / "world.json").read_text())["counts"]
    assert counts["train_images"] == sum(e["set"] == "train" for e in kept)


def test_split_semantics_and_open_world(world_dir):
    train, val, test = (set(_pairs(world_dir, s)) for s in SETS)
    val_unseen, test_unseen = val - train, test - train
    assert len(val_unseen) == TINY.n_val_unseen and len(test_unseen) == TINY.n_test_unseen
    assert len(val & train) == TINY.n_val_seen and len(test & train) == TINY.n_test_seen
    assert not val_unseen & test_unseen
    train_states = {s for s, _ in train}
    train_objects = {o for _, o in train}
    for s, o in val_unseen | test_unseen:
        assert s in train_states and o in train_objects
    for prim in train_states | train_objects:  # min_train_pairs_per_primitive
        assert sum(prim in p for p in train) >= TINY.min_train_pairs_per_primitive
    states = sorted({s for s, _ in train | val | test})
    objects = sorted({o for _, o in train | val | test})
    assert len(states) == TINY.n_states and len(objects) == TINY.n_objects
    unused = set(product(states, objects)) - (train | val | test)
    assert unused  # the open world has infeasible pairs
    assert not any((e["attr"], e["obj"]) in unused for e in _meta(world_dir))  # ... that never occur
    names = states + objects
    assert any("_" in n for n in names) and any("." in n for n in names)


def test_reader_agrees(world_dir):
    from unseen.compositional.data import load_czsl

    data = load_czsl(world_dir)
    counts = json.loads((world_dir / "world.json").read_text())["counts"]
    assert (data.n_attrs, data.n_objs) == (counts["states"], counts["objects"])
    assert (len(data.train), len(data.val), len(data.test)) == (
        counts["train_images"],
        counts["val_images"],
        counts["test_images"],
    )
    assert data.skipped["attr_na"] + data.skipped["set_na"] == TINY.n_na_images
    assert not data.missing_images


def test_glove_file(world_dir):
    vec = _glove(world_dir)
    dims = {len(v) for v in vec.values()}
    assert dims == {TINY.word_dim}
    world = build_compositional_world(TINY)
    for name in world.states + world.objects:
        words = name.lower().replace(".", "_").split("_")
        assert name.lower() in vec and all(w in vec for w in words)
        # averaging the words (CSP's rule for `_` names) gives the whole-name vector
        np.testing.assert_allclose(np.mean([vec[w] for w in words], axis=0), vec[name.lower()], atol=2e-6)

    def cos(a: str, b: str) -> float:
        return float(vec[a] @ vec[b] / np.linalg.norm(vec[a]) / np.linalg.norm(vec[b]))

    assert cos("red", "orange") > cos("red", "blue") and cos("striped", "polka.dotted") > cos(
        "striped", "red"
    )
    assert cos("square", "rectangle") > cos("square", "circle")


def test_feasibility_from_word_vectors_finds_unused_pairs():
    """CompCos feasibility (brute force here) ranks the used unseen pairs above the never-used pairs."""
    world = build_compositional_world(
        CompositionalWorldConfig()
    )  # the demo world's specification (no pixels)
    vec = concept_vectors()
    train = set(world.train_pairs)

    def f(s: str, o: str) -> float:
        s_obj = max((vec[o] @ vec[o2] for s2, o2 in train if s2 == s and o2 != o), default=-1.0)
        s_att = max((vec[s] @ vec[s2] for s2, o2 in train if o2 == o and s2 != s), default=-1.0)
        return (s_obj + s_att) / 2

    pos = [f(*p) for p in world.val_unseen + world.test_unseen]
    neg = [f(*p) for p in world.unused]
    assert len(neg) >= 20
    assert roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg) > 0.75


def test_refuses_foreign_folder(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(WorldExistsError):
        export_compositional_world(target, TINY)
    assert (target / "notes.txt").read_text() == "mine"


def test_pretrain_style_changes_only_the_pretraining_renders(world_dir, tmp_path):
    assert TINY.pretrain_style == "clean"
    same = export_compositional_world(tmp_path / "same" / "shapes-czsl", replace(TINY, pretrain_style="same"))
    a, b = _all_files(world_dir), _all_files(same)
    pre = {k for k in a if k.startswith("pretrain/images/")}
    assert pre and set(a) == set(b)
    # the benchmark (images, splits, metadata, word vectors) is unchanged; every pretraining render is redrawn
    assert {k for k in a if a[k] != b[k]} == pre | {"world.json"}

    def spread(root: Path) -> float:  # clean = centred, uncluttered: less pixel variance around the object
        ims = [np.asarray(Image.open(root / k), dtype=np.float32) for k in sorted(pre)]
        return float(np.mean([im[:4].std() + im[-4:].std() for im in ims]))

    assert spread(world_dir) < spread(same)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="n_states"):
        CompositionalWorldConfig(n_states=40).validate()
    with pytest.raises(ValueError, match="pretrain_style"):
        CompositionalWorldConfig(pretrain_style="web").validate()
    with pytest.raises(ValueError, match="unseen"):
        build_compositional_world(replace(TINY, n_val_unseen=30))


def test_world_cache_key(tmp_path, monkeypatch):
    monkeypatch.setenv("UNSEEN_CACHE", str(tmp_path))
    assert world_key(TINY) != world_key(replace(TINY, clutter=0.5))
    root = cached_compositional_world(TINY)
    assert root.is_relative_to(tmp_path) and world_key(TINY) in str(root)
    assert cached_compositional_world(TINY) == root


# --------------------------------------------------------------------------------------------- pretraining
def test_pretraining_data_is_train_pairs_only(world_dir, tmp_path):
    data = load_pretrain_data(world_dir)
    train = set(_pairs(world_dir, "train"))
    assert {data.pairs[i] for i in data.pair} == train  # every train pair, nothing else
    assert len(data.pair) == TINY.pretrain_images * len(train)
    assert set(data.pairs) == train
    both = load_pretrain_data(world_dir, use_train_images=True)
    assert len(both.pair) == len(data.pair) + TINY.train_images * len(train)
    # a pretraining list that names a test pair is refused
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(world_dir, bad)
    listing = json.loads((bad / "pretrain" / "pretrain_list.json").read_text())
    unseen = sorted(set(_pairs(world_dir, "test")) - train)[0]
    listing["attrs"][0], listing["objs"][0] = unseen
    (bad / "pretrain" / "pretrain_list.json").write_text(json.dumps(listing))
    with pytest.raises(DataFormatError, match="not train pairs"):
        load_pretrain_data(bad)


@pytest.mark.slow  # a learning test (140 CLIP steps)
def test_pretraining_lowers_the_loss(world_dir):
    data = load_pretrain_data(world_dir)
    cfg = replace(TINY_PRETRAIN, steps=140)  # from random init the loss first sits on a plateau for ~80 steps
    _, hist = pretrain_clip(data, cfg, show_progress=False)
    losses = np.asarray([h["loss"] for h in hist])
    assert np.isfinite(losses).all() and len(losses) == cfg.steps
    assert losses[-5:].mean() < 0.8 * losses[:5].mean()


def test_pretrained_weights_cached_loadable_and_deterministic(world_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("UNSEEN_CACHE", str(tmp_path))
    cfg = replace(TINY_PRETRAIN, steps=6)
    path = pretrained_tiny_clip(world_dir, cfg, show_progress=False)
    assert path.is_file() and path.suffix == ".safetensors" and path.is_relative_to(tmp_path)
    loaded = create_clip(cfg.arch, weights=path)
    model, _ = pretrain_clip(load_pretrain_data(world_dir), cfg, show_progress=False)  # same recipe again
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert not any(p.requires_grad for p in loaded.parameters())
    # cached: a second call does not retrain
    mtime = path.stat().st_mtime_ns
    assert (
        pretrained_tiny_clip(world_dir, cfg, show_progress=False) == path and path.stat().st_mtime_ns == mtime
    )
    # stale (the file's recorded key does not match): rebuilt
    path.write_bytes(b"not a safetensors file")
    assert pretrained_tiny_clip(world_dir, cfg, show_progress=False) == path
    rebuilt = create_clip(cfg.arch, weights=path).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in rebuilt.items())
    # the key follows the recipe and the world
    assert pretrain_key(world_dir, replace(cfg, steps=7)) != pretrain_key(world_dir, cfg)
    assert pretrained_path(world_dir, replace(cfg, lr=1e-3)) != path
    other = export_compositional_world(tmp_path / "other" / "shapes-czsl", replace(TINY, seed=9))
    assert pretrain_key(other, cfg) != pretrain_key(world_dir, cfg)


def test_zero_shot_accuracy_matches_open_clip_pipeline(world_dir):
    """Oracle: open_clip's own tokenizer and image transform, one image at a time, argmax over the CW candidates."""
    import open_clip

    torch.manual_seed(0)
    model = create_clip("unseen-test-clip")
    r = zero_shot_accuracy(model, world_dir, "test")
    train, test = set(_pairs(world_dir, "train")), set(_pairs(world_dir, "test"))
    cands = sorted(train | test)
    assert r["candidates"] == len(cands) and math.isclose(r["chance"], 1 / len(cands))
    tok = open_clip.get_tokenizer("unseen-test-clip")
    prompts = [f"a photo of {s.replace('.', ' ').lower()} {o.replace('.', ' ').lower()}" for s, o in cands]
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.encode_text(tok(prompts)), dim=-1)
        preprocess = open_clip.image_transform(TINY.image_size, is_train=False)
        hits = {True: [], False: []}
        only = []  # unseen samples, unseen candidates only (czsl's best-unseen end)
        ucols = [i for i, p in enumerate(cands) if p not in train]
        for e in _meta(world_dir):
            if e["set"] != "test" or e["attr"] == "NA":
                continue
            x = preprocess(Image.open(world_dir / "images" / e["image"]).convert("RGB"))[None]
            sims = model.encode_image(x) @ text.T
            pred = cands[int(sims.argmax())]
            if (e["attr"], e["obj"]) not in train:
                only.append(cands[ucols[int(sims[0, ucols].argmax())]] == (e["attr"], e["obj"]))
            hits[(e["attr"], e["obj"]) in train].append(pred == (e["attr"], e["obj"]))
    assert r["images"] == len(hits[True]) + len(hits[False])
    assert math.isclose(r["seen"], np.mean(hits[True]), abs_tol=1e-6)  # float32 mean vs float64
    assert math.isclose(r["unseen"], np.mean(hits[False]), abs_tol=1e-6)
    assert math.isclose(r["unseen_only"], np.mean(only), abs_tol=1e-6) and r["unseen_candidates"] == len(
        ucols
    )
