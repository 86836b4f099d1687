"""The xlsa17 reader (spec attribute-zsl.md §1): real att_splits/word-vector fixtures, a synthetic dataset in the
real layout (att_splits.mat + res101.mat + images), path mapping, and bad inputs that must fail with a message
naming the file and the field."""

from __future__ import annotations

import functools
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from unseen.attribute.data import (
    ImageListDataset,
    check_xlsa17,
    load_xlsa17,
    map_image_path,
    read_att_splits,
)
from unseen.io import DataFormatError, UnsafeFileError, safe_pickle_load

# ============================================================================================ real fixtures
EXPECTED = {
    # split counts, images, classes (seen/unseen), attributes, train_loc/val_loc sizes and class counts
    "CUB": dict(splits=(7057, 1764, 2967), n=11788, C=(200, 150, 50), A=312, val=(5875, 2946, 100, 50)),
    "SUN": dict(splits=(10320, 2580, 1440), n=14340, C=(717, 645, 72), A=102, val=(11600, 1300, 580, 65)),
    "AWA2": dict(splits=(23527, 5882, 7913), n=37322, C=(50, 40, 10), A=85, val=(20218, 9191, 27, 13)),
}
SPLITS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")


@functools.cache
def _load_real(shared: str, ds: str):
    s = Path(shared)
    return load_xlsa17(s / "xlsa17" / ds, image_list=s / "image_lists" / f"{ds}.json.gz",
                       w2v=s / "attribute_w2v" / f"{ds}_attribute.pkl", check_images=0)


@pytest.mark.parametrize("ds", ["CUB", "SUN", "AWA2"])
def test_real_counts(shared_data, ds):
    d = _load_real(str(shared_data), ds)
    e = EXPECTED[ds]
    assert (len(d.trainval_loc), len(d.test_seen_loc), len(d.test_unseen_loc)) == e["splits"]
    assert d.n_images == e["n"] == len(d.labels) == len(d.image_files)
    assert (d.n_classes, len(d.seen_classes), len(d.unseen_classes)) == e["C"]
    assert d.n_attributes == e["A"]
    assert d.class_attributes.shape == (e["C"][0], e["A"]) and d.class_attributes.dtype == np.float32
    assert d.attribute_embeddings.shape == (e["A"], 300)
    assert np.intersect1d(d.seen_classes, d.unseen_classes).size == 0
    assert np.array_equal(np.union1d(d.seen_classes, d.unseen_classes), np.arange(e["C"][0]))
    # test_seen has exactly the seen classes
    assert np.array_equal(np.unique(d.labels[d.test_seen_loc]), d.seen_classes)
    n_tr, n_val, c_tr, c_val = e["val"]
    assert (len(d.train_loc), len(d.val_loc)) == (n_tr, n_val)
    tr_cls, val_cls = np.unique(d.labels[d.train_loc]), np.unique(d.labels[d.val_loc])
    assert (len(tr_cls), len(val_cls)) == (c_tr, c_val)
    assert np.intersect1d(tr_cls, val_cls).size == 0
    # train_loc ∪ val_loc = trainval_loc ∪ test_seen_loc (as image sets), disjoint
    assert np.intersect1d(d.train_loc, d.val_loc).size == 0
    assert np.array_equal(np.union1d(d.train_loc, d.val_loc), np.union1d(d.trainval_loc, d.test_seen_loc))


def test_real_class_orders(shared_data):
    cub = _load_real(str(shared_data), "CUB")
    assert cub.class_names[0] == "002.Laysan_Albatross"
    assert cub.class_names[150] == "001.Black_footed_Albatross"
    assert int(cub.unseen_classes[0]) == 6 and cub.class_names[6] == "012.Yellow_headed_Blackbird"
    # CUB labels agree with the class folder in every path
    folders = [Path(f).parent.name for f in cub.image_files]
    assert all(folders[i] == cub.class_names[c] for i, c in enumerate(cub.labels))
    awa2 = _load_real(str(shared_data), "AWA2")
    assert awa2.unseen_classes.tolist() == [6, 8, 22, 23, 29, 30, 33, 40, 46, 49]
    assert [awa2.class_names[i] for i in (6, 8, 49)] == ["horse", "blue+whale", "dolphin"]
    sun = _load_real(str(shared_data), "SUN")
    assert sun.class_names[:2] == ["abbey", "access_road"]


@pytest.mark.parametrize("ds", ["CUB", "SUN", "AWA2"])
def test_real_locs_int64_zero_based(shared_data, ds):
    d = _load_real(str(shared_data), ds)
    raw = scipy.io.loadmat(str(shared_data / "xlsa17" / ds / "att_splits.mat"))
    for k in ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc"):
        loc = getattr(d, k)
        assert loc.dtype == np.int64 and loc.ndim == 1
        assert loc.min() >= 0 and loc.max() < d.n_images
        if k in raw:
            assert raw[k].dtype == np.uint16  # the gotcha the reader must undo
            assert np.array_equal(loc, raw[k].astype(np.int64).ravel() - 1)
    assert d.labels.dtype == np.int64 and d.labels.min() == 0 and d.labels.max() == d.n_classes - 1


def _copy_without_val(src: Path, dst: Path) -> dict:
    """att_splits.mat rewritten without train_loc/val_loc, plus the class lists beside it."""
    dst.mkdir()
    raw = scipy.io.loadmat(str(src / "att_splits.mat"))
    kept = {k: v for k, v in raw.items() if not k.startswith("__") and k not in ("train_loc", "val_loc")}
    scipy.io.savemat(str(dst / "att_splits.mat"), kept)
    for f in ("trainclasses1.txt", "valclasses1.txt"):
        shutil.copy(src / f, dst / f)
    return raw


def test_sun_train_loc_derived_from_class_lists(shared_data, tmp_path):
    raw = _copy_without_val(shared_data / "xlsa17" / "SUN", tmp_path / "SUN")
    assert "train_loc" not in scipy.io.loadmat(str(tmp_path / "SUN" / "att_splits.mat"))
    d = load_xlsa17(tmp_path / "SUN", image_list=shared_data / "image_lists" / "SUN.json.gz", check_images=0)
    official_train = np.sort(raw["train_loc"].astype(np.int64).ravel() - 1)
    official_val = np.sort(raw["val_loc"].astype(np.int64).ravel() - 1)
    assert len(d.train_loc) == 11600
    assert np.array_equal(d.train_loc, official_train)
    # val_loc: the same class set as the official one
    assert np.array_equal(np.unique(d.labels[d.val_loc]), np.unique(d.labels[official_val]))


def test_no_validation_split_without_lists(shared_data, tmp_path):
    src = shared_data / "xlsa17" / "CUB"
    (tmp_path / "CUB").mkdir()
    shutil.copy(src / "att_splits.mat", tmp_path / "CUB" / "att_splits.mat")
    d = load_xlsa17(tmp_path / "CUB", image_list=shared_data / "image_lists" / "CUB.json.gz", check_images=0)
    assert d.train_loc is None and d.val_loc is None
    with pytest.raises(DataFormatError, match="train_loc/val_loc"):
        d.validation_split()
    # class lists from another folder
    d2 = load_xlsa17(tmp_path / "CUB", image_list=shared_data / "image_lists" / "CUB.json.gz", check_images=0,
                     class_lists_dir=src)
    assert (len(d2.train_loc), len(d2.val_loc)) == (5875, 2946)


@pytest.mark.parametrize("ds", ["CUB", "SUN", "AWA2"])
def test_validation_split_partition(shared_data, ds):
    d = _load_real(str(shared_data), ds)
    v = d.validation_split(holdout=0.2, seed=3)
    assert v.train.dtype == np.int64 and v.val_seen.dtype == np.int64
    assert np.intersect1d(v.train, v.val_seen).size == 0
    assert np.array_equal(np.union1d(v.train, v.val_seen), np.sort(d.train_loc))
    assert len(v.train) + len(v.val_seen) == len(d.train_loc)
    assert np.array_equal(v.val_unseen, np.sort(d.val_loc))
    train_classes = np.unique(d.labels[d.train_loc])
    assert np.array_equal(np.unique(d.labels[v.val_seen]), train_classes)  # every train class held out
    assert np.array_equal(v.seen_classes, train_classes)  # ... and still trained on
    assert np.intersect1d(v.seen_classes, v.unseen_classes).size == 0
    assert 0.15 < len(v.val_seen) / len(d.train_loc) < 0.25
    again = d.validation_split(holdout=0.2, seed=3)
    assert np.array_equal(again.val_seen, v.val_seen) and np.array_equal(again.train, v.train)
    other = d.validation_split(holdout=0.2, seed=4)
    assert not np.array_equal(other.val_seen, v.val_seen)


@pytest.mark.parametrize("ds,shape,counts", [
    ("AWA1", (50, 85), (19832, 4958, 5685)),
    ("APY", (32, 64), (5932, 1483, 7924)),
    ("AWA2", (50, 85), (23527, 5882, 7913)),
    ("CUB", (200, 312), (7057, 1764, 2967)),
    ("SUN", (717, 102), (10320, 2580, 1440)),
])
def test_read_att_splits(shared_data, ds, shape, counts):
    s = read_att_splits(shared_data / "xlsa17" / ds / "att_splits.mat")
    assert len(s["class_names"]) == shape[0]
    assert s["att"].shape == s["original_att"].shape == shape
    assert s["att"].dtype == np.float32
    assert tuple(len(s["locs"][k]) for k in SPLITS) == counts
    for k in SPLITS:
        assert s["locs"][k].dtype == np.int64 and s["locs"][k].min() >= 0
    # att: each class (a column in the file) has unit norm
    np.testing.assert_allclose(np.linalg.norm(s["att"], axis=1), 1.0, atol=1e-5)
    has_val = ds in ("AWA1", "AWA2", "SUN")
    assert (s["locs"]["train_loc"] is not None) == has_val


def test_awa2_original_att_missing_values(shared_data):
    s = read_att_splits(shared_data / "xlsa17" / "AWA2" / "att_splits.mat")
    orig = s["original_att"]
    assert int((orig == -1).sum()) == 4
    assert orig[orig != -1].min() >= 0 and orig.max() <= 100
    assert s["att"].min() < 0  # tiny negatives from the -1 entries
    clamped = load_xlsa17(shared_data / "xlsa17" / "AWA2", image_list=shared_data / "image_lists" / "AWA2.json.gz",
                          check_images=0, negative_att="clamp0").class_attributes
    assert clamped.min() == 0 and int((clamped == 0).sum()) == int((orig <= 0).sum())


# ============================================================================================ word vectors
@pytest.mark.parametrize("ds,A", [("CUB", 312), ("SUN", 102), ("AWA2", 85)])
def test_word_vector_pickles(shared_data, ds, A):
    w = safe_pickle_load(shared_data / "attribute_w2v" / f"{ds}_attribute.pkl")
    assert isinstance(w, np.ndarray) and w.shape == (A, 300)
    npy = np.load(shared_data / "attribute_w2v" / f"{ds}_attribute.npy", allow_pickle=False)
    assert np.array_equal(w, npy)
    norms = np.linalg.norm(w, axis=1)
    if ds == "SUN":
        assert np.all(w[88] == 0) and np.count_nonzero(norms == 0) == 1
    else:
        assert norms.min() > 1.0


# ============================================================================================ synthetic dataset
C, A, PER_CLASS = 6, 4, 3
N = C * PER_CLASS
CLASS_NAMES = [f"{i + 1:03d}.Bird_{chr(65 + i)}" for i in range(C)]
SEEN, UNSEEN = [0, 1, 2, 3], [4, 5]


def _cells(strings) -> np.ndarray:
    """An N x 1 object array: scipy writes it as a cell array, as in the xlsa17 files."""
    arr = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        arr[i, 0] = s
    return arr


def _synthetic_labels() -> np.ndarray:
    # a fixed interleaved image order so that locs are not simply contiguous blocks
    return np.random.default_rng(0).permutation(np.repeat(np.arange(C), PER_CLASS))


def _split_locs(labels: np.ndarray) -> dict[str, np.ndarray]:
    trainval, test_seen, test_unseen = [], [], []
    for c in range(C):
        rows = np.flatnonzero(labels == c)
        if c in SEEN:
            trainval += rows[:2].tolist()
            test_seen += rows[2:].tolist()
        else:
            test_unseen += rows.tolist()
    # 1-based N x 1 uint16, like the files
    return {k: (np.array(v, dtype=np.int64) + 1).astype(np.uint16).reshape(-1, 1)
            for k, v in (("trainval_loc", trainval), ("test_seen_loc", test_seen), ("test_unseen_loc", test_unseen))}


def _server_path(i: int, label: int) -> str:
    return f"/BS/xian/work/data/CUB_200_2011/images/{CLASS_NAMES[label]}/img_{i}.png"


def _make_world(tmp_path: Path, att_edit=None, res_edit=None) -> dict:
    root = tmp_path / "CUB"
    root.mkdir()
    image_root = tmp_path / "images_here" / "CUB_200_2011"
    labels = _synthetic_labels()
    rng = np.random.default_rng(1)
    original = rng.uniform(0, 100, size=(A, C))
    att = {
        "allclasses_names": _cells(CLASS_NAMES),
        "att": original / np.linalg.norm(original, axis=0, keepdims=True),
        "original_att": original,
        **_split_locs(labels),
    }
    if att_edit:
        att_edit(att)
    scipy.io.savemat(str(root / "att_splits.mat"), att)
    features = rng.standard_normal((2048, N)).astype(np.float32)
    files = [_server_path(i, c) for i, c in enumerate(labels)]
    res = {"features": features, "labels": (labels + 1).astype(np.float64).reshape(-1, 1),
           "image_files": _cells(files)}
    if res_edit:
        res_edit(res)
    scipy.io.savemat(str(root / "res101.mat"), res)
    for i, c in enumerate(labels):
        p = image_root / "images" / CLASS_NAMES[c] / f"img_{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6 + i % 3, 5, 3), 10 * i, dtype=np.uint8)).save(p)
    (root / "attributes.txt").write_text("".join(f"{j + 1} has_part::color_{j}\n" for j in range(A)))
    np.save(root / "CUB_attribute.npy", rng.standard_normal((A, 300)))
    (root / "trainclasses1.txt").write_text("\n".join(CLASS_NAMES[c] for c in (0, 1, 2)) + "\n")
    (root / "valclasses1.txt").write_text(CLASS_NAMES[3] + "\n")
    return {"root": root, "image_root": image_root, "labels": labels, "features": features, "att": att,
            "files": files}


def test_synthetic_res101_layout(tmp_path):
    w = _make_world(tmp_path)
    # the files really are in the xlsa17 layout
    raw = scipy.io.loadmat(str(w["root"] / "att_splits.mat"))
    assert raw["trainval_loc"].dtype == np.uint16 and raw["allclasses_names"].shape == (C, 1)
    assert raw["allclasses_names"].dtype == object
    d = load_xlsa17(w["root"], dataset="CUB", image_root=w["image_root"], check_images=N)
    assert d.features.shape == (N, 2048) and d.features.dtype == np.float32
    np.testing.assert_array_equal(d.features, w["features"].T)
    assert d.labels.dtype == np.int64 and np.array_equal(d.labels, w["labels"])
    assert d.class_names == CLASS_NAMES
    assert d.seen_classes.tolist() == SEEN and d.unseen_classes.tolist() == UNSEEN
    assert np.array_equal(d.trainval_loc, raw["trainval_loc"].astype(np.int64).ravel() - 1)
    assert set(d.labels[d.trainval_loc]) == set(SEEN) and set(d.labels[d.test_unseen_loc]) == set(UNSEEN)
    np.testing.assert_allclose(d.class_attributes, w["att"]["original_att"].T, rtol=1e-6)
    assert d.attribute_embeddings.shape == (A, 300) and d.attribute_embeddings.dtype == np.float32
    assert d.attribute_names == [f"has_part::color_{j}" for j in range(A)]
    for f, c in zip(d.image_files, d.labels):
        assert Path(f).is_file()
        assert Path(f).parent == w["image_root"] / "images" / CLASS_NAMES[c]
    # validation split from the class lists next to att_splits.mat
    assert set(d.labels[d.train_loc]) == {0, 1, 2} and set(d.labels[d.val_loc]) == {3}
    assert len(d.train_loc) == 9 and len(d.val_loc) == 3
    v = d.validation_split()
    assert len(v.val_seen) == 3 and set(d.labels[v.val_seen]) == {0, 1, 2}
    # semantics="att" gives the normalised matrix
    d_att = load_xlsa17(w["root"], dataset="CUB", image_root=w["image_root"], semantics="att", features="none")
    np.testing.assert_allclose(np.linalg.norm(d_att.class_attributes, axis=1), 1.0, rtol=1e-5)
    assert d_att.features is None and d_att.semantics == "att"


def test_synthetic_check_report(tmp_path):
    w = _make_world(tmp_path)
    lines = check_xlsa17(w["root"], dataset="CUB", image_root=str(w["image_root"]))
    text = "\n".join(lines)
    assert lines[0] == f"dataset CUB at {w['root']}"
    for pat in (rf"classes {C} \(seen 4, unseen 2\)", rf"attributes {A}\b.*original_att", rf"images {N}\b",
                rf"all {N} image files found", r"trainval 8, test_seen 4, test_unseen 6",
                r"train_loc 9 (images )?\(3 classes\)", r"val_loc 3 (images )?\(1 classes\)",
                rf"features: res101 \(?{N}(, | x )2048", rf"word vectors: \(?{A}(, | x )300"):
        assert re.search(pat, text), f"/{pat}/ not in the report:\n{text}"
    # one image gone -> the check fails and names it
    gone = w["image_root"] / "images" / CLASS_NAMES[w["labels"][-1]] / f"img_{N - 1}.png"
    gone.unlink()
    _raises(DataFormatError, lambda: check_xlsa17(w["root"], dataset="CUB", image_root=str(w["image_root"])),
            str(gone), "not found")


def test_synthetic_image_dataset(tmp_path):
    from torchvision import transforms

    w = _make_world(tmp_path)
    d = load_xlsa17(w["root"], dataset="CUB", image_root=w["image_root"])
    tf = transforms.Compose([transforms.Resize((8, 8)), transforms.ToTensor()])
    ds = ImageListDataset([d.image_files[i] for i in d.test_unseen_loc], d.labels[d.test_unseen_loc], tf)
    assert len(ds) == 6
    for j, i in enumerate(d.test_unseen_loc):
        x, y = ds[j]
        assert isinstance(x, torch.Tensor) and x.shape == (3, 8, 8) and x.dtype == torch.float32
        assert y == int(w["labels"][i]) and y in UNSEEN
        assert torch.allclose(x, torch.full_like(x, (10 * int(i)) / 255.0), atol=1e-6)  # the right file
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 3, 8, 8) and batch[1].dtype == torch.int64
    # without a transform: the PIL image
    img, _ = ImageListDataset(d.image_files[:1], d.labels[:1])[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB"


def test_attribute_names_tab_separated(tmp_path):
    """AwA's predicates.txt is 'id<TAB>name' (../shared/data/names/AWA2_predicates.txt)."""
    w = _make_world(tmp_path)
    (w["root"] / "attributes.txt").write_text("".join(f"{j + 1}\tcolor_{j}\n" for j in range(A)))
    d = load_xlsa17(w["root"], dataset="CUB", image_root=w["image_root"])
    assert d.attribute_names == [f"color_{j}" for j in range(A)]
    (w["root"] / "attributes.txt").write_text("".join(f"plain_{j}\n" for j in range(A)))
    assert load_xlsa17(w["root"], check_images=0).attribute_names == [f"plain_{j}" for j in range(A)]


def test_map_image_path(tmp_path):
    root = tmp_path / "ds"
    # AWA2: the double slash as stored, relative and absolute
    jpeg = tmp_path / "AwA2" / "JPEGImages"
    want = str(jpeg / "antelope" / "antelope_10001.jpg")
    assert map_image_path("Animals_with_Attributes2//JPEGImages/antelope/antelope_10001.jpg", "AWA2", jpeg,
                          root) == want
    assert map_image_path("/BS/xian/work/data/Animals_with_Attributes2//JPEGImages/antelope/antelope_10001.jpg",
                          "awa2", jpeg, root) == want
    # SUN: from images/ (4 and 5 components), relative and absolute
    sun = tmp_path / "SUN"
    assert map_image_path("images/a/abbey/sun_x.jpg", "SUN", sun, root) == str(sun / "images/a/abbey/sun_x.jpg")
    assert (map_image_path("/BS/Deep_Fragments/work/MSc/data/SUN/images/b/bedroom/indoor/sun_y.jpg", "SUN", sun,
                           root) == str(sun / "images/b/bedroom/indoor/sun_y.jpg"))
    # CUB: after CUB_200_2011/, also when the server path has the folder twice (archive inside a same-named folder)
    cub = tmp_path / "CUB_200_2011"
    assert map_image_path("CUB_200_2011/images/001.A/a.jpg", "CUB", cub, root) == str(cub / "images/001.A/a.jpg")
    assert (map_image_path("/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images/001.A/a.jpg", "CUB", cub,
                           root) == str(cub / "images/001.A/a.jpg"))
    # no image root: relative to the dataset folder, absolute as it is (normalised)
    assert map_image_path("images/a/x.jpg", "SUN", None, root) == str(root / "images/a/x.jpg")
    assert map_image_path("/data//SUN/images/a/x.jpg", "SUN", None, root) == "/data/SUN/images/a/x.jpg"
    # a dataset without an anchor joins a relative path to the image root
    assert map_image_path("JPEGImages//x.jpg", "APY", tmp_path, root) == str(tmp_path / "JPEGImages/x.jpg")
    # a path without the anchor is an error that names the path and the anchor
    with pytest.raises(DataFormatError, match="JPEGImages/") as ei:
        map_image_path("/data/animals/antelope/x.jpg", "AWA2", jpeg, root)
    assert "/data/animals/antelope/x.jpg" in str(ei.value)
    with pytest.raises(DataFormatError, match="'images/'"):
        map_image_path("/data/SUN/myimages/a/x.jpg", "SUN", sun, root)


# ============================================================================================ bad inputs
def _raises(exc_type, fn, *parts: str, patterns: tuple[str, ...] = ()):
    """``fn`` raises ``exc_type`` whose message contains every literal in ``parts`` and matches every regex in
    ``patterns`` (the file, the field, the numbers; not the exact wording)."""
    with pytest.raises(exc_type) as ei:
        fn()
    msg = str(ei.value)
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    for p in patterns:
        assert re.search(p, msg), f"/{p}/ does not match {msg!r}"
    return msg


def test_bad_missing_field(tmp_path):
    def rename(att):
        att["trainval_locs"] = att.pop("trainval_loc")

    w = _make_world(tmp_path, att_edit=rename)
    msg = _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0),
                  str(w["root"] / "att_splits.mat"), "field 'trainval_loc' is missing")
    assert "trainval_locs" in msg  # what was found instead


def test_bad_word_vector_dimension(tmp_path):
    w = _make_world(tmp_path)
    bad = tmp_path / "CUB_attribute_bad.npy"
    np.save(bad, np.zeros((A + 1, 300)))
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0, w2v=bad),
            str(bad), f"({A + 1}, 300)", patterns=(rf"expected \(?{A}\b",))
    # the same with a pickle (the TransZero layout) and a 1-D array
    bad_pkl = tmp_path / "CUB_attribute.pkl"
    bad_pkl.write_bytes(pickle.dumps(np.zeros(300)))
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0, w2v=bad_pkl),
            str(bad_pkl), "(300,)", patterns=(r"\(A, W\)|expected",))
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0, w2v=tmp_path / "nope.npy"),
            str(tmp_path / "nope.npy"), "not found")


def test_bad_loc_out_of_range(tmp_path):
    def too_far(att):
        att["test_unseen_loc"] = att["test_unseen_loc"].copy()
        att["test_unseen_loc"][-1, 0] = N + 1  # 1-based: one past the end

    w = _make_world(tmp_path, att_edit=too_far)
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0),
            str(w["root"] / "att_splits.mat"), "field 'test_unseen_loc'", "res101.mat",
            patterns=(rf"\b{N + 1}\b", rf"\b{N}\b"))

    def zero(att):
        att["trainval_loc"] = att["trainval_loc"].copy()
        att["trainval_loc"][0, 0] = 0  # 0 is not a valid 1-based index

    (tmp_path / "b").mkdir()
    w = _make_world(tmp_path / "b", att_edit=zero)
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0),
            str(w["root"] / "att_splits.mat"), "field 'trainval_loc'", patterns=(r"\b0\b",))


def test_bad_overlapping_splits(tmp_path):
    def overlap(att):
        att["test_seen_loc"] = np.vstack([att["test_seen_loc"], att["trainval_loc"][:1]])

    w = _make_world(tmp_path, att_edit=overlap)
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0),
            str(w["root"] / "att_splits.mat"), "'trainval_loc' and 'test_seen_loc'",
            patterns=(r"(overlap|share)\D*1 (shared )?images",))


def test_bad_pickle_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    w = _make_world(tmp_path)
    evil = w["root"] / "CUB_attribute.pkl"
    evil.write_bytes(pickle.dumps(Evil()))
    (w["root"] / "CUB_attribute.npy").unlink()  # so the reader finds the pickle by itself
    msg = _raises(UnsafeFileError, lambda: load_xlsa17(w["root"], check_images=0), str(evil), "system")
    assert "refusing to load" in msg
    _raises(UnsafeFileError, lambda: safe_pickle_load(evil), str(evil))
    assert not marker.exists()
    # a corrupt pickle is a format error naming the file
    evil.write_bytes(b"\x80\x04not a pickle")
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0), str(evil), "not a readable pickle")


def test_bad_nan_features(tmp_path):
    def nan(res):
        res["features"] = res["features"].copy()
        res["features"][7, 5] = np.nan  # dimension 7 of image 5

    w = _make_world(tmp_path, res_edit=nan)
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0),
            str(w["root"] / "res101.mat"), "field 'features'", "NaN", patterns=(r"\b5\D+7\b",))


def test_bad_features_shape(tmp_path):
    def shape(res):
        res["features"] = res["features"][:, :-1]

    w = _make_world(tmp_path, res_edit=shape)
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0),
            str(w["root"] / "res101.mat"), "field 'features'", "(2048, 17)", patterns=(rf"D x {N}\b",))


def test_bad_missing_image(tmp_path):
    w = _make_world(tmp_path)
    first = w["image_root"] / "images" / CLASS_NAMES[w["labels"][0]] / "img_0.png"
    first.unlink()
    msg = _raises(DataFormatError, lambda: load_xlsa17(w["root"], dataset="CUB", image_root=w["image_root"],
                                                       check_images=4),
                  str(first), str(w["root"] / "res101.mat"), w["files"][0], "image_root", "not found")
    assert "image 0" in msg
    # check_images=0 loads anyway (the images are only opened later)
    d = load_xlsa17(w["root"], dataset="CUB", image_root=w["image_root"], check_images=0)
    assert d.image_files[0] == str(first)
    # the wrong image root fails on the first image too
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], dataset="CUB", image_root=tmp_path, check_images=1),
            str(tmp_path / "images"))


def test_bad_image_dataset_missing_file(tmp_path):
    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(good)
    missing = tmp_path / "gone" / "x.jpg"
    ds = ImageListDataset([str(good), str(missing)], np.array([0, 1]))
    assert ds[0][1] == 0
    _raises(DataFormatError, lambda: ds[1], "not found", str(missing))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    _raises(DataFormatError, lambda: ImageListDataset([str(broken)], np.array([0]))[0],
            "unreadable", str(broken))


def test_bad_unknown_class_in_class_list(tmp_path):
    w = _make_world(tmp_path)
    lst = w["root"] / "trainclasses1.txt"
    lst.write_text(f"{CLASS_NAMES[0]}\n999.Not_A_Bird\n")
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0),
            str(lst), "999.Not_A_Bird", "allclasses_names")


def test_bad_labels_and_missing_files(tmp_path):
    def label_out_of_range(res):
        res["labels"] = res["labels"].copy()
        res["labels"][3, 0] = C + 1

    w = _make_world(tmp_path, res_edit=label_out_of_range)
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0),
            str(w["root"] / "res101.mat"), "field 'labels'", "image 3", patterns=(rf"\b{C}\b",))
    (w["root"] / "res101.mat").unlink()
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0), str(w["root"]), "res101.mat",
            "image_list")
    _raises(DataFormatError, lambda: load_xlsa17(tmp_path / "nowhere"), str(tmp_path / "nowhere"), "not found")
    (w["root"] / "att_splits.mat").write_bytes(b"garbage")
    _raises(DataFormatError, lambda: load_xlsa17(w["root"], check_images=0),
            str(w["root"] / "att_splits.mat"), "not a readable MATLAB file")
