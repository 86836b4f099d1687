"""The xlsa17 "proposed split" reader (CUB, SUN, AWA2, AWA1, APY and the embedded SHAPES world).

Contract (spec attribute-zsl.md §1): ``att_splits.mat`` holds the class attributes (A x C) and 1-based uint16
split locations into the image order of ``res101.mat`` (or of a JSON image list in the same order). Everything is
cast to int64 and made 0-based exactly once, here, then validated. Class ids are 0-based indices into
``allclasses_names``; seen = classes of ``trainval_loc``, unseen = classes of ``test_unseen_loc``.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unseen.io import DataFormatError, safe_pickle_load

SPLIT_FIELDS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")
ATT_FIELDS = ("allclasses_names", "att", "original_att", *SPLIT_FIELDS)
# where a stored image path is cut and joined to the user's image root (spec §1.7)
ANCHORS = {"CUB": ("after", "CUB_200_2011/"), "SUN": ("from", "images/"), "AWA2": ("after", "JPEGImages/"),
           "AWA1": ("after", "JPEGImages/")}


@dataclass
class ValidationSplit:
    """The class split used to choose epochs and gamma (spec §1.6): indices are 0-based image rows."""

    train: np.ndarray  # train_loc minus val_seen: what the calibration model trains on
    val_seen: np.ndarray  # per-class hold-out of train_loc (seen classes at validation time)
    val_unseen: np.ndarray  # val_loc (the validation classes act as unseen)
    seen_classes: np.ndarray
    unseen_classes: np.ndarray


@dataclass
class XLSA17Data:
    root: Path
    dataset: str
    class_names: list[str]
    att: np.ndarray  # C x A float32, columns of the file L2-normalised
    original_att: np.ndarray  # C x A float32, raw
    semantics: str  # which of the two class_attributes is
    class_attributes: np.ndarray  # C x A float32 given to the models
    image_files: list[str] | None  # N paths (resolved when an image root applies)
    labels: np.ndarray  # N int64, 0-based class ids
    features: np.ndarray | None  # N x D float32 (res101.mat)
    trainval_loc: np.ndarray
    test_seen_loc: np.ndarray
    test_unseen_loc: np.ndarray
    train_loc: np.ndarray | None
    val_loc: np.ndarray | None
    seen_classes: np.ndarray
    unseen_classes: np.ndarray
    attribute_embeddings: np.ndarray | None  # A x W word vectors
    attribute_names: list[str] | None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_attributes(self) -> int:
        return int(self.class_attributes.shape[1])

    @property
    def n_images(self) -> int:
        return len(self.labels)

    def validation_split(self, holdout: float = 0.2, seed: int = 0) -> ValidationSplit:
        """val-unseen = ``val_loc``; val-seen = a seeded per-class ``holdout`` of ``train_loc``; train = the rest."""
        if self.train_loc is None or self.val_loc is None:
            raise DataFormatError(f"{self.root}: no validation split (train_loc/val_loc or class lists)")
        rng = np.random.default_rng(seed)
        labels = self.labels[self.train_loc]
        held = []
        for c in np.unique(labels):
            rows = self.train_loc[labels == c]
            k = int(round(holdout * len(rows)))
            if len(rows) >= 2:
                k = min(max(k, 1), len(rows) - 1)
            else:
                k = 0
            held.append(rng.choice(rows, k, replace=False))
        val_seen = np.sort(np.concatenate(held)).astype(np.int64) if held else np.zeros(0, np.int64)
        train = np.setdiff1d(self.train_loc, val_seen)
        return ValidationSplit(train, val_seen, np.sort(self.val_loc), np.unique(self.labels[train]),
                               np.unique(self.labels[self.val_loc]))


# --------------------------------------------------------------------------------------------- file readers
def _loadmat(path: Path) -> dict[str, Any]:
    import scipy.io

    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        return scipy.io.loadmat(str(path))
    except Exception as exc:
        raise DataFormatError(f"{path}: not a readable MATLAB file ({exc})") from exc


def _field(mat: dict[str, Any], name: str, path: Path) -> Any:
    if name not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataFormatError(f"{path}: field '{name}' is missing (found: {', '.join(found)})")
    return mat[name]


def _locs(x: Any, path: Path, name: str, base: int = 1) -> np.ndarray:
    """Any index array (uint16, double, N x 1 ...) -> 0-based int64 vector."""
    arr = np.asarray(x)
    if arr.size and not np.issubdtype(arr.dtype, np.number):
        raise DataFormatError(f"{path}: field '{name}' must be numeric indices, got {arr.dtype}")
    arr = arr.astype(np.float64).ravel()
    if arr.size and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
        raise DataFormatError(f"{path}: field '{name}' holds non-integer indices")
    return arr.astype(np.int64) - base


def _names(cells: Any) -> list[str]:
    return [str(np.squeeze(c)) if np.size(c) else "" for c in np.asarray(cells).ravel()]


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]


def _read_image_list(path: Path) -> dict[str, Any]:
    """res101.mat or the JSON(.gz) fixture layout -> files, 0-based labels, optional 0-based locs, features."""
    if path.suffix == ".mat":
        mat = _loadmat(path)
        files = [str(np.squeeze(c)) for c in np.asarray(_field(mat, "image_files", path)).ravel()]
        labels = _locs(_field(mat, "labels", path), path, "labels", base=1)
        out: dict[str, Any] = {"image_files": files, "labels": labels, "features": None}
        if "features" in mat:
            feats = np.asarray(mat["features"])
            if feats.ndim != 2 or len(files) not in feats.shape:
                raise DataFormatError(f"{path}: field 'features' has shape {feats.shape}, expected D x {len(files)}")
            feats = (feats.T if feats.shape[1] == len(files) else feats).astype(np.float32)
            if not np.all(np.isfinite(feats)):
                bad = np.argwhere(~np.isfinite(feats))[0]
                raise DataFormatError(f"{path}: field 'features' holds NaN/inf values (first at image {bad[0]}, "
                                      f"dimension {bad[1]})")
            out["features"] = feats
        return out
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        obj = json.loads(raw)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except Exception as exc:
        raise DataFormatError(f"{path}: not a readable JSON image list ({exc})") from exc
    for key in ("image_files", "labels"):
        if key not in obj:
            raise DataFormatError(f"{path}: key '{key}' is missing (found: {', '.join(sorted(obj))})")
    base = int(obj.get("index_base", 0))
    out = {"image_files": [str(f) for f in obj["image_files"]], "labels": _locs(obj["labels"], path, "labels", base),
           "features": None}
    for key in SPLIT_FIELDS:
        if key in obj:
            out[key] = _locs(obj[key], path, key, base)
    if len(out["labels"]) != len(out["image_files"]):
        raise DataFormatError(f"{path}: {len(out['labels'])} labels for {len(out['image_files'])} image_files")
    return out


def _find(root: Path, names: list[str]) -> Path | None:
    for n in names:
        hits = sorted(root.glob(n))
        if hits:
            return hits[0]
    return None


def _load_w2v(path: Path, n_attr: int) -> np.ndarray:
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    arr = np.load(path, allow_pickle=False) if path.suffix == ".npy" else safe_pickle_load(path)
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[0] != n_attr or not np.issubdtype(arr.dtype, np.number):
        raise DataFormatError(f"{path}: attribute word vectors have shape {arr.shape} ({arr.dtype}), expected "
                              f"({n_attr}, W): one row per attribute of att_splits.mat")
    if not np.all(np.isfinite(arr)):
        raise DataFormatError(f"{path}: attribute word vectors hold NaN/inf")
    return arr.astype(np.float32)


def map_image_path(stored: str, dataset: str, image_root: Path | None, root: Path) -> str:
    """Normalise ``//`` and map a stored path to the user's copy (spec §1.7).

    Without ``image_root``: relative paths are taken relative to the dataset folder, absolute ones as they are.
    With it: the path is cut at the dataset's anchor (CUB: after ``CUB_200_2011/``; SUN: from ``images/``;
    AWA1/2: after ``JPEGImages/``) and joined to ``image_root``; other datasets join their relative path.
    """
    p = stored.replace("\\", "/")
    while "//" in p:
        p = p.replace("//", "/")
    if image_root is None:
        return p if Path(p).is_absolute() else str(root / p)
    anchor = ANCHORS.get(dataset.upper())
    if anchor is None:
        return str(image_root / p.lstrip("/"))
    mode, key = anchor
    if mode == "after":
        i = p.find(key)
        tail = p[i + len(key):] if i >= 0 else None
    else:
        i = 0 if p.startswith(key) else p.find("/" + key) + 1
        tail = p[i:] if (i > 0 or p.startswith(key)) else None
    if tail is None:
        raise DataFormatError(f"image path '{stored}' does not contain the {dataset} anchor '{key}'")
    return str(image_root / tail)


def read_att_splits(path: str | Path) -> dict[str, Any]:
    """``att_splits.mat`` alone: class names, ``att``/``original_att`` (C x A float32), 0-based int64 locs."""
    path = Path(path)
    mat = _loadmat(path)
    class_names = _names(_field(mat, "allclasses_names", path))
    C = len(class_names)
    out: dict[str, Any] = {"class_names": class_names}
    for name in ("att", "original_att"):
        a = np.asarray(_field(mat, name, path), dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != C:
            raise DataFormatError(f"{path}: field '{name}' has shape {a.shape}, expected (A, {C}): one column per "
                                  "class of allclasses_names")
        if not np.all(np.isfinite(a)):
            raise DataFormatError(f"{path}: field '{name}' holds NaN/inf values")
        out[name] = a.T.astype(np.float32)
    if out["att"].shape != out["original_att"].shape:
        raise DataFormatError(f"{path}: 'att' {out['att'].shape[::-1]} and 'original_att' "
                              f"{out['original_att'].shape[::-1]} disagree")
    locs: dict[str, np.ndarray | None] = {k: _locs(_field(mat, k, path), path, k) for k in SPLIT_FIELDS}
    for k in ("train_loc", "val_loc"):
        locs[k] = _locs(mat[k], path, k) if k in mat else None
    out["locs"] = locs
    return out


# --------------------------------------------------------------------------------------------- the reader
def load_xlsa17(root: str | Path, dataset: str | None = None, *, semantics: str = "original_att",
                negative_att: str = "keep", image_root: str | Path | None = None, image_list: str | Path | None = None,
                features: str = "auto", w2v: str | Path | None = None, class_lists_dir: str | Path | None = None,
                check_images: int = 16) -> XLSA17Data:
    """Read and validate an xlsa17 dataset folder. See the module docstring and the README for the layout."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: dataset folder not found")
    dataset = (dataset or root.name).upper()
    if semantics not in ("original_att", "att"):
        raise DataFormatError(f"semantics: expected original_att or att, got {semantics!r}")
    if negative_att not in ("keep", "clamp0"):
        raise DataFormatError(f"negative_att: expected keep or clamp0, got {negative_att!r}")
    att_path = root / "att_splits.mat"
    splits = read_att_splits(att_path)
    class_names, atts, locs = splits["class_names"], splits, splits["locs"]
    C, A = len(class_names), splits["att"].shape[1]

    # the image list: explicit, res101.mat, image_list.json(.gz)
    if image_list is not None:
        list_path = Path(image_list)
    else:
        list_path = _find(root, ["res101.mat", "image_list.json", "image_list.json.gz"])  # type: ignore[assignment]
        if list_path is None:
            raise DataFormatError(f"{root}: no image list: looked for res101.mat, image_list.json, image_list.json.gz "
                                  "(or pass image_list=PATH)")
    il = _read_image_list(list_path)
    N = len(il["labels"])
    labels = il["labels"]
    if labels.size and (labels.min() < 0 or labels.max() >= C):
        raise DataFormatError(f"{list_path}: field 'labels' has class ids outside 1..{C} (1-based)")
    for k in SPLIT_FIELDS:
        if k in il and not np.array_equal(np.sort(il[k]), np.sort(locs[k])):
            raise DataFormatError(f"{list_path}: '{k}' disagrees with {att_path} (different image order?)")
    for k, v in locs.items():
        if v is not None and v.size and (v.min() < 0 or v.max() >= N):
            raise DataFormatError(f"{att_path}: field '{k}' has indices outside 1..{N} (the image list "
                                  f"{list_path.name} has {N} images): min {v.min() + 1}, max {v.max() + 1}")
    for i, a in enumerate(SPLIT_FIELDS):
        for b in SPLIT_FIELDS[i + 1:]:
            both = np.intersect1d(locs[a], locs[b])
            if both.size:
                raise DataFormatError(f"{att_path}: '{a}' and '{b}' share {both.size} images (first: {both[0] + 1})")
    seen = np.unique(labels[locs["trainval_loc"]])
    unseen = np.unique(labels[locs["test_unseen_loc"]])
    ts = np.unique(labels[locs["test_seen_loc"]])
    if not np.all(np.isin(ts, seen)):
        raise DataFormatError(f"{att_path}: test_seen_loc has classes that are not in trainval_loc: "
                              f"{[class_names[c] for c in np.setdiff1d(ts, seen)][:5]}")
    if np.intersect1d(seen, unseen).size:
        raise DataFormatError(f"{att_path}: classes in both trainval_loc and test_unseen_loc: "
                              f"{[class_names[c] for c in np.intersect1d(seen, unseen)][:5]}")

    # validation split from the file, else from the xlsa17 class lists (spec §1.6)
    if locs["train_loc"] is None or locs["val_loc"] is None:
        lists = Path(class_lists_dir) if class_lists_dir else root
        tl, vl = lists / "trainclasses1.txt", lists / "valclasses1.txt"
        if tl.is_file() and vl.is_file():
            pool = np.concatenate([locs["trainval_loc"], locs["test_seen_loc"]])
            for key, f in (("train_loc", tl), ("val_loc", vl)):
                wanted = _read_lines(f)
                unknown = [n for n in wanted if n not in class_names]
                if unknown:
                    raise DataFormatError(f"{f}: class names not in allclasses_names: {unknown[:5]}")
                ids = np.array([class_names.index(n) for n in wanted])
                locs[key] = np.sort(pool[np.isin(labels[pool], ids)])
        else:
            locs["train_loc"] = locs["val_loc"] = None

    if semantics == "att":
        class_attributes = atts["att"].copy()
    else:
        class_attributes = atts["original_att"].copy()
    if negative_att == "clamp0":
        class_attributes = np.maximum(class_attributes, 0)

    w2v_path = Path(w2v) if w2v else _find(root, ["*_attribute.npy", "*_attribute.pkl"])
    embeddings = _load_w2v(w2v_path, A) if w2v_path is not None else None
    names_file = root / "attributes.txt"
    attribute_names = None
    if names_file.is_file():
        lines = _read_lines(names_file)
        attribute_names = [ln.split(maxsplit=1)[1] if ln.split(maxsplit=1)[0].isdigit() and " " in ln else ln
                           for ln in lines]
        if len(attribute_names) != A:
            raise DataFormatError(f"{names_file}: {len(attribute_names)} names for {A} attributes")

    img_root = Path(image_root) if image_root else None
    files = [map_image_path(f, dataset, img_root, root) for f in il["image_files"]]
    for i, (f, stored) in enumerate(zip(files[:check_images] if check_images else [], il["image_files"])):
        if not Path(f).is_file():
            raise DataFormatError(f"image {i} not found: {f} (stored as '{stored}' in {list_path}); "
                                  "set data.image_root to the folder the paths are relative to")
    feats = il["features"] if features in ("auto", "res101") else None
    return XLSA17Data(
        root=root, dataset=dataset, class_names=class_names, att=atts["att"], original_att=atts["original_att"],
        semantics=semantics, class_attributes=class_attributes.astype(np.float32), image_files=files,
        labels=labels, features=feats, trainval_loc=locs["trainval_loc"], test_seen_loc=locs["test_seen_loc"],
        test_unseen_loc=locs["test_unseen_loc"], train_loc=locs["train_loc"], val_loc=locs["val_loc"],
        seen_classes=seen, unseen_classes=unseen, attribute_embeddings=embeddings, attribute_names=attribute_names,
    )


def check_xlsa17(root: str | Path, **kwargs: Any) -> list[str]:
    """Load with every image checked and return a readable report; raises :class:`DataFormatError` on a problem."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.setdefault("check_images", 0)
    data = load_xlsa17(root, **kwargs)
    missing = [f for f in (data.image_files or []) if not Path(f).is_file()]
    if missing and (kwargs.get("image_root") or not kwargs.get("check_images")):
        raise DataFormatError(f"{len(missing)} of {data.n_images} images are missing, e.g. {missing[0]}")
    d = data
    lines = [
        f"dataset {d.dataset} at {d.root}",
        f"classes {d.n_classes} (seen {len(d.seen_classes)}, unseen {len(d.unseen_classes)}), "
        f"attributes {d.n_attributes} ({d.semantics})",
        f"images {d.n_images}: trainval {len(d.trainval_loc)}, test_seen {len(d.test_seen_loc)}, "
        f"test_unseen {len(d.test_unseen_loc)}; all {d.n_images - len(missing)} image files found",
    ]
    if d.train_loc is not None:
        lines.append(f"validation split: train_loc {len(d.train_loc)} ({len(np.unique(d.labels[d.train_loc]))} classes), "
                     f"val_loc {len(d.val_loc)} ({len(np.unique(d.labels[d.val_loc]))} classes)")
    else:
        lines.append("validation split: none (no train_loc/val_loc and no trainclasses1.txt/valclasses1.txt)")
    lines.append(f"features: {'res101 ' + str(d.features.shape) if d.features is not None else 'none'}; "
                 f"attribute word vectors: "
                 f"{'none' if d.attribute_embeddings is None else str(d.attribute_embeddings.shape)}")
    return lines


# --------------------------------------------------------------------------------------------- torch datasets
class ImageListDataset(Dataset):
    """(image tensor, label) from file paths; a missing or unreadable image is an error naming the path."""

    def __init__(self, paths: list[str], labels: np.ndarray, transform: Any = None) -> None:
        self.paths, self.labels, self.transform = list(paths), np.asarray(labels, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image, UnidentifiedImageError

        path = self.paths[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except FileNotFoundError:
            raise DataFormatError(f"image not found: {path}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataFormatError(f"image unreadable: {path} ({exc})") from None
        return (self.transform(img) if self.transform else img), int(self.labels[i])


class FeatureDataset(Dataset):
    """(feature vector, label) rows of an N x D array."""

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]
