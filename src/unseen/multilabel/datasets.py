"""Multi-label datasets: NUS-WIDE and Open Images V4 in the BiAM layout (label files + h5 region features), and the
embedded multi-label world read back through the NUS-WIDE reader.

Builders return an :class:`unseen.task.Prepared` holding a :class:`MultilabelData`. The training names are split
BiAM's way: the first ``1 - val_fraction`` train, the rest validate; training images without a positive seen label
are dropped (BiAM). With ``data.refit: retrain`` (NUS-WIDE, Open Images) the task retrains on all training images
(train + validation names, same filter) for the validation-chosen number of epochs; ``train_all`` holds them.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unseen.config import build_dataclass, check_choice, to_dict
from unseen.engine import progress
from unseen.io import DataFormatError, safe_pickle_load
from unseen.multilabel.data import (
    NUS_GLOVE_FILES,
    BiAMH5Dataset,
    LabelSpace,
    feature_shape,
    l2_normalize_rows,
    load_biam_names,
    load_nus_wide_glove,
    load_nus_wide_labels,
    load_open_images_labels,
    open_images_h5_labels,
)
from unseen.multilabel.extract import sidecar_path
from unseen.multilabel.world import SeenExtractorConfig, prepare_multilabel_world
from unseen.registry import register_dataset
from unseen.shapes.common import recorded_fingerprints
from unseen.shapes.multilabel_world import MultilabelWorldConfig
from unseen.task import Prepared

log = logging.getLogger("unseen")

PRELOAD_LIMIT_BYTES = 2 << 30  # "auto" preloads feature files smaller than this
REFITS = ("none", "retrain")


class TensorSet(Dataset):
    """Features (N x T x C float32), labels (N x L int8) and optional CLS tokens held in memory."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, cls: torch.Tensor | None = None) -> None:
        self.features, self.labels, self.cls = features, labels, cls

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if self.cls is None:
            return self.features[i], self.labels[i]
        return self.features[i], self.labels[i], self.cls[i]


def _load_split(
    paths: list[Path], names: list[str] | None, preload: str, label_kwargs: dict[str, Any]
) -> tuple[Dataset, list[str]]:
    """One or several BiAM h5 files (Open Images shards) -> (one dataset, its image names), in memory when small
    enough (``preload``)."""
    shape = feature_shape(paths[0])
    parts = [
        BiAMH5Dataset(p, names if len(paths) == 1 else None, feature_shape=shape, **label_kwargs)
        for p in paths
    ]
    n = sum(len(p) for p in parts)
    all_names = [name for p in parts for name in p.names]
    size = n * shape[0] * shape[1] * 4
    if preload not in ("auto", "yes", "no"):
        raise ValueError(f"data.preload: '{preload}' is not one of auto, yes, no")
    if preload == "yes" or (preload == "auto" and size <= PRELOAD_LIMIT_BYTES):
        feats = torch.empty(n, shape[1], shape[0])
        labs: list[np.ndarray] = []
        cls: list[np.ndarray] = []
        i = 0
        for part in parts:
            f = part._file()
            has_cls = f"{part.names[0]}-cls" in f if part.names else False
            for j in progress(range(len(part)), desc=f"reading {part.path.name}"):
                x, y = part.read(j)
                feats[i] = torch.from_numpy(np.ascontiguousarray(x.T))
                labs.append(y)
                if has_cls:
                    cls.append(np.asarray(part._read(f, f"{part.names[j]}-cls"), np.float32))
                i += 1
            part.close()
        cls_t = torch.from_numpy(np.stack(cls)) if len(cls) == n and n else None
        return TensorSet(feats, torch.from_numpy(np.stack(labs)), cls_t), all_names
    return (torch.utils.data.ConcatDataset(parts) if len(parts) > 1 else parts[0]), all_names


def dataset_labels(ds: Dataset) -> np.ndarray:
    """N x L int8 labels of a dataset built here (read once from the h5 file for lazy datasets)."""
    if isinstance(ds, TensorSet):
        return ds.labels.numpy()
    if isinstance(ds, torch.utils.data.Subset):
        return dataset_labels(ds.dataset)[np.asarray(ds.indices)]
    if isinstance(ds, torch.utils.data.ConcatDataset):
        return np.concatenate([dataset_labels(d) for d in ds.datasets])
    if isinstance(ds, BiAMH5Dataset):
        return np.stack([ds.read(i)[1] for i in range(len(ds))])
    raise TypeError(f"no labels for {type(ds).__name__}")


@dataclass
class MultilabelData:
    """Everything a run needs: the label space, its embeddings and the three feature sets."""

    labels: LabelSpace
    embeddings: np.ndarray  # n_labels x D, L2-normalised rows, GZSL order [seen | unseen]
    train: Dataset  # labels over the seen labels
    val: Dataset  # labels over the seen labels (the last val_fraction of the training names)
    test: Dataset  # labels over [seen | unseen]
    in_dim: int
    n_tokens: int
    ks: tuple[int, ...]
    image_filter: str  # all (NUS-WIDE) | has_positive (Open Images)
    select_metric: str
    test_names: list[str] = field(default_factory=list)
    image_root: str = ""  # where the test images are (for plots / predict), if known
    feature_sidecar: str = ""  # the extraction provenance (backbone, weights, resolution)
    sources: dict[str, str] = field(default_factory=dict)
    refit: str = "none"  # none | retrain (all training images, validation-chosen epochs; see the task)
    train_all: Dataset | None = None  # train + validation names with the training filter (refit only)
    biam_compat: bool = False  # also report BiAM's pooled Open Images mAP (labelled, apart from the metrics)


def _train_filter(labels: np.ndarray, drop_no_positive: bool, max_positives: int) -> np.ndarray:
    """The images a model may train on (BiAM: at least one, at most ``max_positives`` positive seen labels)."""
    pos = (labels == 1).sum(1)
    keep = np.ones(len(labels), bool)
    if drop_no_positive:
        keep &= pos > 0
    if max_positives > 0:
        keep &= pos <= max_positives
    return keep


def _split_train_val(
    ds: Dataset,
    labels: np.ndarray,
    val_fraction: float,
    drop_no_positive: bool,
    max_positives: int = 0,
    with_all: bool = False,
) -> tuple[Dataset, Dataset, dict[str, int], Dataset | None]:
    """(train, val, counts, all): ``all`` = every training name under the training filter (``with_all`` only)."""
    n = len(labels)
    n_train = int(round(n * (1.0 - val_fraction)))
    tr = np.arange(n_train)
    va = np.arange(n_train, n)
    keep_all = _train_filter(labels, drop_no_positive, max_positives)
    keep = keep_all[:n_train]
    info = {"train": int(keep.sum()), "val": len(va), "dropped_train": int((~keep).sum())}
    everything = _subset(ds, np.flatnonzero(keep_all)) if with_all else None
    if with_all:
        info["all"] = int(keep_all.sum())
    return _subset(ds, tr[keep]), _subset(ds, va), info, everything


def _subset(ds: Dataset, rows: np.ndarray) -> Dataset:
    if isinstance(ds, TensorSet):
        return TensorSet(ds.features[rows], ds.labels[rows], None if ds.cls is None else ds.cls[rows])
    return torch.utils.data.Subset(ds, rows.tolist())


@dataclass
class NusWideConfig:
    """A user's NUS-WIDE copy in the BiAM layout (TagList1k / Concepts81, GloVe, BiAM h5 features)."""

    name: str = "nus_wide"
    root: str = ""  # TagList1k.txt, Concepts81.txt (+ the GloVe file and the h5 files by default)
    glove: str = ""  # default: root/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300 or the .npz
    train_h5: str = ""  # default: root/nus_wide_train.h5 (labels: the 925 seen)
    test_h5: str = ""  # default: root/nus_wide_test.h5 (labels: 1,006 = [925 | 81])
    train_names: str = (
        ""  # img_names.pkl / .txt / .json (default: root/img_names.pkl if present, else file order)
    )
    test_names: str = ""  # default: root/test_img_names.pkl if present, else file order
    image_root: str = ""  # optional: the images (plots, predict)
    val_fraction: float = 0.2  # BiAM: the last 20% of the training names validate
    drop_no_positive: bool = True
    preload: str = "auto"  # auto | yes | no: hold the features in memory
    ks: list = field(default_factory=lambda: [3, 5])
    select_metric: str = "F1@5"
    # none: test the model trained on the first 80% (epoch chosen on the last 20%). retrain: then train a fresh
    # model on all training images for the chosen number of epochs and test that one (published numbers are
    # trained on all images; the selection stays on validation). Default none: the refit is an optional step of
    # the protocol (BiAM's is a fine-tune) and costs a second training run; the packaged NUS-WIDE configs set it.
    refit: str = "none"

    def __post_init__(self) -> None:
        check_choice("data.refit", self.refit, REFITS)


@dataclass
class OpenImagesConfig:
    """A user's Open Images V4 copy: label files + BiAM-layout h5 features + word vectors."""

    name: str = "open_images"
    root: str = ""  # classes-trainable.txt, unseen_labels.pkl, top_400_unseen.csv, class-descriptions.csv
    vectors: str = (
        ""  # word vectors: pickle/npz [seen (7186, 300), unseen (2594, 300)] (not public: bring yours)
    )
    train_h5: str = ""  # one file or a glob of shards
    test_h5: str = ""
    image_root: str = ""
    val_fraction: float = 0.05
    drop_no_positive: bool = True
    max_positives: int = 40  # BiAM trains on images with 1..40 positive labels
    preload: str = "auto"
    ks: list = field(default_factory=lambda: [10, 20])
    select_metric: str = "F1@10"
    refit: str = "none"  # none | retrain, as for NUS-WIDE (the packaged config sets retrain)
    # also report the BiAM lineage's Open Images mAP (AP pooled over every annotated label of the images annotated
    # for a class, akshitac8/BiAM util_openimages.compute_AP) under results.json's biam_compat, labelled; the
    # metrics keep the per-class AP. Only that pooled number is comparable with BiAM-lineage Open Images mAPs.
    biam_compat: bool = False

    def __post_init__(self) -> None:
        check_choice("data.refit", self.refit, REFITS)


def _first_existing(root: Path, names: tuple[str, ...], what: str, key: str) -> Path:
    for n in names:
        if (root / n).is_file():
            return root / n
    raise DataFormatError(f"{root}: no {what} found (looked for {', '.join(names)}); set {key}=PATH")


def _names(path: str, default: Path) -> list[str] | None:
    if path:
        return load_biam_names(path)
    return load_biam_names(default) if default.is_file() else None


@register_dataset("nus_wide", setting="multilabel", config=NusWideConfig)
def prepare_nus_wide(cfg: NusWideConfig, model_cfg: Any = None) -> Prepared:
    """NUS-WIDE (925 seen / 81 unseen) from TagList1k/Concepts81 + GloVe + BiAM h5 files."""
    if not cfg.root:
        raise ValueError("data.root: the folder holding TagList1k.txt and Concepts81.txt is required")
    root = Path(cfg.root)
    labels = load_nus_wide_labels(root)
    glove = (
        Path(cfg.glove) if cfg.glove else _first_existing(root, NUS_GLOVE_FILES, "GloVe file", "data.glove")
    )
    seen_w, unseen_w = load_nus_wide_glove(glove, labels, dim=None)
    train_h5 = Path(cfg.train_h5) if cfg.train_h5 else root / "nus_wide_train.h5"
    test_h5 = Path(cfg.test_h5) if cfg.test_h5 else root / "nus_wide_test.h5"
    for p, key in ((train_h5, "data.train_h5"), (test_h5, "data.test_h5")):
        if not p.is_file():
            raise DataFormatError(
                f"{p}: feature file not found (set {key}=PATH; `unseen extract` writes one)"
            )
    train_names = _names(cfg.train_names, root / "img_names.pkl")
    test_names = _names(cfg.test_names, root / "test_img_names.pkl")
    full, _ = _load_split(
        [train_h5], train_names, cfg.preload, {"label_key": "labels", "n_labels": labels.n_seen}
    )
    test, test_names = _load_split(
        [test_h5], test_names, cfg.preload, {"label_key": "labels", "n_labels": labels.n_labels}
    )
    train, val, counts, train_all = _split_train_val(
        full, dataset_labels(full), cfg.val_fraction, cfg.drop_no_positive, with_all=cfg.refit != "none"
    )
    log.info(
        "nus_wide: %d seen / %d unseen labels; train %d (dropped %d without a positive), val %d, test %d%s",
        labels.n_seen,
        labels.n_unseen,
        counts["train"],
        counts["dropped_train"],
        counts["val"],
        len(test),
        f"; refit on all {counts['all']} training images" if train_all is not None else "",
    )
    C, T = feature_shape(train_h5)
    sidecar = sidecar_path(train_h5)
    return Prepared(
        MultilabelData(
            labels,
            np.concatenate([seen_w, unseen_w]),
            train,
            val,
            test,
            C,
            T,
            tuple(cfg.ks),
            "all",
            cfg.select_metric,
            test_names,
            cfg.image_root,
            str(sidecar) if sidecar.is_file() else "",
            {"glove": str(glove), "train_h5": str(train_h5), "test_h5": str(test_h5), **labels.sources},
            refit=cfg.refit,
            train_all=train_all,
        )
    )


@dataclass
class MultilabelShapesConfig:
    """The embedded multi-label world: rendered scenes -> a CNN trained on the seen tags of the training images only
    -> BiAM-layout h5 features (NUS-WIDE file names) -> read back by the NUS-WIDE reader."""

    name: str = "shapes"
    root: str = ""  # default: $UNSEEN_CACHE/shapes-multilabel-<hash>
    world: dict = field(default_factory=dict)  # MultilabelWorldConfig fields
    extractor: dict = field(default_factory=dict)  # SeenExtractorConfig fields
    preload: str = "auto"
    ks: list = field(default_factory=lambda: [3, 5])
    select_metric: str = "F1@5"


@register_dataset("shapes", setting="multilabel", config=MultilabelShapesConfig)
def prepare_shapes(cfg: MultilabelShapesConfig, model_cfg: Any = None) -> Prepared:
    """The embedded multi-label world, exported to the NUS-WIDE/BiAM layout and read by the real reader."""
    wcfg = build_dataclass(MultilabelWorldConfig, cfg.world, "data.world")
    wcfg.validate()
    ecfg = build_dataclass(SeenExtractorConfig, cfg.extractor, "data.extractor")
    paths = prepare_multilabel_world(wcfg, cfg.root or None, ecfg)
    nus = NusWideConfig(
        root=str(paths["root"]),
        glove=str(paths["glove"]),
        train_h5=str(paths["train_h5"]),
        test_h5=str(paths["test_h5"]),
        train_names=str(paths["train_names"]),
        test_names=str(paths["test_names"]),
        image_root=str(paths["image_root"]),
        val_fraction=wcfg.val_fraction,
        preload=cfg.preload,
        ks=list(cfg.ks),
        select_metric=cfg.select_metric,
        refit="none",  # the demo keeps the train-once protocol (and its recorded tables)
    )
    world = {
        "world": to_dict(wcfg),
        "extractor": to_dict(ecfg),
        "extractor_val_seen_mAP": paths["extractor"].get("val_seen_mAP"),
        **recorded_fingerprints(Path(paths["world_json"]).parent),
    }
    return Prepared(prepare_nus_wide(nus, model_cfg).data, world=world)


def load_open_images_vectors(path: str | Path, labels: LabelSpace) -> np.ndarray:
    """Open Images word vectors (pickle or .npz ``seen``/``unseen``: (7186, D), (2594, D)) -> GZSL rows, normalised."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: word-vector file not found (data.vectors)")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if not {"seen", "unseen"} <= set(z.files):
                raise DataFormatError(f"{path}: expected arrays 'seen' and 'unseen', found {z.files}")
            seen, unseen = z["seen"], z["unseen"]
    else:
        obj = safe_pickle_load(path)
        if not isinstance(obj, (list, tuple)) or len(obj) != 2:
            raise DataFormatError(
                f"{path}: expected a list [seen vectors, unseen vectors], got {type(obj).__name__}"
            )
        seen, unseen = (np.asarray(a) for a in obj)
    for arr, n, role in (
        (seen, len(labels.seen_source_names), "seen"),
        (unseen, len(labels.unseen_source_names), "unseen"),
    ):
        if arr.ndim != 2 or arr.shape[0] != n:
            raise DataFormatError(f"{path}: {role} vectors: expected ({n}, D), got {arr.shape}")
        bad = np.flatnonzero(~np.isfinite(arr).all(1)) if np.issubdtype(arr.dtype, np.number) else [0]
        if len(bad):
            raise DataFormatError(
                f"{path}: {role} vectors: {len(bad)} rows hold NaN/inf or non-numbers (first: row {bad[0]})"
            )
    return l2_normalize_rows(
        np.concatenate([seen[labels.seen_source_index], unseen[labels.unseen_source_index]])
    )


@register_dataset("open_images", setting="multilabel", config=OpenImagesConfig)
def prepare_open_images(cfg: OpenImagesConfig, model_cfg: Any = None) -> Prepared:
    """Open Images V4 (7,186 seen / 400 unseen) from the label files + word vectors + BiAM h5 (train shards)."""
    if not cfg.root or not cfg.vectors or not cfg.train_h5 or not cfg.test_h5:
        raise ValueError(
            "open_images needs data.root (label files), data.vectors, data.train_h5 and data.test_h5"
        )
    labels = load_open_images_labels(cfg.root)
    emb = load_open_images_vectors(cfg.vectors, labels)
    shards = sorted(Path(p) for p in glob.glob(cfg.train_h5)) or [Path(cfg.train_h5)]
    full, _ = _load_split(shards, None, cfg.preload, open_images_h5_labels(labels, "seen"))
    test, test_names = _load_split(
        [Path(cfg.test_h5)], None, cfg.preload, open_images_h5_labels(labels, "gzsl")
    )
    train, val, _, train_all = _split_train_val(
        full,
        dataset_labels(full),
        cfg.val_fraction,
        cfg.drop_no_positive,
        cfg.max_positives,
        with_all=cfg.refit != "none",
    )
    C, T = feature_shape(shards[0])
    return Prepared(
        MultilabelData(
            labels,
            emb,
            train,
            val,
            test,
            C,
            T,
            tuple(cfg.ks),
            "has_positive",
            cfg.select_metric,
            test_names,
            image_root=cfg.image_root,
            sources=labels.sources,
            refit=cfg.refit,
            train_all=train_all,
            biam_compat=cfg.biam_compat,
        )
    )
