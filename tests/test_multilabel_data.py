"""Multi-label ZSL readers: real NUS-WIDE / Open Images label files (skip when ../shared/data is absent) and
synthetic BiAM-layout h5 files."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unseen.io import DataFormatError, UnsafeFileError
from unseen.multilabel.data import (
    BiAMH5Dataset,
    check_multilabel,
    h5_name,
    load_biam_names,
    load_class_descriptions,
    load_nus_wide_glove,
    load_nus_wide_labels,
    load_open_images_labels,
    open_images_h5_labels,
    write_biam_h5,
)

NOT_TAGS = ["computer", "fire", "map", "swimmers", "tattoo", "whales"]
GLOVE_PKL = "NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300"
GLOVE_NPZ = "glove300_tags1k_concepts81.npz"


# --------------------------------------------------------------------------------------------- NUS-WIDE (real files)
@pytest.fixture
def nus(shared_data: Path) -> Path:
    return shared_data / "nus_wide"


@pytest.fixture
def oi(shared_data: Path) -> Path:
    return shared_data / "open_images"


def _lines(p: Path) -> list[str]:
    return [x.strip() for x in p.read_text(encoding="utf-8-sig").splitlines() if x.strip()]


def test_nus_label_space(nus):
    ls = load_nus_wide_labels(nus)
    tags, concepts = _lines(nus / "TagList1k.txt"), _lines(nus / "Concepts81.txt")
    assert (ls.n_seen, ls.n_unseen, ls.n_labels, len(ls.names)) == (925, 81, 1006, 1006)
    assert tags[:3] == ["nature", "sky", "blue"]  # the file has CRLF line endings
    assert ls.seen_names[:3] == ["nature", "blue", "red"]  # TagList1k order minus the concepts ("sky" is one)
    assert "sky" in ls.unseen_names and "sky" not in ls.seen_names
    assert ls.seen_names == [t for t in tags if t not in concepts]
    assert ls.unseen_names == concepts and ls.unseen_names[0] == "airport" and ls.unseen_names[-1] == "zebra"
    assert ls.names == ls.seen_names + ls.unseen_names
    assert [c for c in concepts if c not in tags] == NOT_TAGS
    assert len(ls.overlap_source_index) == 75
    assert all(tags[i] in concepts for i in ls.overlap_source_index)
    assert [concepts[j] for j in ls.overlap_unseen_index] == [tags[i] for i in ls.overlap_source_index]
    assert [tags[i] for i in ls.seen_source_index] == ls.seen_names
    assert not set(ls.seen_names) & set(ls.unseen_names)
    assert ls.index("airport") == 925 and list(ls.unseen_index[[0, -1]]) == [925, 1005]


def test_nus_glove_pickle_and_npz(nus):
    raw = pickle.loads((nus / GLOVE_PKL).read_bytes())  # trusted fixture, only to compare with the safe path
    with np.load(nus / GLOVE_NPZ) as z:
        t_npz, c_npz = z["tags1k"], z["concepts81"]
    assert raw[0].shape == t_npz.shape == (1000, 300) and raw[1].shape == c_npz.shape == (81, 300)
    assert np.array_equal(raw[0], t_npz) and np.array_equal(raw[1], c_npz)
    ls = load_nus_wide_labels(nus)
    assert np.array_equal(
        raw[0][ls.overlap_source_index], raw[1][ls.overlap_unseen_index]
    )  # 75 rows identical

    s_raw, u_raw = load_nus_wide_glove(nus / GLOVE_PKL, ls, normalize=False)
    s_npz, u_npz = load_nus_wide_glove(nus / GLOVE_NPZ, ls, normalize=False)
    assert s_raw.shape == (925, 300) and u_raw.shape == (81, 300) and s_raw.dtype == np.float32
    assert np.array_equal(s_raw, s_npz) and np.array_equal(u_raw, u_npz)
    assert np.array_equal(s_raw, raw[0][ls.seen_source_index]) and np.array_equal(u_raw, raw[1])
    assert np.linalg.norm(s_raw, axis=1).min() > 3  # raw GloVe, not normalised

    s, u = load_nus_wide_glove(nus / GLOVE_PKL, ls)  # default: rows L2-normalised
    assert np.allclose(np.linalg.norm(s, axis=1), 1, atol=1e-5) and np.allclose(
        np.linalg.norm(u, axis=1), 1, atol=1e-5
    )
    assert np.allclose(s, s_raw / np.linalg.norm(s_raw, axis=1, keepdims=True), atol=1e-6)


def test_nus_glove_shape_error_and_zero_row(nus, tmp_path):
    ls = load_nus_wide_labels(nus)
    bad = tmp_path / "bad.npz"
    np.savez(bad, tags1k=np.ones((999, 300), np.float32), concepts81=np.ones((81, 300), np.float32))
    with pytest.raises(DataFormatError, match=r"bad\.npz.*tags.*\(1000, 300\).*\(999, 300\)"):
        load_nus_wide_glove(bad, ls)
    missing = tmp_path / "missing.npz"
    np.savez(missing, tags1k=np.ones((1000, 300), np.float32))
    with pytest.raises(DataFormatError, match=r"missing\.npz.*concepts81"):
        load_nus_wide_glove(missing, ls)
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps([np.ones((1000, 300), np.float32)], protocol=2))
    with pytest.raises(DataFormatError, match=r"wrong\.pkl.*two arrays"):
        load_nus_wide_glove(wrong, ls)
    zero = tmp_path / "zero.npz"
    tags = np.ones((1000, 300), np.float32)
    tags[ls.seen_source_index[0]] = 0
    np.savez(zero, tags1k=tags, concepts81=np.ones((81, 300), np.float32))
    s, _ = load_nus_wide_glove(zero, ls)
    assert np.isfinite(s).all() and not s[0].any()


def test_nus_crlf_bom_and_blank_lines(nus, tmp_path):
    shutil.copy(nus / "TagList1k.txt", tmp_path / "TagList1k.txt")
    text = (nus / "Concepts81.txt").read_text()
    (tmp_path / "Concepts81.txt").write_bytes(
        b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode() + b"\r\n\r\n"
    )
    assert load_nus_wide_labels(tmp_path).names == load_nus_wide_labels(nus).names
    (tmp_path / "Concepts81.txt").write_text("airport\n\nanimal\n")
    with pytest.raises(DataFormatError, match=r"Concepts81\.txt.*line 2 is blank"):
        load_nus_wide_labels(tmp_path)
    (tmp_path / "Concepts81.txt").write_text("airport\nanimal\nairport\n")
    with pytest.raises(DataFormatError, match=r"Concepts81\.txt.*duplicate.*airport"):
        load_nus_wide_labels(tmp_path)


# --------------------------------------------------------------------------------------------- Open Images (real)
def test_open_images_label_space(oi):
    ls = load_open_images_labels(oi)
    seen = _lines(oi / "classes-trainable.txt")
    unseen_all = _lines(oi / "unseen_labels.txt")
    assert (ls.n_seen, len(ls.unseen_source_names), ls.n_unseen, ls.n_labels) == (7186, 2594, 400, 7586)
    assert ls.seen_names == seen and ls.seen_names[0] == "/m/0108_09c"
    assert ls.unseen_source_names == unseen_all and ls.unseen_source_names[0] == "/m/011_xr"
    assert (
        (oi / "top_400_unseen.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    )  # the BOM is there and handled
    assert ls.unseen_source_index[:3].tolist() == [991, 1039, 120]
    assert ls.unseen_names == [unseen_all[i] for i in ls.unseen_source_index]
    assert ls.names[7186] == unseen_all[991]
    assert not set(ls.seen_names) & set(ls.unseen_source_names)
    assert len(ls.display_names) == 7586 and ls.sources["unseen_source"].endswith("unseen_labels.pkl")


def test_open_images_descriptions_with_commas(oi):
    desc = load_class_descriptions(oi / "class-descriptions.csv")
    assert len(desc) == 19995
    assert desc["/m/01c_0l"] == "Ducks, geese and swans"
    assert desc["/m/01qtdl"] == "Datsun 1500, 1600, 2000 roadster"
    assert desc["/m/0100nhbf"] == "Sprenger's tulip"
    ls = load_open_images_labels(oi)
    assert all(d != m for d, m in zip(ls.display_names, ls.names))  # every label has a description


def test_open_images_txt_fallback_and_errors(oi, tmp_path):
    for f in ("classes-trainable.txt", "unseen_labels.txt", "top_400_unseen.csv"):
        shutil.copy(oi / f, tmp_path / f)
    ls = load_open_images_labels(tmp_path)  # no pickle, no descriptions
    assert ls.unseen_names == load_open_images_labels(oi).unseen_names and ls.display_names == ls.names
    assert ls.sources["unseen_source"].endswith("unseen_labels.txt")
    # seen and unseen must be disjoint
    seen = _lines(oi / "classes-trainable.txt")
    (tmp_path / "classes-trainable.txt").write_text("\n".join([*seen, "/m/011_xr"]) + "\n")
    with pytest.raises(
        DataFormatError, match=r"unseen_labels\.txt.*also in.*classes-trainable\.txt.*disjoint"
    ):
        load_open_images_labels(tmp_path)
    shutil.copy(oi / "classes-trainable.txt", tmp_path / "classes-trainable.txt")
    (tmp_path / "top_400_unseen.csv").write_text("\ufeff5\r\n2594\r\n")
    with pytest.raises(DataFormatError, match=r"top_400_unseen\.csv.*\[0, 2594\).*2594"):
        load_open_images_labels(tmp_path)
    (tmp_path / "top_400_unseen.csv").write_text("5\nfive\n")
    with pytest.raises(DataFormatError, match=r"top_400_unseen\.csv.*line 2.*'five'"):
        load_open_images_labels(tmp_path)


def test_a_damaged_feature_dataset_is_named_not_a_traceback(tmp_path):
    from unseen.multilabel.data import write_biam_h5

    path = tmp_path / "damaged.h5"
    write_biam_h5(
        path, [("a.jpg", np.arange(32, dtype=np.float32).reshape(8, 4), np.array([1, -1, 0], np.int8))],
        feature_shape=(8, 4),
    )  # fmt: skip
    with h5py.File(path) as f:
        chunk = f["a.jpg-features"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    raw[chunk.byte_offset : chunk.byte_offset + chunk.size] = bytes(chunk.size)  # the gzip stream zeroed
    path.write_bytes(bytes(raw))
    ds = BiAMH5Dataset(path, None, n_labels=3, feature_shape=(8, 4))  # the keys are intact
    with pytest.raises(DataFormatError, match=r"damaged\.h5: key 'a\.jpg-features' cannot be read"):
        ds.read(0)
    ds.close()


def test_check_multilabel_reports(nus, oi):
    text = "\n".join(check_multilabel("nus_wide", nus))
    for s in (
        "tags (TagList1k.txt): 1000",
        "seen: 925",
        "unseen (ZSL): 81",
        "GZSL: 1006",
        "75/75",
        ", ".join(NOT_TAGS),
        "identical: yes",
        "features nus_wide_train.h5: absent",
    ):
        assert s in text
    text = "\n".join(check_multilabel("open_images", oi))
    for s in (
        "seen (classes-trainable.txt): 7186",
        "2594",
        "400",
        "GZSL: 7586",
        "disjoint: yes",
        "19995 rows; labels without one: 0",
    ):
        assert s in text
    with pytest.raises(ValueError, match="unknown"):
        check_multilabel("coco", nus)


# --------------------------------------------------------------------------------------------- malicious pickles
class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused(nus, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(marker), protocol=2)
    # unseen_labels.pkl
    for f in ("classes-trainable.txt", "top_400_unseen.csv"):
        (tmp_path / f).write_text("/m/a\n" if f.startswith("classes") else "0\n")
    (tmp_path / "unseen_labels.pkl").write_bytes(payload)
    with pytest.raises(UnsafeFileError, match=r"unseen_labels\.pkl.*system"):
        load_open_images_labels(tmp_path)
    # the GloVe pickle
    evil_glove = tmp_path / "glove.pkl"
    evil_glove.write_bytes(pickle.dumps([np.zeros((1000, 300), np.float32), _Evil(marker)], protocol=2))
    with pytest.raises(UnsafeFileError, match=r"glove\.pkl.*system"):
        load_nus_wide_glove(evil_glove, load_nus_wide_labels(nus))
    # a BiAM name list
    (tmp_path / "img_names.pkl").write_bytes(payload)
    with pytest.raises(UnsafeFileError, match=r"img_names\.pkl"):
        load_biam_names(tmp_path / "img_names.pkl")
    assert not marker.exists()


def test_unseen_pickle_disagreeing_with_txt(tmp_path):
    (tmp_path / "classes-trainable.txt").write_text("/m/s1\n/m/s2\n")
    (tmp_path / "unseen_labels.pkl").write_bytes(
        pickle.dumps(np.array(["/m/u1", "/m/u2"], dtype=object), protocol=2)
    )
    (tmp_path / "unseen_labels.txt").write_text("/m/u2\n/m/u1\n")
    (tmp_path / "top_400_unseen.csv").write_bytes(b"\xef\xbb\xbf1\r\n")
    with pytest.raises(DataFormatError, match=r"unseen_labels\.pkl.*disagree.*unseen_labels\.txt"):
        load_open_images_labels(tmp_path)
    (tmp_path / "unseen_labels.txt").unlink()
    ls = load_open_images_labels(tmp_path)
    assert ls.names == ["/m/s1", "/m/s2", "/m/u2"] and ls.n_labels == 3


# --------------------------------------------------------------------------------------------- BiAM h5 (synthetic)
def _feat(rng: np.random.Generator) -> np.ndarray:
    return rng.random((512, 196), dtype=np.float32)


def _lab(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(-1, 2, size=n).astype(np.int8)


def test_h5_name():
    assert h5_name("actor/0002_174174086.jpg") == "actor_0002_174174086.jpg"
    assert h5_name("actor_0002_174174086.jpg") == "actor_0002_174174086.jpg"
    assert h5_name("./a/b/c.jpg") == "a_b_c.jpg"


def test_biam_h5_nus_layout_roundtrip(tmp_path):
    """Write with raw h5py in BiAM's own layout, read with the dataset."""
    rng = np.random.default_rng(0)
    paths = ["actor/0002_174174086.jpg", "airport/0001_2.jpg", "zebra/0003_3.jpg"]
    feats = [_feat(rng) for _ in paths]
    labs = [_lab(rng, 1006) for _ in paths]
    path = tmp_path / "nus_wide_test.h5"
    with h5py.File(path, "w") as f:
        for p, x, y in zip(paths, feats, labs):
            n = p.replace("/", "_")
            f.create_dataset(f"{n}-features", data=x, compression="gzip")
            f.create_dataset(f"{n}-labels", data=y, compression="gzip")
            f.create_dataset(f"{n}-labels_81", data=y[925:], compression="gzip")
    ds = BiAMH5Dataset(path, names=paths, n_labels=1006)  # relative paths are mapped by h5_name
    assert len(ds) == 3 and ds.names[0] == "actor_0002_174174086.jpg" and ds.n_labels == 1006
    for i in range(3):
        x, y = ds[i]
        assert x.shape == (196, 512) and x.dtype == torch.float32 and y.dtype == torch.int8
        assert torch.equal(x, torch.from_numpy(feats[i].T.copy())) and np.array_equal(y.numpy(), labs[i])
    ds81 = BiAMH5Dataset(path, label_key="labels_81")  # names from the file, length from the first image
    assert sorted(ds81.names) == sorted(h5_name(p) for p in paths) and ds81.n_labels == 81
    loader = DataLoader(ds, batch_size=2, num_workers=2)  # the h5 handle is opened per worker
    xb, yb = next(iter(loader))
    assert xb.shape == (2, 196, 512) and yb.shape == (2, 1006)
    ds.close()


def test_biam_h5_open_images_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    ls_seen, ls_unseen = [f"/m/s{i}" for i in range(6)], [f"/m/u{i}" for i in range(5)]
    (tmp_path / "classes-trainable.txt").write_text("\n".join(ls_seen) + "\n")
    (tmp_path / "unseen_labels.txt").write_text("\n".join(ls_unseen) + "\n")
    (tmp_path / "top_400_unseen.csv").write_bytes(b"\xef\xbb\xbf3\r\n0\r\n")
    ls = load_open_images_labels(tmp_path)
    items = [
        (f"img{i:03d}", _feat(rng), {"seenlabels": _lab(rng, 6), "unseenlabels": _lab(rng, 5)})
        for i in range(4)
    ]
    path = tmp_path / "oi_test.h5"
    assert write_biam_h5(path, items, attrs={"resolution": 224, "backbone": "vgg19"}) == 4
    with h5py.File(path) as f:
        assert f["img000-features"].compression == "gzip" and f["img000-seenlabels"].dtype == np.int8
        assert f.attrs["backbone"] == "vgg19"
    gz = BiAMH5Dataset(path, [n for n, *_ in items], **open_images_h5_labels(ls, "gzsl"))
    zsl = BiAMH5Dataset(path, [n for n, *_ in items], **open_images_h5_labels(ls, "zsl"))
    assert gz.n_labels == 8 and zsl.n_labels == 2
    for i, (_, x, lab) in enumerate(items):
        xs, y = gz[i]
        assert torch.equal(xs, torch.from_numpy(x.T.copy()))
        assert y.tolist() == [*lab["seenlabels"], lab["unseenlabels"][3], lab["unseenlabels"][0]]
        assert zsl[i][1].tolist() == [lab["unseenlabels"][3], lab["unseenlabels"][0]]


def _write_one(
    path: Path, features: np.ndarray, labels: np.ndarray, name: str = "a_1.jpg", extra: bool = True
):
    with h5py.File(path, "w") as f:
        f.create_dataset(f"{name}-features", data=features)
        f.create_dataset(f"{name}-labels", data=labels)
        if extra:  # a second, valid image so that length inference does not come from the bad one
            f.create_dataset("b_2.jpg-features", data=np.zeros((512, 196), np.float32))
            f.create_dataset("b_2.jpg-labels", data=np.zeros(925, np.int8))


def test_biam_h5_bad_inputs(tmp_path):
    rng = np.random.default_rng(2)
    good = tmp_path / "good.h5"
    _write_one(good, _feat(rng), _lab(rng, 925))
    # a missing key: at construction (check_keys) and, without the check, at read time
    with pytest.raises(DataFormatError, match=r"good\.h5.*'missing_3\.jpg-features' is missing"):
        BiAMH5Dataset(good, names=["a_1.jpg", "missing/3.jpg"], n_labels=925)
    ds = BiAMH5Dataset(good, names=["a_1.jpg", "missing_3.jpg"], n_labels=925, check_keys=False)
    assert ds[0][1].shape == (925,)
    with pytest.raises(DataFormatError, match=r"good\.h5.*'missing_3\.jpg-features' is missing"):
        ds[1]
    with pytest.raises(DataFormatError, match=r"good\.h5.*'a_1\.jpg-labels_81' is missing"):
        BiAMH5Dataset(good, names=["a_1.jpg"], label_key="labels_81")
    # a label vector of the wrong length
    with pytest.raises(DataFormatError, match=r"good\.h5.*'a_1\.jpg-labels'.*length 1006.*\(925,\)"):
        BiAMH5Dataset(good, names=["a_1.jpg"], n_labels=1006)[0]
    short = tmp_path / "short.h5"
    _write_one(short, _feat(rng), _lab(rng, 924))
    with pytest.raises(DataFormatError, match=r"short\.h5.*'a_1\.jpg-labels'.*length 925.*\(924,\)"):
        BiAMH5Dataset(short, names=["b_2.jpg", "a_1.jpg"])[1]  # length inferred from b_2 (925)
    # label values outside {-1, 0, 1}
    bad_vals = _lab(rng, 925)
    bad_vals[7] = 2
    vals = tmp_path / "values.h5"
    _write_one(vals, _feat(rng), bad_vals)
    with pytest.raises(DataFormatError, match=r"values\.h5.*'a_1\.jpg-labels'.*\{-1, 0, 1\}.*\[2\]"):
        BiAMH5Dataset(vals, n_labels=925)[BiAMH5Dataset(vals, n_labels=925).names.index("a_1.jpg")]
    # features of the wrong shape (e.g. stored regions x channels)
    shape = tmp_path / "shape.h5"
    _write_one(shape, _feat(rng).T.copy(), _lab(rng, 925))
    with pytest.raises(DataFormatError, match=r"shape\.h5.*'a_1\.jpg-features'.*\(512, 196\).*\(196, 512\)"):
        BiAMH5Dataset(shape, names=["a_1.jpg"], n_labels=925)[0]
    # the writer validates too, and never leaves a half-written file
    out = tmp_path / "out.h5"
    with pytest.raises(DataFormatError, match=r"out\.h5.*'x-labels'.*\{-1, 0, 1\}"):
        write_biam_h5(out, [("x", _feat(rng), np.full(925, 3, np.int8))])
    assert not out.exists() and not list(tmp_path.glob(".out.h5.*"))
    with pytest.raises(DataFormatError, match=r"nope\.h5: file not found"):
        BiAMH5Dataset(tmp_path / "nope.h5")


def test_load_biam_names(tmp_path):
    p = tmp_path / "img_names.pkl"
    p.write_bytes(
        pickle.dumps(
            {"img_names": np.array(["actor/0002_1.jpg", "sky/0003_2.jpg"], dtype=object)}, protocol=2
        )
    )
    assert load_biam_names(p) == ["actor_0002_1.jpg", "sky_0003_2.jpg"]
    t = tmp_path / "names.txt"
    t.write_text("actor/0002_1.jpg\r\n")
    assert load_biam_names(t) == ["actor_0002_1.jpg"]
