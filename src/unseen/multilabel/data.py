"""Multi-label ZSL readers: NUS-WIDE and Open Images V4 label spaces, the NUS GloVe vectors, BiAM-layout h5 features.

Contract (the BiAM / LESA data conventions, so that their files load as distributed):

* Label order is always the GZSL order ``[seen | unseen]``. NUS-WIDE: the 925 tags of ``TagList1k.txt`` that are not
  in ``Concepts81.txt`` (TagList1k order), then the 81 concepts (Concepts81 order) = 1,006. Open Images V4: the
  7,186 MIDs of ``classes-trainable.txt``, then the 400 unseen MIDs picked by ``top_400_unseen.csv`` (0-based indices
  into the 2,594 of ``unseen_labels.pkl``, in that file's order) = 7,586.
* Labels are int8 in {+1, -1, 0} (0 = unknown).
* Word vectors: the BiAM/LESA GloVe-300 pickle (raw), rows L2-normalised at load with an epsilon.
* Features: BiAM-layout h5, one gzip dataset per key: ``<name>-features`` float32 (512, 196) = channels x regions
  and ``<name>-<label_key>`` int8. Read lazily, one handle per worker; a missing key is an error, never skipped.

Public API: :class:`LabelSpace`, :func:`load_nus_wide_labels`, :func:`load_nus_wide_glove`,
:func:`load_open_images_labels`, :func:`open_images_h5_labels`, :class:`BiAMH5Dataset`, :func:`h5_name`,
:func:`load_biam_names`, :func:`write_biam_h5`, :func:`check_multilabel`. Every problem with a data file raises
:class:`unseen.io.DataFormatError` (or :class:`unseen.io.UnsafeFileError` for a pickle that asks for code) whose
message names the file and the field.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unseen.io import DataFormatError, atomic_path, open_h5, safe_pickle_load

NUS_TAGS_FILE = "TagList1k.txt"
NUS_CONCEPTS_FILE = "Concepts81.txt"
NUS_GLOVE_FILES = ("NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300", "glove300_tags1k_concepts81.npz")
OI_SEEN_FILE = "classes-trainable.txt"
OI_UNSEEN_PKL = "unseen_labels.pkl"
OI_UNSEEN_TXT = "unseen_labels.txt"
OI_TOP400_FILE = "top_400_unseen.csv"
OI_DESCRIPTIONS_FILE = "class-descriptions.csv"
FEATURE_SHAPE = (512, 196)  # channels x regions, as stored; returned transposed as 196 tokens x 512
LABEL_VALUES = (-1, 0, 1)
DEFAULT_EPS = 1e-8


# --------------------------------------------------------------------------------------------- label space
@dataclass
class LabelSpace:
    """A multi-label ZSL label space in GZSL order ``[seen | unseen]``.

    ``seen_source_names`` / ``unseen_source_names`` are the full lists the files define (NUS: the 1,000 tags and the
    81 concepts; Open Images: the 7,186 trainable MIDs and the 2,594 unseen MIDs); ``seen_source_index`` /
    ``unseen_source_index`` pick the label space's seen / unseen labels out of them, in label order.
    """

    dataset: str  # "nus_wide" | "open_images"
    seen_names: list[str]
    unseen_names: list[str]
    seen_source_names: list[str]
    unseen_source_names: list[str]
    seen_source_index: np.ndarray  # int64 (n_seen,) rows of seen_source_names
    unseen_source_index: np.ndarray  # int64 (n_unseen,) rows of unseen_source_names
    display_names: list[str]  # GZSL order; human-readable (Open Images: class-descriptions.csv; else = names)
    # NUS: the tags that are also concepts (ignored in the 1k tag vectors): their rows in the tag list and the row of
    # the same word in the concept list. Empty for Open Images.
    overlap_source_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    overlap_unseen_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sources: dict[str, str] = field(default_factory=dict)  # role -> file path it came from

    @property
    def names(self) -> list[str]:
        return [*self.seen_names, *self.unseen_names]

    @property
    def n_seen(self) -> int:
        return len(self.seen_names)

    @property
    def n_unseen(self) -> int:
        return len(self.unseen_names)

    @property
    def n_labels(self) -> int:
        return self.n_seen + self.n_unseen

    @property
    def seen_index(self) -> np.ndarray:
        """Columns of the seen labels in the GZSL order (0 .. n_seen-1)."""
        return np.arange(self.n_seen, dtype=np.int64)

    @property
    def unseen_index(self) -> np.ndarray:
        """Columns of the unseen (ZSL) labels in the GZSL order (n_seen .. n_labels-1)."""
        return np.arange(self.n_seen, self.n_labels, dtype=np.int64)

    def index(self, name: str) -> int:
        """GZSL column of a label name (Open Images: its MID)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{self.dataset}: no label named {name!r}") from None


# --------------------------------------------------------------------------------------------- small readers
def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        return path.read_bytes().decode("utf-8-sig")  # strips a UTF-8 BOM
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc})") from exc


def _read_lines(path: Path, what: str) -> list[str]:
    """One entry per line; BOM, CRLF and surrounding whitespace stripped; trailing blank lines dropped.

    A blank line before the end would shift every later index, so it is an error; so are duplicates."""
    lines = [ln.strip() for ln in _read_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataFormatError(f"{path}: {what}: the file is empty")
    for i, ln in enumerate(lines):
        if not ln:
            raise DataFormatError(f"{path}: {what}: line {i + 1} is blank (every line must hold one entry)")
    _check_unique(lines, path, what)
    return lines


def _check_unique(names: Sequence[str], path: Path | str, what: str) -> None:
    if len(set(names)) != len(names):
        from collections import Counter

        dups = sorted(n for n, c in Counter(names).items() if c > 1)
        raise DataFormatError(
            f"{path}: {what}: duplicate entries {dups[:5]}{' ...' if len(dups) > 5 else ''}"
        )


def _as_names(obj: Any, path: Path, what: str) -> list[str]:
    """A pickled list / 1-D numpy array of str (or latin-1/utf-8 bytes) -> list[str]."""
    if isinstance(obj, np.ndarray):
        if obj.ndim != 1:
            raise DataFormatError(f"{path}: {what}: expected a 1-D array of names, got shape {obj.shape}")
        obj = obj.tolist()
    if not isinstance(obj, (list, tuple)):
        raise DataFormatError(
            f"{path}: {what}: expected a list or 1-D array of names, got {type(obj).__name__}"
        )
    out: list[str] = []
    for i, x in enumerate(obj):
        if isinstance(x, (bytes, np.bytes_)):
            x = bytes(x).decode("utf-8", errors="strict")
        if not isinstance(x, str) or not x.strip():
            raise DataFormatError(f"{path}: {what}: entry {i} is not a non-empty string ({x!r})")
        out.append(x.strip())
    _check_unique(out, path, what)
    return out


# --------------------------------------------------------------------------------------------- NUS-WIDE
def load_nus_wide_labels(root: str | os.PathLike[str]) -> LabelSpace:
    """NUS-WIDE label space from ``root/TagList1k.txt`` and ``root/Concepts81.txt`` (LESA/BiAM split).

    seen = the tags not in Concepts81 (TagList1k order: 925), unseen = the concepts (Concepts81 order: 81).
    ``overlap_source_index`` records the rows of the 75 tags that are also concepts within the tag list."""
    root = Path(root)
    tags_path, concepts_path = root / NUS_TAGS_FILE, root / NUS_CONCEPTS_FILE
    tags = _read_lines(tags_path, "tags")
    concepts = _read_lines(concepts_path, "concepts")
    concept_row = {c: i for i, c in enumerate(concepts)}
    seen_idx = [i for i, t in enumerate(tags) if t not in concept_row]
    overlap = [i for i, t in enumerate(tags) if t in concept_row]
    if not seen_idx:
        raise DataFormatError(
            f"{tags_path}: tags: every tag is also a concept of {concepts_path}: no seen labels"
        )
    return LabelSpace(
        dataset="nus_wide",
        seen_names=[tags[i] for i in seen_idx],
        unseen_names=list(concepts),
        seen_source_names=tags,
        unseen_source_names=concepts,
        seen_source_index=np.asarray(seen_idx, np.int64),
        unseen_source_index=np.arange(len(concepts), dtype=np.int64),
        display_names=[*(tags[i] for i in seen_idx), *concepts],
        overlap_source_index=np.asarray(overlap, np.int64),
        overlap_unseen_index=np.asarray([concept_row[tags[i]] for i in overlap], np.int64),
        sources={"tags": str(tags_path), "concepts": str(concepts_path)},
    )


def _read_glove_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("tags1k", "concepts81") if k not in z.files]
                if missing:
                    raise DataFormatError(
                        f"{path}: field(s) {missing} missing (expected 'tags1k' and 'concepts81'; found {z.files})"
                    )
                return np.asarray(z["tags1k"]), np.asarray(z["concepts81"])
        except DataFormatError:
            raise
        except Exception as exc:
            raise DataFormatError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from exc
    obj = safe_pickle_load(path)  # UnsafeFileError for anything but arrays/containers
    if not (isinstance(obj, (list, tuple)) and len(obj) == 2 and all(isinstance(a, np.ndarray) for a in obj)):
        desc = (
            f"{type(obj).__name__} of length {len(obj)}"
            if isinstance(obj, (list, tuple))
            else type(obj).__name__
        )
        raise DataFormatError(
            f"{path}: expected a list of two arrays [tags (1000, 300), concepts (81, 300)], got a {desc}"
        )
    return obj[0], obj[1]


def load_nus_wide_glove(
    path: str | os.PathLike[str],
    labels: LabelSpace,
    *,
    normalize: bool = True,
    eps: float = DEFAULT_EPS,
    dim: int | None = 300,
) -> tuple[np.ndarray, np.ndarray]:
    """NUS-WIDE GloVe vectors (raw GloVe 6B-300d, as BiAM / LESA ship them) -> ``(seen (925, 300), unseen (81,
    300))`` float32, label order.

    ``path``: the BiAM/LESA pickle (a list of two float32 arrays, (1000, 300) in TagList1k order and (81, 300) in
    Concepts81 order; loaded with the restricted unpickler) or the ``.npz`` with ``tags1k`` / ``concepts81``.
    Seen rows = tag rows at ``labels.seen_source_index``; unseen = concept rows at ``labels.unseen_source_index``.
    ``normalize`` (default, as BiAM; raw rows have norms ~6-7) divides every row by ``max(||row||, eps)``."""
    path = Path(path)
    if labels.dataset != "nus_wide":
        raise ValueError(f"load_nus_wide_glove needs the NUS-WIDE label space, got {labels.dataset!r}")
    tags, concepts = _read_glove_arrays(path)
    width = dim if dim is not None else (tags.shape[1] if tags.ndim == 2 else -1)
    for arr, role, n in (
        (tags, "tags", len(labels.seen_source_names)),
        (concepts, "concepts", len(labels.unseen_source_names)),
    ):
        if arr.ndim != 2 or arr.shape != (n, width):
            raise DataFormatError(
                f"{path}: {role} vectors: expected shape ({n}, {width if width > 0 else 'D'}), got {arr.shape}"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataFormatError(f"{path}: {role} vectors: expected floats, got dtype {arr.dtype}")
        if not np.isfinite(arr).all():
            raise DataFormatError(f"{path}: {role} vectors: contain NaN or inf")
    seen = tags[labels.seen_source_index].astype(np.float32)
    unseen = concepts[labels.unseen_source_index].astype(np.float32)
    if normalize:
        seen, unseen = l2_normalize_rows(seen, eps), l2_normalize_rows(unseen, eps)
    return seen, unseen


def l2_normalize_rows(x: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Rows divided by ``max(||row||_2, eps)`` (an all-zero row stays zero), float32."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


# --------------------------------------------------------------------------------------------- Open Images V4
def _load_oi_unseen(root: Path) -> tuple[list[str], str]:
    """The 2,594 unseen MIDs: ``unseen_labels.pkl`` (restricted unpickler) and/or ``unseen_labels.txt``.

    When both exist they must agree. A pickle that asks for code raises UnsafeFileError (no silent fallback)."""
    pkl, txt = root / OI_UNSEEN_PKL, root / OI_UNSEEN_TXT
    if not pkl.is_file() and not txt.is_file():
        raise DataFormatError(f"{root}: unseen labels: neither {OI_UNSEEN_PKL} nor {OI_UNSEEN_TXT} found")
    from_pkl = _as_names(safe_pickle_load(pkl), pkl, "unseen labels") if pkl.is_file() else None
    from_txt = _read_lines(txt, "unseen labels") if txt.is_file() else None
    if from_pkl is not None and from_txt is not None and from_pkl != from_txt:
        raise DataFormatError(
            f"{pkl}: unseen labels: disagree with {txt} ({len(from_pkl)} vs {len(from_txt)} entries"
            f"{'' if len(from_pkl) != len(from_txt) else ', same count, different order or names'})"
        )
    if from_pkl is not None:
        return from_pkl, str(pkl)
    assert from_txt is not None
    return from_txt, str(txt)


def _read_index_csv(path: Path, n_source: int, what: str) -> np.ndarray:
    """One 0-based integer per line (BOM, CRLF and a first-column-only CSV handled)."""
    out: list[int] = []
    for lineno, row in enumerate(csv.reader(io.StringIO(_read_text(path))), start=1):
        cell = row[0].strip() if row else ""
        if not cell:
            continue
        try:
            out.append(int(cell))
        except ValueError:
            raise DataFormatError(
                f"{path}: {what}: line {lineno}: {cell!r} is not an integer index"
            ) from None
    if not out:
        raise DataFormatError(f"{path}: {what}: no indices in the file")
    idx = np.asarray(out, np.int64)
    bad = idx[(idx < 0) | (idx >= n_source)]
    if bad.size:
        raise DataFormatError(
            f"{path}: {what}: indices must be 0-based in [0, {n_source}), got {bad[:5].tolist()}"
        )
    if len(np.unique(idx)) != len(idx):
        raise DataFormatError(f"{path}: {what}: duplicate indices")
    return idx


def load_class_descriptions(path: str | os.PathLike[str]) -> dict[str, str]:
    """``class-descriptions.csv`` (``MID,name``, no header, quoted names with commas) -> {MID: name}."""
    path = Path(path)
    out: dict[str, str] = {}
    for lineno, row in enumerate(csv.reader(io.StringIO(_read_text(path))), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise DataFormatError(
                f"{path}: line {lineno}: expected 2 columns MID,name, got {len(row)}: {row!r}"
            )
        mid, name = row[0].strip(), row[1].strip()
        if mid in out and out[mid] != name:
            raise DataFormatError(
                f"{path}: line {lineno}: MID {mid} described twice ({out[mid]!r}, {name!r})"
            )
        out[mid] = name
    if not out:
        raise DataFormatError(f"{path}: the file is empty")
    return out


def load_open_images_labels(root: str | os.PathLike[str], *, descriptions: bool = True) -> LabelSpace:
    """Open Images V4 label space (LESA/BiAM split) from the ``2018_04`` folder ``root``.

    seen = ``classes-trainable.txt`` (7,186); unseen source = ``unseen_labels.pkl`` (2,594 MIDs; or
    ``unseen_labels.txt``); unseen = the rows of ``top_400_unseen.csv`` (400) in that order; GZSL = 7,586.
    ``display_names`` come from ``class-descriptions.csv`` when ``descriptions`` and the file exists (a MID it does
    not describe keeps its MID); otherwise they are the MIDs."""
    root = Path(root)
    seen_path, top_path, desc_path = root / OI_SEEN_FILE, root / OI_TOP400_FILE, root / OI_DESCRIPTIONS_FILE
    seen = _read_lines(seen_path, "seen labels")
    unseen_all, unseen_src = _load_oi_unseen(root)
    both = sorted(set(seen) & set(unseen_all))
    if both:
        raise DataFormatError(
            f"{unseen_src}: unseen labels: {len(both)} also in {seen_path} (seen and unseen must be disjoint): "
            f"{both[:5]}"
        )
    top = _read_index_csv(top_path, len(unseen_all), "unseen label indices")
    unseen = [unseen_all[i] for i in top]
    sources = {"seen": str(seen_path), "unseen_source": unseen_src, "unseen": str(top_path)}
    display = [*seen, *unseen]
    if descriptions and desc_path.is_file():
        desc = load_class_descriptions(desc_path)
        display = [desc.get(m, m) for m in display]
        sources["descriptions"] = str(desc_path)
    return LabelSpace(
        dataset="open_images",
        seen_names=seen,
        unseen_names=unseen,
        seen_source_names=seen,
        unseen_source_names=unseen_all,
        seen_source_index=np.arange(len(seen), dtype=np.int64),
        unseen_source_index=top,
        display_names=display,
        sources=sources,
    )


def open_images_h5_labels(labels: LabelSpace, mode: str = "gzsl") -> dict[str, Any]:
    """Keyword arguments for :class:`BiAMH5Dataset` that turn Open Images ``-seenlabels`` (7,186) and
    ``-unseenlabels`` (2,594) into the label space's order: ``mode`` "gzsl" (7,586 = [seen | top-400]),
    "zsl" (the 400) or "seen" (the 7,186)."""
    if labels.dataset != "open_images":
        raise ValueError(f"open_images_h5_labels needs the Open Images label space, got {labels.dataset!r}")
    ns, nu = len(labels.seen_source_names), len(labels.unseen_source_names)
    if mode == "seen":
        return {"label_key": "seenlabels", "n_labels": ns}
    if mode == "zsl":
        return {"label_key": "unseenlabels", "n_labels": nu, "label_select": labels.unseen_source_index}
    if mode == "gzsl":
        select = np.concatenate([labels.seen_source_index, ns + labels.unseen_source_index])
        return {"label_key": ("seenlabels", "unseenlabels"), "n_labels": (ns, nu), "label_select": select}
    raise ValueError(f"mode must be 'gzsl', 'zsl' or 'seen', got {mode!r}")


# --------------------------------------------------------------------------------------------- BiAM h5 features
def h5_name(relative_path: str) -> str:
    """BiAM h5 key prefix of an image: its relative path with ``/`` -> ``_`` (``actor/0002_174174086.jpg`` ->
    ``actor_0002_174174086.jpg``). Backslashes count as ``/``; a leading ``./`` or ``/`` is dropped."""
    s = str(relative_path).replace("\\", "/")
    while s.startswith("./"):
        s = s[2:]
    s = s.lstrip("/")
    if not s:
        raise ValueError(f"h5_name: empty image path {relative_path!r}")
    return s.replace("/", "_")


def load_biam_names(path: str | os.PathLike[str], key: str | None = None) -> list[str]:
    """Image names from a BiAM name list (``img_names.pkl`` = dict with ``img_names``, ``test_img_names.pkl``),
    a text file (one per line) or a JSON list, mapped through :func:`h5_name`."""
    path = Path(path)
    if path.suffix in (".txt", ".lst"):
        names = _read_lines(path, "image names")
    elif path.suffix == ".json":
        import json

        try:
            obj = json.loads(_read_text(path))
        except ValueError as exc:
            raise DataFormatError(f"{path}: not valid JSON ({exc})") from exc
        names = _as_names(obj[key] if key and isinstance(obj, dict) else obj, path, "image names")
    else:
        obj = safe_pickle_load(path)
        if isinstance(obj, dict):
            k = key or ("img_names" if "img_names" in obj else (next(iter(obj)) if len(obj) == 1 else None))
            if k is None or k not in obj:
                raise DataFormatError(
                    f"{path}: field '{key or 'img_names'}' missing (keys: {list(obj)[:10]})"
                )
            obj = obj[k]
        names = _as_names(obj, path, "image names")
    return [h5_name(n) for n in names]


def _check_labels(lab: np.ndarray, path: Any, key: str, n: int | None) -> np.ndarray:
    if lab.ndim != 1 or (n is not None and lab.shape[0] != n):
        raise DataFormatError(
            f"{path}: '{key}': expected a label vector of length {n if n is not None else 'L'}, got shape {lab.shape}"
        )
    if not (np.issubdtype(lab.dtype, np.integer) or np.issubdtype(lab.dtype, np.floating)):
        raise DataFormatError(f"{path}: '{key}': expected int8 labels in {{-1, 0, 1}}, got dtype {lab.dtype}")
    bad = ~np.isin(lab, LABEL_VALUES)
    if bad.any():
        vals = np.unique(lab[bad])[:5].tolist()
        raise DataFormatError(f"{path}: '{key}': label values must be in {{-1, 0, 1}}, got {vals}")
    return lab.astype(np.int8, copy=False)


def _check_features(feat: np.ndarray, path: Any, key: str, shape: tuple[int, int]) -> np.ndarray:
    if feat.shape != tuple(shape):
        raise DataFormatError(
            f"{path}: '{key}': expected features of shape {tuple(shape)} (channels x regions), "
            f"got {feat.shape}"
        )
    if not np.issubdtype(feat.dtype, np.floating):
        raise DataFormatError(f"{path}: '{key}': expected float32 features, got dtype {feat.dtype}")
    if not np.isfinite(feat).all():
        raise DataFormatError(f"{path}: '{key}': features contain NaN or inf")
    return feat.astype(np.float32, copy=False)


def feature_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(channels, regions) of the first ``<name>-features`` dataset of a BiAM-layout h5 file."""
    with open_h5(path) as f:
        key = next((k for k in f.keys() if k.endswith("-features")), None)
        if key is None:
            raise DataFormatError(f"{path}: no '<name>-features' datasets in the file")
        shp = f[key].shape
    if len(shp) != 2:
        raise DataFormatError(f"{path}: '{key}': expected (channels, regions), got shape {shp}")
    return int(shp[0]), int(shp[1])


class BiAMH5Dataset(Dataset):
    """Per-image BiAM-layout features and labels from one h5 file, read lazily.

    ``names``: h5 name prefixes (or relative image paths: mapped by :func:`h5_name`); ``None`` = every
    ``<name>-features`` key of the file (in the file's key order). ``label_key``: the label suffix (``"labels"``,
    ``"labels_81"``, ``"seenlabels"``, ``"unseenlabels"``) or a sequence of suffixes whose vectors are concatenated;
    ``n_labels``: the expected length of each (``None`` = the length found for the first image);
    ``label_select``: columns taken from the (concatenated) vector afterwards (see :func:`open_images_h5_labels`).

    ``dataset[i]`` -> ``(features float32 tensor (196, 512) = regions x channels, labels int8 tensor)``. The file is
    opened on first use in each process (DataLoader workers each get their own handle). A missing key, a label
    vector of the wrong length, label values outside {-1, 0, 1} or features of the wrong shape raise
    :class:`DataFormatError` naming the file and the key."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        names: Sequence[str] | None = None,
        label_key: str | Sequence[str] = "labels",
        n_labels: int | Sequence[int | None] | None = None,
        *,
        label_select: Sequence[int] | np.ndarray | None = None,
        feature_shape: tuple[int, int] = FEATURE_SHAPE,
        check_keys: bool = True,
    ) -> None:

        self.path = Path(path)
        if not self.path.is_file():
            raise DataFormatError(f"{self.path}: file not found")
        self.label_keys: tuple[str, ...] = (label_key,) if isinstance(label_key, str) else tuple(label_key)
        if not self.label_keys:
            raise ValueError("label_key must name at least one label dataset")
        if n_labels is None or isinstance(n_labels, (int, np.integer)):
            lens: list[int | None] = [None if n_labels is None else int(n_labels)] * len(self.label_keys)
        else:
            lens = [None if n is None else int(n) for n in n_labels]
            if len(lens) != len(self.label_keys):
                raise ValueError(f"n_labels has {len(lens)} entries for {len(self.label_keys)} label keys")
        self.feature_shape = (int(feature_shape[0]), int(feature_shape[1]))
        self.label_select = None if label_select is None else np.asarray(label_select, np.int64)
        try:
            with open_h5(self.path) as f:
                keys = set(f.keys())
                if names is None:
                    # every image named by any of its keys: one with labels but no features is then an error
                    # (below), not an image silently left out
                    found: dict[str, None] = {}
                    for k in f.keys():
                        for suf in ("features", *self.label_keys):
                            if k.endswith(f"-{suf}"):
                                found[k[: -len(suf) - 1]] = None
                    self.names = list(found)
                    if not self.names:
                        raise DataFormatError(f"{self.path}: no '<name>-features' datasets in the file")
                else:
                    self.names = [h5_name(n) for n in names]
                if check_keys:
                    for n in self.names:
                        for suf in ("features", *self.label_keys):
                            if f"{n}-{suf}" not in keys:
                                raise DataFormatError(
                                    f"{self.path}: key '{n}-{suf}' is missing (image {n!r}; every image needs "
                                    + ", ".join(f"'<name>-{k}'" for k in ("features", *self.label_keys))
                                    + ")"
                                )
                if self.names:  # fix unknown lengths from the first image
                    for j, suf in enumerate(self.label_keys):
                        if lens[j] is None:
                            k = f"{self.names[0]}-{suf}"
                            if k not in f:
                                raise DataFormatError(f"{self.path}: key '{k}' is missing")
                            shp = f[k].shape
                            if len(shp) != 1:
                                raise DataFormatError(
                                    f"{self.path}: '{k}': expected a label vector, got shape {shp}"
                                )
                            lens[j] = int(shp[0])
        except OSError as exc:
            raise DataFormatError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        self.n_labels_per_key: tuple[int | None, ...] = tuple(lens)
        total = sum(n for n in lens if n is not None)
        if self.label_select is not None and self.label_select.size:
            if self.label_select.min() < 0 or self.label_select.max() >= total:
                raise ValueError(f"label_select indices must be in [0, {total})")
        self._h5: Any = None
        self._pid: int | None = None

    @property
    def n_labels(self) -> int:
        total = sum(n or 0 for n in self.n_labels_per_key)
        return int(len(self.label_select)) if self.label_select is not None else total

    def __len__(self) -> int:
        return len(self.names)

    def _file(self) -> Any:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = open_h5(self.path)
            self._pid = os.getpid()
        return self._h5

    def _read(self, f: Any, key: str) -> np.ndarray:
        if key not in f:
            raise DataFormatError(f"{self.path}: key '{key}' is missing")
        try:
            return np.asarray(f[key][()])
        except OSError as exc:  # a damaged dataset (truncated copy, failed decompression)
            raise DataFormatError(f"{self.path}: key '{key}' cannot be read ({exc})") from None

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Validated numpy arrays: features (512, 196) as stored, labels int8 (n_labels,)."""
        name = self.names[i]
        f = self._file()
        fkey = f"{name}-features"
        feat = _check_features(self._read(f, fkey), self.path, fkey, self.feature_shape)
        parts = []
        for suf, n in zip(self.label_keys, self.n_labels_per_key):
            key = f"{name}-{suf}"
            parts.append(_check_labels(self._read(f, key), self.path, key, n))
        lab = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if self.label_select is not None:
            lab = lab[self.label_select]
        return feat, lab

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        feat, lab = self.read(int(i))
        return torch.from_numpy(np.ascontiguousarray(feat.T)), torch.from_numpy(np.ascontiguousarray(lab))

    def close(self) -> None:
        if self._h5 is not None:
            try:
                self._h5.close()
            finally:
                self._h5, self._pid = None, None

    def __getstate__(self) -> dict[str, Any]:  # an open h5py handle cannot cross to a worker process
        state = self.__dict__.copy()
        state["_h5"], state["_pid"] = None, None
        return state

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass


def write_biam_h5(
    path: str | os.PathLike[str],
    items: Iterable[tuple[Any, ...]],
    *,
    feature_shape: tuple[int, int] = FEATURE_SHAPE,
    attrs: Mapping[str, Any] | None = None,
    compression: str | None = "gzip",
) -> int:
    """Write BiAM-layout h5 (atomically): for every ``(name, features (512, 196), labels)`` the datasets
    ``<h5_name(name)>-features`` float32 and ``<h5_name(name)>-labels`` int8, or ``<name>-<suffix>`` for every entry
    when ``labels`` is a mapping ``{suffix: vector}`` (``{"seenlabels": ..., "unseenlabels": ...}``). An item may
    carry a fourth element ``{suffix: float array}`` written as float32 ``<name>-<suffix>`` (e.g. a ViT's ``cls``
    token). ``attrs`` go into the file's attributes (resolution, backbone, weights: the sidecar facts). Returns the
    image count."""
    import h5py

    path = Path(path)
    count = 0
    written: set[str] = set()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
            for item in items:
                if len(item) not in (3, 4):
                    raise ValueError(
                        f"write_biam_h5: expected (name, features, labels[, extras]), got {len(item)} "
                        "elements"
                    )
                name, feat, labels = item[:3]
                extras: Mapping[str, np.ndarray] = item[3] if len(item) == 4 else {}
                key = h5_name(name)
                if key in written:
                    raise ValueError(f"write_biam_h5: image {key!r} given twice")
                written.add(key)
                feat = _check_features(np.asarray(feat), path, f"{key}-features", feature_shape)
                f.create_dataset(f"{key}-features", data=feat, compression=compression)
                lab_map = labels if isinstance(labels, Mapping) else {"labels": labels}
                for suf, lab in lab_map.items():
                    lab = _check_labels(np.asarray(lab), path, f"{key}-{suf}", None)
                    f.create_dataset(f"{key}-{suf}", data=lab, compression=compression)
                for suf, arr in extras.items():
                    if suf == "features" or suf in lab_map:
                        raise ValueError(
                            f"write_biam_h5: extra dataset '{key}-{suf}' clashes with a feature/label key"
                        )
                    arr = np.asarray(arr, dtype=np.float32)
                    if not np.isfinite(arr).all():
                        raise DataFormatError(f"{path}: '{key}-{suf}': contains NaN or inf")
                    f.create_dataset(f"{key}-{suf}", data=arr, compression=compression)
                count += 1
    return count


# --------------------------------------------------------------------------------------------- report
def check_multilabel(kind: str, root: str | os.PathLike[str]) -> list[str]:
    """Readable report (counts, orders, consistency) of a NUS-WIDE or Open Images label folder.

    ``kind``: "nus_wide" (alias "nus") or "open_images" (alias "oi"). Raises DataFormatError for broken files."""
    k = kind.lower().replace("-", "_")
    root = Path(root)
    if k in ("nus_wide", "nus"):
        return _check_nus(root)
    if k in ("open_images", "oi", "openimages"):
        return _check_oi(root)
    raise ValueError(f"unknown multi-label dataset {kind!r} (expected 'nus_wide' or 'open_images')")


def _report_feature_file(path: Path, names_file: Path, n_labels: int, sample: int = 100) -> str:
    """One report line on a BiAM-layout feature file: every image has its keys (checked when opened; the images of
    ``names_file`` when it exists, as training reads them, else every image in the file) and up to ``sample``
    images spread over them read back valid (feature shape, label length and values)."""
    if not path.is_file():
        return f"  features {path.name}: absent (`unseen extract` writes one)"
    shape = feature_shape(path)
    names = load_biam_names(names_file) if names_file.is_file() else None
    ds = BiAMH5Dataset(path, names, n_labels=n_labels, feature_shape=shape)
    try:
        picks = np.unique(np.linspace(0, len(ds) - 1, min(sample, len(ds))).astype(np.int64))
        for i in picks:
            ds.read(int(i))
    finally:
        ds.close()
    which = f"the images of {names_file.name}" if names is not None else "every image in the file"
    return (
        f"  features {path.name}: {len(ds)} images ({which}), (channels, regions) = {shape}, {n_labels} labels "
        f"each; every image's keys present, {len(picks)} images spread over them read back valid"
    )


def _check_nus(root: Path) -> list[str]:
    ls = load_nus_wide_labels(root)
    not_tags = [c for c in ls.unseen_names if c not in set(ls.seen_source_names)]
    lines = [
        f"NUS-WIDE labels in {root}",
        f"  tags ({NUS_TAGS_FILE}): {len(ls.seen_source_names)}; concepts ({NUS_CONCEPTS_FILE}): "
        f"{len(ls.unseen_source_names)}; concepts that are also tags: {len(ls.overlap_source_index)}",
        f"  concepts not in the tag list: {len(not_tags)} ({', '.join(not_tags)})",
        f"  seen: {ls.n_seen} (first: {ls.seen_names[0]}); unseen (ZSL): {ls.n_unseen} (first: {ls.unseen_names[0]});"
        f" GZSL: {ls.n_labels} [seen | unseen]",
    ]
    loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for fname in NUS_GLOVE_FILES:
        p = root / fname
        if not p.is_file():
            lines.append(f"  word vectors {fname}: absent")
            continue
        tags, concepts = _read_glove_arrays(p)
        seen, unseen = load_nus_wide_glove(p, ls, normalize=False, dim=None)
        loaded[fname] = (tags, concepts)
        norms = np.linalg.norm(np.concatenate([seen, unseen]), axis=1)
        same = int(np.sum(np.all(tags[ls.overlap_source_index] == concepts[ls.overlap_unseen_index], axis=1)))
        lines.append(
            f"  word vectors {fname}: tags {tags.shape}, concepts {concepts.shape}, {tags.dtype}; raw row norms "
            f"{norms.min():.2f}..{norms.max():.2f} (normalised at load); overlapping rows identical: "
            f"{same}/{len(ls.overlap_source_index)}"
        )
    if len(loaded) == 2:
        (a, b), (c, d) = loaded.values()
        equal = a.shape == c.shape and b.shape == d.shape and np.array_equal(a, c) and np.array_equal(b, d)
        lines.append(f"  pickle and .npz word vectors identical: {'yes' if equal else 'NO'}")
    lines.append(_report_feature_file(root / "nus_wide_train.h5", root / "img_names.pkl", ls.n_seen))
    lines.append(_report_feature_file(root / "nus_wide_test.h5", root / "test_img_names.pkl", ls.n_labels))
    return lines


def _check_oi(root: Path) -> list[str]:
    ls = load_open_images_labels(root)
    lines = [
        f"Open Images V4 labels in {root}",
        f"  seen ({OI_SEEN_FILE}): {ls.n_seen}",
        f"  unseen source ({Path(ls.sources['unseen_source']).name}): {len(ls.unseen_source_names)}; "
        f"seen/unseen disjoint: yes",
        f"  unseen (ZSL, {OI_TOP400_FILE}): {ls.n_unseen} (first index {int(ls.unseen_source_index[0])} = "
        f"{ls.unseen_names[0]}); GZSL: {ls.n_labels} [seen | unseen]",
    ]
    if (root / OI_UNSEEN_PKL).is_file() and (root / OI_UNSEEN_TXT).is_file():
        lines.append(f"  {OI_UNSEEN_PKL} and {OI_UNSEEN_TXT} agree: yes")
    if "descriptions" in ls.sources:
        desc = load_class_descriptions(root / OI_DESCRIPTIONS_FILE)
        missing = sum(m not in desc for m in ls.names)
        lines.append(
            f"  descriptions ({OI_DESCRIPTIONS_FILE}): {len(desc)} rows; labels without one: {missing}"
        )
    else:
        lines.append(f"  descriptions ({OI_DESCRIPTIONS_FILE}): absent (labels shown as MIDs)")
    return lines
