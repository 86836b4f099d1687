"""Multi-label ZSL runs: BiAM-layout features -> model -> engine -> masked metrics -> run folder.

Protocol (spec §0.9): the training names are split BiAM's way (first ``1 - val_fraction`` train, the rest validate);
training images without a positive seen label are dropped (BiAM); after every epoch the model scores the
validation images on the **seen** labels and the epoch with the best ``select_metric`` (NUS: F1@5) is kept; that
checkpoint is tested once. ZSL scores the unseen label embeddings only; GZSL scores seen and unseen jointly. Every
model here scores each label independently of the others, so the ZSL matrix is the unseen columns of the GZSL one.
The test set never chooses anything.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unseen.config import RunConfig, config_hash, dump_yaml, to_dict
from unseen.engine import Engine, load_weights, progress, resolve_device
from unseen.io import (
    DataFormatError,
    atomic_write_json,
    atomic_write_text,
    safe_pickle_load,
    save_safetensors,
    short_hash,
    versions,
)
from unseen.multilabel.data import (
    NUS_GLOVE_FILES,
    BiAMH5Dataset,
    LabelSpace,
    l2_normalize_rows,
    load_biam_names,
    load_nus_wide_glove,
    load_nus_wide_labels,
    load_open_images_labels,
    open_images_h5_labels,
)
from unseen.multilabel.metrics import evaluate_multilabel, mean_average_precision
from unseen.registry import create_model, get_dataset_entry, register_dataset

log = logging.getLogger("unseen")

PRELOAD_LIMIT_BYTES = 2 << 30  # "auto" preloads feature files smaller than this


# --------------------------------------------------------------------------------------------- data
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


class _Rows(Dataset):
    """A row subset of a lazy h5 dataset (labels cached in memory for filtering and evaluation)."""

    def __init__(self, base: BiAMH5Dataset, rows: np.ndarray) -> None:
        self.base, self.rows = base, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base[int(self.rows[i])]


def _feature_shape(path: Path) -> tuple[int, int]:
    import h5py

    with h5py.File(path, "r") as f:
        key = next((k for k in f.keys() if k.endswith("-features")), None)
        if key is None:
            raise DataFormatError(f"{path}: no '<name>-features' datasets in the file")
        shp = f[key].shape
    if len(shp) != 2:
        raise DataFormatError(f"{path}: '{key}': expected (channels, regions), got shape {shp}")
    return int(shp[0]), int(shp[1])


def _load_split(
    paths: list[Path], names: list[str] | None, preload: str, label_kwargs: dict[str, Any]
) -> tuple[Dataset, list[str]]:
    """One or several BiAM h5 files (Open Images shards) -> (one dataset, its image names), in memory when small
    enough (``preload``)."""
    shape = _feature_shape(paths[0])
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
                    cls.append(np.asarray(f[f"{part.names[j]}-cls"][()], np.float32))
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
    world: dict | None = None
    sources: dict[str, str] = field(default_factory=dict)


def _split_train_val(
    ds: Dataset, labels: np.ndarray, val_fraction: float, drop_no_positive: bool, max_positives: int = 0
) -> tuple[Dataset, Dataset, dict[str, int]]:
    n = len(labels)
    n_train = int(round(n * (1.0 - val_fraction)))
    tr = np.arange(n_train)
    va = np.arange(n_train, n)
    pos = (labels[tr] == 1).sum(1)
    keep = np.ones(len(tr), bool)
    if drop_no_positive:
        keep &= pos > 0
    if max_positives > 0:
        keep &= pos <= max_positives
    info = {"train": int(keep.sum()), "val": len(va), "dropped_train": int((~keep).sum())}
    return _subset(ds, tr[keep]), _subset(ds, va), info


def _subset(ds: Dataset, rows: np.ndarray) -> Dataset:
    if isinstance(ds, TensorSet):
        return TensorSet(ds.features[rows], ds.labels[rows], None if ds.cls is None else ds.cls[rows])
    return torch.utils.data.Subset(ds, rows.tolist())


@dataclass
class NusWideConfig:
    """A user's NUS-WIDE copy in the BiAM layout (spec §6.1)."""

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


@dataclass
class OpenImagesConfig:
    """A user's Open Images V4 copy (spec §6.2): label files + BiAM-layout h5 features + word vectors."""

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
def prepare_nus_wide(cfg: NusWideConfig, model_cfg: Any = None, world: dict | None = None) -> MultilabelData:
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
    train, val, counts = _split_train_val(full, dataset_labels(full), cfg.val_fraction, cfg.drop_no_positive)
    log.info(
        "nus_wide: %d seen / %d unseen labels; train %d (dropped %d without a positive), val %d, test %d",
        labels.n_seen,
        labels.n_unseen,
        counts["train"],
        counts["dropped_train"],
        counts["val"],
        len(test),
    )
    C, T = _feature_shape(train_h5)
    from unseen.multilabel.extract import sidecar_path

    sidecar = sidecar_path(train_h5)
    return MultilabelData(
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
        world,
        {"glove": str(glove), "train_h5": str(train_h5), "test_h5": str(test_h5), **labels.sources},
    )


@dataclass
class ShapesConfig:
    """The embedded multi-label world: rendered scenes -> a CNN trained on the seen tags of the training images only
    -> BiAM-layout h5 features (NUS-WIDE file names) -> read back by the NUS-WIDE reader."""

    name: str = "shapes"
    root: str = ""  # default: $UNSEEN_CACHE/shapes-multilabel-<hash>
    world: dict = field(default_factory=dict)  # MultilabelWorldConfig fields
    extractor: dict = field(default_factory=dict)  # SeenExtractorConfig fields
    preload: str = "auto"
    ks: list = field(default_factory=lambda: [3, 5])
    select_metric: str = "F1@5"


@register_dataset("shapes", setting="multilabel", config=ShapesConfig)
def prepare_shapes(cfg: ShapesConfig, model_cfg: Any = None) -> MultilabelData:
    """The embedded multi-label world, exported to the NUS-WIDE/BiAM layout and read by the real reader."""
    from unseen.config import build_dataclass
    from unseen.shapes.multilabel_world import (
        MultilabelWorldConfig,
        SeenExtractorConfig,
        prepare_multilabel_world,
    )

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
    )
    world = {
        "world": to_dict(wcfg),
        "extractor": to_dict(ecfg),
        "extractor_val_seen_mAP": paths["extractor"].get("val_seen_mAP"),
    }
    return prepare_nus_wide(nus, model_cfg, world)


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
    return l2_normalize_rows(
        np.concatenate([seen[labels.seen_source_index], unseen[labels.unseen_source_index]])
    )


@register_dataset("open_images", setting="multilabel", config=OpenImagesConfig)
def prepare_open_images(cfg: OpenImagesConfig, model_cfg: Any = None) -> MultilabelData:
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
    train, val, _ = _split_train_val(
        full, dataset_labels(full), cfg.val_fraction, cfg.drop_no_positive, cfg.max_positives
    )
    C, T = _feature_shape(shards[0])
    return MultilabelData(
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
    )


# --------------------------------------------------------------------------------------------- scoring
def _unpack(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x, y = batch[0].to(device), batch[1].to(device)
    cls = batch[2].to(device) if len(batch) > 2 else None
    return x, y, cls


@torch.no_grad()
def compute_scores(
    model: nn.Module,
    ds: Dataset,
    emb: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    desc: str = "scoring",
) -> np.ndarray:
    """N x C float32 scores of ``ds``'s images against the label embeddings ``emb`` (C x D)."""
    model.eval()
    emb = emb.to(device)
    out = []
    for batch in progress(DataLoader(ds, batch_size=batch_size), desc=desc):
        x, _, cls = _unpack(batch, device)
        out.append(model(x, emb, cls)["scores"].float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(emb)), np.float32)


def chance_levels(
    labels: np.ndarray, n_seen: int, ks: tuple[int, ...], image_filter: str, n_draws: int = 5, seed: int = 0
) -> dict[str, float]:
    """ZSL/GZSL metrics of i.i.d. random scores (mean over draws)."""
    rng = np.random.default_rng(seed)
    acc: dict[str, float] = {}
    for _ in range(n_draws):
        s = rng.random(labels.shape, dtype=np.float32)
        for k, v in _both(s, labels, n_seen, ks, image_filter).items():
            acc[k] = acc.get(k, 0.0) + v / n_draws
    return acc


def _both(
    scores: np.ndarray,
    labels: np.ndarray,
    n_seen: int,
    ks: tuple[int, ...],
    image_filter: str,
    per_class: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for space, cols in (("zsl", slice(n_seen, None)), ("gzsl", slice(None))):
        r = evaluate_multilabel(scores[:, cols], labels[:, cols], ks=ks, image_filter=image_filter)
        for k, v in r.items():
            if k in ("mAP", "n_excluded", "n_images") or k.startswith(("P@", "R@", "F1@")):
                out[f"{space}/{k}"] = float(v) if k not in ("n_excluded", "n_images") else int(v)
    return out


# --------------------------------------------------------------------------------------------- the run
class MultilabelRun:
    """One method on one multi-label dataset, in one run folder (protocol: module docstring)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False) -> None:
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        self.rank = int(os.environ.get("RANK", "0"))
        self.data: MultilabelData = get_dataset_entry(cfg.data.name, "multilabel").builder(
            cfg.data, cfg.model
        )
        self.device = resolve_device(cfg.train.device)
        self.emb = torch.as_tensor(self.data.embeddings, dtype=torch.float32)
        self.n_seen = self.data.labels.n_seen

    def build_model(self) -> nn.Module:
        torch.manual_seed(self.cfg.seed)
        d = self.data
        return create_model(
            self.cfg.model.name,
            self.cfg.model,
            "multilabel",
            in_dim=d.in_dim,
            n_tokens=d.n_tokens,
            embed_dim=self.emb.shape[1],
        )

    def run(self) -> dict[str, Any]:
        cfg, d = self.cfg, self.data
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
            self.save_semantics()
        t0 = time.perf_counter()
        seen_emb = self.emb[: self.n_seen].to(self.device)
        val_labels = dataset_labels(d.val)

        def loss_fn(model: nn.Module, batch: Any, sub: Any) -> tuple[torch.Tensor, dict[str, float]]:
            x, y, cls = _unpack(batch, self.device)
            out = model(x, seen_emb, cls)
            return model.loss(out, y, seen_emb)

        def evaluate(model: nn.Module, epoch: int) -> dict[str, Any]:
            s = compute_scores(model, d.val, seen_emb, self.device, cfg.eval.batch_size, "validating")
            r = evaluate_multilabel(s, val_labels, ks=d.ks, image_filter=d.image_filter)
            return {k: float(v) for k, v in r.items() if k == "mAP" or k.startswith(("P@", "R@", "F1@"))}

        model = self.build_model()
        engine = Engine(cfg.train, self.run_dir / "train", seed=cfg.seed)
        resume = self.resume and (self.run_dir / "train" / "last.state.pt").is_file()
        meta = {"config": json.dumps(to_dict(cfg))}
        if len(d.val) == 0:
            raise ValueError("the validation split is empty (data.val_fraction): the epoch cannot be chosen")
        fit = engine.fit(
            model,
            d.train,
            loss_fn,
            evaluate,
            select=d.select_metric,
            epochs=cfg.train.epochs,
            resume=resume,
            meta=meta,
        )
        best = next((h for h in fit.history if h["epoch"] == fit.best_epoch), {})
        load_weights(model, self.run_dir / "train" / "best.safetensors")
        test_labels = dataset_labels(d.test)
        scores = compute_scores(model, d.test, self.emb, self.device, cfg.eval.batch_size, "testing")
        metrics = _both(scores, test_labels, self.n_seen, d.ks, d.image_filter)
        zsl_ap = mean_average_precision(
            scores[:, self.n_seen :], test_labels[:, self.n_seen :], image_filter=d.image_filter
        )["per_class"]
        results = {
            "setting": "multilabel",
            "method": cfg.model.name,
            "dataset": d.labels.dataset if cfg.data.name != "shapes" else "shapes",
            "metrics": metrics,
            "selection": {
                "rule": f"epoch with the best validation {d.select_metric} on the seen labels "
                f"(last {getattr(cfg.data, 'val_fraction', 0):.0%} of the training names); "
                "tested once",
                "epoch": fit.best_epoch,
                **{f"val_{k[4:]}": v for k, v in best.items() if k.startswith("val/")},
            },
            "chance": chance_levels(test_labels, self.n_seen, d.ks, d.image_filter, seed=cfg.seed),
            "label_space": {"n_seen": self.n_seen, "n_unseen": d.labels.n_unseen},
            "seed": cfg.seed,
            "config_hash": config_hash(cfg),
            "data_fingerprint": short_hash(
                json.dumps(d.labels.names) + str(len(d.test)) + short_hash(test_labels.tobytes())
            ),
            "features": _read_json(d.feature_sidecar),
            "world": d.world,
            "versions": versions(),
            "wall_time_s": time.perf_counter() - t0,
        }
        if self.rank == 0:
            if scores.nbytes <= 256 << 20:
                np.save(self.run_dir / "test_scores.npy", scores)
            save_safetensors(self.run_dir / "model.safetensors", model.state_dict())
            atomic_write_json(self.run_dir / "results.json", results)
            self.plots(model, scores, test_labels, zsl_ap)
        return results

    # ---- artefacts
    def save_semantics(self) -> None:
        d = self.data
        save_safetensors(self.run_dir / "semantics.safetensors", {"label_embeddings": self.emb})
        atomic_write_json(
            self.run_dir / "labels.json",
            {
                "names": d.labels.names,
                "display_names": d.labels.display_names,
                "n_seen": self.n_seen,
                "in_dim": d.in_dim,
                "n_tokens": d.n_tokens,
                "feature_sidecar": d.feature_sidecar,
                "image_root": d.image_root,
            },
        )

    def plots(
        self, model: nn.Module, scores: np.ndarray, labels: np.ndarray, zsl_ap: np.ndarray | None
    ) -> None:
        from unseen import report

        d = self.data
        names = d.labels.display_names
        try:
            if zsl_ap is not None:
                report.plot_label_ap(
                    zsl_ap,
                    names[self.n_seen :],
                    self.run_dir / "plots" / "unseen_label_ap.png",
                    title=f"{self.cfg.model.name}: per-label AP on the unseen labels (ZSL)",
                )
            if d.image_root and d.test_names:
                i = _example_image(labels, self.n_seen)
                path = _image_path(d.image_root, d.test_names[i])
                if path is not None:
                    report.plot_topk_labels(
                        path,
                        scores[i],
                        names,
                        self.n_seen,
                        labels[i],
                        self.run_dir / "plots" / "top_labels.png",
                        k=max(d.ks),
                        title=f"{self.cfg.model.name}: top-{max(d.ks)} labels (GZSL)",
                    )
        except Exception as exc:  # a plot must never lose a finished run
            log.warning("could not write the plots: %s", exc)


def _example_image(labels: np.ndarray, n_seen: int) -> int:
    """A test image with both seen and unseen positives (else the first with an unseen one, else 0)."""
    both = np.flatnonzero(((labels[:, :n_seen] == 1).any(1)) & ((labels[:, n_seen:] == 1).any(1)))
    if len(both):
        return int(both[0])
    some = np.flatnonzero((labels[:, n_seen:] == 1).any(1))
    return int(some[0]) if len(some) else 0


def _image_path(image_root: str, h5_key: str) -> Path | None:
    """The image file behind an h5 name (``a_b.png`` may be ``a/b.png``): the name list maps '/' to '_'."""
    root = Path(image_root)
    direct = root / h5_key
    if direct.is_file():
        return direct
    parts = h5_key.split("_")
    for cut in range(1, len(parts)):
        cand = root / "_".join(parts[:cut]) / "_".join(parts[cut:])
        if cand.is_file():
            return cand
    return None


def _read_json(path: str) -> dict | None:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


# --------------------------------------------------------------------------------------------- runs.py hooks
run_class = MultilabelRun


def load_trained_model(run_dir: Path) -> tuple[nn.Module, RunConfig, torch.Tensor, dict]:
    """A finished run's selected model, its config, the label embeddings (GZSL order) and labels.json."""
    from unseen.config import load_config
    from unseen.io import load_safetensors

    cfg = load_config(run_dir / "config.yaml")
    info = json.loads((run_dir / "labels.json").read_text())
    emb = load_safetensors(run_dir / "semantics.safetensors")["label_embeddings"]
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: the run has no final model (did it finish?)")
    model = create_model(
        cfg.model.name,
        cfg.model,
        "multilabel",
        in_dim=info["in_dim"],
        n_tokens=info["n_tokens"],
        embed_dim=emb.shape[1],
    )
    model.load_state_dict(load_safetensors(weights))
    return model.eval(), cfg, emb, info


def evaluate_saved(run_dir: Path) -> dict[str, Any]:
    """Recompute a finished run's ZSL/GZSL test metrics from its saved model."""
    model, cfg, emb, info = load_trained_model(run_dir)
    run = MultilabelRun(cfg, run_dir)
    scores = compute_scores(
        model.to(run.device), run.data.test, emb, run.device, cfg.eval.batch_size, "testing"
    )
    return _both(scores, dataset_labels(run.data.test), info["n_seen"], run.data.ks, run.data.image_filter)


def predict_images(run_dir: Path, images: list[str], classes: str, topk: int) -> list[dict]:
    """Ranked labels for image files: features from the extractor recorded in the run's feature sidecar."""
    from unseen.multilabel.extract import load_extractor
    from unseen.runs import select_classes

    model, cfg, emb, info = load_trained_model(run_dir)
    if not info.get("feature_sidecar"):
        raise ValueError(
            f"{run_dir}: the run's features have no provenance sidecar, so the extractor that made them "
            "is unknown; predict needs it to turn images into features"
        )
    names, n_seen = info["display_names"], info["n_seen"]
    keep = select_classes(names, range(n_seen), classes)
    extractor = load_extractor(info["feature_sidecar"])
    out = []
    for path in images:
        x, cls = extractor([path])
        with torch.no_grad():
            s = model(x, emb[torch.as_tensor(keep)], cls)["scores"][0]
        vals, idx = s.topk(min(topk, len(keep)))
        out.append(
            {
                "image": path,
                "top": [
                    {"class": names[int(keep[i])], "score": float(v), "seen": int(keep[i]) < n_seen}
                    for v, i in zip(vals.tolist(), idx.tolist())
                ],
            }
        )
    return out


DEMO_METHODS = ["demo_epsilon", "demo_biam", "demo_global_linear"]
DEMO_TITLE = (
    "embedded multi-label benchmark: mAP and overall F1@K in %, epoch chosen on validation F1 (seen labels); "
    "ZSL = unseen labels only, GZSL = seen + unseen scored jointly"
)
DEMO_COLUMNS = [
    ("method", "method"),
    ("zsl/mAP", "ZSL mAP"),
    ("zsl/F1@3", "F1@3"),
    ("zsl/F1@5", "F1@5"),
    ("gzsl/mAP", "GZSL mAP"),
    ("gzsl/F1@3", "F1@3 "),
    ("gzsl/F1@5", "F1@5 "),
    ("time", "time"),
]
DEMO_FOOTER = (
    "Epsilon-R = our reconstruction of Epsilon (no public code); BiAM with a mean-region global feature."
)


def demo_rows(res: dict[str, Any], elapsed: str) -> list[dict[str, Any]]:
    return [{"method": res["method"], **res["metrics"], "time": elapsed}]


__all__ = [
    "MultilabelRun",
    "MultilabelData",
    "NusWideConfig",
    "OpenImagesConfig",
    "compute_scores",
    "load_open_images_vectors",
]
