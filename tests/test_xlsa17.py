"""The xlsa17 reader (``unseen.attribute.data``).

* real files from ../shared/data (the ``shared_data`` fixture): att_splits.mat of all five datasets, the image
  lists of CUB / SUN / AWA2 and the attribute word vectors (counts, class orders, validation splits);
* a synthetic dataset in the real layout (att_splits.mat + res101.mat + images, built by ``_make_world``): the
  res101 round trip, the check report, the torch datasets;
* stored image path mapping;
* bad inputs, which must fail with a message naming the file and the field (never a silent fix)."""

from __future__ import annotations

import functools
import gzip
import json
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
    FeatureDataset,
    ImageListDataset,
    XLSA17Data,
    check_xlsa17,
    load_xlsa17,
    map_image_path,
    read_att_splits,
)
from unseen.io import DataFormatError, UnsafeFileError, safe_pickle_load

SPLITS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")
CLASS_LISTS = ("trainclasses1.txt", "valclasses1.txt")


def _raises(exc_type, fn, *parts: str, patterns: tuple[str, ...] = ()) -> str:
    """``fn`` raises ``exc_type`` whose message contains every literal in ``parts`` and matches every regex in
    ``patterns`` (the file, the field, the numbers; not the exact wording). Returns the message."""
    with pytest.raises(exc_type) as ei:
        fn()
    msg = str(ei.value)
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    for p in patterns:
        assert re.search(p, msg), f"/{p}/ does not match {msg!r}"
    return msg


# ============================================================================================ real files
REAL = {
    # classes (all, seen, unseen), attributes, images, (trainval, test_seen, test_unseen) sizes,
    # (train_loc, val_loc) sizes and their class counts
    "CUB": dict(C=(200, 150, 50), A=312, n=11788, splits=(7057, 1764, 2967), val=(5875, 2946, 100, 50)),
    "SUN": dict(C=(717, 645, 72), A=102, n=14340, splits=(10320, 2580, 1440), val=(11600, 1300, 580, 65)),
    "AWA2": dict(C=(50, 40, 10), A=85, n=37322, splits=(23527, 5882, 7913), val=(20218, 9191, 27, 13)),
}


@functools.cache
def _load_real(shared: str, ds: str) -> XLSA17Data:
    s = Path(shared)
    return load_xlsa17(
        s / "xlsa17" / ds,
        image_list=s / "image_lists" / f"{ds}.json.gz",
        w2v=s / "attribute_w2v" / f"{ds}_attribute.pkl",
        check_images=0,
    )


def _real(shared_data: Path, ds: str) -> XLSA17Data:
    """The real dataset with its image list and word vectors (pickle), loaded once per session."""
    return _load_real(str(shared_data), ds)


@pytest.mark.parametrize("ds", ["CUB", "SUN", "AWA2"])
def test_real_counts_and_splits(shared_data, ds):
    d = _real(shared_data, ds)
    e = REAL[ds]
    C, A, n = e["C"][0], e["A"], e["n"]
    assert d.dataset == ds
    assert (d.n_classes, len(d.seen_classes), len(d.unseen_classes)) == e["C"]
    assert d.n_attributes == A
    assert d.n_images == n == len(d.labels) == len(d.image_files)
    assert (len(d.trainval_loc), len(d.test_seen_loc), len(d.test_unseen_loc)) == e["splits"]
    for arr in (
        d.trainval_loc,
        d.test_seen_loc,
        d.test_unseen_loc,
        d.train_loc,
        d.val_loc,
        d.labels,
        d.seen_classes,
        d.unseen_classes,
    ):
        assert arr.dtype == np.int64
    assert d.att.shape == d.original_att.shape == d.class_attributes.shape == (C, A)
    assert d.att.dtype == d.original_att.dtype == d.class_attributes.dtype == np.float32
    np.testing.assert_allclose(
        np.linalg.norm(d.att, axis=1), 1.0, atol=1e-4
    )  # columns of the file, normalised
    np.testing.assert_array_equal(d.class_attributes, d.original_att)  # default semantics
    assert d.semantics == "original_att"
    assert d.features is None
    assert d.attribute_embeddings.shape == (A, 300) and d.attribute_embeddings.dtype == np.float32
    assert np.intersect1d(d.seen_classes, d.unseen_classes).size == 0
    assert np.array_equal(np.union1d(d.seen_classes, d.unseen_classes), np.arange(C))
    # test_seen has exactly the seen classes
    assert np.array_equal(np.unique(d.labels[d.test_seen_loc]), d.seen_classes)
    # validation class split (CUB derived from the class lists, SUN / AWA2 from the file)
    n_tr, n_val, c_tr, c_val = e["val"]
    assert (len(d.train_loc), len(d.val_loc)) == (n_tr, n_val)
    tr_cls, val_cls = np.unique(d.labels[d.train_loc]), np.unique(d.labels[d.val_loc])
    assert (len(tr_cls), len(val_cls)) == (c_tr, c_val)
    assert np.intersect1d(tr_cls, val_cls).size == 0
    # train_loc + val_loc = trainval_loc + test_seen_loc as multisets: the same images, disjoint, none twice
    assert np.intersect1d(d.train_loc, d.val_loc).size == 0
    assert sorted(np.concatenate([d.train_loc, d.val_loc]).tolist()) == sorted(
        np.concatenate([d.trainval_loc, d.test_seen_loc]).tolist()
    )
    assert np.array_equal(np.union1d(d.train_loc, d.val_loc), np.union1d(d.trainval_loc, d.test_seen_loc))
    xlsa = shared_data / "xlsa17" / ds
    if ds == "CUB":
        assert d.val_split_source.endswith("trainclasses1.txt, " + str(xlsa / "valclasses1.txt"))
    else:
        assert d.val_split_source.endswith("att_splits.mat")


@pytest.mark.parametrize("ds", ["CUB", "SUN", "AWA2"])
def test_real_locs_int64_zero_based(shared_data, ds):
    d = _real(shared_data, ds)
    raw = scipy.io.loadmat(str(shared_data / "xlsa17" / ds / "att_splits.mat"))
    for k in (*SPLITS, "train_loc", "val_loc"):
        loc = getattr(d, k)
        assert loc.dtype == np.int64 and loc.ndim == 1
        assert loc.min() >= 0 and loc.max() < d.n_images
        if k in raw:
            assert raw[k].dtype == np.uint16  # the gotcha the reader must undo
            assert np.array_equal(loc, raw[k].astype(np.int64).ravel() - 1)
    assert d.labels.dtype == np.int64 and d.labels.min() == 0 and d.labels.max() == d.n_classes - 1


@pytest.mark.parametrize("ds", ["CUB", "SUN", "AWA2"])
def test_real_validation_split(shared_data, ds):
    d = _real(shared_data, ds)
    n_tr, n_val, c_tr, c_val = REAL[ds]["val"]
    train_classes = np.unique(d.labels[d.train_loc])
    for seed, other_seed in ((0, 1), (3, 4)):
        v = d.validation_split(holdout=0.2, seed=seed)
        assert v.train.dtype == np.int64 and v.val_seen.dtype == np.int64
        assert np.intersect1d(v.train, v.val_seen).size == 0
        assert len(v.train) + len(v.val_seen) == len(d.train_loc) == n_tr
        assert np.array_equal(np.union1d(v.train, v.val_seen), np.sort(d.train_loc))
        assert len(v.val_unseen) == n_val and np.array_equal(v.val_unseen, np.sort(d.val_loc))
        assert (len(v.seen_classes), len(v.unseen_classes)) == (c_tr, c_val)
        assert np.intersect1d(v.seen_classes, v.unseen_classes).size == 0
        # every train class keeps images on both sides; the hold-out is about 20 %
        assert np.array_equal(v.seen_classes, train_classes)
        assert np.array_equal(np.unique(d.labels[v.val_seen]), train_classes)
        assert np.array_equal(np.unique(d.labels[v.train]), train_classes)
        assert abs(len(v.val_seen) / n_tr - 0.2) < 0.03
        again = d.validation_split(holdout=0.2, seed=seed)
        assert np.array_equal(again.val_seen, v.val_seen) and np.array_equal(again.train, v.train)
        assert not np.array_equal(d.validation_split(holdout=0.2, seed=other_seed).val_seen, v.val_seen)


def test_real_class_orders(shared_data):
    cub, awa2, sun = _real(shared_data, "CUB"), _real(shared_data, "AWA2"), _real(shared_data, "SUN")
    assert cub.class_names[0] == "002.Laysan_Albatross"
    assert cub.class_names[150] == "001.Black_footed_Albatross"
    assert int(cub.unseen_classes[0]) == 6 and cub.class_names[6] == "012.Yellow_headed_Blackbird"
    # CUB labels agree with the class folder in every path
    folders = [Path(f).parent.name for f in cub.image_files]
    assert all(folders[i] == cub.class_names[c] for i, c in enumerate(cub.labels))
    assert awa2.unseen_classes.tolist() == [6, 8, 22, 23, 29, 30, 33, 40, 46, 49]
    assert [awa2.class_names[i] for i in (6, 8, 49)] == ["horse", "blue+whale", "dolphin"]
    assert sun.class_names[:2] == ["abbey", "access_road"]


def test_real_awa2_missing_attribute_values(shared_data):
    s = read_att_splits(shared_data / "xlsa17" / "AWA2" / "att_splits.mat")
    orig = s["original_att"]
    assert int((orig == -1).sum()) == 4
    assert orig[orig != -1].min() >= 0 and orig.max() <= 100
    assert s["att"].min() < 0  # tiny negatives from the -1 entries
    awa2 = _real(shared_data, "AWA2")
    assert int((awa2.original_att == -1).sum()) == 4 and awa2.att.min() < 0
    image_list = shared_data / "image_lists" / "AWA2.json.gz"
    clamped = load_xlsa17(
        shared_data / "xlsa17" / "AWA2", image_list=image_list, check_images=0, negative_att="clamp0"
    ).class_attributes
    assert clamped.min() == 0 and int((clamped == 0).sum()) == int((orig <= 0).sum())
    clamped_att = load_xlsa17(
        shared_data / "xlsa17" / "AWA2",
        image_list=image_list,
        check_images=0,
        negative_att="clamp0",
        semantics="att",
    )
    assert clamped_att.class_attributes.min() == 0.0 and clamped_att.semantics == "att"


@pytest.mark.parametrize(
    "ds,shape,counts",
    [
        ("AWA1", (50, 85), (19832, 4958, 5685)),
        ("APY", (32, 64), (5932, 1483, 7924)),
        ("AWA2", (50, 85), (23527, 5882, 7913)),
        ("CUB", (200, 312), (7057, 1764, 2967)),
        ("SUN", (717, 102), (10320, 2580, 1440)),
    ],
)
def test_real_read_att_splits(shared_data, ds, shape, counts):
    root = shared_data / "xlsa17" / ds
    s = read_att_splits(root / "att_splits.mat")
    assert len(s["class_names"]) == shape[0]
    assert s["att"].shape == s["original_att"].shape == shape
    assert s["att"].dtype == np.float32
    locs = s["locs"]
    assert tuple(len(locs[k]) for k in SPLITS) == counts
    for v in locs.values():
        if v is not None:
            assert v.dtype == np.int64 and v.min() >= 0
    # att: each class (a column in the file) has unit norm
    np.testing.assert_allclose(np.linalg.norm(s["att"], axis=1), 1.0, atol=1e-5)
    # train_loc/val_loc are in the file for AWA1, AWA2 and SUN only, and cover trainval + test_seen
    assert (locs["train_loc"] is not None) == (ds in ("AWA1", "AWA2", "SUN"))
    assert (locs["train_loc"] is None) == (locs["val_loc"] is None)
    if locs["train_loc"] is not None:
        assert len(locs["train_loc"]) + len(locs["val_loc"]) == counts[0] + counts[1]
    # no image list in the xlsa17 folder (AWA1 / APY have none at all): the reader says what it looked for
    with pytest.raises(DataFormatError, match="res101.mat.*image_list.json"):
        load_xlsa17(root, check_images=0)


@pytest.mark.parametrize("ds", ["SUN", "CUB"])
def test_real_val_split_from_class_lists(shared_data, tmp_path, ds):
    """att_splits.mat without train_loc/val_loc: the split comes from trainclasses1.txt / valclasses1.txt."""
    src = shared_data / "xlsa17" / ds
    image_list = shared_data / "image_lists" / f"{ds}.json.gz"
    raw = scipy.io.loadmat(str(src / "att_splits.mat"))
    root = tmp_path / ds
    root.mkdir()
    stripped = {k: v for k, v in raw.items() if not k.startswith("__") and k not in ("train_loc", "val_loc")}
    scipy.io.savemat(str(root / "att_splits.mat"), stripped)
    assert "train_loc" not in scipy.io.loadmat(str(root / "att_splits.mat"))
    # without the class lists there is no validation split, and asking for one names the missing files
    d = load_xlsa17(root, image_list=image_list, check_images=0)
    assert d.train_loc is None and d.val_loc is None
    with pytest.raises(DataFormatError, match="train_loc/val_loc"):
        d.validation_split()
    with pytest.raises(DataFormatError, match="trainclasses1.txt.*valclasses1.txt"):
        d.validation_split()
    # the class lists from another folder (class_lists_dir), then beside att_splits.mat
    from_dir = load_xlsa17(root, image_list=image_list, class_lists_dir=src, check_images=0)
    for f in CLASS_LISTS:
        shutil.copy(src / f, root / f)
    beside = load_xlsa17(root, image_list=image_list, check_images=0)
    official = _real(shared_data, ds)
    for got in (from_dir, beside):
        assert (len(got.train_loc), len(got.val_loc)) == REAL[ds]["val"][:2]
        np.testing.assert_array_equal(got.train_loc, np.sort(official.train_loc))
        np.testing.assert_array_equal(got.val_loc, np.sort(official.val_loc))
        assert np.array_equal(
            np.unique(got.labels[got.val_loc]), np.unique(official.labels[official.val_loc])
        )
    if ds == "SUN":
        # the class-list rule reproduces the official SUN train_loc / val_loc of the file exactly
        np.testing.assert_array_equal(
            beside.train_loc, np.sort(raw["train_loc"].astype(np.int64).ravel() - 1)
        )
        np.testing.assert_array_equal(beside.val_loc, np.sort(raw["val_loc"].astype(np.int64).ravel() - 1))
        # an unknown class name in a class list is an error naming the file and the name
        lists = tmp_path / "lists"
        lists.mkdir()
        shutil.copy(src / "valclasses1.txt", lists)
        (lists / "trainclasses1.txt").write_text("abbey\nnot_a_scene\n")
        with pytest.raises(DataFormatError, match=r"trainclasses1.txt.*not_a_scene"):
            load_xlsa17(root, image_list=image_list, class_lists_dir=lists, check_images=0)


def test_real_json_locs_must_agree(shared_data, tmp_path):
    obj = json.loads(gzip.decompress((shared_data / "image_lists" / "CUB.json.gz").read_bytes()))
    obj["test_seen_loc"] = obj["test_seen_loc"][1:]
    bad = tmp_path / "list.json"
    bad.write_text(json.dumps(obj))
    with pytest.raises(DataFormatError, match=r"list.json: field 'test_seen_loc' disagrees"):
        load_xlsa17(shared_data / "xlsa17" / "CUB", image_list=bad, check_images=0)


@pytest.mark.parametrize("ds,A", [("CUB", 312), ("SUN", 102), ("AWA2", 85)])
def test_real_word_vector_pickles(shared_data, ds, A):
    w2v = shared_data / "attribute_w2v"
    w = safe_pickle_load(w2v / f"{ds}_attribute.pkl")
    assert isinstance(w, np.ndarray) and w.shape == (A, 300)
    npy = np.load(w2v / f"{ds}_attribute.npy", allow_pickle=False)
    np.testing.assert_array_equal(w, npy)
    norms = np.linalg.norm(w, axis=1)
    if ds == "SUN":
        assert np.all(w[88] == 0) and np.count_nonzero(norms == 0) == 1
    else:
        assert norms.min() > 1.0
    # load_xlsa17 gives the same vectors from the pickle (the cached load) and from the .npy
    np.testing.assert_array_equal(_real(shared_data, ds).attribute_embeddings, npy.astype(np.float32))
    if ds == "AWA2":
        d = load_xlsa17(
            shared_data / "xlsa17" / ds,
            image_list=shared_data / "image_lists" / f"{ds}.json.gz",
            w2v=w2v / f"{ds}_attribute.npy",
            check_images=0,
        )
        np.testing.assert_array_equal(d.attribute_embeddings, _real(shared_data, ds).attribute_embeddings)


# ============================================================================================ image paths
ROOT = Path("/data/xlsa17/DS")  # the dataset folder (map_image_path does not touch the file system)
JPEG, SUN_ROOT, CUB_ROOT = Path("/u/AwA2/JPEGImages"), Path("/u/SUN"), Path("/u/CUB_200_2011")


@pytest.mark.parametrize(
    "stored,dataset,image_root,want",
    [
        # CUB: after CUB_200_2011/, also when the server path has the folder twice (archive in a same-named folder)
        (
            "/BS/xian/work/MSc/CUB_200_2011/images/001.X/a.jpg",
            "CUB",
            "/u/CUB_200_2011",
            "/u/CUB_200_2011/images/001.X/a.jpg",
        ),
        ("CUB_200_2011/images/001.A/a.jpg", "CUB", CUB_ROOT, str(CUB_ROOT / "images/001.A/a.jpg")),
        (
            "/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images/001.A/a.jpg",
            "CUB",
            CUB_ROOT,
            str(CUB_ROOT / "images/001.A/a.jpg"),
        ),
        # AWA2: after JPEGImages/, with the double slash as stored, relative and absolute
        (
            "Animals_with_Attributes2//JPEGImages/antelope/a.jpg",
            "AWA2",
            "/u/JPEGImages",
            "/u/JPEGImages/antelope/a.jpg",
        ),
        (
            "Animals_with_Attributes2//JPEGImages/antelope/antelope_10001.jpg",
            "AWA2",
            JPEG,
            str(JPEG / "antelope/antelope_10001.jpg"),
        ),
        (
            "/BS/xian/work/data/Animals_with_Attributes2//JPEGImages/antelope/antelope_10001.jpg",
            "awa2",
            JPEG,
            str(JPEG / "antelope/antelope_10001.jpg"),
        ),
        # SUN: from images/ on (4 and 5 components), relative and absolute, any case of the dataset name
        ("/x/SUN/images/a/abbey/s.jpg", "SUN", "/u/SUN", "/u/SUN/images/a/abbey/s.jpg"),
        ("images/a/abbey/s.jpg", "sun", "/u/SUN", "/u/SUN/images/a/abbey/s.jpg"),
        ("images/a/abbey/sun_x.jpg", "SUN", SUN_ROOT, str(SUN_ROOT / "images/a/abbey/sun_x.jpg")),
        (
            "/BS/Deep_Fragments/work/MSc/data/SUN/images/b/bedroom/indoor/sun_y.jpg",
            "SUN",
            SUN_ROOT,
            str(SUN_ROOT / "images/b/bedroom/indoor/sun_y.jpg"),
        ),
        (
            "/x/SUN/images/b/bar/images/s.jpg",
            "SUN",
            "/u",
            "/u/images/b/bar/images/s.jpg",
        ),  # a later images/ folder
        # no image root: relative to the dataset folder, absolute as it is (normalised)
        ("imgs/c0/0.png", "SHAPES", None, str(ROOT / "imgs/c0/0.png")),
        ("images/a/x.jpg", "SUN", None, str(ROOT / "images/a/x.jpg")),
        ("/abs/a.jpg", "CUB", None, "/abs/a.jpg"),
        ("/data//SUN/images/a/x.jpg", "SUN", None, "/data/SUN/images/a/x.jpg"),
        # a dataset without an anchor joins a relative path to the image root
        ("imgs//c0/0.png", "SHAPES", "/u", "/u/imgs/c0/0.png"),
        ("JPEGImages//x.jpg", "APY", Path("/u/APY"), "/u/APY/JPEGImages/x.jpg"),
    ],
)
def test_map_image_path(stored, dataset, image_root, want):
    assert map_image_path(stored, dataset, image_root, ROOT) == want


@pytest.mark.parametrize(
    "stored,dataset,image_root,anchor",
    [
        ("/x/birds/a.jpg", "CUB", "/u", "CUB_200_2011"),
        ("/data/animals/antelope/x.jpg", "AWA2", JPEG, "JPEGImages/"),
        ("/data/SUN/myimages/a/x.jpg", "SUN", SUN_ROOT, "'images/'"),
    ],
)
def test_map_image_path_missing_anchor(stored, dataset, image_root, anchor):
    """A path without the dataset's anchor folder is an error naming the path and the anchor."""
    _raises(DataFormatError, lambda: map_image_path(stored, dataset, image_root, ROOT), anchor, stored)


# ============================================================================================ synthetic dataset
C, A, PER = 6, 4, 4
N = C * PER
CLASS_NAMES = [f"{i + 1:03d}.Bird_{chr(65 + i)}" for i in range(C)]
SEEN, UNSEEN = [0, 1, 2, 4], [3, 5]  # the unseen class ids are not simply the last ones
TRAIN_CLASSES, VAL_CLASSES = [0, 1, 4], [2]  # the validation class split of the seen classes
# a fixed interleaved image order, so that locs are not contiguous blocks
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(C), PER))
SERVER_PREFIX = {
    "CUB": "/BS/xian/work/data/MSc//CUB_200_2011/",
    "AWA2": "/BS/xian/AwA2/Animals_with_Attributes2//JPEGImages/",
}
ANCHOR_DIR = {"CUB": "CUB_200_2011", "AWA2": "JPEGImages"}


def _cells(strings) -> np.ndarray:
    """An N x 1 object array: scipy writes it as a cell array, as in the xlsa17 files."""
    arr = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        arr[i, 0] = s
    return arr


def _u16(rows) -> np.ndarray:
    """0-based rows -> 1-based N x 1 uint16, like the files."""
    return (np.asarray(rows, dtype=np.int64) + 1).astype(np.uint16).reshape(-1, 1)


def _pixel(i: int) -> int:
    return 10 * i  # image i is a constant colour, so a test can tell which file it got


def _make_world(
    tmp_path: Path,
    *,
    dataset: str = "CUB",
    val: str | None = "mat",
    extras: bool = False,
    images: bool = True,
    att_edit=None,
    res_edit=None,
) -> dict:
    """A tiny xlsa17 folder ``tmp_path/<dataset>`` in the real layout: att_splits.mat (uint16 1-based locs, an
    allclasses_names cell array, a -1 in original_att as in AWA2), res101.mat (2048 x N features, 1-based labels,
    absolute server paths with the double slash) and, with ``images``, the images as PNGs under an image root
    named after the dataset's anchor folder.

    ``val``: "mat" (train_loc/val_loc in att_splits.mat), "lists" (trainclasses1.txt / valclasses1.txt beside
    it) or None. ``extras``: attributes.txt and ``<dataset>_attribute.npy`` (A x 300) beside it.
    ``att_edit`` / ``res_edit`` change the .mat dicts before they are written."""
    root = tmp_path / dataset
    root.mkdir()
    image_root = tmp_path / "user" / ANCHOR_DIR[dataset]
    rng = np.random.default_rng(1)
    rows = {c: np.flatnonzero(LABELS == c) for c in range(C)}
    locs = {
        "trainval_loc": np.sort(np.concatenate([rows[c][:-1] for c in SEEN])),
        "test_seen_loc": np.sort([rows[c][-1] for c in SEEN]),
        "test_unseen_loc": np.sort(np.concatenate([rows[c] for c in UNSEEN])),
        "train_loc": np.sort(np.concatenate([rows[c] for c in TRAIN_CLASSES])),
        "val_loc": np.sort(np.concatenate([rows[c] for c in VAL_CLASSES])),
    }
    original = rng.uniform(0, 100, size=(A, C))
    original[0, 1] = -1.0  # a missing value (class 1, attribute 0)
    att = {
        "allclasses_names": _cells(CLASS_NAMES),
        "att": original / np.linalg.norm(original, axis=0),
        "original_att": original,
        **{k: _u16(locs[k]) for k in SPLITS},
    }
    if val == "mat":
        att.update(train_loc=_u16(locs["train_loc"]), val_loc=_u16(locs["val_loc"]))
    if att_edit:
        att_edit(att)
    scipy.io.savemat(str(root / "att_splits.mat"), att)
    rels = [
        (f"images/{CLASS_NAMES[c]}/" if dataset == "CUB" else f"{CLASS_NAMES[c]}/") + f"img_{i}.png"
        for i, c in enumerate(LABELS)
    ]
    files = [SERVER_PREFIX[dataset] + r for r in rels]
    features = rng.standard_normal((2048, N)).astype(np.float32)
    res = {
        "features": features,
        "labels": (LABELS + 1).astype(np.float64).reshape(-1, 1),
        "image_files": _cells(files),
    }
    if res_edit:
        res_edit(res)
    scipy.io.savemat(str(root / "res101.mat"), res)
    if images:
        for i, r in enumerate(rels):
            p = image_root / r
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((6 + i % 3, 5, 3), _pixel(i), dtype=np.uint8)).save(p)
    if val == "lists":
        _write_class_lists(root)
    if extras:
        (root / "attributes.txt").write_text("".join(f"{j + 1} has_part::color_{j}\n" for j in range(A)))
        np.save(root / f"{dataset}_attribute.npy", rng.standard_normal((A, 300)))
    return {
        "root": root,
        "att_path": root / "att_splits.mat",
        "res_path": root / "res101.mat",
        "image_root": image_root,
        "rels": rels,
        "files": files,
        "features": features,
        "original": original,
        "locs": locs,
    }


def _write_class_lists(folder: Path) -> None:
    (folder / "trainclasses1.txt").write_text("\n".join(CLASS_NAMES[c] for c in TRAIN_CLASSES) + "\n")
    (folder / "valclasses1.txt").write_text("\n".join(CLASS_NAMES[c] for c in VAL_CLASSES) + "\n")


@pytest.mark.parametrize("dataset", ["CUB", "AWA2"])
def test_synthetic_res101_roundtrip(tmp_path, dataset):
    w = _make_world(tmp_path, dataset=dataset)
    # the files really are in the xlsa17 layout
    raw = scipy.io.loadmat(str(w["att_path"]))
    assert raw["trainval_loc"].dtype == np.uint16 and raw["allclasses_names"].shape == (C, 1)
    assert raw["allclasses_names"].dtype == object
    d = load_xlsa17(w["root"], image_root=w["image_root"], check_images=-1)
    assert d.dataset == dataset and d.class_names == CLASS_NAMES and d.n_images == N
    assert d.features.shape == (N, 2048) and d.features.dtype == np.float32
    np.testing.assert_array_equal(d.features, w["features"].T)
    assert d.labels.dtype == np.int64
    np.testing.assert_array_equal(d.labels, LABELS)
    assert d.seen_classes.tolist() == SEEN and d.unseen_classes.tolist() == UNSEEN
    # 1-based uint16 -> 0-based int64, exactly once
    for k in (*SPLITS, "train_loc", "val_loc"):
        loc = getattr(d, k)
        assert loc.dtype == np.int64
        np.testing.assert_array_equal(loc, raw[k].astype(np.int64).ravel() - 1)
        np.testing.assert_array_equal(loc, w["locs"][k])
    np.testing.assert_array_equal(np.sort(np.concatenate([getattr(d, k) for k in SPLITS])), np.arange(N))
    assert set(d.labels[d.trainval_loc]) == set(SEEN) and set(d.labels[d.test_unseen_loc]) == set(UNSEEN)
    assert d.val_split_source == str(w["att_path"])
    # image paths: cut at the anchor, joined to image_root, the files exist
    assert d.image_files == [str(w["image_root"] / r) for r in w["rels"]]
    assert all(f.startswith(str(w["image_root"]) + "/") and Path(f).is_file() for f in d.image_files)
    if dataset == "CUB":
        assert all(
            Path(f).parent == w["image_root"] / "images" / CLASS_NAMES[c]
            for f, c in zip(d.image_files, d.labels)
        )
    # class attributes: original_att (with its -1) by default, clamp0 on request
    np.testing.assert_allclose(d.class_attributes, w["original"].T, rtol=1e-6)
    assert d.original_att[1, 0] == -1.0 and d.class_attributes[1, 0] == -1.0
    assert (
        load_xlsa17(w["root"], image_root=w["image_root"], negative_att="clamp0").class_attributes.min() >= 0
    )
    assert load_xlsa17(w["root"], image_root=w["image_root"], features="none").features is None
    # semantics="att" gives the normalised matrix
    d_att = load_xlsa17(w["root"], image_root=w["image_root"], semantics="att", features="none")
    np.testing.assert_allclose(np.linalg.norm(d_att.class_attributes, axis=1), 1.0, rtol=1e-5)
    assert d_att.features is None and d_att.semantics == "att"
    # validation split on 3 train classes x 4 images: one held out per class
    vs = d.validation_split()
    assert len(vs.val_seen) == 3 and len(vs.train) == 9
    assert vs.seen_classes.tolist() == TRAIN_CLASSES and vs.unseen_classes.tolist() == VAL_CLASSES
    assert set(d.labels[vs.val_seen]) == set(TRAIN_CLASSES)


def test_synthetic_class_lists(tmp_path):
    w = _make_world(tmp_path, val=None)
    root = w["root"]
    d = load_xlsa17(root, image_root=w["image_root"])
    assert d.train_loc is None and d.val_loc is None and "trainclasses1.txt" in d.val_split_problem
    with pytest.raises(DataFormatError, match=r"trainclasses1.txt.*valclasses1.txt"):
        d.validation_split()
    assert "WARNING no validation split" in "\n".join(check_xlsa17(root, image_root=w["image_root"]))
    # the class lists, attribute names and word vectors next to att_splits.mat are found
    _write_class_lists(root)
    (root / "attributes.txt").write_text("1 has_bill\n2 has_wing\n3 red\n4 blue\n")
    np.save(root / "CUB_attribute.npy", np.ones((A, 7)))
    d = load_xlsa17(root, dataset="CUB", image_root=w["image_root"], check_images=N)
    assert d.val_split_source == f"{root / 'trainclasses1.txt'}, {root / 'valclasses1.txt'}"
    np.testing.assert_array_equal(d.train_loc, w["locs"]["train_loc"])
    np.testing.assert_array_equal(d.val_loc, w["locs"]["val_loc"])
    assert set(d.labels[d.train_loc]) == set(TRAIN_CLASSES) and set(d.labels[d.val_loc]) == set(VAL_CLASSES)
    assert len(d.train_loc) == 12 and len(d.val_loc) == 4
    v = d.validation_split()
    assert len(v.val_seen) == 3 and set(d.labels[v.val_seen]) == set(TRAIN_CLASSES)
    assert d.attribute_names == ["has_bill", "has_wing", "red", "blue"]
    assert d.attribute_embeddings.shape == (A, 7) and d.attribute_embeddings.dtype == np.float32
    # a JSON image list in the fixture layout: relative paths joined to image_root (no anchor for SHAPES)
    obj = {
        "image_files": [f.split("CUB_200_2011/", 1)[1] for f in w["files"]],
        "labels": LABELS.tolist(),
        "index_base": 0,
    }
    w["res_path"].unlink()
    (root / "image_list.json").write_text(json.dumps(obj))
    d2 = load_xlsa17(root, "SHAPES", image_root=w["image_root"], check_images=-1)
    assert d2.features is None and d2.image_files == d.image_files


def test_synthetic_attribute_names_and_vectors(tmp_path):
    w = _make_world(tmp_path, extras=True, images=False)
    d = load_xlsa17(w["root"], check_images=0)
    assert d.attribute_names == [f"has_part::color_{j}" for j in range(A)]  # "id name"
    assert d.attribute_embeddings.shape == (A, 300) and d.attribute_embeddings.dtype == np.float32
    # AwA's predicates.txt is "id<TAB>name" (../shared/data/names/AWA2_predicates.txt)
    (w["root"] / "attributes.txt").write_text("".join(f"{j + 1}\tcolor_{j}\n" for j in range(A)))
    assert load_xlsa17(w["root"], check_images=0).attribute_names == [f"color_{j}" for j in range(A)]
    (w["root"] / "attributes.txt").write_text("".join(f"plain_{j}\n" for j in range(A)))
    assert load_xlsa17(w["root"], check_images=0).attribute_names == [f"plain_{j}" for j in range(A)]


@pytest.mark.parametrize("dataset", ["CUB", "AWA2"])
def test_synthetic_check_report(tmp_path, dataset):
    w = _make_world(tmp_path, dataset=dataset)
    lines = check_xlsa17(w["root"], image_root=str(w["image_root"]), image_list=None)
    text = "\n".join(lines)
    assert lines[0] == f"dataset {dataset} at {w['root']}"
    assert f"classes {C} (seen 4, unseen 2)" in text and f"attributes {A}" in text
    assert "trainval 12, test_seen 4, test_unseen 8" in text and f"res101 {N} x 2048" in text
    assert "val-seen 3" in text and "word vectors: none" in text
    for pat in (
        rf"classes {C} \(seen 4, unseen 2\)",
        rf"attributes {A}\b.*original_att",
        rf"images {N}\b",
        rf"all {N} image files found",
        r"train_loc 12 (images )?\(3 classes\)",
        r"val_loc 4 (images )?\(1 classes\)",
        rf"features: res101 \(?{N}(, | x )2048",
    ):
        assert re.search(pat, text), f"/{pat}/ not in the report:\n{text}"
    np.save(w["root"] / f"{dataset}_attribute.npy", np.ones((A, 300)))
    text = "\n".join(check_xlsa17(w["root"], dataset=dataset, image_root=str(w["image_root"])))
    assert re.search(rf"word vectors: \(?{A}(, | x )300", text), text


def test_synthetic_torch_datasets(tmp_path):
    from torchvision import transforms

    w = _make_world(tmp_path)
    d = load_xlsa17(w["root"], image_root=w["image_root"], check_images=-1)
    # no resize: the image itself, as uint8 HWC
    x, y = ImageListDataset(d.image_files, d.labels, transform=lambda im: torch.as_tensor(np.array(im)))[5]
    assert x.shape == (6 + 5 % 3, 5, 3) and y == LABELS[5] and bool(torch.all(x == _pixel(5)))
    # a torchvision pipeline over the unseen test images, batched by a DataLoader
    tf = transforms.Compose([transforms.Resize((8, 8)), transforms.ToTensor()])
    ds = ImageListDataset([d.image_files[i] for i in d.test_unseen_loc], d.labels[d.test_unseen_loc], tf)
    assert len(ds) == len(UNSEEN) * PER
    for j, i in enumerate(d.test_unseen_loc):
        x, y = ds[j]
        assert isinstance(x, torch.Tensor) and x.shape == (3, 8, 8) and x.dtype == torch.float32
        assert y == int(LABELS[i]) and y in UNSEEN
        assert torch.allclose(x, torch.full_like(x, _pixel(int(i)) / 255.0), atol=1e-6)  # the right file
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 3, 8, 8) and batch[1].dtype == torch.int64
    # without a transform: the PIL image
    img, _ = ImageListDataset(d.image_files[:1], d.labels[:1])[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    # features
    fx, fy = FeatureDataset(d.features, d.labels)[5]
    assert fx.dtype == torch.float32 and fx.shape == (2048,) and int(fy) == LABELS[5]
    np.testing.assert_array_equal(fx.numpy(), w["features"][:, 5])


# ============================================================================================ bad inputs
def test_bad_missing_att_field(tmp_path):
    def rename(att):
        att["trainval_locs"] = att.pop("trainval_loc")

    w = _make_world(tmp_path, att_edit=rename, images=False)
    msg = _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], check_images=0),
        str(w["att_path"]),
        "field 'trainval_loc' is missing",
    )
    assert "trainval_locs" in msg and "test_seen_loc" in msg  # what was found instead


def test_bad_missing_res101_field(tmp_path):
    w = _make_world(tmp_path, res_edit=lambda m: m.update(files=m.pop("image_files")), images=False)
    _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], check_images=0),
        str(w["res_path"]),
        "field 'image_files' is missing",
        patterns=(r"found:.*\bfiles\b",),
    )  # found instead


def test_bad_attribute_dimension(tmp_path):
    w = _make_world(tmp_path, images=False)
    bad = tmp_path / "CUB_attribute_bad.npy"
    np.save(bad, np.zeros((A + 1, 300)))
    _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], w2v=bad, check_images=0),
        str(bad),
        "wrong attribute dimension",
        f"got {A + 1}",
        f"expected {A}",
        f"({A + 1}, 300)",
        patterns=(rf"expected \(?{A}\b",),
    )
    # the same with a pickle (the TransZero layout) and a 1-D array
    bad_pkl = tmp_path / "CUB_attribute.pkl"
    bad_pkl.write_bytes(pickle.dumps(np.zeros(300)))
    _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], w2v=bad_pkl, check_images=0),
        str(bad_pkl),
        "(300,)",
        patterns=(r"\(A, W\)|expected",),
    )
    _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], w2v=tmp_path / "nope.npy", check_images=0),
        str(tmp_path / "nope.npy"),
        "not found",
    )


def test_bad_loc_out_of_range(tmp_path):
    def too_far(att):
        att["test_unseen_loc"] = np.vstack([att["test_unseen_loc"], [[N + 1]]]).astype(
            np.uint16
        )  # 1 past the end

    w = _make_world(tmp_path, att_edit=too_far, images=False)
    _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], check_images=0),
        str(w["att_path"]),
        "field 'test_unseen_loc'",
        "out of range",
        "res101.mat",
        patterns=(rf"\b{N + 1}\b", rf"\b{N}\b"),
    )


def test_bad_zero_loc(tmp_path):
    def zero(att):
        att["trainval_loc"] = att["trainval_loc"].copy()
        att["trainval_loc"][0, 0] = 0  # a 0-based file read as 1-based

    w = _make_world(tmp_path, att_edit=zero, images=False)
    _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], check_images=0),
        str(w["att_path"]),
        "field 'trainval_loc'",
        patterns=(r"'trainval_loc'.*out of range", r"\b0\b"),
    )


def test_bad_overlapping_splits(tmp_path):
    def overlap(att):
        att["test_seen_loc"] = np.vstack([att["test_seen_loc"], att["trainval_loc"][:1]]).astype(np.uint16)

    w = _make_world(tmp_path, att_edit=overlap, images=False)
    _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], check_images=0),
        str(w["att_path"]),
        "'trainval_loc' and 'test_seen_loc'",
        "overlap",
        patterns=(r"(overlap|share)\D*1 (shared )?images",),
    )


def test_bad_labels_out_of_range(tmp_path):
    def label_out_of_range(res):
        res["labels"] = res["labels"].copy()
        res["labels"][3, 0] = C + 1

    w = _make_world(tmp_path, res_edit=label_out_of_range, images=False)
    _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], check_images=0),
        str(w["res_path"]),
        "field 'labels'",
        "image 3",
        patterns=(rf"\b{C}\b",),
    )


def test_bad_malicious_pickle_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    w = _make_world(tmp_path, images=False)  # no .npy word vectors: a pickle beside att_splits.mat is found
    evil = tmp_path / "evil_attribute.pkl"
    evil.write_bytes(pickle.dumps(Evil()))
    # given explicitly
    msg = _raises(
        UnsafeFileError, lambda: load_xlsa17(w["root"], w2v=evil, check_images=0), str(evil), "system"
    )
    assert "refusing to load" in msg
    _raises(UnsafeFileError, lambda: safe_pickle_load(evil), str(evil))
    assert not marker.exists()
    # found automatically next to att_splits.mat: refused the same way
    found = w["root"] / "CUB_attribute.pkl"
    shutil.copy(evil, found)
    msg = _raises(UnsafeFileError, lambda: load_xlsa17(w["root"], check_images=0), str(found), "system")
    assert "refusing to load" in msg
    assert not marker.exists()
    # a corrupt pickle is a format error naming the file
    found.write_bytes(b"\x80\x04not a pickle")
    _raises(
        DataFormatError, lambda: load_xlsa17(w["root"], check_images=0), str(found), "not a readable pickle"
    )


def test_bad_nan_features(tmp_path):
    def nan(res):
        res["features"] = res["features"].copy()
        res["features"][7, 5] = np.nan  # dimension 7 of image 5

    w = _make_world(tmp_path, res_edit=nan, images=False)
    _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], check_images=0),
        str(w["res_path"]),
        "field 'features'",
        "NaN",
        patterns=(r"\b5\D+7\b",),
    )


def test_bad_features_shape(tmp_path):
    def shape(res):
        res["features"] = res["features"][:, :-1]

    w = _make_world(tmp_path, res_edit=shape, images=False)
    _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], check_images=0),
        str(w["res_path"]),
        "field 'features'",
        f"(2048, {N - 1})",
        patterns=(rf"D x {N}\b",),
    )


def test_bad_missing_image(tmp_path):
    w = _make_world(tmp_path)
    root, image_root = w["root"], w["image_root"]
    victim = image_root / w["rels"][2]
    kept = tmp_path / "kept.png"
    victim.rename(kept)
    msg = _raises(
        DataFormatError,
        lambda: load_xlsa17(root, image_root=image_root),  # checks the first 16
        str(victim),
        str(w["res_path"]),
        w["files"][2],
        "image_root",
        "not found",
    )
    assert "image 2" in msg
    _raises(DataFormatError, lambda: load_xlsa17(root, image_root=image_root, check_images=3), str(victim))
    load_xlsa17(root, image_root=image_root, check_images=2)  # only the first two are checked
    # check_images=0 loads anyway (the images are only opened later)
    d = load_xlsa17(root, image_root=image_root, check_images=0)
    assert d.image_files[2] == str(victim)
    # the full check counts the missing images and names the first
    _raises(
        DataFormatError,
        lambda: check_xlsa17(root, image_root=image_root),
        str(victim),
        patterns=(rf"1 of {N} images are missing.*{re.escape(victim.name)}",),
    )
    # the wrong image root fails on the first image too
    _raises(
        DataFormatError,
        lambda: load_xlsa17(root, image_root=tmp_path, check_images=1),
        str(tmp_path / "images"),
    )
    # the last image is beyond the default check, but check_xlsa17 looks at all of them
    kept.rename(victim)
    gone = image_root / w["rels"][-1]
    gone.unlink()
    load_xlsa17(root, image_root=image_root)
    _raises(
        DataFormatError,
        lambda: check_xlsa17(root, dataset="CUB", image_root=str(image_root)),
        str(gone),
        "not found",
        patterns=(rf"1 of {N} images are missing",),
    )


def test_bad_image_dataset_missing_or_broken_file(tmp_path):
    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(good)
    missing = tmp_path / "gone" / "x.jpg"
    ds = ImageListDataset([str(good), str(missing)], np.array([0, 1]))
    assert ds[0][1] == 0
    _raises(DataFormatError, lambda: ds[1], "not found", str(missing))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    _raises(
        DataFormatError, lambda: ImageListDataset([str(broken)], np.array([0]))[0], "unreadable", str(broken)
    )


def test_bad_unknown_class_in_class_list(tmp_path):
    w = _make_world(tmp_path, val="lists", images=False)
    lst = w["root"] / "trainclasses1.txt"
    lst.write_text(f"{CLASS_NAMES[0]}\n999.Not_A_Bird\n")
    _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], check_images=0),
        str(lst),
        "999.Not_A_Bird",
        "allclasses_names",
    )


def test_bad_missing_or_unreadable_files(tmp_path):
    w = _make_world(tmp_path, images=False)
    root = w["root"]
    # no image list: the reader names everything it looked for
    w["res_path"].unlink()
    _raises(
        DataFormatError,
        lambda: load_xlsa17(root, check_images=0),
        str(root),
        str(w["res_path"]),
        str(root / "image_list.json"),
        str(root / "image_list.json.gz"),
    )
    _raises(
        DataFormatError, lambda: load_xlsa17(tmp_path / "nowhere"), str(tmp_path / "nowhere"), "not found"
    )
    w["att_path"].write_bytes(b"garbage")
    _raises(
        DataFormatError,
        lambda: load_xlsa17(root, check_images=0),
        str(w["att_path"]),
        "not a readable MATLAB file",
    )


def test_bad_anchor_missing(tmp_path):
    w = _make_world(tmp_path, images=False)  # CUB server paths, read as AWA2
    _raises(
        DataFormatError,
        lambda: load_xlsa17(w["root"], "AWA2", image_root=tmp_path, check_images=0),
        str(w["res_path"]),
        "field 'image_files'",
        "JPEGImages/",
    )
