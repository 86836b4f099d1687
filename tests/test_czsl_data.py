"""czsl readers and open-world feasibility on synthetic folders written in the exact czsl layout."""

from __future__ import annotations

import os
import pickle
import random
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unseen.compositional.data import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_SPLIT,
    KNOWN_COUNTS,
    CZSLImageDataset,
    check_czsl,
    clip_transforms,
    feasibility_scores,
    feasible_mask,
    glove_words,
    load_czsl,
    load_feasibility,
    load_glove_vectors,
    load_metadata,
    read_pairs,
    save_feasibility,
)
from unseen.compositional.metrics import feasibility_thresholds
from unseen.io import DataFormatError, UnsafeFileError

ATTRS = [
    "Faux.Leather",
    "Patent.Leather",
    "ancient",
    "black_and_white",
    "dry-erase",
    "wet",
    "Full.grain.leather",
]
OBJS = [
    "Boots.Ankle",
    "Shoes.Sneakers.and.Athletic.Shoes",
    "traffic_light",
    "cat",
    "Zebra",
    "dry-erase_board",
]


# --------------------------------------------------------------------------------------------- writers
def write_pairs(path: Path, pairs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{a} {o}\n" for a, o in pairs))


def write_image(path: Path, seed: int = 0, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_czsl(root: Path, train, val, test, meta, split=DEFAULT_SPLIT, images=True) -> Path:
    for name, ps in (("train", train), ("val", val), ("test", test)):
        write_pairs(root / split / f"{name}_pairs.txt", ps)
    torch.save(meta, root / f"metadata_{split}.t7")
    if images:
        for i, e in enumerate(meta):
            p = root / "images" / e["image"]
            if not p.exists():
                write_image(p, seed=i, size=(8, 8))
    return root


def entry(image, attr, obj, settype):
    return {"image": image, "attr": attr, "obj": obj, "set": settype}


def random_dataset(root: Path, seed: int, images: bool = False):
    """Random pair files (train in a shuffled, non-sorted order; val/test with seen and unseen pairs) and a shuffled
    metadata list with entries to skip. Returns (train, val, test, meta)."""
    rng = random.Random(seed)
    allp = list(product(ATTRS, OBJS))
    rng.shuffle(allp)
    train = allp[:14]
    unseen = allp[14:26]
    val = rng.sample(train, 3) + unseen[:4]
    test = rng.sample(train, 4) + unseen[3:9]  # unseen[3] in both val and test
    rng.shuffle(val)
    rng.shuffle(test)
    meta = []
    for s, ps in (("train", train), ("val", val), ("test", test)):
        for a, o in ps:
            for k in range(rng.randint(1, 3)):
                meta.append(entry(f"{a}_{o}/{s}{k}.png", a, o, s))
    listed = set(train) | set(val) | set(test)
    unlisted = [p for p in allp if p not in listed][:3]
    meta += [
        entry(f"x/{i}.png", a, o, rng.choice(["train", "val", "test"])) for i, (a, o) in enumerate(unlisted)
    ]
    meta += [
        entry("na/attr.png", "NA", train[0][1], "train"),
        entry("na/set.png", *train[1], "NA"),
        entry("na/both.png", "NA", "nothing", "NA"),
        entry("x/new.png", "brand_new", "thing", "val"),
    ]
    rng.shuffle(meta)
    write_czsl(root, train, val, test, meta, images=images)
    return train, val, test, meta


# --------------------------------------------------------------------------------------------- construction
def test_hand_computed_case(tmp_path):
    train = [("wet", "traffic_light"), ("Faux.Leather", "Boots.Ankle")]
    val = [("wet", "Boots.Ankle"), ("Faux.Leather", "Boots.Ankle")]
    test = [("Faux.Leather", "traffic_light"), ("ancient", "Boots.Ankle")]
    meta = [
        entry("a.png", "wet", "traffic_light", "train"),
        entry("b.png", "Faux.Leather", "Boots.Ankle", "train"),
        entry("c.png", "wet", "Boots.Ankle", "val"),
        entry("d.png", "Faux.Leather", "Boots.Ankle", "test"),
        entry("e.png", "ancient", "Boots.Ankle", "test"),
    ]
    d = load_czsl(write_czsl(tmp_path / "toy", train, val, test, meta))
    assert d.attrs == ["Faux.Leather", "ancient", "wet"]  # code-point order: upper case first
    assert d.objs == ["Boots.Ankle", "traffic_light"]
    assert d.pairs == [
        ("Faux.Leather", "Boots.Ankle"),
        ("Faux.Leather", "traffic_light"),
        ("ancient", "Boots.Ankle"),
        ("wet", "Boots.Ankle"),
        ("wet", "traffic_light"),
    ]
    assert d.train_pairs == train  # file order
    assert d.closed_to_open.tolist() == [0, 1, 2, 4, 5]
    assert d.train_to_closed.tolist() == [4, 0]
    assert d.closed_to_train.tolist() == [1, -1, -1, -1, 0]
    assert d.seen_mask().tolist() == [True, False, False, False, True]
    assert d.seen_mask("open").tolist() == [True, False, False, False, False, True]
    assert d.eval_mask("val").tolist() == [True, False, False, True, True]
    assert d.eval_mask("test").tolist() == [True, True, True, False, True]
    assert d.eval_mask("test", "open").tolist() == [True] * 6
    assert list(d.train) == [("a.png", 2, 1, 0), ("b.png", 0, 0, 1)]  # train pair = index into train_pairs
    assert list(d.val) == [("c.png", 2, 0, 3)]  # val/test pair = index into CW pairs
    assert list(d.test) == [("d.png", 0, 0, 0), ("e.png", 1, 0, 2)]
    assert d.targets("test", "open").tolist() == [0, 2]
    assert d.targets("train", "closed").tolist() == [4, 0]
    assert d.seen_samples("test").tolist() == [True, False]
    assert d.skipped == {"attr_na": 0, "set_na": 0, "pair_not_listed": 0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_dataset_matches_straightforward_computation(tmp_path, seed):
    train, val, test, meta = random_dataset(tmp_path / "ds", seed)
    d = load_czsl(tmp_path / "ds", check_images=False)
    everything = train + val + test
    attrs = sorted({a for a, _ in everything})
    objs = sorted({o for _, o in everything})
    pairs = sorted(set(everything))
    assert (d.attrs, d.objs, d.pairs) == (attrs, objs, pairs)
    assert (d.train_pairs, d.val_pairs, d.test_pairs) == (train, val, test)
    ow = [(a, o) for a in attrs for o in objs]  # attr-major double loop
    assert d.open_pairs == ow and d.n_open_pairs == len(ow)
    assert [ow[j] for j in d.closed_to_open] == pairs
    # samples: metadata order, skipping NA / unlisted entries; train targets in train_pairs, eval targets in pairs
    expected = {"train": [], "val": [], "test": []}
    skipped = {"attr_na": 0, "set_na": 0, "pair_not_listed": 0}
    for e in meta:
        if e["attr"] == "NA":
            skipped["attr_na"] += 1
        elif e["set"] == "NA":
            skipped["set_na"] += 1
        elif (e["attr"], e["obj"]) not in pairs:
            skipped["pair_not_listed"] += 1
        else:
            p = (e["attr"], e["obj"])
            target = train.index(p) if e["set"] == "train" else pairs.index(p)
            expected[e["set"]].append((e["image"], attrs.index(p[0]), objs.index(p[1]), target))
    for s in ("train", "val", "test"):
        assert list(d.split_data(s)) == expected[s]
        assert d.targets(s, "open").tolist() == [ow.index((attrs[a], objs[o])) for _, a, o, _ in expected[s]]
    assert d.skipped == skipped and sum(d.unlisted_pairs.values()) == skipped["pair_not_listed"]
    # masks against set membership
    assert d.seen_mask().tolist() == [p in set(train) for p in pairs]
    assert d.seen_mask("open").tolist() == [p in set(train) for p in ow]
    assert d.eval_mask("val").tolist() == [p in set(train) | set(val) for p in pairs]
    assert d.eval_mask("test").tolist() == [p in set(train) | set(test) for p in pairs]
    for s in ("val", "test"):
        assert d.seen_samples(s).tolist() == [pairs[t] in set(train) for *_, t in expected[s]]


def test_pair_index_conversions(tmp_path):
    train, val, test, _ = random_dataset(tmp_path / "ds", 3)
    d = load_czsl(tmp_path / "ds", check_images=False)
    t = np.arange(len(train))
    closed = d.convert_pair_index(t, "train", "closed")
    assert [d.pairs[i] for i in closed] == train
    opened = d.convert_pair_index(closed, "closed", "open")
    assert np.array_equal(d.convert_pair_index(t, "train", "open"), opened)
    assert np.array_equal(d.convert_pair_index(opened, "open", "closed"), closed)
    assert np.array_equal(d.convert_pair_index(opened, "open", "train"), t)
    for a, o in [train[0], val[-1]]:
        assert d.pairs[d.pair_index(a, o)] == (a, o)
        assert d.open_pairs[d.pair_index(a, o, "open")] == (a, o)
    unseen = next(i for i, p in enumerate(d.pairs) if p not in set(train))
    with pytest.raises(ValueError, match="not train pairs"):
        d.convert_pair_index([unseen], "closed", "train")
    not_cw = next(i for i, p in enumerate(d.open_pairs) if p not in set(d.pairs))
    with pytest.raises(ValueError, match="not closed-world"):
        d.convert_pair_index([not_cw], "open", "closed")
    with pytest.raises(ValueError, match=r"\[0, "):
        d.convert_pair_index([len(d.pairs)], "closed", "open")
    with pytest.raises(KeyError, match="not a train pair"):
        d.pair_index(*d.pairs[unseen], space="train")
    with pytest.raises(KeyError, match="not in the vocabulary"):
        d.pair_index("purple", "cat", space="open")
    with pytest.raises(KeyError, match="not a closed pair"):
        d.pair_index(*d.open_pairs[not_cw])


def test_skipped_entries_and_unlisted_pairs(tmp_path):
    train = [("wet", "cat"), ("dry", "cat")]
    val, test = [("wet", "dog")], [("dry", "dog")]
    meta = [
        entry("1.png", "wet", "cat", "train"),
        entry("2.png", "NA", "cat", "train"),
        entry("3.png", "wet", "cat", "NA"),
        entry("4.png", "NA", "cat", "NA"),
        entry("5.png", "dry", "cow", "test"),
        entry("6.png", "dry", "cow", "val"),
        entry("7.png", "wet", "dog", "val"),
    ]
    d = load_czsl(write_czsl(tmp_path / "s", train, val, test, meta))
    assert d.skipped == {"attr_na": 2, "set_na": 1, "pair_not_listed": 2}
    assert d.unlisted_pairs == {("dry", "cow"): 2}
    assert [x[0] for x in d.train] == ["1.png"] and [x[0] for x in d.val] == ["7.png"] and len(d.test) == 0


# --------------------------------------------------------------------------------------------- bad inputs
def _small(tmp_path, meta=None, **kw):
    meta = meta if meta is not None else [entry("1.png", "wet", "cat", "train")]
    return write_czsl(tmp_path / "bad", [("wet", "cat")], [("dry", "cat")], [("wet", "dog")], meta, **kw)


def test_malformed_pair_line(tmp_path):
    root = _small(tmp_path)
    (root / DEFAULT_SPLIT / "val_pairs.txt").write_text("dry cat\n\nred big dog\n")
    with pytest.raises(DataFormatError, match=r"val_pairs\.txt: line 3: .*got 3: 'red big dog'"):
        load_czsl(root)
    (root / DEFAULT_SPLIT / "val_pairs.txt").write_text("dry cat\nlonely\n")
    with pytest.raises(DataFormatError, match=r"line 2: .*got 1"):
        load_czsl(root)
    (root / DEFAULT_SPLIT / "val_pairs.txt").write_text("dry cat\ndry  cat\n")
    with pytest.raises(DataFormatError, match=r"line 2: pair \('dry', 'cat'\) repeats line 1"):
        load_czsl(root)
    (root / DEFAULT_SPLIT / "val_pairs.txt").write_text("\n\n")
    with pytest.raises(DataFormatError, match="val_pairs.txt: no pairs"):
        load_czsl(root)


def test_crlf_bom_and_blank_lines_are_tolerated(tmp_path):
    p = tmp_path / "p.txt"
    p.write_bytes("\ufeffFaux.Leather Boots.Ankle\r\n\r\n  wet\ttraffic_light  \r\n".encode())
    assert read_pairs(p) == [("Faux.Leather", "Boots.Ankle"), ("wet", "traffic_light")]


def test_missing_files(tmp_path):
    root = _small(tmp_path)
    (root / DEFAULT_SPLIT / "test_pairs.txt").unlink()
    with pytest.raises(DataFormatError, match=r"test_pairs\.txt: file not found"):
        load_czsl(root)
    root = _small(tmp_path / "b")
    (root / f"metadata_{DEFAULT_SPLIT}.t7").unlink()
    with pytest.raises(DataFormatError, match=r"metadata_compositional-split-natural\.t7: file not found"):
        load_czsl(root)
    with pytest.raises(DataFormatError, match="dataset folder not found"):
        load_czsl(tmp_path / "nowhere")
    with pytest.raises(DataFormatError, match=r"other-split/train_pairs\.txt: file not found"):
        load_czsl(root, split="other-split")


@pytest.mark.parametrize(
    "meta, pattern",
    [
        (
            [entry("1.png", "wet", "cat", "train"), entry("2.png", "wet", "cat", "trainval")],
            r"entry 1: field 'set' is 'trainval'",
        ),
        ([{"image": "1.png", "attr": "wet", "set": "train"}], r"entry 0: field 'obj' is missing"),
        (
            [{"image": "1.png", "attr": "wet", "obj": 3, "set": "train"}],
            r"entry 0: field 'obj' must be a str, got int",
        ),
        ([["1.png", "wet", "cat", "train"]], r"entry 0: expected a dict, got list"),
        ({"1.png": "wet"}, r"expected a list of dicts"),
        (
            [entry("1.png", "dry", "cat", "train")],
            r"entry 0: a train image of pair \('dry', 'cat'\), which is not in .*"
            r"train_pairs\.txt",
        ),
    ],
)
def test_bad_metadata(tmp_path, meta, pattern):
    root = _small(tmp_path, meta=meta, images=False)
    with pytest.raises(DataFormatError, match=r"metadata_compositional-split-natural\.t7: " + pattern):
        load_czsl(root)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["raw_pickle", "torch_save"])
def test_malicious_metadata_is_refused_without_running(tmp_path, how):
    root = _small(tmp_path)
    marker = tmp_path / "MARKER"
    payload = [entry("1.png", "wet", "cat", "train"), _Evil(marker)]
    path = root / f"metadata_{DEFAULT_SPLIT}.t7"
    if how == "raw_pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    with pytest.raises(
        UnsafeFileError, match=r"metadata_compositional-split-natural\.t7: refusing to load.*system"
    ):
        load_czsl(root)
    assert not marker.exists()
    # the same file, loaded without the restriction, does run: the marker check above is meaningful
    if how == "raw_pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_non_plain_and_garbage_metadata(tmp_path):
    path = tmp_path / "m.t7"
    torch.save([{"image": np.array(["1.png"]), "attr": "a", "obj": "b", "set": "train"}], path)
    with pytest.raises(UnsafeFileError, match="refusing to load"):
        load_metadata(path)
    path.write_bytes(b"this is not a torch file\n" * 4)
    with pytest.raises(DataFormatError, match="not a readable torch.save file"):
        load_metadata(path)
    torch.save(
        [entry("1.png", "a", "b", "train")], path, _use_new_zipfile_serialization=False
    )  # legacy .t7 format
    assert load_metadata(path) == [entry("1.png", "a", "b", "train")]


# --------------------------------------------------------------------------------------------- images
def test_missing_images_reported_not_fatal(tmp_path):
    train, val, test, meta = random_dataset(tmp_path / "ds", 4, images=True)
    d = load_czsl(tmp_path / "ds")
    assert d.missing_images == []
    gone = d.val.images[0]
    (tmp_path / "ds" / "images" / gone).unlink()
    d = load_czsl(tmp_path / "ds")
    assert d.missing_images == [gone]
    ds = CZSLImageDataset(d, "val", transform=clip_transforms(16))
    with pytest.raises(DataFormatError, match="image not found"):
        ds[0]
    assert any("MISSING 1" in ln for ln in check_czsl(tmp_path / "ds"))
    assert load_czsl(tmp_path / "ds", check_images=False).missing_images is None


def test_image_dataset_items(tmp_path):
    random_dataset(tmp_path / "ds", 5, images=True)
    d = load_czsl(tmp_path / "ds")
    ds = CZSLImageDataset(d, "train", transform=clip_transforms(16))
    img, a, o, p = ds[1]
    assert img.shape == (3, 16, 16) and img.dtype == torch.float32
    assert (a, o) == tuple(d.train[1][1:3]) and d.train_pairs[p] == (d.attrs[a], d.objs[o])
    ow = CZSLImageDataset(d, "test", transform=clip_transforms(8), space="open")
    _, a, o, p = ow[0]
    assert d.open_pairs[p] == (d.attrs[a], d.objs[o])
    raw, *_ = CZSLImageDataset(d, "val")[0]
    assert isinstance(raw, Image.Image) and raw.mode == "RGB"


def test_clip_transforms_match_open_clip():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.transform import image_transform
    from torchvision import transforms as T

    assert CLIP_MEAN == tuple(OPENAI_DATASET_MEAN) and CLIP_STD == tuple(OPENAI_DATASET_STD)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    for size in (32, 48):
        ours = clip_transforms(size)(img)
        ref = image_transform(size, is_train=False)(img)
        assert ours.shape == (3, size, size) and torch.allclose(ours, ref, atol=1e-6)
    train = clip_transforms(24, train=True)
    kinds = [type(t) for t in train.transforms]
    for k in (T.RandomHorizontalFlip, T.RandomPerspective, T.RandomRotation):
        assert k in kinds
    rot = next(t for t in train.transforms if isinstance(t, T.RandomRotation))
    assert list(rot.degrees) == [-5.0, 5.0]
    assert train(img.convert("L")).shape == (3, 24, 24)  # grey images become RGB


# --------------------------------------------------------------------------------------------- check / counts
def _known_sized(root: Path, k, val_unseen=None, train_pairs=None):
    """A folder with the vocabulary and pair counts of a known benchmark (1 image per val/test pair)."""
    attrs = [f"a{i:02d}" for i in range(k.attrs)]
    objs = [f"o{j:02d}" for j in range(k.objs)]
    allp = list(product(attrs, objs))
    random.Random(0).shuffle(allp)
    n_train = k.train_pairs if train_pairs is None else train_pairs
    train = allp[:n_train]
    vu = k.val_pairs[1] if val_unseen is None else val_unseen
    unseen_v = allp[n_train : n_train + vu]
    unseen_t = allp[n_train + vu : n_train + vu + k.test_pairs[1]]
    val = train[: k.val_pairs[0]] + unseen_v
    test = train[-k.test_pairs[0] :] + unseen_t
    used_attrs = {a for a, _ in train + val + test}
    used_objs = {o for _, o in train + val + test}
    assert len(used_attrs) == k.attrs and len(used_objs) == k.objs
    meta = [entry(f"{a}_{o}.png", a, o, "train") for a, o in train]
    meta += [entry(f"v_{a}_{o}.png", a, o, "val") for a, o in val] + [
        entry(f"t_{a}_{o}.png", a, o, "test") for a, o in test
    ]
    return write_czsl(root, train, val, test, meta, images=False)


def test_check_czsl_known_dataset(tmp_path):
    k = KNOWN_COUNTS["ut-zappos"]
    root = _known_sized(tmp_path / "ut-zappos", k)
    lines = check_czsl(root)
    text = "\n".join(lines)
    assert f"{k.attrs} attrs (states), {k.objs} objs" in text
    assert f"val {sum(k.val_pairs)} (seen {k.val_pairs[0]}, unseen {k.val_pairs[1]})" in text
    assert (
        f"closed-world candidates: val {k.train_pairs + k.val_pairs[1]}, test {k.train_pairs + k.test_pairs[1]}"
        in text
    )
    assert ": OK" in text
    warnings = [ln for ln in lines if ln.startswith("WARNING")]
    assert len(warnings) == 1 and "train/val/test images" in warnings[0]  # only the [M] image counts differ
    assert any("MISSING" in ln for ln in lines)  # no image files written
    # an [M] count off -> a warning more, still no error
    lines = check_czsl(_known_sized(tmp_path / "b" / "ut-zap50k", k, val_unseen=k.val_pairs[1] - 1))
    assert sum(ln.startswith("WARNING") for ln in lines) == 2
    # a [D] count off -> error on load and check, unless disabled
    bad = _known_sized(tmp_path / "c" / "ut-zappos", k, train_pairs=k.train_pairs - 1)
    with pytest.raises(
        DataFormatError, match=f"train pairs: found {k.train_pairs - 1}, expected {k.train_pairs}"
    ):
        check_czsl(bad)
    with pytest.raises(DataFormatError, match="verify_counts=False"):
        load_czsl(bad)
    assert len(load_czsl(bad, verify_counts=False).train_pairs) == k.train_pairs - 1


def test_known_name_small_folder_is_refused(tmp_path):
    random_dataset(tmp_path / "mit-states", 0)
    with pytest.raises(DataFormatError, match=r"attrs \(states\): found 7, expected 115"):
        load_czsl(tmp_path / "mit-states", check_images=False)
    load_czsl(tmp_path / "mit-states", check_images=False, verify_counts=False)
    lines = check_czsl(_small(tmp_path / "plain"))
    assert lines[0].startswith("czsl dataset (unknown name)")


# --------------------------------------------------------------------------------------------- feasibility
def _cos(u, v):
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def brute_force_feasibility(attrs, objs, train_pairs, emb):
    """CompCos' double loop, as written in its paper: per unseen pair, the best partner similarity on each side."""
    train = set(train_pairs)
    out = []
    for a in attrs:
        for o in objs:
            if (a, o) in train:
                out.append(0.0)
                continue
            s_obj = -1.0
            for o2 in objs:
                if o2 != o and (a, o2) in train:
                    s_obj = max(s_obj, _cos(emb[o], emb[o2]))
            s_att = -1.0
            for a2 in attrs:
                if a2 != a and (a2, o) in train:
                    s_att = max(s_att, _cos(emb[a], emb[a2]))
            out.append((s_obj + s_att) / 2)
    return np.asarray(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_feasibility_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    attrs = [f"s{i}" for i in range(9)]
    objs = [f"t{j}" for j in range(11)]
    allp = list(product(attrs, objs))
    pool = [p for p in allp if p[0] != "s8" and p[1] != "t10"]  # s8 and t10 have no train pair at all
    train = [pool[i] for i in rng.choice(len(pool), 25, replace=False)]
    emb = {n: rng.normal(size=6) for n in attrs + objs}
    ref = brute_force_feasibility(attrs, objs, train, emb)
    f = feasibility_scores(attrs, objs, train, emb)
    assert f.dtype == np.float32 and f.shape == (len(attrs) * len(objs),)
    np.testing.assert_allclose(f, ref, atol=1e-6)
    assert ref[allp.index(("s8", "t10"))] == -1  # the "no partner" branch on both sides is exercised
    as_arrays = (np.stack([emb[a] for a in attrs]), np.stack([emb[o] for o in objs]))
    np.testing.assert_array_equal(feasibility_scores(attrs, objs, train, as_arrays), f)
    seen = np.asarray([p in set(train) for p in allp])
    assert (f[seen] == 0).all()


def test_feasibility_hand_case():
    # attrs a0, a1; objs o0, o1; train = (a0, o0) only. e(o1)·e(o0) = 0.6, e(a1)·e(a0) = 0.8 (unit vectors)
    emb = {"a0": [1.0, 0.0], "a1": [0.8, 0.6], "o0": [1.0, 0.0], "o1": [0.6, 0.8]}
    f = feasibility_scores(["a0", "a1"], ["o0", "o1"], [("a0", "o0")], emb)
    # (a0,o0) seen -> 0; (a0,o1): s_obj = cos(o1,o0) = .6, s_att = -1 -> -.2; (a1,o0): s_obj = -1, s_att = .8 -> -.1;
    # (a1,o1): no partner on either side -> -1
    np.testing.assert_allclose(f, [0.0, -0.2, -0.1, -1.0], atol=1e-6)
    with pytest.raises(DataFormatError, match="no vector"):
        feasibility_scores(["a0", "zz"], ["o0"], [], emb)
    with pytest.raises(DataFormatError, match="not in the vocabulary"):
        feasibility_scores(["a0"], ["o0"], [("a0", "o9")], emb)


def test_glove_loader(tmp_path):
    rng = np.random.default_rng(0)
    words = ["fake", "fur", "ankle", "boots", "traffic", "light", "wet", "cat", "trashcan", "the"]
    vec = {w: rng.normal(size=5).astype(np.float32) for w in words}
    path = tmp_path / "glove.txt"
    path.write_text("".join(f"{w} " + " ".join(f"{x:.6f}" for x in vec[w]) + "\n" for w in words))
    got = load_glove_vectors(path, ["Faux.Fur", "Boots.Ankle", "traffic_light", "Wet", "cat", "trash_can"])
    rounded = {w: np.asarray([float(f"{x:.6f}") for x in v], np.float32) for w, v in vec.items()}
    np.testing.assert_allclose(got["Faux.Fur"], (rounded["fake"] + rounded["fur"]) / 2, atol=1e-6)
    np.testing.assert_allclose(got["Boots.Ankle"], (rounded["ankle"] + rounded["boots"]) / 2, atol=1e-6)
    np.testing.assert_allclose(got["traffic_light"], (rounded["traffic"] + rounded["light"]) / 2, atol=1e-6)
    np.testing.assert_allclose(got["Wet"], rounded["wet"], atol=1e-6)
    np.testing.assert_allclose(got["trash_can"], rounded["trashcan"], atol=1e-6)
    assert glove_words("Shoes.Sneakers.and.Athletic.Shoes") == ["sneakers"]
    with pytest.raises(DataFormatError, match=r"2 words not in the file: 'dog' \(for \['hot_dog'\]\); 'hot'"):
        load_glove_vectors(path, ["cat", "hot_dog"])
    # word2vec-style header line; custom remap
    path2 = tmp_path / "w2v.txt"
    path2.write_text("2 5\n" + path.read_text().split("\n", 8)[-1])  # keeps the last lines: trashcan, the
    got2 = load_glove_vectors(path2, ["bin"], remap={"bin": "trashcan"})
    np.testing.assert_allclose(got2["bin"], rounded["trashcan"], atol=1e-6)
    path3 = tmp_path / "short.txt"
    path3.write_text("cat 1 2 3\nwet 1 2\n")
    with pytest.raises(
        DataFormatError,
        match=r"short\.txt: line 2: word 'wet': expected 3 numbers after the word, got 2",
    ):
        load_glove_vectors(path3, ["cat", "wet"])
    # end to end: GloVe vectors into the feasibility computation
    f = feasibility_scores(
        ["Wet", "Faux.Fur"], ["cat", "Boots.Ankle"], [("Wet", "cat"), ("Faux.Fur", "Boots.Ankle")], got
    )
    ref = brute_force_feasibility(
        ["Wet", "Faux.Fur"], ["cat", "Boots.Ankle"], [("Wet", "cat"), ("Faux.Fur", "Boots.Ankle")], got
    )
    np.testing.assert_allclose(f, ref, atol=1e-6)


def test_feasibility_file_and_thresholds(tmp_path):
    rng = np.random.default_rng(1)
    f = rng.uniform(-0.2, 0.8, 30).astype(np.float32)
    seen = rng.random(30) < 0.3
    f[seen] = 0.0
    path = tmp_path / "feasibility_toy.pt"
    save_feasibility(path, f)
    np.testing.assert_array_equal(load_feasibility(path, n_pairs=30), f)
    with pytest.raises(DataFormatError, match="expected 31 values"):
        load_feasibility(path, n_pairs=31)
    torch.save({"scores": torch.zeros(3)}, path)
    with pytest.raises(DataFormatError, match="key 'feasibility'"):
        load_feasibility(path)
    torch.save({"feasibility": torch.zeros(3, 2)}, path)
    with pytest.raises(DataFormatError, match="1-D float tensor"):
        load_feasibility(path)
    marker = tmp_path / "MARKER"
    path.write_bytes(pickle.dumps({"feasibility": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafeFileError):
        load_feasibility(path)
    assert not marker.exists()
    th = feasibility_thresholds(f, seen)
    unseen_vals = [float(x) for x, s in zip(f, seen) if not s]
    assert len(th) == 50 and th[0] == min(unseen_vals) and th[-1] == max(unseen_vals)
    np.testing.assert_allclose(np.diff(th), (max(unseen_vals) - min(unseen_vals)) / 49)
    keep = feasible_mask(f, seen, th[10])
    assert keep.tolist() == [bool(s) or float(x) >= th[10] for x, s in zip(f, seen)]
    with pytest.raises(DataFormatError, match="no unseen column"):
        feasibility_thresholds(f, np.ones(30, bool))


# --------------------------------------------------------------------------------------------- data.image_size
def test_image_size_is_the_clips_own_or_refused(tmp_path, monkeypatch):
    """A frozen CLIP reads its own input size only: data.image_size defaults to 0 (that size, set in no packaged
    config); another value is refused by name with the expected size, before any data is read."""
    import unseen.compositional.datasets as ds
    from unseen.config import ConfigError, load_config
    from unseen.runs import PACKAGE_CONFIGS, packaged_configs, resolve_config_path

    czsl = [n for n in packaged_configs() if n.startswith("compositional/") and "demo_" not in n]
    assert len(czsl) == 9
    for name in czsl:
        assert load_config(resolve_config_path(name)).data.image_size == 0, name
    for f in (PACKAGE_CONFIGS / "compositional").glob("*.yaml"):
        assert "image_size" not in f.read_text(), f

    missing = tmp_path / "mit-states"  # not there: reading it would fail with another error
    path = resolve_config_path("compositional/refiner_mit_states")

    def prepare(size):
        cfg = load_config(path, [f"data.root={missing}", f"data.image_size={size}"])
        return ds.prepare_czsl(cfg.data, cfg.model)

    with monkeypatch.context() as mp:
        mp.setattr(ds, "load_czsl", lambda *a, **k: pytest.fail("data read before the config check"))
        with pytest.raises(
            ConfigError, match=r"data\.image_size=336: .*ViT-L-14-quickgelu reads 224-pixel .* to 224 or 0"
        ):
            prepare(336)
        with pytest.raises(ConfigError, match=r"data\.image_size: expected 0"):
            prepare(-1)
    for ok in (224, 0):  # passes the check, then the (absent) folder is read
        with pytest.raises(DataFormatError, match="dataset folder not found"):
            prepare(ok)
    cfg = load_config(path, [f"data.root={missing}", "data.image_size=336"])
    with pytest.raises(DataFormatError, match="dataset folder not found"):
        ds.prepare_czsl(cfg.data)  # no model (e.g. a data check): nothing to compare with here
    assert ds.clip_config_image_size("ViT-L-14-336") == 336
    assert ds.clip_config_image_size("unseen-tiny-clip") == 64
    assert ds.clip_config_image_size("hf-hub:org/name") is None  # no network look-up: checked once built
