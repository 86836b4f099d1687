"""Own data, one command each (``unseen data make attribute | multilabel | wordvectors``).

Each command turns plain CSV / text files into exactly the files the readers of the toolkit consume, reads them
back through those readers before anything is published, and never overwrites an existing output unless asked
(``force``). Every input problem raises :class:`unseen.io.DataFormatError` naming the file, the line and what was
expected.

Attribute (xlsa17 "proposed split" layout, read by :func:`unseen.attribute.data.load_xlsa17`)
    Inputs: a CSV with a header naming the columns ``image`` and ``class`` (one row per image, the image order of
    the dataset); a CSV of class attributes (header: a class column, then one column per attribute; one row per
    class, the class order of the dataset); a text file of unseen class names (one per line); optionally a text
    file of validation class names. Written: ``att_splits.mat`` (``allclasses_names``, ``att`` = columns
    L2-normalised, ``original_att`` = the CSV values, 1-based ``trainval_loc`` / ``test_seen_loc`` /
    ``test_unseen_loc`` / ``train_loc`` / ``val_loc``), ``image_list.json`` (image paths as in the CSV, 0-based
    labels and locs, ``index_base`` 0), ``attributes.txt``, the xlsa17 class lists and ``make_attribute.json``
    (inputs, seed, the chosen validation classes, counts). Splits follow xlsa17: every image of an unseen class
    is ``test_unseen``; a seeded per-class fraction (default 20%) of every seen class is ``test_seen``, the rest
    ``trainval``; the validation classes split the seen classes, ``train_loc`` / ``val_loc`` = their images of
    ``trainval`` and ``test_seen``.

Multi-label (NUS-WIDE / BiAM layout, read by the ``nus_wide`` dataset)
    Inputs: a CSV with a header naming ``image`` and ``labels`` (labels separated by ``;``) and optionally
    ``split`` (``train`` / ``test``; without it a seeded fraction of the images is the test set); text files of
    the seen and the unseen label names. A listed label is +1, every other label -1. Written: ``TagList1k.txt``
    (seen labels), ``Concepts81.txt`` (unseen labels), ``img_names.pkl`` / ``test_img_names.pkl`` (image order;
    the training names are shuffled with the seed because the reader validates on the last 20% of them),
    ``nus_wide_train.h5`` (seen labels) and ``nus_wide_test.h5`` ([seen | unseen] + ``labels_81``), both through
    :func:`unseen.multilabel.extract.extract_h5` with their provenance sidecars, and ``make_multilabel.json``.

Word vectors (``.npy`` float32, one row per name in the dataset's order)
    From a local GloVe / word2vec text file (names lower-cased and split into words at anything that is not a
    letter or digit, a leading numeric id such as CUB's ``002.`` dropped, the words' vectors averaged; missing
    words are an error listing them unless ``allow_missing``, which skips them and leaves all-zero rows for names
    without any known word) or from the text tower of a local CLIP file (``prompt`` with ``{}`` = the name's
    words; rows L2-normalised). For an xlsa17 folder: attributes (``attributes.txt`` order) -> ``<NAME>_attribute.npy``,
    which the reader picks up, or classes (``allclasses_names`` order) -> ``class_vectors.npy``. For a NUS-WIDE
    layout folder: labels in GZSL order [seen | unseen] -> ``label_vectors.npy`` plus the reader's
    ``glove300_tags1k_concepts81.npz`` (``tags1k`` / ``concepts81``). ``<output>.json`` records the source.

CLI wiring: :func:`add_make_parser` adds the ``make`` subcommand to ``unseen data``; :func:`run_make` runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unseen.io import (
    DataFormatError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_glove,
)

log = logging.getLogger("unseen")

MAKE_ATTRIBUTE_FILE = "make_attribute.json"
MAKE_MULTILABEL_FILE = "make_multilabel.json"
NUS_VECTORS_FILE = "glove300_tags1k_concepts81.npz"  # the name the NUS-WIDE reader looks for
LABEL_VECTORS_FILE = "label_vectors.npy"
CLASS_VECTORS_FILE = "class_vectors.npy"
# OpenAI ViT-L/14 weights need QuickGELU (as in the compositional configs)
DEFAULT_CLIP_MODEL = "ViT-L-14-quickgelu"
DEFAULT_PROMPTS = {"classes": "a photo of a {}.", "labels": "a photo of a {}.", "attributes": "{}"}


# --------------------------------------------------------------------------------------------- small readers
def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found ({what})")
    try:
        return path.read_bytes().decode("utf-8-sig")  # a spreadsheet's UTF-8 BOM is not part of the header
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc})") from exc


def read_name_list(path: str | os.PathLike[str], what: str) -> list[str]:
    """One name per line (surrounding whitespace stripped, blank lines skipped); duplicates are an error."""
    path = Path(path)
    names: list[str] = []
    first: dict[str, int] = {}
    for lineno, line in enumerate(_read_text(path, what).splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in first:
            raise DataFormatError(
                f"{path}: line {lineno}: {what}: '{name}' is listed twice (first on line {first[name]})"
            )
        first[name] = lineno
        names.append(name)
    if not names:
        raise DataFormatError(f"{path}: {what}: the file lists no names")
    return names


def _name_lines(path: Path, what: str) -> dict[str, int]:
    """name -> line number of a name list (for errors that point at the line)."""
    out: dict[str, int] = {}
    for lineno, line in enumerate(_read_text(path, what).splitlines(), start=1):
        if line.strip():
            out.setdefault(line.strip(), lineno)
    return out


def _read_csv(
    path: Path, what: str, required: Sequence[str], optional: Sequence[str] = ()
) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV whose first row is a header naming (case-insensitively) the ``required`` columns;
    returns ``(line number, {column: stripped cell})`` for the non-blank rows."""
    reader = csv.reader(io.StringIO(_read_text(path, what), newline=""))
    header = next(reader, None)
    cols = [c.strip().lower() for c in header] if header else []
    missing = [c for c in required if c not in cols]
    if missing:
        raise DataFormatError(
            f"{path}: line 1: expected a header row naming the columns {', '.join(repr(c) for c in required)}"
            + (f" (optional: {', '.join(repr(c) for c in optional)})" if optional else "")
            + f"; got {header!r}"
        )
    where = {c: cols.index(c) for c in (*required, *optional) if c in cols}
    rows: list[tuple[int, dict[str, str]]] = []
    for row in reader:
        lineno = reader.line_num
        if not "".join(row).strip():
            continue
        need = max(where.values()) + 1
        if len(row) < need:
            raise DataFormatError(
                f"{path}: line {lineno}: {len(row)} column(s), expected at least {need} ({', '.join(cols)})"
            )
        rows.append((lineno, {c: row[i].strip() for c, i in where.items()}))
    if not rows:
        raise DataFormatError(f"{path}: {what}: no rows after the header")
    return rows


def _stored_path(cell: str) -> str:
    p = cell.replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def _image_rows(path: Path, image_root: Path, rows: list[tuple[int, dict[str, str]]]) -> list[str]:
    """The stored image paths of CSV rows; each must exist under ``image_root`` (or be absolute) and appear once."""
    stored: list[str] = []
    seen: dict[str, int] = {}
    missing: list[tuple[int, str]] = []
    for lineno, row in rows:
        p = _stored_path(row["image"])
        if not p:
            raise DataFormatError(f"{path}: line {lineno}: column 'image' is empty")
        if p in seen:
            raise DataFormatError(
                f"{path}: line {lineno}: image '{p}' is listed twice (first on line {seen[p]})"
            )
        seen[p] = lineno
        if not (image_root / p).is_file():  # an absolute p replaces image_root in the join
            missing.append((lineno, p))
        stored.append(p)
    if missing:
        lineno, p = missing[0]
        raise DataFormatError(
            f"{path}: line {lineno}: image '{p}' not found under {image_root.resolve()} ({len(missing)} of {len(rows)} "
            "images missing; paths are relative to --image-root, by default the CSV's folder)"
        )
    return stored


# --------------------------------------------------------------------------------------------- staging
def _check_outputs(out_dir: Path, names: Sequence[str], force: bool) -> None:
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not force:
        raise FileExistsError(
            f"{out_dir}: already holds {', '.join(existing[:6])}{' ...' if len(existing) > 6 else ''}; "
            "refusing to overwrite (pass --force / force=True, or choose another folder)"
        )


@contextlib.contextmanager
def _staged(out_dir: Path, names: Sequence[str]) -> Iterator[Path]:
    """A temporary sibling folder to write and read back ``names`` in; on success each file is renamed into
    ``out_dir`` (same file system: atomic per file), on any error nothing in ``out_dir`` changes."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".make", dir=out_dir.parent))
    try:
        yield tmp
        out_dir.mkdir(parents=True, exist_ok=True)
        for n in names:
            os.replace(tmp / n, out_dir / n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _warn_stale_vectors(out_dir: Path, patterns: Sequence[str]) -> None:
    for pat in patterns:
        for p in sorted(out_dir.glob(pat)):
            log.warning(
                "%s was made for the previous files of %s: rebuild it (unseen data make wordvectors)",
                p,
                out_dir,
            )


# --------------------------------------------------------------------------------------------- attribute
def _savemat_bytes(mdict: dict[str, Any]) -> bytes:
    """MATLAB v5 bytes with a fixed header text (scipy stamps the time, which would make equal inputs differ)."""
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, mdict, format="5", do_compression=False, oned_as="column")
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, written by unseen data make attribute".ljust(116, b" ")
    return bytes(data)


def _loc(rows: np.ndarray, n_images: int) -> np.ndarray:
    """0-based rows -> the xlsa17 column of 1-based locations (uint16 as the release; uint32 past its range)."""
    dtype = np.uint16 if n_images <= np.iinfo(np.uint16).max else np.uint32
    return (np.sort(np.asarray(rows, np.int64)) + 1).astype(dtype).reshape(-1, 1)


def _read_attribute_csv(path: Path) -> tuple[list[str], list[str], np.ndarray, dict[str, int]]:
    """class names (row order), attribute names (header order), C x A float64 values, class -> line number."""
    reader = csv.reader(io.StringIO(_read_text(path, "class attributes"), newline=""))
    header = next(reader, None)
    if not header or len(header) < 2:
        raise DataFormatError(
            f"{path}: line 1: expected a header row 'class,<attribute 1>,<attribute 2>,...', got {header!r}"
        )
    attrs = [a.strip() for a in header[1:]]
    for j, a in enumerate(attrs):
        if not a or "\n" in a or "\r" in a:  # one name per line in attributes.txt
            raise DataFormatError(
                f"{path}: line 1: column {j + 2}: expected a one-line attribute name, got {a!r}"
            )
        if attrs.index(a) != j:
            raise DataFormatError(
                f"{path}: line 1: attribute '{a}' is named twice (columns {attrs.index(a) + 2}, {j + 2})"
            )
    classes: list[str] = []
    lines: dict[str, int] = {}
    values: list[list[float]] = []
    for row in reader:
        lineno = reader.line_num
        if not "".join(row).strip():
            continue
        if len(row) != len(header):
            raise DataFormatError(
                f"{path}: line {lineno}: {len(row)} columns, expected {len(header)} (as the header)"
            )
        name = row[0].strip()
        if not name or "\n" in name or "\r" in name:  # one name per line in the xlsa17 class lists
            raise DataFormatError(
                f"{path}: line {lineno}: column 1: expected a one-line class name, got {name!r}"
            )
        if name in lines:
            raise DataFormatError(
                f"{path}: line {lineno}: class '{name}' has a second row (first on line {lines[name]})"
            )
        vals = []
        for a, cell in zip(attrs, row[1:]):
            try:
                v = float(cell)
            except ValueError:
                raise DataFormatError(
                    f"{path}: line {lineno}: column '{a}': {cell.strip()!r} is not a number"
                ) from None
            if not np.isfinite(v):
                raise DataFormatError(
                    f"{path}: line {lineno}: column '{a}': {cell.strip()!r} is not a finite number"
                )
            vals.append(v)
        lines[name] = lineno
        classes.append(name)
        values.append(vals)
    if not classes:
        raise DataFormatError(f"{path}: no class rows after the header")
    return classes, attrs, np.asarray(values, np.float64), lines


def make_attribute_dataset(
    out_dir: str | os.PathLike[str],
    images_csv: str | os.PathLike[str],
    attributes_csv: str | os.PathLike[str],
    unseen: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    val_classes: str | os.PathLike[str] | None = None,
    n_val: int | None = None,
    test_seen_fraction: float = 0.2,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Write an xlsa17 dataset folder ``out_dir`` from CSVs (see the module docstring); returns the summary
    that is also saved as ``make_attribute.json``. ``n_val`` (without ``val_classes``): how many seen classes
    validate, chosen with ``seed``; default round(seen x unseen / all classes), the test split's ratio."""
    from unseen.attribute.data import ANCHORS, load_xlsa17

    out_dir = Path(out_dir)
    images_csv, attributes_csv, unseen = Path(images_csv), Path(attributes_csv), Path(unseen)
    root = Path(image_root) if image_root else images_csv.parent
    dataset = out_dir.name.upper()
    if dataset in ANCHORS:  # the reader would cut every path at that benchmark's anchor folder
        raise ValueError(
            f"{out_dir}: the folder name '{out_dir.name}' is the xlsa17 benchmark {dataset}, whose image paths "
            "the reader maps by an anchor folder; give your dataset folder another name"
        )
    if not 0.0 < float(test_seen_fraction) < 1.0:
        raise ValueError(f"test_seen_fraction must be in (0, 1), got {test_seen_fraction}")
    if not root.is_dir():
        raise DataFormatError(f"{root}: image root folder not found")

    classes, attr_names, values, class_line = _read_attribute_csv(attributes_csv)
    index = {c: i for i, c in enumerate(classes)}
    C = len(classes)
    rows = _read_csv(images_csv, "images", ("image", "class"))
    labels = np.empty(len(rows), np.int64)
    for i, (lineno, row) in enumerate(rows):
        if row["class"] not in index:
            raise DataFormatError(
                f"{images_csv}: line {lineno}: class '{row['class']}' is not a row of {attributes_csv}"
            )
        labels[i] = index[row["class"]]
    stored = _image_rows(images_csv, root, rows)
    N = len(stored)

    unseen_names = read_name_list(unseen, "unseen classes")
    unseen_lines = _name_lines(unseen, "unseen classes")
    for n in unseen_names:
        if n not in index:
            raise DataFormatError(
                f"{unseen}: line {unseen_lines[n]}: unseen class '{n}' is not a row of {attributes_csv}"
            )
    unseen_ids = np.array(sorted(index[n] for n in unseen_names), np.int64)
    seen_ids = np.setdiff1d(np.arange(C), unseen_ids)
    counts = np.bincount(labels, minlength=C)
    empty = [classes[c] for c in range(C) if counts[c] == 0]
    if empty:
        raise DataFormatError(
            f"{attributes_csv}: line {class_line[empty[0]]}: class '{empty[0]}' has no image in {images_csv} "
            f"({len(empty)} such class(es): {empty[:5]}); remove their rows or add images"
        )
    single = [c for c in seen_ids if counts[c] < 2]
    if single:
        lineno = rows[int(np.flatnonzero(labels == single[0])[0])][0]
        raise DataFormatError(
            f"{images_csv}: line {lineno}: seen class '{classes[single[0]]}' has this one image "
            f"({len(single)} such class(es)); every seen class needs at least 2 (training and the seen test set)"
        )
    if len(seen_ids) < 2:
        raise DataFormatError(
            f"{unseen}: leaves {len(seen_ids)} seen class(es); at least 2 are needed (training and validation "
            "classes)"
        )

    # validation classes: given, or a seeded choice (a separate stream: the test split does not move it)
    if val_classes is not None:
        val_path = Path(val_classes)
        names = read_name_list(val_path, "validation classes")
        lines = _name_lines(val_path, "validation classes")
        for n in names:
            if n not in index or index[n] in set(unseen_ids.tolist()):
                why = "not a row of " + str(attributes_csv) if n not in index else "an unseen class"
                raise DataFormatError(
                    f"{val_path}: line {lines[n]}: validation class '{n}' is {why}; expected a seen class"
                )
        val_ids = np.array(sorted(index[n] for n in names), np.int64)
        val_source = str(val_path)
    else:
        k = int(round(len(seen_ids) * len(unseen_ids) / C)) if n_val is None else int(n_val)
        if n_val is None:
            k = min(max(k, 1), len(seen_ids) - 1)
        rng_val = np.random.default_rng([int(seed), 1])
        val_ids = np.sort(rng_val.permutation(seen_ids)[:k]).astype(np.int64)
        val_source = f"chosen with seed {seed}"
    if not 1 <= len(val_ids) < len(seen_ids):
        raise ValueError(
            f"validation classes: {len(val_ids)} of {len(seen_ids)} seen classes; expected at least 1 and fewer "
            "than all (the rest train)"
        )
    train_ids = np.setdiff1d(seen_ids, val_ids)

    # xlsa17 splits: unseen -> test_unseen; per seen class a seeded test_seen hold-out, the rest trainval
    rng = np.random.default_rng([int(seed), 0])
    test_seen_parts, trainval_parts = [], []
    for c in seen_ids:
        idx = np.flatnonzero(labels == c)
        k = min(max(int(round(test_seen_fraction * len(idx))), 1), len(idx) - 1)
        held = np.sort(rng.choice(idx, size=k, replace=False))
        test_seen_parts.append(held)
        trainval_parts.append(np.setdiff1d(idx, held))
    trainval = np.sort(np.concatenate(trainval_parts))
    test_seen = np.sort(np.concatenate(test_seen_parts))
    test_unseen = np.flatnonzero(np.isin(labels, unseen_ids))
    pool = np.flatnonzero(np.isin(labels, seen_ids))  # trainval ∪ test_seen
    train_loc = pool[np.isin(labels[pool], train_ids)]
    val_loc = pool[np.isin(labels[pool], val_ids)]

    norms = np.linalg.norm(values, axis=1)
    if np.any(norms == 0):
        bad = classes[int(np.flatnonzero(norms == 0)[0])]
        raise DataFormatError(
            f"{attributes_csv}: line {class_line[bad]}: class '{bad}' has all-zero attributes (att is "
            "L2-normalised per class)"
        )
    cell = np.empty((C, 1), dtype=object)
    for i, n in enumerate(classes):
        cell[i, 0] = n
    mat = {
        "allclasses_names": cell,
        "att": (values / norms[:, None]).T.astype(np.float64),  # A x C, columns of norm 1
        "original_att": values.T.astype(np.float64),
        "trainval_loc": _loc(trainval, N),
        "test_seen_loc": _loc(test_seen, N),
        "test_unseen_loc": _loc(test_unseen, N),
        "train_loc": _loc(train_loc, N),
        "val_loc": _loc(val_loc, N),
    }
    image_list = {
        "image_files": stored,
        "labels": labels.tolist(),
        "trainval_loc": trainval.tolist(),
        "test_seen_loc": test_seen.tolist(),
        "test_unseen_loc": test_unseen.tolist(),
        "index_base": 0,
    }
    class_lists = {
        "allclasses.txt": np.arange(C),
        "trainvalclasses.txt": seen_ids,
        "testclasses.txt": unseen_ids,
        "trainclasses1.txt": train_ids,
        "valclasses1.txt": val_ids,
    }
    summary = {
        "command": "unseen data make attribute",
        "dataset": dataset,
        "images_csv": str(images_csv.resolve()),
        "attributes_csv": str(attributes_csv.resolve()),
        "unseen_classes_file": str(unseen.resolve()),
        "image_root": str(root.resolve()),
        "seed": int(seed),
        "test_seen_fraction": float(test_seen_fraction),
        "validation_classes": [classes[c] for c in val_ids],
        "validation_classes_source": val_source,
        "counts": {
            "images": N,
            "classes": C,
            "seen": len(seen_ids),
            "unseen": len(unseen_ids),
            "attributes": len(attr_names),
            "trainval": len(trainval),
            "test_seen": len(test_seen),
            "test_unseen": len(test_unseen),
            "train_loc": len(train_loc),
            "val_loc": len(val_loc),
            "train_classes": len(train_ids),
            "val_classes": len(val_ids),
        },
    }
    names = ["att_splits.mat", "image_list.json", "attributes.txt", *class_lists, MAKE_ATTRIBUTE_FILE]
    _check_outputs(out_dir, names, force)
    if force:
        _warn_stale_vectors(out_dir, ("*_attribute.npy", "*_attribute.pkl", CLASS_VECTORS_FILE))
    with _staged(out_dir, names) as tmp:
        atomic_write_bytes(tmp / "att_splits.mat", _savemat_bytes(mat))
        atomic_write_json(tmp / "image_list.json", image_list)
        # "id name": the reader drops a leading number, so a name such as "4 legs" survives
        atomic_write_text(tmp / "attributes.txt", "".join(f"{j + 1} {a}\n" for j, a in enumerate(attr_names)))
        for fname, ids in class_lists.items():
            atomic_write_text(tmp / fname, "".join(classes[c] + "\n" for c in ids))
        atomic_write_json(tmp / MAKE_ATTRIBUTE_FILE, summary)
        # read back through the reader before publishing (the image files were checked above)
        load_xlsa17(tmp, dataset, image_root=root, check_images=0)
    log.debug(
        "wrote %s: %d images, %d classes (%d seen / %d unseen)", out_dir, N, C, len(seen_ids), len(unseen_ids)
    )
    return summary


# --------------------------------------------------------------------------------------------- multi-label
def make_multilabel_dataset(
    out_dir: str | os.PathLike[str],
    images_csv: str | os.PathLike[str],
    seen: str | os.PathLike[str],
    unseen: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    label_sep: str = ";",
    test_fraction: float = 0.2,
    seed: int = 0,
    backbone: str = "vgg19",
    weights: str | os.PathLike[str] | None = None,
    image_size: int = 224,
    batch_size: int = 32,
    device: str = "cpu",
    tiny_widths: Sequence[int] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write a NUS-WIDE-layout folder ``out_dir`` (label files, name lists, BiAM h5 features through
    :func:`unseen.multilabel.extract.extract_h5`) from a CSV and the seen / unseen label lists; returns the
    summary saved as ``make_multilabel.json``."""
    from unseen.multilabel.data import (
        BiAMH5Dataset,
        feature_shape,
        h5_name,
        load_biam_names,
        load_nus_wide_labels,
    )
    from unseen.multilabel.extract import build_extractor, extract_h5

    out_dir = Path(out_dir)
    images_csv, seen, unseen = Path(images_csv), Path(seen), Path(unseen)
    root = Path(image_root) if image_root else images_csv.parent
    if not root.is_dir():
        raise DataFormatError(f"{root}: image root folder not found")
    if not label_sep:
        raise ValueError("label_sep must not be empty")
    seen_names = read_name_list(seen, "seen labels")
    unseen_names = read_name_list(unseen, "unseen labels")
    both = [n for n in unseen_names if n in set(seen_names)]
    if both:
        raise DataFormatError(
            f"{unseen}: line {_name_lines(unseen, 'unseen labels')[both[0]]}: label '{both[0]}' is also in {seen} "
            f"({len(both)} shared); seen and unseen labels must be disjoint"
        )
    space = [*seen_names, *unseen_names]
    col = {n: j for j, n in enumerate(space)}
    rows = _read_csv(images_csv, "images", ("image", "labels"), ("split",))
    stored = _image_rows(images_csv, root, rows)
    keys: dict[str, int] = {}
    for (lineno, _), p in zip(rows, stored):
        k = h5_name(p)  # "a/b_c.jpg" and "a_b/c.jpg" would share one h5 key
        if k in keys:
            raise DataFormatError(
                f"{images_csv}: line {lineno}: image '{p}' maps to the h5 name '{k}' of line {keys[k]} "
                "('/' becomes '_'); rename one of them"
            )
        keys[k] = lineno
    Y = -np.ones((len(rows), len(space)), np.int8)
    for i, (lineno, row) in enumerate(rows):
        for lab in (t.strip() for t in row["labels"].split(label_sep)):
            if not lab:
                continue
            if lab not in col:
                raise DataFormatError(
                    f"{images_csv}: line {lineno}: label '{lab}' is in neither {seen} nor {unseen} (labels are "
                    f"separated by '{label_sep}')"
                )
            Y[i, col[lab]] = 1

    N = len(rows)
    if "split" in rows[0][1]:
        is_test = np.zeros(N, bool)
        for i, (lineno, row) in enumerate(rows):
            s = row["split"].lower()
            if s not in ("train", "test"):
                raise DataFormatError(
                    f"{images_csv}: line {lineno}: column 'split': {row['split']!r}, expected train or test"
                )
            is_test[i] = s == "test"
        split_source = f"column 'split' of {images_csv.name}"
    else:
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        n_test = min(max(int(round(test_fraction * N)), 1), N - 1) if N > 1 else 0
        is_test = np.zeros(N, bool)
        is_test[np.random.default_rng([int(seed), 2]).permutation(N)[:n_test]] = True
        split_source = f"{test_fraction:g} of the images, seed {seed}"
    test_rows = np.flatnonzero(is_test)
    # shuffled: the reader validates on the last 20% of the training names, which must not be one CSV block
    train_rows = np.random.default_rng([int(seed), 3]).permutation(np.flatnonzero(~is_test))
    if not len(train_rows) or not len(test_rows):
        raise DataFormatError(
            f"{images_csv}: {len(train_rows)} training and {len(test_rows)} test images; both sets need images"
        )
    ns = len(seen_names)
    no_train = [seen_names[j] for j in range(ns) if not (Y[train_rows, j] == 1).any()]
    no_test = [unseen_names[j] for j in range(len(unseen_names)) if not (Y[test_rows, ns + j] == 1).any()]
    if no_train:
        log.warning("seen labels without a positive training image: %s", no_train[:10])
    if no_test:
        log.warning("unseen labels without a positive test image (left out of mAP): %s", no_test[:10])

    summary = {
        "command": "unseen data make multilabel",
        "images_csv": str(images_csv.resolve()),
        "seen_labels_file": str(seen.resolve()),
        "unseen_labels_file": str(unseen.resolve()),
        "image_root": str(root.resolve()),
        "seed": int(seed),
        "split": split_source,
        "label_sep": label_sep,
        "extractor": {
            "backbone": backbone,
            "weights": str(Path(weights).resolve()) if weights else None,
            "image_size": int(image_size),
            "tiny_widths": list(tiny_widths) if tiny_widths else None,
        },
        "counts": {
            "images": N,
            "train": len(train_rows),
            "test": len(test_rows),
            "seen": ns,
            "unseen": len(unseen_names),
        },
        "seen_without_train_positive": no_train,
        "unseen_without_test_positive": no_test,
    }
    h5s = ["nus_wide_train.h5", "nus_wide_test.h5"]
    names = [
        "TagList1k.txt",
        "Concepts81.txt",
        "img_names.pkl",
        "test_img_names.pkl",
        *h5s,
        *(h + ".json" for h in h5s),
        MAKE_MULTILABEL_FILE,
    ]
    _check_outputs(out_dir, names, force)
    if force:
        _warn_stale_vectors(out_dir, (NUS_VECTORS_FILE, LABEL_VECTORS_FILE, "NUS_WIDE_pretrained_w2v_*"))
    if not weights:
        log.warning(
            "no --weights: %s is randomly initialised; the features carry no pretrained knowledge and "
            "`unseen predict` cannot rebuild the extractor",
            backbone,
        )
    train_names = [stored[i] for i in train_rows]
    test_names = [stored[i] for i in test_rows]
    with _staged(out_dir, names) as tmp:
        atomic_write_text(tmp / "TagList1k.txt", "".join(n + "\n" for n in seen_names))
        atomic_write_text(tmp / "Concepts81.txt", "".join(n + "\n" for n in unseen_names))
        # the pickles the reader looks for by default (plain str containers: its numpy-only unpickler loads them)
        atomic_write_bytes(tmp / "img_names.pkl", pickle.dumps({"img_names": train_names}, protocol=2))
        atomic_write_bytes(tmp / "test_img_names.pkl", pickle.dumps(test_names, protocol=2))
        ext = build_extractor(backbone, weights, image_size, tiny_widths=tiny_widths, device=device)
        extract_h5(
            root,
            [(stored[i], Y[i, :ns]) for i in train_rows],
            tmp / h5s[0],
            extractor=ext,
            batch_size=batch_size,
            overwrite=True,
        )
        extract_h5(
            root,
            [(stored[i], {"labels": Y[i], "labels_81": Y[i, ns:]}) for i in test_rows],
            tmp / h5s[1],
            extractor=ext,
            batch_size=batch_size,
            overwrite=True,
        )
        atomic_write_json(tmp / MAKE_MULTILABEL_FILE, summary)
        # read back: label files, name lists, every h5 key and label length
        ls = load_nus_wide_labels(tmp)
        assert ls.seen_names == seen_names and ls.unseen_names == unseen_names
        for h5, nm, key, n in (
            (h5s[0], "img_names.pkl", "labels", ns),
            (h5s[1], "test_img_names.pkl", "labels", len(space)),
        ):
            ds = BiAMH5Dataset(
                tmp / h5, load_biam_names(tmp / nm), key, n, feature_shape=feature_shape(tmp / h5)
            )
            ds.read(0)
            ds.close()
    log.debug(
        "wrote %s: %d training / %d test images, %d seen / %d unseen labels",
        out_dir,
        len(train_rows),
        len(test_rows),
        ns,
        len(unseen_names),
    )
    return summary


# --------------------------------------------------------------------------------------------- word vectors
_ID_PREFIX = re.compile(r"^\s*\d+[.\s_-]+(?=\D)")  # "002.Laysan_Albatross": CUB's class id is not a word
_WORD = re.compile(r"[^\W_]+")  # letters and digits; "_", "+", ":", "(" ... separate words


def name_words(name: str) -> list[str]:
    """The lower-case words of a class / attribute / label name (``has_bill_shape::curved`` -> has, bill, shape,
    curved; ``grizzly+bear`` -> grizzly, bear; ``002.Laysan_Albatross`` -> laysan, albatross)."""
    return _WORD.findall(_ID_PREFIX.sub("", name).lower())


def glove_vectors(
    names: Sequence[str], glove: str | os.PathLike[str], allow_missing: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """One row per name: the mean of its words' GloVe vectors (float32). Missing words raise
    :class:`DataFormatError` listing them, unless ``allow_missing`` (they are skipped; a name without any known
    word gets a zero row). Returns ``(vectors, info)``."""
    words = [name_words(n) for n in names]
    empty = [n for n, w in zip(names, words) if not w]
    if empty:
        raise DataFormatError(f"names without any word (letters or digits): {empty[:5]}")
    found, dim = read_glove(glove, sorted({w for ws in words for w in ws}))
    missing = sorted({w for ws in words for w in ws if w not in found})
    if missing and not allow_missing:
        which = [n for n, ws in zip(names, words) if any(w not in found for w in ws)]
        raise DataFormatError(
            f"{glove}: {len(missing)} word(s) not in the file: {', '.join(missing[:20])}"
            f"{' ...' if len(missing) > 20 else ''} (in {len(which)} name(s), e.g. {which[:3]}); pass "
            "--allow-missing to skip them (names without any known word get zero vectors)"
        )
    out = np.zeros((len(names), dim), np.float32)
    zero_rows = []
    for i, ws in enumerate(words):
        known = [found[w] for w in ws if w in found]
        if known:
            out[i] = np.mean(known, axis=0)
        else:
            zero_rows.append(names[i])
    if zero_rows:
        log.warning(
            "%d name(s) have no word in %s and get zero vectors: %s", len(zero_rows), glove, zero_rows[:10]
        )
    info = {
        "source": "glove",
        "file": str(Path(glove).resolve()),
        "dim": dim,
        "missing_words": missing,
        "zero_rows": zero_rows,
        "rule": "mean of the name's lower-case words",
    }
    return out, info


def clip_vectors(
    names: Sequence[str],
    weights: str | os.PathLike[str],
    *,
    model: str = DEFAULT_CLIP_MODEL,
    prompt: str = "a photo of a {}.",
    device: str = "cpu",
    batch_size: int = 256,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One L2-normalised row per name: the CLIP text embedding of ``prompt`` with ``{}`` = the name's words,
    from a local CLIP file (architecture ``model``, any open_clip name). Returns ``(vectors float32, info)``."""
    import torch

    from unseen.compositional.clip import create_clip, encode_text, max_context_length, tokenize

    if prompt.count("{}") != 1:
        raise ValueError(f"--prompt must contain '{{}}' exactly once (where the name goes), got {prompt!r}")
    if not Path(weights).is_file():
        raise FileNotFoundError(f"{weights}: CLIP weights file not found")
    words = [name_words(n) for n in names]
    empty = [n for n, w in zip(names, words) if not w]
    if empty:
        raise DataFormatError(f"names without any word (letters or digits): {empty[:5]}")
    texts = [prompt.replace("{}", " ".join(w)) for w in words]
    clip = create_clip(model, Path(weights), device=device)
    ctx = max_context_length(clip)
    rows = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            ids = tokenize(texts[s : s + batch_size], ctx).to(device)
            rows.append(encode_text(clip, ids).float().cpu())
    out = torch.cat(rows).numpy().astype(np.float32)
    info = {
        "source": "clip",
        "file": str(Path(weights).resolve()),
        "model": model,
        "prompt": prompt,
        "dim": int(out.shape[1]),
        "texts_example": texts[:3],
        "context_length": ctx,
    }
    return out, info


def dataset_names(dataset_dir: str | os.PathLike[str], what: str | None = None) -> tuple[str, str, Any]:
    """The names whose vectors a dataset folder needs, in its row order: ``(kind, what, names)``.

    xlsa17 (``att_splits.mat``): ``what`` = "attributes" (default; ``attributes.txt``) or "classes"
    (``allclasses_names``) -> a list. NUS-WIDE layout (``TagList1k.txt`` + ``Concepts81.txt``): "labels" -> the
    :class:`unseen.multilabel.data.LabelSpace`."""
    d = Path(dataset_dir)
    if not d.is_dir():
        raise DataFormatError(f"{d}: dataset folder not found")
    if (d / "att_splits.mat").is_file():
        what = what or "attributes"
        if what == "classes":
            from unseen.attribute.data import read_att_splits

            return "xlsa17", what, read_att_splits(d / "att_splits.mat")["class_names"]
        if what == "attributes":
            from unseen.attribute.data import _read_attribute_names, read_att_splits

            A = int(read_att_splits(d / "att_splits.mat")["att"].shape[1])
            if not (d / "attributes.txt").is_file():
                raise DataFormatError(
                    f"{d / 'attributes.txt'}: file not found (the attribute names, one per line, in the order of "
                    "att's rows; or give the names with --names)"
                )
            return "xlsa17", what, _read_attribute_names(d / "attributes.txt", A)
        raise ValueError(f"--what: an xlsa17 folder has 'attributes' or 'classes', got {what!r}")
    if (d / "TagList1k.txt").is_file() or (d / "Concepts81.txt").is_file():
        from unseen.multilabel.data import load_nus_wide_labels

        if what not in (None, "labels"):
            raise ValueError(f"--what: a NUS-WIDE layout folder has 'labels', got {what!r}")
        return "nus_wide", "labels", load_nus_wide_labels(d)
    raise DataFormatError(
        f"{d}: neither an xlsa17 folder (att_splits.mat) nor a NUS-WIDE layout folder (TagList1k.txt, "
        "Concepts81.txt); give the names with --names FILE instead"
    )


def make_word_vectors(
    *,
    dataset: str | os.PathLike[str] | None = None,
    what: str | None = None,
    names_file: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    glove: str | os.PathLike[str] | None = None,
    allow_missing: bool = False,
    clip_weights: str | os.PathLike[str] | None = None,
    clip_model: str = DEFAULT_CLIP_MODEL,
    prompt: str | None = None,
    device: str = "cpu",
    force: bool = False,
) -> dict[str, Any]:
    """Word vectors for a dataset folder's names (``dataset`` + ``what``) or a name list (``names_file`` +
    ``output``), from ``glove`` or ``clip_weights``; see the module docstring for the files written. Returns
    the record saved as ``<output>.json``."""
    if (glove is None) == (clip_weights is None):
        raise ValueError("give exactly one source of vectors: --glove FILE or --clip-weights FILE")
    if (dataset is None) == (names_file is None):
        raise ValueError("give a dataset folder or --names FILE (one of them)")
    nus_file: Path | None = None  # NUS-WIDE layout: also the reader's tags1k / concepts81 file
    if names_file is not None:
        if output is None:
            raise ValueError("--names needs --output PATH.npy")
        kind, what = "names", what or "classes"
        names = read_name_list(names_file, "names")
        out = Path(output)
        source = str(Path(names_file).resolve())
        ls = None
    else:
        assert dataset is not None
        d = Path(dataset)
        kind, what, got = dataset_names(d, what)
        source = str(d.resolve())
        ls = got if kind == "nus_wide" else None
        nus_file = d / NUS_VECTORS_FILE if ls is not None else None
        names = list(ls.names) if ls is not None else list(got)
        default = {
            "attributes": f"{d.resolve().name.upper()}_attribute.npy",  # the reader's *_attribute.npy
            "classes": CLASS_VECTORS_FILE,
            "labels": LABEL_VECTORS_FILE,
        }[what]
        out = Path(output) if output else d / default
    if out.suffix != ".npy":
        raise ValueError(f"--output must be a .npy file, got {out}")
    side = out.with_name(out.name + ".json")
    targets = [out, side, *([nus_file] if nus_file else [])]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)}: already exists; refusing to overwrite (pass --force)")

    # every distinct name once (NUS: a tag that is also a concept), rows in the dataset's order
    unique = list(
        dict.fromkeys(
            [*names, *(ls.seen_source_names if ls else []), *(ls.unseen_source_names if ls else [])]
        )
    )
    if glove is not None:
        vecs, info = glove_vectors(unique, glove, allow_missing)
    else:
        assert clip_weights is not None
        vecs, info = clip_vectors(
            unique, clip_weights, model=clip_model, prompt=prompt or DEFAULT_PROMPTS[what], device=device
        )
    row = {n: i for i, n in enumerate(unique)}
    arr = np.ascontiguousarray(vecs[[row[n] for n in names]], np.float32)
    record = {
        "command": "unseen data make wordvectors",
        "for": kind,
        "what": what,
        "names_from": source,
        "n_names": len(names),
        "shape": list(arr.shape),
        "dtype": "float32",
        "output": str(out),
        **info,
    }
    if nus_file is not None and ls is not None:  # all tags and all concepts, in their files' orders
        record["nus_wide_file"] = str(nus_file)
        with atomic_path(nus_file) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                tags1k=vecs[[row[n] for n in ls.seen_source_names]].astype(np.float32),
                concepts81=vecs[[row[n] for n in ls.unseen_source_names]].astype(np.float32),
            )
    atomic_write_bytes(out, _npy_bytes(arr))
    atomic_write_json(side, record)
    log.debug("wrote %s: %d x %d (%s)", out, arr.shape[0], arr.shape[1], info["source"])
    return record


# --------------------------------------------------------------------------------------------- CLI
def add_make_parser(data_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``make`` (attribute | multilabel | wordvectors) to the subparsers of ``unseen data``."""
    mk = data_subparsers.add_parser("make", help="build a dataset folder from your own images and CSV files")
    msub = mk.add_subparsers(dest="make_command", required=True)

    a = msub.add_parser(
        "attribute",
        help="xlsa17 folder (att_splits.mat, image_list.json) from an image CSV and an attribute CSV",
    )
    a.add_argument("out", help="the dataset folder to write (its name, upper-cased, is the dataset name)")
    a.add_argument(
        "--images", required=True, help="CSV with a header naming 'image' and 'class', one row per image"
    )
    a.add_argument(
        "--attributes",
        required=True,
        help="CSV: header 'class,<attribute>,...', one row of numbers per class",
    )
    a.add_argument("--unseen", required=True, help="text file: the unseen class names, one per line")
    a.add_argument(
        "--val-classes", help="text file: the validation classes (seen classes); default: chosen with --seed"
    )
    a.add_argument(
        "--n-val", type=int, help="how many validation classes to choose (default: the test split's ratio)"
    )
    a.add_argument(
        "--test-seen-fraction", type=float, default=0.2, help="per seen class, held out for test (0.2)"
    )
    a.add_argument(
        "--image-root", help="folder the CSV's image paths are relative to (default: the CSV's folder)"
    )
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--force", action="store_true", help="replace the files of an earlier make in OUT")

    m = msub.add_parser(
        "multilabel",
        help="NUS-WIDE-layout folder (label files, BiAM h5 features via extract) from an image CSV",
    )
    m.add_argument("out", help="the dataset folder to write")
    m.add_argument(
        "--images",
        required=True,
        help="CSV with a header naming 'image', 'labels' (';'-separated) [and 'split']",
    )
    m.add_argument("--seen", required=True, help="text file: the seen label names, one per line")
    m.add_argument("--unseen", required=True, help="text file: the unseen label names, one per line")
    m.add_argument(
        "--image-root", help="folder the CSV's image paths are relative to (default: the CSV's folder)"
    )
    m.add_argument("--label-sep", default=";", help="separator of the labels in the 'labels' column (;)")
    m.add_argument(
        "--test-fraction", type=float, default=0.2, help="test images without a 'split' column (0.2)"
    )
    m.add_argument("--seed", type=int, default=0)
    m.add_argument(
        "--backbone", default="vgg19", help="vgg19 (conv5_4, default) | vit | vit:<timm model> | tiny"
    )
    m.add_argument("--weights", help="local weights file (no download happens; without it: random init)")
    m.add_argument("--tiny-widths", help="tiny backbone only: three channel counts, e.g. 32,64,128")
    m.add_argument("--image-size", type=int, default=224)
    m.add_argument("--batch-size", type=int, default=32)
    m.add_argument("--device", default="cpu")
    m.add_argument("--force", action="store_true", help="replace the files of an earlier make in OUT")

    w = msub.add_parser("wordvectors", help="word vectors (.npy) of a dataset's names from GloVe or CLIP")
    w.add_argument("dataset", nargs="?", help="an xlsa17 folder or a NUS-WIDE layout folder (or use --names)")
    w.add_argument(
        "--what", choices=["attributes", "classes", "labels"], help="xlsa17: attributes (default) | classes"
    )
    w.add_argument(
        "--names", help="text file of names, one per line, instead of a dataset folder (needs --output)"
    )
    w.add_argument("--output", help="the .npy to write (default: the file the dataset's reader looks for)")
    w.add_argument("--glove", help="local GloVe / word2vec text file")
    w.add_argument(
        "--allow-missing", action="store_true", help="skip words not in the GloVe file (zero rows)"
    )
    w.add_argument("--clip-weights", help="local CLIP weights file (the text tower is used)")
    w.add_argument(
        "--clip-model", default=DEFAULT_CLIP_MODEL, help=f"open_clip architecture ({DEFAULT_CLIP_MODEL})"
    )
    w.add_argument(
        "--prompt",
        help="CLIP prompt with {} for the name (classes/labels: 'a photo of a {}.'; attributes: '{}')",
    )
    w.add_argument("--device", default="cpu")
    w.add_argument("--force", action="store_true", help="replace existing output files")
    return mk


def _widths(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--tiny-widths: expected comma-separated integers such as 32,64,128, got {text!r}"
        ) from None


def run_make(args: argparse.Namespace) -> int:
    """Run ``unseen data make ...`` from parsed arguments; prints what was written and the next commands."""
    if args.make_command == "attribute":
        s = make_attribute_dataset(
            args.out,
            args.images,
            args.attributes,
            args.unseen,
            image_root=args.image_root,
            val_classes=args.val_classes,
            n_val=args.n_val,
            test_seen_fraction=args.test_seen_fraction,
            seed=args.seed,
            force=args.force,
        )
        c = s["counts"]
        print(
            f"{args.out}: {c['images']} images, {c['classes']} classes ({c['seen']} seen / {c['unseen']} unseen), "
            f"{c['attributes']} attributes; trainval {c['trainval']}, test_seen {c['test_seen']}, test_unseen "
            f"{c['test_unseen']}; validation classes {c['val_classes']} ({s['validation_classes_source']})"
        )
        print(f"check: unseen data check xlsa17 --root {args.out} --image-root {s['image_root']}")
        print(f"vectors: unseen data make wordvectors {args.out} --glove GLOVE.txt   (Mg-MRN needs them)")
        print(
            f"train: unseen train attribute/mgmrn_cub data.root={args.out} data.dataset={s['dataset']} "
            f"data.image_root={s['image_root']}"
        )
    elif args.make_command == "multilabel":
        s = make_multilabel_dataset(
            args.out,
            args.images,
            args.seen,
            args.unseen,
            image_root=args.image_root,
            label_sep=args.label_sep,
            test_fraction=args.test_fraction,
            seed=args.seed,
            backbone=args.backbone,
            weights=args.weights,
            image_size=args.image_size,
            batch_size=args.batch_size,
            device=args.device,
            tiny_widths=_widths(args.tiny_widths),
            force=args.force,
        )
        c = s["counts"]
        print(
            f"{args.out}: {c['train']} training / {c['test']} test images, {c['seen']} seen / {c['unseen']} unseen "
            "labels; features in nus_wide_train.h5 / nus_wide_test.h5 (+ .json provenance)"
        )
        print(f"vectors: unseen data make wordvectors {args.out} --glove GLOVE.txt   (the reader needs them)")
        print(
            f"train: unseen train multilabel/epsilon_nus_wide data.root={args.out} data.image_root={s['image_root']}"
        )
    elif args.make_command == "wordvectors":
        r = make_word_vectors(
            dataset=args.dataset,
            what=args.what,
            names_file=args.names,
            output=args.output,
            glove=args.glove,
            allow_missing=args.allow_missing,
            clip_weights=args.clip_weights,
            clip_model=args.clip_model,
            prompt=args.prompt,
            device=args.device,
            force=args.force,
        )
        print(f"{r['output']}: {r['shape'][0]} x {r['shape'][1]} float32 ({r['what']}, {r['source']})")
        if "nus_wide_file" in r:
            print(
                f"{r['nus_wide_file']}: the same vectors as the NUS-WIDE reader reads them (tags1k / concepts81)"
            )
        if r.get("missing_words"):
            print(f"words not in the GloVe file (skipped): {', '.join(r['missing_words'][:20])}")
    else:  # pragma: no cover - argparse restricts the choices
        raise ValueError(f"unknown make command {args.make_command!r}")
    return 0


__all__ = [
    "add_make_parser",
    "clip_vectors",
    "dataset_names",
    "glove_vectors",
    "make_attribute_dataset",
    "make_multilabel_dataset",
    "make_word_vectors",
    "name_words",
    "read_name_list",
    "run_make",
]
