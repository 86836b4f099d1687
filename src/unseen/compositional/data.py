"""Readers for the czsl folder layout (MIT-States, UT-Zappos, C-GQA) and open-world feasibility.

Layout (as ExplainableML/czsl and CSP/Troika read it)::

    <root>/                                  e.g. .../mit-states, .../ut-zappos (or ut-zap50k), .../cgqa
      images/...                             metadata 'image' paths are relative to images/
      <split>/{train,val,test}_pairs.txt     one "attr obj" per line (default split: compositional-split-natural)
      metadata_<split>.t7                    torch.save'd list of dicts {image, attr, obj, set}

Index spaces (the one thing never to mix up: mixing them silently mislabels everything):

* **attrs / objs**: ``sorted(set(...))`` over the three pair files; ``attr_idx`` / ``obj_idx`` are 0-based rows.
* **closed world (CW) pairs** ``pairs`` = ``sorted(set(train ∪ val ∪ test pairs))`` as (attr, obj) tuples.
* **open world (OW) pairs** = ``product(attrs, objs)``, attr-major: OW index = ``attr_idx * |O| + obj_idx``. Since
  attrs and objs are sorted, the OW list is sorted too and CW pairs appear in it in the same relative order.
* **train pairs** ``train_pairs`` = ``train_pairs.txt`` in FILE order (the class ids of the training loss).
* Sample targets: a **train** sample's ``pair`` indexes ``train_pairs``; a **val/test** sample's ``pair`` indexes
  ``pairs`` (CW). :meth:`CZSLData.targets` and :meth:`CZSLData.convert_pair_index` map between the spaces.

Candidate sets: CW val eval-mask = train ∪ val pairs, CW test eval-mask = train ∪ test pairs, OW eval-mask = all
pairs; ``seen_mask[p]`` = pair p is a train pair; a sample is *seen* iff its ground-truth pair is a train pair.

Metadata is loaded with ``torch.load(weights_only=True)`` only; a file that asks for any code (a pickled
``os.system`` call, a numpy array, a class) raises :class:`unseen.io.UnsafeFileError` and nothing runs.

Open-world feasibility: :func:`feasibility_scores` (CompCos, from GloVe as CSP/Troika compute it),
:func:`load_glove_vectors` (user-supplied GloVe text file), :func:`load_feasibility` /
:func:`save_feasibility` (``{'feasibility': tensor}`` files as shipped by Troika) and :func:`feasible_mask`;
the candidate thresholds are :func:`unseen.compositional.metrics.feasibility_thresholds`.

Every problem with a data file raises :class:`unseen.io.DataFormatError` naming the file and the field.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unseen.io import DataFormatError, UnsafeFileError, atomic_path, read_glove, read_image

log = logging.getLogger("unseen")

DEFAULT_SPLIT = "compositional-split-natural"
SETS = ("train", "val", "test")
META_FIELDS = ("image", "attr", "obj", "set")
NA = "NA"
WORLDS = ("closed", "open")
PAIR_SPACES = ("train", "closed", "open")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Folder names of the known datasets -> canonical name (czsl calls UT-Zappos "ut-zap50k").
DATASET_ALIASES = {
    "mit-states": "mit-states",
    "ut-zappos": "ut-zappos",
    "ut-zap50k": "ut-zappos",
    "cgqa": "cgqa",
    "c-gqa": "cgqa",
}


# --------------------------------------------------------------------------------------------- known counts
@dataclass(frozen=True)
class KnownCounts:
    """Published sizes of a benchmark on ``compositional-split-natural``.

    Asserted ([D] derived from Troika's feasibility tensors, [R] read): ``attrs``, ``objs`` (hence |A|·|O|),
    ``train_pairs`` and ``cw_pairs`` when not None. Only warned about ([M] recalled): the rest."""

    attrs: int
    objs: int
    train_pairs: int
    cw_pairs: int | None  # [R] for MIT-States only; None = not asserted
    val_pairs: tuple[int, int]  # seen / unseen [M]
    test_pairs: tuple[int, int]  # seen / unseen [M]
    images: tuple[int, int, int]  # train / val / test [M]


KNOWN_COUNTS: dict[str, KnownCounts] = {
    "mit-states": KnownCounts(115, 245, 1262, 1962, (300, 300), (400, 400), (30338, 10420, 12995)),
    "ut-zappos": KnownCounts(16, 12, 83, None, (15, 15), (18, 18), (22998, 3214, 2914)),
    "cgqa": KnownCounts(413, 674, 5592, None, (1252, 1040), (888, 923), (26920, 7280, 5098)),
}


def dataset_name(root: str | os.PathLike[str]) -> str | None:
    """Canonical name of a known benchmark from its folder name (``None`` if the folder is not one)."""
    return DATASET_ALIASES.get(Path(root).name.lower())


# --------------------------------------------------------------------------------------------- containers
@dataclass
class CZSLSplit:
    """The kept metadata entries of one set, in metadata-file order.

    ``pair`` indexes ``CZSLData.train_pairs`` when ``pair_space == "train"`` (the train set) and ``CZSLData.pairs``
    (CW) when ``pair_space == "closed"`` (val, test). ``split[i]`` -> ``(image, attr_idx, obj_idx, pair_idx)``."""

    name: str  # "train" | "val" | "test"
    images: list[str]  # paths relative to <root>/images
    attr: np.ndarray  # int64 (N,) rows of attrs
    obj: np.ndarray  # int64 (N,) rows of objs
    pair: np.ndarray  # int64 (N,) see pair_space
    pair_space: str  # "train" | "closed"

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"CZSLSplit({self.name!r}, {len(self)} samples, pair index space {self.pair_space!r})"

    def __getitem__(self, i: int) -> tuple[str, int, int, int]:
        return self.images[i], int(self.attr[i]), int(self.obj[i]), int(self.pair[i])


@dataclass
class CZSLData:
    """A czsl dataset: vocabularies, pair lists, samples and the index maps between pair spaces (module docstring)."""

    root: Path
    split: str
    dataset: str | None  # canonical known-benchmark name from the folder name, or None
    attrs: list[str]  # sorted
    objs: list[str]  # sorted
    pairs: list[tuple[str, str]]  # CW: sorted(set(train ∪ val ∪ test))
    train_pairs: list[tuple[str, str]]  # train_pairs.txt, file order
    val_pairs: list[tuple[str, str]]  # val_pairs.txt, file order
    test_pairs: list[tuple[str, str]]  # test_pairs.txt, file order
    train: CZSLSplit
    val: CZSLSplit
    test: CZSLSplit
    #: skipped metadata entries per reason: "attr_na" (attr == 'NA'), "set_na" (set == 'NA'), "pair_not_listed"
    #: ((attr, obj) not a CW pair); an entry is counted once, under the first reason that applies.
    skipped: dict[str, int] = field(default_factory=dict)
    #: the (attr, obj) of "pair_not_listed" entries -> how many entries
    unlisted_pairs: dict[tuple[str, str], int] = field(default_factory=dict)
    #: kept images (relative paths) that are not files under <root>/images; None = not checked
    missing_images: list[str] | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attr_to_idx = {a: i for i, a in enumerate(self.attrs)}
        self.obj_to_idx = {o: i for i, o in enumerate(self.objs)}
        self.pair_to_idx = {p: i for i, p in enumerate(self.pairs)}
        self.train_pair_to_idx = {p: i for i, p in enumerate(self.train_pairs)}
        #: int64 (P,) attr / obj row of every CW pair
        self.pair_attr = np.asarray([self.attr_to_idx[a] for a, _ in self.pairs], np.int64)
        self.pair_obj = np.asarray([self.obj_to_idx[o] for _, o in self.pairs], np.int64)
        #: int64 (T,) CW index of every train pair (train_pairs order)
        self.train_to_closed = np.asarray([self.pair_to_idx[p] for p in self.train_pairs], np.int64)
        #: int64 (P,) train-pair index of every CW pair, -1 for pairs that are not train pairs
        self.closed_to_train = np.full(len(self.pairs), -1, np.int64)
        self.closed_to_train[self.train_to_closed] = np.arange(len(self.train_pairs))
        #: int64 (P,) OW index (attr_idx * |O| + obj_idx) of every CW pair; increasing
        self.closed_to_open = self.pair_attr * len(self.objs) + self.pair_obj

    # ------------------------------------------------------------------ sizes
    @property
    def n_attrs(self) -> int:
        return len(self.attrs)

    @property
    def n_objs(self) -> int:
        return len(self.objs)

    @property
    def n_pairs(self) -> int:
        """Number of CW pairs."""
        return len(self.pairs)

    @property
    def n_open_pairs(self) -> int:
        """Number of OW pairs, |A|·|O|."""
        return len(self.attrs) * len(self.objs)

    @property
    def open_pairs(self) -> list[tuple[str, str]]:
        """OW pairs ``product(attrs, objs)``, attr-major (index = attr_idx * |O| + obj_idx)."""
        return list(product(self.attrs, self.objs))

    def split_data(self, name: str) -> CZSLSplit:
        """The samples of set ``name`` ("train" | "val" | "test")."""
        if name not in SETS:
            raise ValueError(f"unknown set {name!r} (expected one of {SETS})")
        return getattr(self, name)

    def image_path(self, image: str) -> Path:
        """Absolute path of a metadata ``image`` entry."""
        return self.root / "images" / image

    # ------------------------------------------------------------------ lookups and index maps
    def pair_index(self, attr: str, obj: str, space: str = "closed") -> int:
        """Index of (attr, obj) in ``space``: "closed" (``pairs``), "open" (OW) or "train" (``train_pairs``)."""
        if space == "closed":
            table = self.pair_to_idx
        elif space == "train":
            table = self.train_pair_to_idx
        elif space == "open":
            if attr not in self.attr_to_idx or obj not in self.obj_to_idx:
                bad = [f"attr {attr!r}"] * (attr not in self.attr_to_idx) + [f"obj {obj!r}"] * (
                    obj not in self.obj_to_idx
                )
                raise KeyError(f"{self.root}: {' and '.join(bad)} not in the vocabulary")
            return self.attr_to_idx[attr] * len(self.objs) + self.obj_to_idx[obj]
        else:
            raise ValueError(f"unknown pair space {space!r} (expected one of {PAIR_SPACES})")
        if (attr, obj) not in table:
            raise KeyError(f"{self.root}: pair ({attr!r}, {obj!r}) is not a {space} pair")
        return table[(attr, obj)]

    def convert_pair_index(self, idx: Any, src: str, dst: str) -> np.ndarray:
        """Map pair indices between spaces ("train" -> "closed"/"open", "closed" -> "open"/"train",
        "open" -> "closed"/"train"). Mapping to a space that lacks the pair raises ValueError (e.g. an unseen
        CW pair to "train")."""
        idx = np.asarray(idx, np.int64)
        sizes = {"train": len(self.train_pairs), "closed": len(self.pairs), "open": self.n_open_pairs}
        if src not in sizes or dst not in sizes:
            raise ValueError(f"unknown pair space {src!r} or {dst!r} (expected {PAIR_SPACES})")
        if idx.size and (idx.min() < 0 or idx.max() >= sizes[src]):
            raise ValueError(f"{src} pair indices must be in [0, {sizes[src]})")
        if src == dst:
            return idx.copy()
        if src == "train":
            closed = self.train_to_closed[idx]
        elif src == "open":
            closed = np.searchsorted(self.closed_to_open, idx)
            closed = np.minimum(closed, len(self.pairs) - 1)
            if not np.array_equal(self.closed_to_open[closed], idx):
                raise ValueError(f"{self.root}: some open-world pairs are not closed-world pairs")
        else:
            closed = idx
        if dst == "closed":
            return closed
        if dst == "open":
            return self.closed_to_open[closed]
        train = self.closed_to_train[closed]
        if (train < 0).any():
            raise ValueError(f"{self.root}: some pairs are not train pairs (no train-pair index)")
        return train

    def targets(self, split: str, space: str | None = None) -> np.ndarray:
        """Ground-truth pair indices of a set, in ``space`` (default: the set's own space: train -> "train",
        val/test -> "closed"). Use ``space="open"`` for open-world evaluation targets."""
        s = self.split_data(split)
        return self.convert_pair_index(s.pair, s.pair_space, space or s.pair_space)

    # ------------------------------------------------------------------ masks
    def seen_mask(self, world: str = "closed") -> np.ndarray:
        """bool over the CW (``world="closed"``) or OW (``"open"``) pairs: True for train pairs."""
        closed = self.closed_to_train >= 0
        return self._in_world(closed, world)

    def eval_mask(self, split: str, world: str = "closed") -> np.ndarray:
        """Candidate pairs of ``split`` ("val" | "test"): CW val = train ∪ val pairs, CW test = train ∪ test pairs;
        OW = every |A|·|O| pair (feasibility filtering is applied separately, :func:`feasible_mask`)."""
        if split not in ("val", "test"):
            raise ValueError(f"eval masks exist for 'val' and 'test', not {split!r}")
        if world == "open":
            return np.ones(self.n_open_pairs, bool)
        if world != "closed":
            raise ValueError(f"unknown world {world!r} (expected one of {WORLDS})")
        listed = self.val_pairs if split == "val" else self.test_pairs
        mask = self.closed_to_train >= 0
        mask[[self.pair_to_idx[p] for p in listed]] = True
        return mask

    def seen_samples(self, split: str) -> np.ndarray:
        """bool (N,): the set's samples whose ground-truth pair is a train pair."""
        s = self.split_data(split)
        if s.pair_space == "train":
            return np.ones(len(s), bool)
        return self.closed_to_train[s.pair] >= 0

    def _in_world(self, closed_values: np.ndarray, world: str) -> np.ndarray:
        if world == "closed":
            return closed_values
        if world != "open":
            raise ValueError(f"unknown world {world!r} (expected one of {WORLDS})")
        out = np.zeros(self.n_open_pairs, closed_values.dtype)
        out[self.closed_to_open] = closed_values
        return out

    # ------------------------------------------------------------------ summary
    def __repr__(self) -> str:
        return f"CZSLData({self.root}, split={self.split!r}: {self.summary()})"

    def summary(self) -> str:
        """One line in the style czsl/CSP print at load."""
        return (
            f"{self.dataset or self.root.name}: {self.n_attrs} attrs, {self.n_objs} objs, "
            f"{len(self.train_pairs)}/{len(self.val_pairs)}/{len(self.test_pairs)} train/val/test pairs, "
            f"{self.n_pairs} CW / {self.n_open_pairs} OW pairs, "
            f"{len(self.train)}/{len(self.val)}/{len(self.test)} train/val/test images"
        )


# --------------------------------------------------------------------------------------------- readers
def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc})") from exc


def read_pairs(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``attr obj`` per line (split on whitespace; names may contain ``_``, ``.``, ``-``) -> pairs in file order.

    Blank lines are ignored; a line without exactly two tokens, a duplicate pair or an empty file is an error."""
    path = Path(path)
    out: list[tuple[str, str]] = []
    first_line: dict[tuple[str, str], int] = {}
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        toks = line.split()
        if not toks:
            continue
        if len(toks) != 2:
            raise DataFormatError(
                f"{path}: line {lineno}: expected 'attr obj' (2 whitespace-separated names), "
                f"got {len(toks)}: {line.strip()!r}"
            )
        pair = (toks[0], toks[1])
        if pair in first_line:
            raise DataFormatError(f"{path}: line {lineno}: pair {pair} repeats line {first_line[pair]}")
        first_line[pair] = lineno
        out.append(pair)
    if not out:
        raise DataFormatError(f"{path}: no pairs in the file")
    return out


def _load_torch_file(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only. A file that asks for any other global
    (code, a class, a numpy array) raises UnsafeFileError, nothing executed; an unreadable one DataFormatError."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln), None)
        if detail is not None:
            raise UnsafeFileError(
                f"{path}: refusing to load: the file asks for something other than tensors and "
                f"plain lists/dicts/str ({detail[:200]})"
            ) from None
        raise DataFormatError(
            f"{path}: not a readable torch.save file ({(lines or [''])[-1][:200]})"
        ) from None
    except Exception as exc:  # truncated, empty, not a torch file, ...
        raise DataFormatError(
            f"{path}: not a readable torch.save file ({type(exc).__name__}: {exc})"
        ) from None


def load_metadata(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """A czsl ``metadata_<split>.t7`` (``torch.save`` of a list of dicts of str), loaded with ``weights_only=True``.

    Each entry must be a dict with str ``image``, ``attr``, ``obj`` and ``set`` (extra keys such as UT-Zappos'
    ``_image`` are kept). A file that asks for code raises :class:`UnsafeFileError` (nothing is executed); an
    unreadable or malformed one raises :class:`DataFormatError` naming the entry and the field."""
    path = Path(path)
    obj = _load_torch_file(path)
    if not isinstance(obj, list):
        raise DataFormatError(
            f"{path}: expected a list of dicts {{image, attr, obj, set}}, got {type(obj).__name__}"
        )
    for i, entry in enumerate(obj):
        if not isinstance(entry, dict):
            raise DataFormatError(f"{path}: entry {i}: expected a dict, got {type(entry).__name__}")
        for key in META_FIELDS:
            if key not in entry:
                raise DataFormatError(f"{path}: entry {i}: field {key!r} is missing (expected {META_FIELDS})")
            if not isinstance(entry[key], str):
                raise DataFormatError(
                    f"{path}: entry {i}: field {key!r} must be a str, got "
                    f"{type(entry[key]).__name__} ({entry[key]!r})"
                )
        if entry["set"] not in (*SETS, NA):
            raise DataFormatError(
                f"{path}: entry {i}: field 'set' is {entry['set']!r} (expected one of {(*SETS, NA)})"
            )
    return obj


def load_czsl(
    root: str | os.PathLike[str],
    split: str = DEFAULT_SPLIT,
    *,
    check_images: bool = True,
    verify_counts: bool | None = None,
) -> CZSLData:
    """Read a czsl dataset folder (module docstring for the layout and the index spaces).

    ``check_images``: record kept images that are not files in ``missing_images`` (logged; not an error here; the
    image Dataset raises when it reaches one). ``verify_counts``: assert the firm :data:`KNOWN_COUNTS` (attrs,
    objs, train pairs, CW pairs where known); ``None`` = when the folder is a known benchmark and ``split`` is the
    natural split. A train entry whose pair is a CW pair but not a train pair has no training target: error."""
    root = Path(root)
    split_dir = root / split
    if not root.is_dir():
        raise DataFormatError(f"{root}: dataset folder not found")
    listed = {s: read_pairs(split_dir / f"{s}_pairs.txt") for s in SETS}
    attrs = sorted({a for ps in listed.values() for a, _ in ps})
    objs = sorted({o for ps in listed.values() for _, o in ps})
    pairs = sorted(set(listed["train"]) | set(listed["val"]) | set(listed["test"]))
    pair_to_idx = {p: i for i, p in enumerate(pairs)}
    train_pair_to_idx = {p: i for i, p in enumerate(listed["train"])}
    attr_to_idx = {a: i for i, a in enumerate(attrs)}
    obj_to_idx = {o: i for i, o in enumerate(objs)}

    meta_path = root / f"metadata_{split}.t7"
    meta = load_metadata(meta_path)
    rows: dict[str, list[tuple[str, int, int, int]]] = {s: [] for s in SETS}
    skipped = {"attr_na": 0, "set_na": 0, "pair_not_listed": 0}
    unlisted: Counter[tuple[str, str]] = Counter()
    for i, e in enumerate(meta):
        attr, obj, settype = e["attr"], e["obj"], e["set"]
        if attr == NA:
            skipped["attr_na"] += 1
            continue
        if settype == NA:
            skipped["set_na"] += 1
            continue
        pair = (attr, obj)
        if pair not in pair_to_idx:
            skipped["pair_not_listed"] += 1
            unlisted[pair] += 1
            continue
        if settype == "train":
            if pair not in train_pair_to_idx:
                raise DataFormatError(
                    f"{meta_path}: entry {i}: a train image of pair {pair}, which is not in "
                    f"{split_dir / 'train_pairs.txt'} (train targets index the train pairs)"
                )
            target = train_pair_to_idx[pair]
        else:
            target = pair_to_idx[pair]
        rows[settype].append((e["image"], attr_to_idx[attr], obj_to_idx[obj], target))

    def make(name: str) -> CZSLSplit:
        r = rows[name]
        cols = [np.asarray([x[k] for x in r], np.int64) for k in (1, 2, 3)]
        return CZSLSplit(name, [x[0] for x in r], *cols, pair_space="train" if name == "train" else "closed")

    data = CZSLData(
        root=root,
        split=split,
        dataset=dataset_name(root),
        attrs=attrs,
        objs=objs,
        pairs=pairs,
        train_pairs=listed["train"],
        val_pairs=listed["val"],
        test_pairs=listed["test"],
        train=make("train"),
        val=make("val"),
        test=make("test"),
        skipped=skipped,
        unlisted_pairs=dict(unlisted),
        sources={"metadata": str(meta_path), **{s: str(split_dir / f"{s}_pairs.txt") for s in SETS}},
    )
    if unlisted:  # the reference loaders drop them too; say so, with what was dropped
        log.warning(
            "%s: %d metadata entries skipped: their pair is in no pair file of %s (%d distinct pairs, e.g. %s)",
            meta_path,
            skipped["pair_not_listed"],
            split_dir,
            len(unlisted),
            next(iter(unlisted)),
        )
    if check_images:
        seen: set[str] = set()
        missing = []
        for s in SETS:
            for img in data.split_data(s).images:
                if img not in seen:
                    seen.add(img)
                    if not data.image_path(img).is_file():
                        missing.append(img)
        data.missing_images = missing
        if missing:
            log.warning(
                "%s: %d of %d images missing under %s (first: %s)",
                root,
                len(missing),
                len(seen),
                root / "images",
                missing[0],
            )
    if verify_counts is None:
        verify_counts = data.dataset is not None and split == DEFAULT_SPLIT
    if verify_counts:
        _assert_known_counts(data)
    log.info("%s", data.summary())
    return data


def _assert_known_counts(data: CZSLData) -> None:
    if data.dataset not in KNOWN_COUNTS:
        raise ValueError(
            f"{data.root}: no known counts for folder name {data.root.name!r} "
            f"(known: {sorted(DATASET_ALIASES)})"
        )
    k = KNOWN_COUNTS[data.dataset]
    checks = [
        ("attrs (states)", data.n_attrs, k.attrs),
        ("objs", data.n_objs, k.objs),
        ("open-world pairs |A|*|O|", data.n_open_pairs, k.attrs * k.objs),
        ("train pairs", len(data.train_pairs), k.train_pairs),
    ]
    if k.cw_pairs is not None:
        checks.append(("closed-world pairs", data.n_pairs, k.cw_pairs))
    bad = [f"{what}: found {got}, expected {want}" for what, got, want in checks if got != want]
    if bad:
        raise DataFormatError(
            f"{data.root / data.split}: counts differ from the {data.dataset} benchmark: "
            + "; ".join(bad)
            + ". Pass verify_counts=False for a subset or a different release."
        )


# --------------------------------------------------------------------------------------------- report
def _pair_split_counts(data: CZSLData, listed: Sequence[tuple[str, str]]) -> tuple[int, int]:
    train = set(data.train_pairs)
    seen = sum(p in train for p in listed)
    return seen, len(listed) - seen


def check_czsl(root: str | os.PathLike[str], split: str = DEFAULT_SPLIT) -> list[str]:
    """Readable report lines of a czsl folder (``unseen data check czsl``): sizes, pairs seen/unseen per split,
    vocabularies, missing images, skipped / unlisted pairs. For a known benchmark folder the firm counts of
    :data:`KNOWN_COUNTS` are asserted (DataFormatError) and the recalled ones produce WARNING lines."""
    d = load_czsl(root, split, check_images=True)
    lines = [
        f"czsl dataset {d.dataset or '(unknown name)'} at {d.root} (split {d.split})",
        f"vocabulary: {d.n_attrs} attrs (states), {d.n_objs} objs; pairs: {d.n_pairs} closed-world, "
        f"{d.n_open_pairs} open-world",
    ]
    val_su, test_su = _pair_split_counts(d, d.val_pairs), _pair_split_counts(d, d.test_pairs)
    lines.append(
        f"pairs: train {len(d.train_pairs)}; val {len(d.val_pairs)} (seen {val_su[0]}, unseen {val_su[1]}); "
        f"test {len(d.test_pairs)} (seen {test_su[0]}, unseen {test_su[1]})"
    )
    cand = {s: int(d.eval_mask(s).sum()) for s in ("val", "test")}
    lines.append(f"closed-world candidates: val {cand['val']}, test {cand['test']}")
    counts = {}
    for s in SETS:
        sp = d.split_data(s)
        counts[s] = len(sp)
        if s == "train":
            lines.append(
                f"images: train {len(sp)} ({len(np.unique(sp.pair))} of {len(d.train_pairs)} train pairs "
                "have images)"
            )
        else:
            seen = d.seen_samples(s)
            lines.append(
                f"images: {s} {len(sp)} (seen-pair {int(seen.sum())}, unseen-pair {int((~seen).sum())})"
            )
    sk = d.skipped
    lines.append(
        f"skipped metadata entries: attr 'NA' {sk['attr_na']}, set 'NA' {sk['set_na']}, "
        f"pair not in the pair files {sk['pair_not_listed']}"
        + (
            f" ({len(d.unlisted_pairs)} distinct, e.g. {next(iter(d.unlisted_pairs))})"
            if d.unlisted_pairs
            else ""
        )
    )
    for s in ("val", "test"):
        own = set(d.val_pairs if s == "val" else d.test_pairs)
        cand_mask = d.eval_mask(s)
        sp = d.split_data(s)
        off = sum(d.pairs[p] not in own for p in sp.pair)
        never = int((~cand_mask[sp.pair]).sum()) if len(sp) else 0
        if off:
            lines.append(
                f"WARNING {s}: {off} images have a pair that is not in {s}_pairs.txt "
                f"({never} of them are outside the {s} candidate set and can never be predicted)"
            )
    missing = d.missing_images or []
    n_unique = len(set(d.train.images) | set(d.val.images) | set(d.test.images))
    lines.append(
        ("ERROR " if missing else "")
        + f"images on disk: {n_unique - len(missing)} of {n_unique} found"
        + (f"; MISSING {len(missing)} (first: {d.image_path(missing[0])})" if missing else "")
    )
    if d.dataset in KNOWN_COUNTS and d.split == DEFAULT_SPLIT:
        k = KNOWN_COUNTS[d.dataset]
        lines.append(
            f"known counts of {d.dataset} (asserted): attrs, objs, train pairs"
            + (", closed-world pairs" if k.cw_pairs is not None else "")
            + ": OK"
        )
        recalled = [
            ("val pairs seen/unseen", val_su, k.val_pairs),
            ("test pairs seen/unseen", test_su, k.test_pairs),
            ("train/val/test images", (counts["train"], counts["val"], counts["test"]), k.images),
            ("closed-world test candidates", cand["test"], k.train_pairs + k.test_pairs[1]),
        ]
        for what, got, want in recalled:
            if got != want:
                lines.append(f"WARNING {what}: found {got}, published (recalled) {want} [not asserted]")
    return lines


# --------------------------------------------------------------------------------------------- images
def clip_transforms(
    size: int = 224, train: bool = False, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> Callable[[Any], torch.Tensor]:
    """CLIP image transforms as CSP/Troika use them: Resize(size, bicubic) -> CenterCrop(size) -> RGB ->
    ToTensor -> Normalize(CLIP mean/std). ``train`` adds RandomHorizontalFlip, RandomPerspective and
    RandomRotation(5°) after the crop."""
    from torchvision import transforms as T

    geometry: list[Any] = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)]
    if train:
        geometry += [T.RandomHorizontalFlip(), T.RandomPerspective(), T.RandomRotation(5)]
    return T.Compose([*geometry, _to_rgb, T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])


def _to_rgb(image: Any) -> Any:
    return image.convert("RGB")


class CZSLImageDataset(Dataset):
    """Images of one set: ``dataset[i]`` -> ``(image, attr_idx, obj_idx, pair_idx)``.

    ``image`` is ``transform(PIL RGB image)`` (the PIL image if ``transform`` is None). ``pair_idx`` is in
    ``space``: default the set's own space (train -> ``train_pairs``, val/test -> CW ``pairs``); "open" gives OW
    indices (val/test, or train mapped to OW), "closed" maps train targets to CW. A missing or unreadable image
    raises DataFormatError naming the path."""

    def __init__(
        self,
        data: CZSLData,
        split: str,
        transform: Callable[[Any], Any] | None = None,
        space: str | None = None,
    ) -> None:
        s = data.split_data(split)
        self.root = data.root / "images"
        self.images = list(s.images)
        self.attr = s.attr.copy()
        self.obj = s.obj.copy()
        self.pair = data.targets(split, space)
        self.space = space or s.pair_space
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int, int, int]:
        img = read_image(self.root / self.images[i])
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.attr[i]), int(self.obj[i]), int(self.pair[i])


# --------------------------------------------------------------------------------------------- feasibility
#: Word remap before GloVe lookup (keys lower-case; the value's ``_`` words are averaged), after CSP/Troika.
#: faux.fur, patent.leather, boots.ankle, nubuck, trash_can, eiffel_tower are as read in their code; the other
#: UT-Zappos and C-GQA entries follow the czsl/CSP tables as recalled, not re-checked. Override with ``remap=``
#: where a word is missing from your file.
GLOVE_REMAP: dict[str, str] = {
    "faux.fur": "fake_fur",
    "faux.leather": "fake_leather",
    "full.grain.leather": "thick_leather",
    "hair.calf": "hair_leather",
    "patent.leather": "shiny_leather",
    "nubuck": "grainy_leather",
    "boots.ankle": "ankle_boots",
    "boots.knee.high": "knee_high_boots",
    "boots.mid-calf": "midcalf_boots",
    "shoes.boat.shoes": "boat_shoes",
    "shoes.clogs.and.mules": "clogs_shoes",
    "shoes.flats": "flats_shoes",
    "shoes.heels": "heels",
    "shoes.loafers": "loafers",
    "shoes.oxfords": "oxford_shoes",
    "shoes.sneakers.and.athletic.shoes": "sneakers",
    "trash_can": "trashcan",
    "eiffel_tower": "tower",
    "dry-erase_board": "dry_erase_board",
    "black_and_white": "black_white",
}


def glove_words(name: str, remap: Mapping[str, str] | None = None) -> list[str]:
    """The GloVe words whose vectors are averaged for ``name``: lower-cased, remapped, split on ``_``."""
    table = GLOVE_REMAP if remap is None else remap
    key = name.lower()
    key = table.get(key, key).lower()
    return [w for w in key.split("_") if w]


def load_glove_vectors(
    path: str | os.PathLike[str], names: Iterable[str], remap: Mapping[str, str] | None = None
) -> dict[str, np.ndarray]:
    """Vectors for ``names`` from a GloVe text file (read by :func:`unseen.io.read_glove`) -> {name: float32 (d,)}.
    Each name is the mean of the vectors of :func:`glove_words` (lower-case, ``remap`` = :data:`GLOVE_REMAP` by
    default, ``_`` words averaged). Words not in the file raise DataFormatError listing every one of them with the
    names that need them."""
    path = Path(path)
    names = list(dict.fromkeys(names))
    words = {n: glove_words(n, remap) for n in names}
    for n, ws in words.items():
        if not ws:
            raise ValueError(f"name {n!r} maps to no words")
    wanted = {w for ws in words.values() for w in ws}
    found = {w: v.astype(np.float32) for w, v in read_glove(path, sorted(wanted))[0].items()}
    missing = {w: [n for n, ws in words.items() if w in ws] for w in sorted(wanted - found.keys())}
    if missing:
        shown = "; ".join(f"{w!r} (for {ns[:3]})" for w, ns in list(missing.items())[:20])
        raise DataFormatError(
            f"{path}: {len(missing)} words not in the file: {shown}"
            f"{' ...' if len(missing) > 20 else ''}. Add them to remap= (a word your GloVe file has)."
        )
    return {n: np.mean([found[w] for w in ws], axis=0).astype(np.float32) for n, ws in words.items()}


def _unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def _embedding_matrices(
    attrs: Sequence[str], objs: Sequence[str], embeddings: Mapping[str, Any] | tuple[Any, Any]
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(embeddings, Mapping):
        missing = [n for n in (*attrs, *objs) if n not in embeddings]
        if missing:
            raise DataFormatError(f"embeddings: no vector for {len(missing)} names: {missing[:10]}")
        ea = np.stack([np.asarray(embeddings[a], np.float64).ravel() for a in attrs])
        eo = np.stack([np.asarray(embeddings[o], np.float64).ravel() for o in objs])
    else:
        ea, eo = (np.asarray(x, np.float64) for x in embeddings)
    if (
        ea.ndim != 2
        or eo.ndim != 2
        or ea.shape[0] != len(attrs)
        or eo.shape[0] != len(objs)
        or ea.shape[1] != eo.shape[1]
    ):
        raise DataFormatError(
            f"embeddings: expected ({len(attrs)}, d) attr and ({len(objs)}, d) obj vectors, "
            f"got {ea.shape} and {eo.shape}"
        )
    if not (np.isfinite(ea).all() and np.isfinite(eo).all()):
        raise DataFormatError("embeddings: contain NaN or inf")
    return ea, eo


def feasibility_scores(
    attrs: Sequence[str],
    objs: Sequence[str],
    train_pairs: Iterable[tuple[str, str]],
    embeddings: Mapping[str, Any] | tuple[Any, Any],
) -> np.ndarray:
    """CompCos (CVPR'21) feasibility of every OW pair -> float32 (|A|·|O|,), attr-major (index a*|O| + o).

    For an unseen (a, o): s_obj = max cos(e(o), e(o')) over objects o' != o with (a, o') a train pair (-1 if none),
    s_att = max cos(e(a), e(a')) over attrs a' != a with (a', o) a train pair (-1 if none); f = (s_obj + s_att) / 2.
    Seen pairs get f = 0. ``embeddings``: {name: vector} covering attrs and objs, or ``(attr (|A|, d), obj (|O|, d))``
    arrays in vocabulary order."""
    attrs, objs = list(attrs), list(objs)
    ea, eo = _embedding_matrices(attrs, objs, embeddings)
    ai = {a: i for i, a in enumerate(attrs)}
    oi = {o: i for i, o in enumerate(objs)}
    seen = np.zeros((len(attrs), len(objs)), bool)
    for a, o in train_pairs:
        if a not in ai or o not in oi:
            raise DataFormatError(f"train pair ({a!r}, {o!r}) is not in the vocabulary")
        seen[ai[a], oi[o]] = True
    cos_a = _unit_rows(ea) @ _unit_rows(ea).T  # (|A|, |A|)
    cos_o = _unit_rows(eo) @ _unit_rows(eo).T  # (|O|, |O|)
    # For an unseen (a, o), o itself is never a train partner of a (and a never one of o), so the "o' != o" and
    # "a' != a" conditions hold automatically; seen pairs are overwritten with 0 below.
    s_obj = np.full(seen.shape, -1.0)
    for a in range(len(attrs)):  # partners of (a, o): the train objects of attr a
        partners = np.flatnonzero(seen[a])
        if partners.size:
            s_obj[a] = np.maximum(cos_o[:, partners].max(axis=1), -1.0)
    s_att = np.full(seen.shape, -1.0)
    for o in range(len(objs)):  # partners of (a, o): the train attrs of obj o
        partners = np.flatnonzero(seen[:, o])
        if partners.size:
            s_att[:, o] = np.maximum(cos_a[:, partners].max(axis=1), -1.0)
    f = (s_obj + s_att) / 2
    f[seen] = 0.0
    return f.reshape(-1).astype(np.float32)


def load_feasibility(path: str | os.PathLike[str], n_pairs: int | None = None) -> np.ndarray:
    """A ``feasibility_<dataset>.pt`` file ({'feasibility': float tensor (|A|·|O|,)} in OW order), loaded with
    ``weights_only=True`` -> float32 array. ``n_pairs`` checks the length."""
    path = Path(path)
    obj = _load_torch_file(path)
    if not isinstance(obj, dict) or "feasibility" not in obj:
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataFormatError(f"{path}: expected a dict with key 'feasibility', got {found}")
    f = obj["feasibility"]
    if not isinstance(f, torch.Tensor) or f.ndim != 1 or not f.is_floating_point():
        desc = f"tensor {tuple(f.shape)} {f.dtype}" if isinstance(f, torch.Tensor) else type(f).__name__
        raise DataFormatError(f"{path}: 'feasibility': expected a 1-D float tensor, got {desc}")
    if n_pairs is not None and f.numel() != n_pairs:
        raise DataFormatError(f"{path}: 'feasibility': expected {n_pairs} values (|A|*|O|), got {f.numel()}")
    out = f.detach().to(torch.float32).numpy().copy()
    if not np.isfinite(out).all():
        raise DataFormatError(f"{path}: 'feasibility': contains NaN or inf")
    return out


def save_feasibility(path: str | os.PathLike[str], f: Any) -> None:
    """Write ``{'feasibility': float32 tensor}`` (Troika's format) atomically."""
    tensor = torch.as_tensor(np.asarray(f, np.float32).ravel())
    with atomic_path(path) as tmp:
        torch.save({"feasibility": tensor}, tmp)


def feasible_mask(f: Any, seen_mask: Any, threshold: float) -> np.ndarray:
    """Open-world pairs kept at ``threshold``: seen pairs, and unseen pairs with f >= threshold (removed pairs
    are excluded from the candidates, not multiplied by 0 as in CSP/Troika, which only removes positive
    scores)."""
    f = np.asarray(f).ravel()
    seen = np.asarray(seen_mask, bool).ravel()
    if f.shape != seen.shape:
        raise ValueError(f"feasibility ({f.size}) and seen_mask ({seen.size}) differ in length")
    return seen | (f >= threshold)


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CZSLData",
    "CZSLImageDataset",
    "CZSLSplit",
    "DEFAULT_SPLIT",
    "GLOVE_REMAP",
    "KNOWN_COUNTS",
    "KnownCounts",
    "check_czsl",
    "clip_transforms",
    "dataset_name",
    "feasibility_scores",
    "feasible_mask",
    "glove_words",
    "load_czsl",
    "load_feasibility",
    "load_glove_vectors",
    "load_metadata",
    "read_pairs",
    "save_feasibility",
]
