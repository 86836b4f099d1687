"""The xlsa17 reader: real att_splits.mat / image lists / word vectors from ../shared/data, and synthetic
res101.mat + images in the real layout (including every kind of bad input)."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from unseen.attribute.data import (
    FeatureDataset,
    ImageListDataset,
    XLSA17Data,
    check_xlsa17,
    load_xlsa17,
    map_image_path,
    read_att_splits,
)
from unseen.io import DataFormatError, UnsafeFileError, safe_pickle_load

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
XLSA = SHARED / "xlsa17"


def _need_shared() -> None:
    if not XLSA.is_dir():
        pytest.skip("../shared/data fixtures are not present")


# --------------------------------------------------------------------------------------------- real files
EXPECTED = {  # C, seen, unseen, A, N, trainval, test_seen, test_unseen, train_loc, val_loc, train cls, val cls
    "CUB": (200, 150, 50, 312, 11788, 7057, 1764, 2967, 5875, 2946, 100, 50),
    "SUN": (717, 645, 72, 102, 14340, 10320, 2580, 1440, 11600, 1300, 580, 65),
    "AWA2": (50, 40, 10, 85, 37322, 23527, 5882, 7913, 20218, 9191, 27, 13),
}
_CACHE: dict[str, XLSA17Data] = {}


def _real(name: str) -> XLSA17Data:
    _need_shared()
    if name not in _CACHE:
        _CACHE[name] = load_xlsa17(XLSA / name, image_list=SHARED / "image_lists" / f"{name}.json.gz",
                                   w2v=SHARED / "attribute_w2v" / f"{name}_attribute.npy", check_images=0)
    return _CACHE[name]


@pytest.mark.parametrize("name", ["CUB", "SUN", "AWA2"])
def test_real_counts_and_splits(name):
    d = _real(name)
    C, S, U, A, N, tv, ts, tu, tr, va, trc, vac = EXPECTED[name]
    assert d.dataset == name
    assert (d.n_classes, len(d.seen_classes), len(d.unseen_classes), d.n_attributes, d.n_images) == (C, S, U, A, N)
    assert (len(d.trainval_loc), len(d.test_seen_loc), len(d.test_unseen_loc)) == (tv, ts, tu)
    for arr in (d.trainval_loc, d.test_seen_loc, d.test_unseen_loc, d.train_loc, d.val_loc, d.labels,
                d.seen_classes, d.unseen_classes):
        assert arr.dtype == np.int64
    assert d.att.shape == d.original_att.shape == d.class_attributes.shape == (C, A)
    assert d.att.dtype == d.original_att.dtype == d.class_attributes.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d.att, axis=1), 1.0, atol=1e-4)  # columns of the file, normalised
    np.testing.assert_array_equal(d.class_attributes, d.original_att)  # default semantics
    assert d.semantics == "original_att"
    assert d.features is None and len(d.image_files) == N
    # validation class split (CUB derived from the class lists, SUN / AWA2 from the file)
    assert (len(d.train_loc), len(d.val_loc)) == (tr, va)
    assert (len(np.unique(d.labels[d.train_loc])), len(np.unique(d.labels[d.val_loc]))) == (trc, vac)
    assert sorted(np.concatenate([d.train_loc, d.val_loc]).tolist()) == \
        sorted(np.concatenate([d.trainval_loc, d.test_seen_loc]).tolist())
    assert d.val_split_source.endswith("trainclasses1.txt, " + str(XLSA / name / "valclasses1.txt")) \
        if name == "CUB" else d.val_split_source.endswith("att_splits.mat")
    assert d.attribute_embeddings.shape == (A, 300) and d.attribute_embeddings.dtype == np.float32


@pytest.mark.parametrize("name", ["CUB", "SUN", "AWA2"])
def test_real_validation_split(name):
    d = _real(name)
    vs = d.validation_split(0.2, seed=0)
    _, _, _, _, _, _, _, _, tr, va, trc, vac = EXPECTED[name]
    assert len(vs.train) + len(vs.val_seen) == tr and len(vs.val_unseen) == va
    assert not np.intersect1d(vs.train, vs.val_seen).size
    assert (len(vs.seen_classes), len(vs.unseen_classes)) == (trc, vac)
    assert not np.intersect1d(vs.seen_classes, vs.unseen_classes).size
    # every train class keeps images on both sides; the hold-out is about 20 %
    assert set(np.unique(d.labels[vs.val_seen])) == set(vs.seen_classes.tolist())
    assert set(np.unique(d.labels[vs.train])) == set(vs.seen_classes.tolist())
    assert abs(len(vs.val_seen) / tr - 0.2) < 0.03
    again = d.validation_split(0.2, seed=0)
    np.testing.assert_array_equal(again.val_seen, vs.val_seen)
    assert not np.array_equal(d.validation_split(0.2, seed=1).val_seen, vs.val_seen)


def test_real_class_orders():
    cub, awa2, sun = _real("CUB"), _real("AWA2"), _real("SUN")
    assert cub.class_names[0] == "002.Laysan_Albatross"
    assert cub.class_names[150] == "001.Black_footed_Albatross"
    assert cub.unseen_classes[0] == 6 and cub.class_names[6] == "012.Yellow_headed_Blackbird"
    assert awa2.unseen_classes.tolist() == [6, 8, 22, 23, 29, 30, 33, 40, 46, 49]
    assert [awa2.class_names[i] for i in (6, 8, 49)] == ["horse", "blue+whale", "dolphin"]
    assert sun.class_names[:2] == ["abbey", "access_road"]
    # CUB labels agree with the class folder of every path
    for i in range(0, cub.n_images, 997):
        assert f"/{cub.class_names[cub.labels[i]]}/" in cub.image_files[i]
    assert (awa2.original_att == -1).sum() == 4
    clamped = load_xlsa17(XLSA / "AWA2", image_list=SHARED / "image_lists" / "AWA2.json.gz", check_images=0,
                          negative_att="clamp0", semantics="att")
    assert clamped.class_attributes.min() == 0.0 and awa2.att.min() < 0
    assert clamped.semantics == "att"


@pytest.mark.parametrize("name,shape,sizes", [("AWA1", (50, 85), (19832, 4958, 5685)),
                                              ("APY", (32, 64), (5932, 1483, 7924))])
def test_real_att_splits_without_image_list(name, shape, sizes):
    _need_shared()
    s = read_att_splits(XLSA / name / "att_splits.mat")
    assert s["att"].shape == s["original_att"].shape == shape and len(s["class_names"]) == shape[0]
    locs = s["locs"]
    assert tuple(len(locs[k]) for k in ("trainval_loc", "test_seen_loc", "test_unseen_loc")) == sizes
    for v in locs.values():
        if v is not None:
            assert v.dtype == np.int64 and v.min() >= 0
    assert (locs["train_loc"] is None) == (name == "APY")
    if name == "AWA1":
        assert len(locs["train_loc"]) + len(locs["val_loc"]) == sizes[0] + sizes[1]
    # no image list for these: the reader says what it looked for
    with pytest.raises(DataFormatError, match="res101.mat.*image_list.json"):
        load_xlsa17(XLSA / name, check_images=0)


def test_real_locs_match_json_and_sun_derivation(tmp_path):
    _need_shared()
    sun = _real("SUN")
    mat = scipy.io.loadmat(str(XLSA / "SUN" / "att_splits.mat"))
    assert mat["trainval_loc"].dtype == np.uint16  # the gotcha is real
    np.testing.assert_array_equal(np.sort(sun.trainval_loc), np.sort(mat["trainval_loc"].astype(np.int64).ravel() - 1))
    # drop train_loc/val_loc: the class-list rule reproduces the official SUN train_loc exactly
    stripped = {k: v for k, v in mat.items() if not k.startswith("__") and k not in ("train_loc", "val_loc")}
    root = tmp_path / "SUN"
    root.mkdir()
    scipy.io.savemat(str(root / "att_splits.mat"), stripped)
    d = load_xlsa17(root, image_list=SHARED / "image_lists" / "SUN.json.gz", class_lists_dir=XLSA / "SUN",
                    check_images=0)
    np.testing.assert_array_equal(d.train_loc, np.sort(sun.train_loc))
    np.testing.assert_array_equal(d.val_loc, np.sort(sun.val_loc))
    # without the class lists there is no validation split, and asking for one names the missing files
    d2 = load_xlsa17(root, image_list=SHARED / "image_lists" / "SUN.json.gz", check_images=0)
    assert d2.train_loc is None and d2.val_loc is None
    with pytest.raises(DataFormatError, match="trainclasses1.txt.*valclasses1.txt"):
        d2.validation_split()
    # an unknown class name in a class list is an error naming the file and the name
    lists = tmp_path / "lists"
    lists.mkdir()
    shutil.copy(XLSA / "SUN" / "valclasses1.txt", lists)
    (lists / "trainclasses1.txt").write_text("abbey\nnot_a_scene\n")
    with pytest.raises(DataFormatError, match=r"trainclasses1.txt.*not_a_scene"):
        load_xlsa17(root, image_list=SHARED / "image_lists" / "SUN.json.gz", class_lists_dir=lists, check_images=0)


def test_real_json_locs_must_agree(tmp_path):
    _need_shared()
    obj = json.loads(gzip.decompress((SHARED / "image_lists" / "CUB.json.gz").read_bytes()))
    obj["test_seen_loc"] = obj["test_seen_loc"][1:]
    bad = tmp_path / "list.json"
    bad.write_text(json.dumps(obj))
    with pytest.raises(DataFormatError, match=r"list.json: field 'test_seen_loc' disagrees"):
        load_xlsa17(XLSA / "CUB", image_list=bad, check_images=0)


def test_real_word_vector_pickles():
    _need_shared()
    for name, A in (("CUB", 312), ("SUN", 102), ("AWA2", 85)):
        arr = safe_pickle_load(SHARED / "attribute_w2v" / f"{name}_attribute.pkl")
        assert isinstance(arr, np.ndarray) and arr.shape == (A, 300)
        np.testing.assert_array_equal(arr, np.load(SHARED / "attribute_w2v" / f"{name}_attribute.npy"))
        if name == "SUN":
            assert not arr[88].any() and np.all(np.linalg.norm(np.delete(arr, 88, 0), axis=1) > 0)
    d = load_xlsa17(XLSA / "AWA2", image_list=SHARED / "image_lists" / "AWA2.json.gz", check_images=0,
                    w2v=SHARED / "attribute_w2v" / "AWA2_attribute.pkl")
    np.testing.assert_array_equal(d.attribute_embeddings, _real("AWA2").attribute_embeddings)


def test_map_image_path_anchors(tmp_path):
    r = tmp_path
    assert map_image_path("/BS/xian/work/MSc/CUB_200_2011/images/001.X/a.jpg", "CUB", "/u/CUB_200_2011", r) == \
        "/u/CUB_200_2011/images/001.X/a.jpg"
    assert map_image_path("Animals_with_Attributes2//JPEGImages/antelope/a.jpg", "AWA2", "/u/JPEGImages", r) == \
        "/u/JPEGImages/antelope/a.jpg"
    assert map_image_path("/x/SUN/images/a/abbey/s.jpg", "SUN", "/u/SUN", r) == "/u/SUN/images/a/abbey/s.jpg"
    assert map_image_path("images/a/abbey/s.jpg", "sun", "/u/SUN", r) == "/u/SUN/images/a/abbey/s.jpg"
    assert map_image_path("/x/SUN/images/b/bar/images/s.jpg", "SUN", "/u", r) == "/u/images/b/bar/images/s.jpg"
    assert map_image_path("imgs/c0/0.png", "SHAPES", None, r) == str(r / "imgs/c0/0.png")
    assert map_image_path("imgs//c0/0.png", "SHAPES", "/u", r) == "/u/imgs/c0/0.png"
    assert map_image_path("/abs/a.jpg", "CUB", None, r) == "/abs/a.jpg"
    with pytest.raises(DataFormatError, match="CUB_200_2011"):
        map_image_path("/x/birds/a.jpg", "CUB", "/u", r)


# --------------------------------------------------------------------------------------------- synthetic layout
C, A, PER = 6, 4, 4
SEEN, UNSEEN, VAL = (0, 1, 2, 4), (3, 5), (2,)


def _write_dataset(tmp_path: Path, *, dataset: str = "CUB", mutate_att=None, mutate_res=None,
                   val_in_mat: bool = True, images: bool = True) -> dict:
    """A tiny xlsa17 folder: att_splits.mat (uint16 1-based locs), res101.mat (2048 x N features, 1-based labels,
    absolute server-like paths), and the images as PNGs under an image root with the dataset's anchor."""
    from PIL import Image

    root = tmp_path / dataset
    root.mkdir(parents=True)
    anchor_root = {"CUB": tmp_path / "user" / "CUB_200_2011", "AWA2": tmp_path / "user" / "JPEGImages"}[dataset]
    names = [f"{i + 1:03d}.Class_{i}" for i in range(C)]
    rng = np.random.default_rng(0)
    files, labels, tv, ts, tu, tr, va = [], [], [], [], [], [], []
    for c in range(C):
        for j in range(PER):
            n = len(files)
            if dataset == "CUB":
                rel = f"images/{names[c]}/img_{c}_{j}.png"
                files.append(f"/BS/xian/work/data/MSc//CUB_200_2011/{rel}")
            else:
                rel = f"{names[c]}/img_{c}_{j}.png"
                files.append(f"/BS/xian/AwA2/Animals_with_Attributes2//JPEGImages/{rel}")
            if images:
                p = anchor_root / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(p)
            labels.append(c + 1)
            if c in UNSEEN:
                tu.append(n + 1)
            else:
                (ts if j == PER - 1 else tv).append(n + 1)
                (va if c in VAL else tr).append(n + 1)
    original = rng.uniform(0, 100, (A, C))
    original[0, 1] = -1.0
    cell = np.empty((C, 1), dtype=object)
    for i, nm in enumerate(names):
        cell[i, 0] = np.array([nm])
    u16 = lambda x: np.asarray(x, dtype=np.uint16).reshape(-1, 1)  # noqa: E731
    att = {"allclasses_names": cell, "att": original / np.linalg.norm(original, axis=0), "original_att": original,
           "trainval_loc": u16(tv), "test_seen_loc": u16(ts), "test_unseen_loc": u16(tu)}
    if val_in_mat:
        att.update(train_loc=u16(tr), val_loc=u16(va))
    if mutate_att:
        mutate_att(att)
    scipy.io.savemat(str(root / "att_splits.mat"), att)
    fcell = np.empty((len(files), 1), dtype=object)
    for i, f in enumerate(files):
        fcell[i, 0] = np.array([f])
    feats = rng.standard_normal((2048, len(files))).astype(np.float32)
    res = {"features": feats, "labels": np.asarray(labels, dtype=np.float64).reshape(-1, 1), "image_files": fcell}
    if mutate_res:
        mutate_res(res)
    scipy.io.savemat(str(root / "res101.mat"), res)
    return {"root": root, "image_root": anchor_root, "names": names, "features": feats, "files": files,
            "tr": tr, "va": va}


@pytest.mark.parametrize("dataset", ["CUB", "AWA2"])
def test_synthetic_res101_roundtrip(tmp_path, dataset):
    s = _write_dataset(tmp_path, dataset=dataset)
    d = load_xlsa17(s["root"], image_root=s["image_root"], check_images=-1)
    N = C * PER
    assert d.dataset == dataset and d.class_names == s["names"] and d.n_images == N
    assert d.features.shape == (N, 2048) and d.features.dtype == np.float32
    np.testing.assert_array_equal(d.features, s["features"].T)
    np.testing.assert_array_equal(d.labels, np.repeat(np.arange(C), PER))
    assert d.seen_classes.tolist() == list(SEEN) and d.unseen_classes.tolist() == list(UNSEEN)
    assert d.trainval_loc.dtype == np.int64 and d.trainval_loc.min() == 0  # 1-based -> 0-based once
    np.testing.assert_array_equal(d.train_loc, np.asarray(s["tr"]) - 1)
    assert all(f.startswith(str(s["image_root"]) + "/") and Path(f).is_file() for f in d.image_files)
    assert d.original_att[1, 0] == -1.0 and d.class_attributes[1, 0] == -1.0
    assert load_xlsa17(s["root"], image_root=s["image_root"], negative_att="clamp0").class_attributes.min() >= 0
    assert load_xlsa17(s["root"], image_root=s["image_root"], features="none").features is None
    # validation split on 3 train classes x 4 images: one held out per class
    vs = d.validation_split()
    assert len(vs.val_seen) == 3 and len(vs.train) == 9 and vs.unseen_classes.tolist() == list(VAL)
    # the report
    report = "\n".join(check_xlsa17(s["root"], image_root=str(s["image_root"]), image_list=None))
    assert f"classes {C} (seen 4, unseen 2)" in report and f"attributes {A}" in report
    assert "trainval 12, test_seen 4, test_unseen 8" in report and "res101 24 x 2048" in report
    assert "val-seen 3" in report and "word vectors: none" in report
    # torch datasets
    ds = ImageListDataset(d.image_files, d.labels, transform=lambda im: torch.as_tensor(np.array(im)))
    x, y = ds[5]
    assert x.shape == (8, 8, 3) and y == 1
    fx, fy = FeatureDataset(d.features, d.labels)[5]
    assert fx.dtype == torch.float32 and fx.shape == (2048,) and int(fy) == 1


def test_synthetic_class_lists_and_names(tmp_path):
    s = _write_dataset(tmp_path, val_in_mat=False)
    root = s["root"]
    d = load_xlsa17(root, image_root=s["image_root"])
    assert d.train_loc is None and "trainclasses1.txt" in d.val_split_problem
    with pytest.raises(DataFormatError, match=r"trainclasses1.txt.*valclasses1.txt"):
        d.validation_split()
    assert "WARNING no validation split" in "\n".join(check_xlsa17(root, image_root=s["image_root"]))
    (root / "trainclasses1.txt").write_text("\n".join(s["names"][c] for c in (0, 1, 4)) + "\n")
    (root / "valclasses1.txt").write_text(s["names"][2] + "\n")
    (root / "attributes.txt").write_text("1 has_bill\n2 has_wing\n3 red\n4 blue\n")
    np.save(root / "CUB_attribute.npy", np.ones((A, 7)))
    d = load_xlsa17(root, image_root=s["image_root"])
    np.testing.assert_array_equal(d.train_loc, np.asarray(s["tr"]) - 1)
    np.testing.assert_array_equal(d.val_loc, np.asarray(s["va"]) - 1)
    assert d.attribute_names == ["has_bill", "has_wing", "red", "blue"]
    assert d.attribute_embeddings.shape == (A, 7) and d.attribute_embeddings.dtype == np.float32
    # JSON image list in the fixture layout, relative paths joined to image_root
    obj = {"image_files": [f.split("CUB_200_2011/", 1)[1] for f in s["files"]],
           "labels": list(np.repeat(np.arange(C), PER).tolist()), "index_base": 0}
    (root / "res101.mat").unlink()
    (root / "image_list.json").write_text(json.dumps(obj))
    d2 = load_xlsa17(root, "SHAPES", image_root=s["image_root"], check_images=-1)
    assert d2.features is None and d2.image_files == d.image_files


# --------------------------------------------------------------------------------------------- bad input
def _err(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"


def test_bad_missing_att_field(tmp_path):
    s = _write_dataset(tmp_path, mutate_att=lambda m: m.update(trainval_locs=m.pop("trainval_loc")), images=False)
    with pytest.raises(DataFormatError) as e:
        load_xlsa17(s["root"], check_images=0)
    _err(e, "att_splits.mat", "'trainval_loc'", "trainval_locs", "test_seen_loc")


def test_bad_missing_res101_field(tmp_path):
    s = _write_dataset(tmp_path, mutate_res=lambda m: m.update(files=m.pop("image_files")), images=False)
    with pytest.raises(DataFormatError) as e:
        load_xlsa17(s["root"], check_images=0)
    _err(e, "res101.mat", "'image_files'", "files")


def test_bad_attribute_dimension(tmp_path):
    s = _write_dataset(tmp_path, images=False)
    bad = tmp_path / "w2v.npy"
    np.save(bad, np.zeros((A + 1, 300)))
    with pytest.raises(DataFormatError) as e:
        load_xlsa17(s["root"], w2v=bad, check_images=0)
    _err(e, str(bad), "wrong attribute dimension", f"got {A + 1}", f"expected {A}")


def test_bad_loc_out_of_range(tmp_path):
    def grow(m):
        m["test_unseen_loc"] = np.vstack([m["test_unseen_loc"], [[C * PER + 1]]]).astype(np.uint16)

    s = _write_dataset(tmp_path, mutate_att=grow, images=False)
    with pytest.raises(DataFormatError) as e:
        load_xlsa17(s["root"], check_images=0)
    _err(e, "att_splits.mat", "'test_unseen_loc'", str(C * PER + 1), "out of range")


def test_bad_zero_loc_is_out_of_range(tmp_path):
    def zero(m):
        m["trainval_loc"][0, 0] = 0  # a 0-based file read as 1-based

    s = _write_dataset(tmp_path, mutate_att=zero, images=False)
    with pytest.raises(DataFormatError, match="'trainval_loc'.*out of range"):
        load_xlsa17(s["root"], check_images=0)


def test_bad_overlapping_splits(tmp_path):
    def overlap(m):
        m["test_seen_loc"] = np.vstack([m["test_seen_loc"], m["trainval_loc"][:1]]).astype(np.uint16)

    s = _write_dataset(tmp_path, mutate_att=overlap, images=False)
    with pytest.raises(DataFormatError) as e:
        load_xlsa17(s["root"], check_images=0)
    _err(e, "att_splits.mat", "'trainval_loc'", "'test_seen_loc'", "overlap")


def test_bad_labels_out_of_range(tmp_path):
    def relabel(m):
        m["labels"][0, 0] = C + 1

    s = _write_dataset(tmp_path, mutate_res=relabel, images=False)
    with pytest.raises(DataFormatError) as e:
        load_xlsa17(s["root"], check_images=0)
    _err(e, "res101.mat", "'labels'")


def test_bad_malicious_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"echo pwned > {marker}",))

    marker = tmp_path / "pwned.txt"
    s = _write_dataset(tmp_path, images=False)
    evil = tmp_path / "CUB_attribute.pkl"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UnsafeFileError) as e:
        load_xlsa17(s["root"], w2v=evil, check_images=0)
    _err(e, str(evil), "system")
    assert not marker.exists()
    # found automatically next to att_splits.mat: refused the same way
    shutil.copy(evil, s["root"] / "CUB_attribute.pkl")
    with pytest.raises(UnsafeFileError):
        load_xlsa17(s["root"], check_images=0)
    assert not marker.exists()


def test_bad_nan_features(tmp_path):
    def nan(m):
        m["features"][3, 5] = np.nan

    s = _write_dataset(tmp_path, mutate_res=nan, images=False)
    with pytest.raises(DataFormatError) as e:
        load_xlsa17(s["root"], check_images=0)
    _err(e, "res101.mat", "'features'", "NaN")


def test_bad_missing_image(tmp_path):
    s = _write_dataset(tmp_path)
    victim = s["image_root"] / "images" / s["names"][0] / "img_0_2.png"
    victim.unlink()
    with pytest.raises(DataFormatError) as e:
        load_xlsa17(s["root"], image_root=s["image_root"])
    _err(e, str(victim), s["files"][2], "res101.mat")
    load_xlsa17(s["root"], image_root=s["image_root"], check_images=2)  # only the first two are checked
    with pytest.raises(DataFormatError, match=f"1 of {C * PER} images are missing.*img_0_2.png"):
        check_xlsa17(s["root"], image_root=s["image_root"])
    with pytest.raises(DataFormatError, match=str(victim)):
        ImageListDataset([str(victim)], [0])[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DataFormatError, match="broken.png"):
        ImageListDataset([str(broken)], [0])[0]


def test_bad_no_image_list(tmp_path):
    s = _write_dataset(tmp_path, images=False)
    (s["root"] / "res101.mat").unlink()
    with pytest.raises(DataFormatError) as e:
        load_xlsa17(s["root"], check_images=0)
    _err(e, "res101.mat", "image_list.json", "image_list.json.gz")


def test_bad_anchor_missing(tmp_path):
    s = _write_dataset(tmp_path, images=False)
    with pytest.raises(DataFormatError) as e:
        load_xlsa17(s["root"], "AWA2", image_root=tmp_path, check_images=0)
    _err(e, "res101.mat", "'image_files'", "JPEGImages/")
