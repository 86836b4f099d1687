"""The xlsa17 "proposed split" reader (CUB, SUN, AWA2, AWA1, APY and the embedded SHAPES world).

Contract (the xlsa17 files of Xian et al.): ``att_splits.mat`` holds the class attributes (A x C) and
1-based uint16 split locations into the image order of ``res101.mat`` (or of a JSON image list in the same
order). Every index array is cast to int64 and made 0-based exactly once, here, then validated. Class ids are
0-based indices into ``allclasses_names``; seen = classes of ``trainval_loc``, unseen = classes of
``test_unseen_loc``.

Public API: :func:`load_xlsa17` -> :class:`XLSA17Data`, :func:`check_xlsa17` (a readable report),
:func:`read_att_splits` (``att_splits.mat`` alone), :func:`map_image_path`, :class:`ImageListDataset`,
:class:`FeatureDataset`. Every problem with a data file raises :class:`unseen.io.DataFormatError` whose message
names the file and the field.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unseen.io import DataFormatError, read_image, safe_pickle_load

SPLIT_FIELDS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")
VAL_FIELDS = ("train_loc", "val_loc")
IMAGE_LIST_NAMES = ("res101.mat", "image_list.json", "image_list.json.gz")
CLASS_LIST_FILES = ("trainclasses1.txt", "valclasses1.txt")
# where a stored image path is cut and joined to the user's image root (an anchor, not a component count, so
# that the absolute server paths of res101.mat and the relative lists both map):
# "after": the part after the anchor; "from": the anchor folder and everything below it.
ANCHORS: dict[str, tuple[str, str]] = {
    "CUB": ("after", "CUB_200_2011/"),
    "SUN": ("from", "images/"),
    "AWA2": ("after", "JPEGImages/"),
    "AWA1": ("after", "JPEGImages/"),
}


# --------------------------------------------------------------------------------------------- containers
@dataclass
class ValidationSplit:
    """The class split used to choose epochs and gamma (xlsa17 train_loc / val_loc, never test). Indices are
    0-based image rows."""

    train: np.ndarray  # train_loc minus val_seen: what the calibration model trains on
    val_seen: np.ndarray  # seeded per-class hold-out of train_loc (seen classes at validation time)
    val_unseen: np.ndarray  # val_loc (the validation classes play the unseen classes)
    seen_classes: np.ndarray  # class ids of train_loc, sorted
    unseen_classes: np.ndarray  # class ids of val_loc, sorted


@dataclass
class XLSA17Data:
    root: Path
    dataset: str
    class_names: list[str]  # C, allclasses_names order (= the class ids)
    att: np.ndarray  # C x A float32 (the file's columns, L2-normalised)
    original_att: np.ndarray  # C x A float32, raw
    semantics: str  # "original_att" | "att": which one class_attributes is
    class_attributes: (
        np.ndarray
    )  # C x A float32 given to the models (negatives clamped with negative_att=clamp0)
    image_files: list[str] | None  # N paths (mapped to image_root / root where that applies)
    labels: np.ndarray  # N int64, 0-based class ids
    features: np.ndarray | None  # N x D float32 (res101.mat)
    trainval_loc: np.ndarray  # int64, 0-based image rows
    test_seen_loc: np.ndarray
    test_unseen_loc: np.ndarray
    train_loc: np.ndarray | None  # validation class split (file, or derived from the class lists)
    val_loc: np.ndarray | None
    seen_classes: np.ndarray  # sorted int64
    unseen_classes: np.ndarray  # sorted int64
    attribute_embeddings: np.ndarray | None  # A x W float32 word vectors
    attribute_names: list[str] | None
    val_split_source: str = ""  # "<file>" the train_loc/val_loc came from, or "" when there is none
    val_split_problem: str = ""  # why there is no validation split (the missing files)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_attributes(self) -> int:
        return int(self.class_attributes.shape[1])

    @property
    def n_images(self) -> int:
        return int(len(self.labels))

    def _val_locs(self) -> tuple[np.ndarray, np.ndarray]:
        """``train_loc``, ``val_loc``, or the error saying why there is no validation split."""
        if self.train_loc is None or self.val_loc is None:
            raise DataFormatError(
                self.val_split_problem or f"{self.root}: no validation split (train_loc/val_loc)"
            )
        return self.train_loc, self.val_loc

    def validation_split(self, holdout: float = 0.2, seed: int = 0) -> ValidationSplit:
        """val-unseen = ``val_loc``; val-seen = a seeded per-class ``holdout`` fraction of ``train_loc`` (at least
        one image of every class that has two or more); train = the rest of ``train_loc``."""
        train_loc, val_loc = self._val_locs()
        if not 0.0 <= float(holdout) < 1.0:
            raise ValueError(f"validation holdout must be in [0, 1), got {holdout}")
        rng = np.random.default_rng(seed)
        train_loc = np.sort(train_loc)
        lab = self.labels[train_loc]
        held: list[np.ndarray] = []
        for c in np.unique(lab):
            rows = train_loc[lab == c]
            n = len(rows)
            k = 0
            if holdout > 0 and n >= 2:
                k = min(max(int(round(holdout * n)), 1), n - 1)
            if k:
                held.append(rng.choice(rows, size=k, replace=False))
        val_seen = np.sort(np.concatenate(held)).astype(np.int64) if held else np.zeros(0, np.int64)
        train = np.setdiff1d(train_loc, val_seen).astype(np.int64)
        val_unseen = np.sort(val_loc).astype(np.int64)
        return ValidationSplit(
            train,
            val_seen,
            val_unseen,
            np.unique(lab).astype(np.int64),
            np.unique(self.labels[val_unseen]).astype(np.int64),
        )

    def validation_level(self, holdout: float = 0.2, seed: int = 0) -> XLSA17Data:
        """The same benchmark one level down, for choosing protocol options without the test set: the validation
        classes play the unseen test classes (test_unseen = ``val_loc``, test_seen = the val-seen hold-out,
        trainval = the calibration run's training images) and a seeded subset of the training classes, in the
        proportion of val to train+val classes, plays ``val_loc``. No test image is in it: xlsa17's ``train_loc``
        and ``val_loc`` also hold the ``test_seen_loc`` images, so both are first cut to ``trainval_loc``."""
        train_loc, val_loc = self._val_locs()
        inside = dataclasses.replace(
            self,
            train_loc=np.intersect1d(train_loc, self.trainval_loc),
            val_loc=np.intersect1d(val_loc, self.trainval_loc),
        )
        split = inside.validation_split(holdout, seed)
        seen, unseen = split.seen_classes, split.unseen_classes
        n_pseudo = int(round(len(seen) * len(unseen) / (len(seen) + len(unseen))))
        if not 0 < n_pseudo < len(seen):
            raise DataFormatError(
                f"{self.root}: {len(seen)} training classes are too few for a validation-level split"
            )
        pseudo = np.sort(np.random.default_rng(seed).choice(seen, size=n_pseudo, replace=False))
        in_pseudo = np.isin(self.labels[split.train], pseudo)
        return dataclasses.replace(
            self,
            trainval_loc=split.train,
            test_seen_loc=split.val_seen,
            test_unseen_loc=split.val_unseen,
            train_loc=split.train[~in_pseudo],
            val_loc=split.train[in_pseudo],
            seen_classes=seen,
            unseen_classes=unseen,
            val_split_source=f"validation level of {self.val_split_source or self.root} (seed {seed})",
        )


# --------------------------------------------------------------------------------------------- low-level readers
def _loadmat(path: Path) -> dict[str, Any]:
    import scipy.io

    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5)
        raise DataFormatError(
            f"{path}: MATLAB v7.3 files are not supported; save it with -v7 ({exc})"
        ) from exc
    except Exception as exc:
        raise DataFormatError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from exc


def _field(mat: dict[str, Any], name: str, path: Path) -> Any:
    if name not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataFormatError(
            f"{path}: field '{name}' is missing (fields found: {', '.join(found) or 'none'})"
        )
    return mat[name]


def _indices(x: Any, path: Path, name: str, base: int) -> np.ndarray:
    """Any index array (uint16 N x 1, doubles, a JSON list) -> 0-based int64 vector, done exactly once."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists
        raise DataFormatError(f"{path}: field '{name}' is not an index array ({exc})") from exc
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise DataFormatError(f"{path}: field '{name}' must hold integer indices, got dtype {arr.dtype}")
    arr = arr.ravel()
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataFormatError(f"{path}: field '{name}' holds non-integer or NaN indices")
    # int64 first (uint16 would wrap on any subtraction), then the base shift
    return arr.astype(np.int64) - int(base)


def _cell_strings(cells: Any) -> list[str]:
    out = []
    for c in np.asarray(cells, dtype=object).ravel():
        v = np.squeeze(np.asarray(c))
        out.append(str(v) if v.size else "")
    return out


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc})") from exc
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _finite(arr: np.ndarray, path: Path, name: str) -> None:
    if arr.size and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise DataFormatError(
            f"{path}: field '{name}' holds NaN/inf values (first at index {tuple(int(b) for b in bad)})"
        )


def read_att_splits(path: str | Path) -> dict[str, Any]:
    """``att_splits.mat`` alone -> ``class_names``, ``att`` / ``original_att`` (C x A float32) and ``locs``
    (0-based int64 arrays for the three split fields, plus ``train_loc`` / ``val_loc`` or None)."""
    path = Path(path)
    mat = _loadmat(path)
    class_names = _cell_strings(_field(mat, "allclasses_names", path))
    C = len(class_names)
    if C == 0:
        raise DataFormatError(f"{path}: field 'allclasses_names' is empty")
    if len(set(class_names)) != C:
        dup = sorted({n for n in class_names if class_names.count(n) > 1})
        raise DataFormatError(f"{path}: field 'allclasses_names' has duplicate names: {dup[:5]}")
    out: dict[str, Any] = {"class_names": class_names}
    for name in ("att", "original_att"):
        raw = _field(mat, name, path)
        try:
            a = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataFormatError(f"{path}: field '{name}' is not numeric ({exc})") from exc
        if a.ndim != 2 or a.shape[1] != C:
            raise DataFormatError(
                f"{path}: field '{name}' has shape {a.shape}, expected (A, {C}): one column per "
                "class of allclasses_names"
            )
        _finite(a, path, name)
        out[name] = np.ascontiguousarray(a.T, dtype=np.float32)
    if out["att"].shape != out["original_att"].shape:
        raise DataFormatError(
            f"{path}: fields 'att' {out['att'].T.shape} and 'original_att' "
            f"{out['original_att'].T.shape} have different shapes"
        )
    locs: dict[str, np.ndarray | None] = {k: _indices(_field(mat, k, path), path, k, 1) for k in SPLIT_FIELDS}
    for k in VAL_FIELDS:
        locs[k] = _indices(mat[k], path, k, 1) if k in mat else None
    if (locs["train_loc"] is None) != (locs["val_loc"] is None):
        have, miss = ("train_loc", "val_loc") if locs["train_loc"] is not None else ("val_loc", "train_loc")
        raise DataFormatError(f"{path}: field '{miss}' is missing although '{have}' is present")
    out["locs"] = locs
    return out


def _read_image_list(path: Path, want_features: bool) -> dict[str, Any]:
    """res101.mat or a JSON(.gz) list in the fixture layout -> image_files, 0-based labels, optional 0-based locs
    (JSON) and optional N x D float32 features (res101.mat)."""
    name = path.name.lower()
    if name.endswith(".mat"):
        mat = _loadmat(path)
        files = _cell_strings(_field(mat, "image_files", path))
        labels = _indices(_field(mat, "labels", path), path, "labels", 1)
        if len(labels) != len(files):
            raise DataFormatError(
                f"{path}: field 'labels' has {len(labels)} entries, 'image_files' {len(files)}"
            )
        out: dict[str, Any] = {"image_files": files, "labels": labels, "features": None}
        if want_features and "features" in mat:
            feats = np.asarray(mat["features"])
            N = len(files)
            if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.number) or N not in feats.shape:
                raise DataFormatError(
                    f"{path}: field 'features' has shape {feats.shape} ({feats.dtype}), expected "
                    f"numeric D x {N} (one column per image)"
                )
            feats = feats.T if feats.shape[1] == N else feats
            feats = np.ascontiguousarray(feats, dtype=np.float32)
            _finite(feats, path, "features")
            out["features"] = feats
        return out
    if not (name.endswith(".json") or name.endswith(".json.gz")):
        raise DataFormatError(f"{path}: unknown image list format (expected res101.mat, .json or .json.gz)")
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
        if name.endswith(".gz"):
            raw = gzip.decompress(raw)
        obj = json.loads(raw)
    except Exception as exc:
        raise DataFormatError(
            f"{path}: not a readable JSON image list ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(obj, dict):
        raise DataFormatError(
            f"{path}: expected a JSON object with keys image_files, labels, ..., got {type(obj).__name__}"
        )
    for key in ("image_files", "labels"):
        if key not in obj:
            raise DataFormatError(
                f"{path}: field '{key}' is missing (fields found: {', '.join(sorted(obj))})"
            )
    try:
        base = int(obj.get("index_base", 0))
    except (TypeError, ValueError):
        raise DataFormatError(
            f"{path}: field 'index_base' must be 0 or 1, got {obj.get('index_base')!r}"
        ) from None
    if base not in (0, 1):
        raise DataFormatError(f"{path}: field 'index_base' must be 0 or 1, got {base}")
    if not isinstance(obj["image_files"], list) or not all(isinstance(f, str) for f in obj["image_files"]):
        raise DataFormatError(f"{path}: field 'image_files' must be a list of strings")
    out = {
        "image_files": list(obj["image_files"]),
        "labels": _indices(obj["labels"], path, "labels", base),
        "features": None,
    }
    if len(out["labels"]) != len(out["image_files"]):
        raise DataFormatError(
            f"{path}: field 'labels' has {len(out['labels'])} entries, 'image_files' "
            f"{len(out['image_files'])}"
        )
    for key in SPLIT_FIELDS:
        if key in obj:
            out[key] = _indices(obj[key], path, key, base)
    return out


def _first_match(root: Path, patterns: tuple[str, ...]) -> Path | None:
    for pat in patterns:
        hits = sorted(p for p in root.glob(pat) if p.is_file())
        if hits:
            return hits[0]
    return None


def load_attribute_vectors(path: str | Path, n_attributes: int) -> np.ndarray:
    """Attribute word vectors (A x W) from ``.npy`` (no pickles) or a pickle (restricted, numpy-only unpickler)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found (attribute word vectors)")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DataFormatError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from exc
    else:
        arr = safe_pickle_load(path)  # UnsafeFileError for anything that is not numpy / plain containers
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number):
        raise DataFormatError(
            f"{path}: expected a numeric array of attribute word vectors, got "
            f"{type(arr).__name__}{'' if not isinstance(arr, np.ndarray) else ' ' + str(arr.dtype)}"
        )
    if arr.ndim != 2:
        raise DataFormatError(f"{path}: attribute word vectors must be 2-D (A, W), got shape {arr.shape}")
    if arr.shape[0] != n_attributes:
        raise DataFormatError(
            f"{path}: wrong attribute dimension: got {arr.shape[0]} rows (shape {arr.shape}), "
            f"expected {n_attributes} (one row per attribute of att_splits.mat)"
        )
    _finite(arr, path, "word vectors")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _read_attribute_names(path: Path, n_attributes: int) -> list[str]:
    names = []
    for ln in _read_lines(path):
        parts = ln.split(maxsplit=1)
        names.append(parts[1].strip() if len(parts) == 2 and parts[0].isdigit() else ln)
    if len(names) != n_attributes:
        raise DataFormatError(f"{path}: {len(names)} attribute names, expected {n_attributes} (rows of att)")
    return names


# --------------------------------------------------------------------------------------------- image paths
def _normalise(stored: str) -> str:
    p = stored.strip().replace("\\", "/")
    while "//" in p:
        p = p.replace("//", "/")
    return p


def _anchor_tail(p: str, mode: str, key: str) -> str | None:
    """Cut a normalised path at the last occurrence of the anchor folder ``key`` (a whole path component)."""
    # lookbehind (start or after "/"), not consuming: finds CUB_200_2011/CUB_200_2011/ twice
    hits = [m.start() for m in re.finditer(r"(?<![^/])" + re.escape(key), p)]
    if not hits:
        return None
    if (
        mode == "from"
    ):  # SUN: images/<letter>/<scene>/...; prefer an occurrence followed by a one-letter folder
        hits = [h for h in hits if re.match(r"[^/]/", p[h + len(key) :])] or hits
    pos = hits[-1]
    return p[pos + len(key) :] if mode == "after" else p[pos:]


def map_image_path(stored: str, dataset: str, image_root: str | Path | None, root: str | Path) -> str:
    """Map a stored image path to the user's copy.

    ``//`` is normalised to ``/``. With ``image_root`` and a known dataset the path is cut at its anchor (CUB:
    after ``CUB_200_2011/``; SUN: from ``images/`` on; AWA1/AWA2: after ``JPEGImages/``) and joined to
    ``image_root``; other datasets join a relative path to ``image_root``. Without ``image_root`` relative paths
    are relative to the dataset folder ``root`` and absolute ones are kept.
    """
    p = _normalise(stored)
    if image_root is None:
        return p if p.startswith("/") or Path(p).is_absolute() else str(Path(root) / p)
    image_root = Path(image_root)
    anchor = ANCHORS.get(dataset.upper())
    if anchor is None:
        return p if Path(p).is_absolute() else str(image_root / p)
    mode, key = anchor
    tail = _anchor_tail(p, mode, key)
    if tail is None or not tail.strip("/"):
        where = "the part after" if mode == "after" else "the part from"
        raise DataFormatError(
            f"image path '{stored}' does not contain the {dataset} anchor folder '{key}' "
            f"({where} it is joined to image_root {image_root})"
        )
    return str(image_root / tail.lstrip("/"))


# --------------------------------------------------------------------------------------------- validation
def _validate(
    att_path: Path,
    list_path: Path,
    class_names: list[str],
    labels: np.ndarray,
    locs: dict[str, np.ndarray | None],
) -> tuple[np.ndarray, np.ndarray]:
    C, N = len(class_names), len(labels)
    if N == 0:
        raise DataFormatError(f"{list_path}: the image list is empty")
    if labels.min() < 0 or labels.max() >= C:
        bad = int(np.flatnonzero((labels < 0) | (labels >= C))[0])
        raise DataFormatError(
            f"{list_path}: field 'labels': image {bad} has class id {labels[bad]} (0-based), "
            f"expected 0..{C - 1} ({C} classes in {att_path.name})"
        )
    for k, v in locs.items():
        if v is None:
            continue
        if v.size and (v.min() < 0 or v.max() >= N):
            bad = v[(v < 0) | (v >= N)][0]
            raise DataFormatError(
                f"{att_path}: field '{k}': index {bad + 1} (1-based) is out of range 1..{N} "
                f"(the image list {list_path} has {N} images)"
            )
        if len(np.unique(v)) != len(v):
            raise DataFormatError(f"{att_path}: field '{k}' lists {len(v) - len(np.unique(v))} images twice")
    for i, a in enumerate(SPLIT_FIELDS):
        for b in SPLIT_FIELDS[i + 1 :]:
            both = np.intersect1d(locs[a], locs[b])
            if both.size:
                raise DataFormatError(
                    f"{att_path}: fields '{a}' and '{b}' overlap: {both.size} shared images "
                    f"(first: {both[0] + 1}, 1-based); the three splits must be disjoint"
                )
    if not len(locs["trainval_loc"]):
        raise DataFormatError(f"{att_path}: field 'trainval_loc' is empty")
    seen = np.unique(labels[locs["trainval_loc"]]).astype(np.int64)
    unseen = np.unique(labels[locs["test_unseen_loc"]]).astype(np.int64)
    ts = np.unique(labels[locs["test_seen_loc"]])
    if len(ts) and not np.array_equal(ts, seen):
        extra = [class_names[c] for c in np.setdiff1d(ts, seen)][:5]
        absent = [class_names[c] for c in np.setdiff1d(seen, ts)][:5]
        raise DataFormatError(
            f"{att_path}: field 'test_seen_loc': its classes differ from those of trainval_loc "
            f"(not in trainval: {extra}; without test images: {absent})"
        )
    common = np.intersect1d(seen, unseen)
    if common.size:
        raise DataFormatError(
            f"{att_path}: field 'test_unseen_loc': classes also in trainval_loc: "
            f"{[class_names[c] for c in common][:5]}"
        )
    return seen, unseen


def _check_val_split(src: str, labels: np.ndarray, locs: dict[str, np.ndarray | None]) -> None:
    tr, va = locs["train_loc"], locs["val_loc"]
    assert tr is not None and va is not None
    pool = np.concatenate([locs["trainval_loc"], locs["test_seen_loc"]])  # type: ignore[list-item]
    for k, v in (("train_loc", tr), ("val_loc", va)):
        outside = np.setdiff1d(v, pool)
        if outside.size:
            raise DataFormatError(
                f"{src}: field '{k}' has {outside.size} images outside trainval_loc ∪ "
                f"test_seen_loc (first: {outside[0] + 1}, 1-based)"
            )
    if not len(tr) or not len(va):
        raise DataFormatError(
            f"{src}: the validation split is empty (train_loc {len(tr)}, val_loc {len(va)} images)"
        )
    common = np.intersect1d(np.unique(labels[tr]), np.unique(labels[va]))
    if common.size:
        raise DataFormatError(
            f"{src}: fields 'train_loc' and 'val_loc' share classes ({common.size}, e.g. class "
            f"{int(common[0])}); the validation split is a class split"
        )


def _derive_val_split(
    lists_dir: Path, class_names: list[str], labels: np.ndarray, locs: dict[str, np.ndarray | None]
) -> tuple[str, str]:
    """train_loc / val_loc from trainclasses1.txt / valclasses1.txt (images of trainval + test_seen by class;
    this reproduces the official SUN train_loc). Returns (source, problem)."""
    files = [lists_dir / f for f in CLASS_LIST_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        return "", (
            f"no validation split: att_splits.mat has no train_loc/val_loc and the xlsa17 class lists are "
            f"missing: {', '.join(missing)} (put trainclasses1.txt and valclasses1.txt next to "
            "att_splits.mat or set class_lists_dir)"
        )
    index = {n: i for i, n in enumerate(class_names)}
    pool = np.concatenate([locs["trainval_loc"], locs["test_seen_loc"]])  # type: ignore[list-item]
    seen = set(np.unique(labels[locs["trainval_loc"]]).tolist())
    for key, f in zip(VAL_FIELDS, files):
        wanted = _read_lines(f)
        unknown = [n for n in wanted if n not in index]
        if unknown:
            raise DataFormatError(
                f"{f}: class names not in allclasses_names of att_splits.mat: {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''}"
            )
        ids = np.array(sorted({index[n] for n in wanted}), dtype=np.int64)
        not_seen = [class_names[i] for i in ids if int(i) not in seen]
        if not_seen:
            raise DataFormatError(
                f"{f}: classes that are not seen classes (not in trainval_loc): {not_seen[:5]}"
            )
        locs[key] = np.sort(pool[np.isin(labels[pool], ids)]).astype(np.int64)
    return f"{files[0]}, {files[1]}", ""


# --------------------------------------------------------------------------------------------- the reader
def _check_paths(files: list[str], stored: list[str], list_path: Path, limit: int) -> None:
    """The first ``limit`` paths must exist (negative: all of them, and the error counts the missing ones)."""
    n = len(files) if limit < 0 else min(limit, len(files))
    missing = [i for i in range(n) if not Path(files[i]).is_file()] if limit < 0 else []
    for i in missing[:1] if limit < 0 else range(n):
        if not Path(files[i]).is_file():
            count = f"{len(missing)} of {len(files)} images are missing; first: " if limit < 0 else ""
            raise DataFormatError(
                f"{list_path}: field 'image_files': {count}image {i} not found: {files[i]} (stored "
                f"as '{stored[i]}'); set image_root to the folder the stored paths map to (or "
                "check_images=0 for a features-only run)"
            )


def load_xlsa17(
    root: str | Path,
    dataset: str | None = None,
    *,
    semantics: str = "original_att",
    negative_att: str = "keep",
    image_root: str | Path | None = None,
    image_list: str | Path | None = None,
    features: str = "auto",
    w2v: str | Path | None = None,
    class_lists_dir: str | Path | None = None,
    check_images: int = 16,
) -> XLSA17Data:
    """Read and validate an xlsa17 dataset folder.

    ``root`` holds ``att_splits.mat``; the dataset name defaults to the folder name upper-cased. The image list
    is ``image_list`` (res101.mat or JSON/JSON.gz), else ``root/res101.mat``, else ``root/image_list.json(.gz)``.
    ``features``: "auto" (res101 features when present), "require" (error without them) or "none".
    ``check_images``: how many of the first image paths must exist (0 = no check, negative = all).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: dataset folder not found")
    dataset = (dataset or root.name).upper()
    if semantics not in ("original_att", "att"):
        raise ValueError(f"semantics: expected 'original_att' or 'att', got {semantics!r}")
    if negative_att not in ("keep", "clamp0"):
        raise ValueError(f"negative_att: expected 'keep' or 'clamp0', got {negative_att!r}")
    if features not in ("auto", "require", "none"):
        raise ValueError(f"features: expected 'auto', 'require' or 'none', got {features!r}")

    att_path = root / "att_splits.mat"
    splits = read_att_splits(att_path)
    class_names: list[str] = splits["class_names"]
    locs: dict[str, np.ndarray | None] = splits["locs"]
    A = int(splits["att"].shape[1])

    # image list: explicit, res101.mat, image_list.json(.gz)
    if image_list is not None:
        list_path = Path(image_list)
        if not list_path.is_file():
            raise DataFormatError(f"{list_path}: image list not found")
    else:
        found = [root / n for n in IMAGE_LIST_NAMES if (root / n).is_file()]
        if not found:
            raise DataFormatError(
                f"{root}: no image list: looked for {', '.join(str(root / n) for n in IMAGE_LIST_NAMES)}"
                " (or pass image_list=PATH to a res101.mat or a JSON list)"
            )
        list_path = found[0]
    il = _read_image_list(list_path, want_features=features != "none")
    labels: np.ndarray = il["labels"]
    for k in SPLIT_FIELDS:
        if k in il and not np.array_equal(np.sort(il[k]), np.sort(locs[k])):  # type: ignore[arg-type]
            raise DataFormatError(
                f"{list_path}: field '{k}' disagrees with '{k}' of {att_path} "
                f"({len(il[k])} vs {len(locs[k])} images; different image order?)"
            )  # type: ignore[arg-type]
    if il["features"] is None and features == "require":
        raise DataFormatError(f"{list_path}: field 'features' is missing (features='require')")
    seen, unseen = _validate(att_path, list_path, class_names, labels, locs)

    # validation class split: from the file, else from the xlsa17 class lists (CUB's copy has no train_loc)
    if locs["train_loc"] is not None:
        val_source, val_problem = str(att_path), ""
    else:
        lists_dir = Path(class_lists_dir) if class_lists_dir else root
        val_source, val_problem = _derive_val_split(lists_dir, class_names, labels, locs)
    if val_source:
        _check_val_split(val_source, labels, locs)

    class_attributes = (splits["att"] if semantics == "att" else splits["original_att"]).copy()
    if negative_att == "clamp0":
        class_attributes = np.maximum(class_attributes, 0.0)

    w2v_path = Path(w2v) if w2v else _first_match(root, ("*_attribute.npy", "*_attribute.pkl"))
    embeddings = load_attribute_vectors(w2v_path, A) if w2v_path is not None else None
    names_file = root / "attributes.txt"
    attribute_names = _read_attribute_names(names_file, A) if names_file.is_file() else None

    stored = il["image_files"]
    files = []
    for i, s in enumerate(stored):
        try:
            files.append(map_image_path(s, dataset, image_root, root))
        except DataFormatError as exc:
            raise DataFormatError(f"{list_path}: field 'image_files': image {i}: {exc}") from None
    if check_images:
        _check_paths(files, stored, list_path, check_images)

    return XLSA17Data(
        root=root,
        dataset=dataset,
        class_names=class_names,
        att=splits["att"],
        original_att=splits["original_att"],
        semantics=semantics,
        class_attributes=np.ascontiguousarray(class_attributes, dtype=np.float32),
        image_files=files,
        labels=labels,
        features=il["features"],
        trainval_loc=locs["trainval_loc"],  # type: ignore[arg-type]
        test_seen_loc=locs["test_seen_loc"],
        test_unseen_loc=locs["test_unseen_loc"],  # type: ignore[arg-type]
        train_loc=locs["train_loc"],
        val_loc=locs["val_loc"],
        seen_classes=seen,
        unseen_classes=unseen,
        attribute_embeddings=embeddings,
        attribute_names=attribute_names,
        val_split_source=val_source,
        val_split_problem=val_problem,
    )


def check_xlsa17(root: str | Path, **kwargs: Any) -> list[str]:
    """Load with every image path checked and return readable report lines; raises :class:`DataFormatError`
    with the precise problem otherwise. Takes the keyword arguments of :func:`load_xlsa17` (None = default)."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs["check_images"] = -1
    holdout = float(kwargs.pop("holdout", 0.2))
    d = load_xlsa17(root, **kwargs)
    n_cls = lambda idx: len(np.unique(d.labels[idx]))  # noqa: E731
    lines = [
        f"dataset {d.dataset} at {d.root}",
        f"classes {d.n_classes} (seen {len(d.seen_classes)}, unseen {len(d.unseen_classes)}); "
        f"attributes {d.n_attributes} (semantics {d.semantics})",
        f"images {d.n_images}, all {len(d.image_files or [])} image files found",
        f"splits: trainval {len(d.trainval_loc)}, test_seen {len(d.test_seen_loc)}, "
        f"test_unseen {len(d.test_unseen_loc)}",
    ]
    if d.train_loc is not None and d.val_loc is not None:
        vs = d.validation_split(holdout)
        lines.append(
            f"validation class split ({d.val_split_source}): train_loc {len(d.train_loc)} images "
            f"({n_cls(d.train_loc)} classes), val_loc {len(d.val_loc)} images ({n_cls(d.val_loc)} classes)"
        )
        lines.append(
            f"validation run: train {len(vs.train)}, val-seen {len(vs.val_seen)} ({holdout:.0%} per-class "
            f"hold-out, {len(vs.seen_classes)} classes), val-unseen {len(vs.val_unseen)} "
            f"({len(vs.unseen_classes)} classes)"
        )
    else:
        lines.append(f"WARNING {d.val_split_problem}")
    lines.append(
        "features: "
        + ("none" if d.features is None else f"res101 {d.features.shape[0]} x {d.features.shape[1]}")
    )
    lines.append(
        "attribute word vectors: "
        + (
            "none"
            if d.attribute_embeddings is None
            else f"{d.attribute_embeddings.shape[0]} x {d.attribute_embeddings.shape[1]}"
        )
    )
    lines.append("attribute names: " + ("none" if d.attribute_names is None else f"{len(d.attribute_names)}"))
    return lines


# --------------------------------------------------------------------------------------------- torch datasets
class ImageListDataset(Dataset):
    """(image, label) from file paths: PIL, converted to RGB, then ``transform``. A missing or unreadable image
    raises :class:`DataFormatError` naming the path (never skipped)."""

    def __init__(self, paths: list[str], labels: Any, transform: Any = None) -> None:
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64).ravel()
        if len(self.paths) != len(self.labels):
            raise ValueError(f"ImageListDataset: {len(self.paths)} paths but {len(self.labels)} labels")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = read_image(self.paths[i])
        return (self.transform(img) if self.transform is not None else img), int(self.labels[i])


class FeatureDataset(Dataset):
    """(float32 feature tensor, label) rows of an N x D array."""

    def __init__(self, features: np.ndarray, labels: Any) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64).ravel())
        if self.x.ndim != 2 or len(self.x) != len(self.y):
            raise ValueError(
                f"FeatureDataset: features {tuple(self.x.shape)} do not match {len(self.y)} labels"
            )

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


__all__ = [
    "ANCHORS",
    "FeatureDataset",
    "ImageListDataset",
    "ValidationSplit",
    "XLSA17Data",
    "check_xlsa17",
    "load_attribute_vectors",
    "load_xlsa17",
    "map_image_path",
    "read_att_splits",
]
