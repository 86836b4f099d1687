"""Attribute ZSL/GZSL runs: data -> model -> engine -> evaluator -> run folder.

Selection protocol (spec §3.4, the default): a *calibration* run trains on the validation class split
(``train_loc`` minus a 20% per-class hold-out, "val-seen"), evaluates GZSL on val-seen ∪ ``val_loc`` after every
epoch and picks the epoch e* with the best validation H and its exact best γ*. The *final* run trains on
``trainval_loc`` for e*+1 epochs and is tested once, with γ*. Test-set sweeps are reported only in the block
labelled ``oracle``.
"""

from __future__ import annotations

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
from torch.utils.data import DataLoader, Dataset, Subset

from unseen.attribute.data import FeatureDataset, ImageListDataset, XLSA17Data, load_xlsa17
from unseen.attribute.metrics import (
    evaluate_attribute,
    gamma_sweep,
    gzsl_accuracy,
    oracle_grid_sweep,
    select_gamma,
)
from unseen.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, make_transforms
from unseen.config import RunConfig, config_hash, dump_yaml, to_dict
from unseen.engine import Engine, FitResult, progress, resolve_device
from unseen.features import FeatureCache, PackedMaps, extract, provenance
from unseen.io import (
    atomic_write_json,
    atomic_write_text,
    cache_root,
    load_safetensors,
    save_safetensors,
    short_hash,
    single_process_cache,
    versions,
)
from unseen.registry import create_model, get_dataset_entry, register_dataset

log = logging.getLogger("unseen")


# --------------------------------------------------------------------------------------------- datasets
@dataclass
class XLSA17Config:
    """A user's copy of an xlsa17 dataset (CUB, SUN, AWA2, AWA1, APY)."""

    name: str = "xlsa17"
    root: str = ""  # folder holding att_splits.mat (+ res101.mat or image_list.json, class lists, *_attribute.npy/pkl)
    dataset: str = ""  # CUB | SUN | AWA2 | ... (default: the folder name)
    image_root: str = ""  # folder the image paths are mapped to (see README: CUB_200_2011 / SUN / JPEGImages)
    image_list: str = ""  # res101.mat or a JSON image list (default: looked up in root)
    w2v: str = ""  # attribute word vectors .npy / .pkl (default: root/*_attribute.npy|pkl)
    class_lists_dir: str = ""  # xlsa17 class lists for the CUB validation split (default: root)
    semantics: str = "original_att"  # original_att (release) | att
    negative_att: str = "keep"  # keep (release) | clamp0
    image_size: int = 448
    val_holdout: float = 0.2  # per-class fraction of train_loc held out as val-seen
    check_images: int = 16


@dataclass
class ShapesConfig:
    """The embedded attribute world, rendered on first use and read back through the xlsa17 reader."""

    name: str = "shapes"
    root: str = ""  # where to render (default: $UNSEEN_CACHE or ~/.cache/unseen, /shapes-attribute-<hash>)
    world: dict = field(
        default_factory=dict
    )  # AttributeWorldConfig overrides (seed, n_classes, image_size, ...)
    semantics: str = "original_att"
    negative_att: str = "keep"
    val_holdout: float = 0.2
    pretrain_backbone: bool = True  # pretrain the CPU backbone on the world's disjoint pretraining species
    pretrain_epochs: int = 6


@dataclass
class Prepared:
    data: XLSA17Data
    image_size: int
    val_holdout: float
    backbone_weights: str = ""  # suggested weights (shapes: the pretrained CPU backbone)
    world: dict | None = None


@register_dataset("xlsa17", setting="attribute", config=XLSA17Config)
def prepare_xlsa17(cfg: XLSA17Config, model_cfg: Any = None) -> Prepared:
    """xlsa17 proposed splits (CUB, SUN, AWA2, AWA1, APY) from a user's copy: att_splits.mat + images."""
    if not cfg.root:
        raise ValueError(
            "data.root: the folder holding att_splits.mat is required (data.root=/path/to/xlsa17/CUB)"
        )
    data = load_xlsa17(
        cfg.root,
        cfg.dataset or None,
        semantics=cfg.semantics,
        negative_att=cfg.negative_att,
        image_root=cfg.image_root or None,
        image_list=cfg.image_list or None,
        w2v=cfg.w2v or None,
        class_lists_dir=cfg.class_lists_dir or None,
        check_images=cfg.check_images,
    )
    return Prepared(data, cfg.image_size, cfg.val_holdout)


@register_dataset("shapes", setting="attribute", config=ShapesConfig)
def prepare_shapes(cfg: ShapesConfig, model_cfg: Any = None) -> Prepared:
    """The embedded attribute world (rendered, exported to the xlsa17 layout, read back by the xlsa17 reader)."""
    from unseen.config import build_dataclass
    from unseen.shapes import AttributeWorldConfig, export_attribute_world

    world_cfg = build_dataclass(AttributeWorldConfig, cfg.world, "data.world")
    key = json.dumps(to_dict(world_cfg), sort_keys=True)
    root = Path(cfg.root) if cfg.root else cache_root() / f"shapes-attribute-{short_hash(key)}"
    single_process_cache(root / "world.json", root, "render the world")
    export_attribute_world(root, world_cfg)
    data = load_xlsa17(root, "SHAPES", semantics=cfg.semantics, negative_att=cfg.negative_att, check_images=0)
    weights = ""
    if (
        cfg.pretrain_backbone
        and model_cfg is not None
        and getattr(model_cfg, "backbone", "") == "tiny"
        and not getattr(model_cfg, "backbone_weights", None)
    ):
        single_process_cache(
            _pretrained_path(
                root, list(model_cfg.tiny_widths), world_cfg.image_size, cfg.pretrain_epochs, world_cfg.seed
            ),
            root,
            "pretrain the CPU backbone",
        )
        weights = str(
            pretrain_tiny_backbone(
                root,
                list(model_cfg.tiny_widths),
                world_cfg.image_size,
                cfg.pretrain_epochs,
                seed=world_cfg.seed,
            )
        )
    return Prepared(data, world_cfg.image_size, cfg.val_holdout, weights, to_dict(world_cfg))


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_channels[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[-1].mean((2, 3)))


def _pretrain_spec(widths: list[int], image_size: int, epochs: int, seed: int) -> dict:
    return {"widths": widths, "image_size": image_size, "epochs": epochs, "seed": seed, "version": 1}


def _pretrained_path(root: Path, widths: list[int], image_size: int, epochs: int, seed: int) -> Path:
    spec = _pretrain_spec(widths, image_size, epochs, seed)
    return root / "pretrain" / f"tiny-{short_hash(json.dumps(spec, sort_keys=True))}.safetensors"


def pretrain_tiny_backbone(
    root: Path, widths: list[int], image_size: int, epochs: int, seed: int = 0
) -> Path:
    """Train the CPU backbone on the world's pretraining species (disjoint from every benchmark class).

    The stand-in for ImageNet pretraining; cached as ``root/pretrain/tiny-<hash>.safetensors``.
    """
    from unseen.config import TrainConfig

    spec = _pretrain_spec(widths, image_size, epochs, seed)
    out = _pretrained_path(root, widths, image_size, epochs, seed)
    if out.is_file():
        return out
    listing = json.loads((root / "pretrain" / "pretrain_list.json").read_text())
    paths = [str(root / p) for p in listing["image_files"]]
    labels = np.asarray(listing["labels"], dtype=np.int64)
    ds = ImageListDataset(paths, labels, make_transforms(image_size, train=True))
    torch.manual_seed(seed)
    model = _Classifier(build_backbone("tiny", tiny_widths=widths), int(labels.max()) + 1)
    tcfg = TrainConfig(
        epochs=epochs, batch_size=32, lr=2e-3, optimizer="adamw", weight_decay=1e-4, device="cpu"
    )
    work = out.with_suffix("")
    engine = Engine(tcfg, work, seed=seed)
    log.info(
        "pretraining the CPU backbone on %d images of %d species (cached in %s)",
        len(ds),
        labels.max() + 1,
        out,
    )
    engine.fit(model, ds, lambda m, b, s: (nn.functional.cross_entropy(m(b[0]), b[1]), {}))
    save_safetensors(out, model.backbone.state_dict(), metadata={"spec": json.dumps(spec)})
    return out


# --------------------------------------------------------------------------------------------- helpers
def _index_map(classes: np.ndarray, n_classes: int) -> torch.Tensor:
    lut = torch.full((n_classes,), -1, dtype=torch.long)
    lut[torch.as_tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
    return lut


@torch.no_grad()
def compute_scores(
    model: nn.Module,
    dataset: Dataset,
    class_attributes: torch.Tensor,
    device: torch.device,
    batch_size: int = 64,
    desc: str = "scoring",
) -> np.ndarray:
    """N x C scores (all classes, global order) for the images of ``dataset``."""
    model.eval()
    attrs = class_attributes.to(device)
    out = []
    for images, _ in progress(DataLoader(dataset, batch_size=batch_size), desc=desc):
        out.append(model(images.to(device), attrs)["scores"].float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def chance_levels(
    labels: np.ndarray,
    seen: np.ndarray,
    unseen: np.ndarray,
    czsl_labels: np.ndarray,
    n_draws: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of i.i.d. random scores (mean over draws): the floor every table is read against."""
    from unseen.attribute.metrics import czsl_accuracy

    rng = np.random.default_rng(seed)
    C = int(max(labels.max(), seen.max(), unseen.max())) + 1
    acc = {"czsl_top1": 0.0, "S": 0.0, "U": 0.0, "H": 0.0}
    for _ in range(n_draws):
        r = gzsl_accuracy(rng.random((len(labels), C)), labels, seen, unseen, 0.0)
        acc["S"] += r.S / n_draws
        acc["U"] += r.U / n_draws
        acc["H"] += r.H / n_draws
        acc["czsl_top1"] += czsl_accuracy(rng.random((len(czsl_labels), C)), czsl_labels, unseen) / n_draws
    return acc


def data_fingerprint(data: XLSA17Data) -> str:
    parts = [data.dataset, str(data.n_images), json.dumps(data.class_names)]
    for a in (
        data.trainval_loc,
        data.test_seen_loc,
        data.test_unseen_loc,
        data.labels,
        data.class_attributes,
    ):
        parts.append(short_hash(np.ascontiguousarray(a).tobytes()))
    return short_hash("|".join(parts))


# --------------------------------------------------------------------------------------------- the run
class AttributeRun:
    """One method on one dataset, in one run folder (see the module docstring for the protocol)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False) -> None:
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        self.rank = int(os.environ.get("RANK", "0"))  # torchrun: rank 0 writes the run's files
        entry = get_dataset_entry(cfg.data.name, "attribute")
        self.prep: Prepared = entry.builder(cfg.data, cfg.model)
        self.data = self.prep.data
        self.device = resolve_device(cfg.train.device)
        d = self.data
        self.class_attributes = torch.as_tensor(d.class_attributes, dtype=torch.float32)
        if d.attribute_embeddings is None and cfg.model.name != "eszsl":
            raise ValueError(
                f"{d.root}: {cfg.model.name} needs attribute word vectors (data.w2v=... .npy/.pkl)"
            )
        self.embeddings = (
            None if d.attribute_embeddings is None else torch.as_tensor(d.attribute_embeddings).float()
        )
        self._maps: tuple[np.ndarray, dict] | None = None
        m = cfg.model
        if getattr(m, "backbone", None) == "tiny" and not m.backbone_weights and self.prep.backbone_weights:
            m.backbone_weights = self.prep.backbone_weights  # recorded in config.yaml

    # ---- datasets
    def image_dataset(self, idx: np.ndarray, train: bool) -> Dataset:
        d = self.data
        if d.image_files is None:
            raise ValueError(f"{d.root}: this method needs images; the image list has no image_files")
        tf = make_transforms(self.prep.image_size, train=train)
        return Subset(ImageListDataset(d.image_files, d.labels, tf), idx.tolist())

    def build_model(self) -> nn.Module:
        m = self.cfg.model
        torch.manual_seed(self.cfg.seed)
        model = create_model(m.name, m, "attribute", attribute_embeddings=self.embeddings)
        if self.cfg.features.cache:
            model.backbone = self._packed_backbone(model.backbone)
        return model

    # ---- frozen backbone + feature cache
    def _packed_backbone(self, backbone: nn.Module) -> nn.Module:
        if self._maps is None:  # the calibration and final runs share one (frozen, identical) backbone
            self._maps = self.cached_features(backbone)
        self._cached, meta = self._maps
        return PackedMaps(meta["shapes"], backbone.out_channels)

    def cached_features(self, backbone: nn.Module, pooled: bool = False) -> tuple[np.ndarray, dict]:
        """Backbone outputs of every image (test transform), from the feature cache or computed into it.

        ``pooled=False``: the C3/C4/C5 maps flattened (frozen-backbone training); ``pooled=True``: C5 averaged over
        space (what ESZSL needs; a fraction of the size).
        """
        d = self.data
        tf = make_transforms(self.prep.image_size, train=False)
        kind = "pooled_c5" if pooled else "maps"
        name = f"{self.cfg.model.backbone}-{d.dataset}-{self.prep.image_size}-{kind}"
        cache_dir = (
            Path(self.cfg.features.cache_dir) if self.cfg.features.cache_dir else cache_root() / "features"
        )
        cache = FeatureCache(cache_dir / name)
        expected = provenance(
            self.cfg.model.backbone,
            backbone,
            tf,
            d.image_files or [],
            image_size=self.prep.image_size,
            output=kind,
        )
        backbone = backbone.to(self.device).eval()
        fn = (lambda x: backbone(x)[-1].mean((2, 3))) if pooled else backbone
        ds = ImageListDataset(d.image_files, d.labels, tf)
        return cache.load_or_build(
            expected, lambda: extract(fn, ds, 64, self.device, f"caching backbone {kind}")
        )

    def dataset(self, idx: np.ndarray, train: bool) -> Dataset:
        if self.cfg.features.cache:
            return FeatureDataset(self._cached[idx], self.data.labels[idx])
        return self.image_dataset(idx, train)

    # ---- training one phase
    def _loss_fn(self, seen: np.ndarray):
        lut = _index_map(seen, self.data.n_classes).to(self.device)
        attrs = self.class_attributes[torch.as_tensor(seen)].to(self.device)

        def loss_fn(model: nn.Module, batch: Any, sub: Any) -> tuple[torch.Tensor, dict[str, float]]:
            images, labels = batch
            out = model(images, attrs, targets=lut[labels], levels=sub)
            return out["loss"], out.get("logs", {})

        return loss_fn

    def _eval_fn(self, idx: np.ndarray, seen: np.ndarray, unseen: np.ndarray):
        ds = self.dataset(idx, train=False)
        labels = self.data.labels[idx]

        def evaluate(model: nn.Module, epoch: int) -> dict[str, Any]:
            scores = compute_scores(
                model, ds, self.class_attributes, self.device, self.cfg.eval.batch_size, "validating"
            )
            g, res = self._gamma_on(scores, labels, seen, unseen)
            return {"H": res.H, "S": res.S, "U": res.U, "gamma": g}

        return evaluate

    def _gamma_on(self, scores: np.ndarray, labels: np.ndarray, seen: np.ndarray, unseen: np.ndarray):
        mode = self.cfg.eval.gamma
        if mode == "val":
            return select_gamma(scores, labels, seen, unseen)
        g = 0.0 if mode == "none" else float(mode.split(":", 1)[1])
        return g, gzsl_accuracy(scores, labels, seen, unseen, g)

    def train_phase(
        self,
        phase: str,
        train_idx: np.ndarray,
        seen: np.ndarray,
        epochs: int,
        eval_idx: np.ndarray | None = None,
        unseen: np.ndarray | None = None,
    ) -> tuple[nn.Module, FitResult]:
        model = self.build_model()
        phase_dir = self.run_dir / phase
        engine = Engine(self.cfg.train, phase_dir, seed=self.cfg.seed)
        resume = self.resume and (phase_dir / "last.state.pt").is_file()
        evaluate = self._eval_fn(eval_idx, seen, unseen) if eval_idx is not None else None
        meta = {"config": json.dumps(to_dict(self.cfg)), "phase": phase}
        result = engine.fit(
            model,
            self.dataset(train_idx, train=not self.cfg.features.cache),
            self._loss_fn(seen),
            evaluate,
            select="H",
            labels=self.data.labels[train_idx],
            epochs=epochs,
            resume=resume,
            meta=meta,
        )
        return model, result

    # ---- the protocol
    def run(self) -> dict[str, Any]:
        cfg, d = self.cfg, self.data
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
            self.save_semantics()
        t0 = time.perf_counter()
        split = d.validation_split(self.prep.val_holdout, seed=cfg.seed) if cfg.eval.calibrate else None
        test_idx = np.concatenate([d.test_seen_loc, d.test_unseen_loc])
        test_labels = d.labels[test_idx]
        selection: dict[str, Any] = {}
        if cfg.model.name == "eszsl":
            test_scores, selection = self._run_eszsl(split, test_idx)
        else:
            if split is not None:
                val_idx = np.concatenate([split.val_seen, split.val_unseen])
                _, calib = self.train_phase(
                    "calib", split.train, split.seen_classes, cfg.train.epochs, val_idx, split.unseen_classes
                )
                best = next((h for h in calib.history if h["epoch"] == calib.best_epoch), {})
                epochs_final = calib.best_epoch + 1
                selection = {
                    "epoch": calib.best_epoch,
                    "val_H": best.get("val/H"),
                    "val_S": best.get("val/S"),
                    "val_U": best.get("val/U"),
                    "gamma": best.get("val/gamma"),
                }
            else:
                epochs_final = cfg.train.epochs
            model, _ = self.train_phase("final", d.trainval_loc, d.seen_classes, epochs_final)
            test_scores = compute_scores(
                model,
                self.dataset(test_idx, train=False),
                self.class_attributes,
                self.device,
                cfg.eval.batch_size,
                "testing",
            )
            if self.rank == 0:
                self.plot_attention(model)
        gamma = self._final_gamma(selection)
        metrics = evaluate_attribute(
            test_scores,
            test_labels,
            d.seen_classes,
            d.unseen_classes,
            gamma,
            oracle=cfg.eval.oracle,
            ausuc_mode=cfg.eval.ausuc,
        )
        headline = {k: v for k, v in metrics.items() if not k.startswith("oracle")}
        oracle = {k: v for k, v in metrics.items() if k.startswith("oracle")}
        results = {
            "setting": "attribute",
            "method": cfg.model.name,
            "dataset": d.dataset,
            "metrics": headline,
            "selection": {
                "rule": self._selection_rule(),
                **selection,
                "gamma_used": gamma,
            },
            "oracle_test_selected": {
                "note": "gamma swept on the TEST set: comparison with papers only, not a result",
                **oracle,
            },
            "chance": chance_levels(
                test_labels, d.seen_classes, d.unseen_classes, d.labels[d.test_unseen_loc], seed=cfg.seed
            ),
            "seed": cfg.seed,
            "config_hash": config_hash(cfg),
            "data_fingerprint": data_fingerprint(d),
            "world": self.prep.world,
            "versions": versions(),
            "wall_time_s": time.perf_counter() - t0,
        }
        if self.rank == 0:
            np.save(self.run_dir / "test_scores.npy", test_scores.astype(np.float32))
            atomic_write_json(self.run_dir / "results.json", results)
            self.plots(test_scores, test_labels, gamma, results)
        return results

    def _final_gamma(self, selection: dict[str, Any]) -> float:
        mode = self.cfg.eval.gamma
        if mode == "val":
            if selection.get("gamma") is None:
                raise ValueError(
                    "eval.gamma=val needs the validation (calibration) phase: set eval.calibrate=true"
                )
            return float(selection["gamma"])
        return 0.0 if mode == "none" else float(mode.split(":", 1)[1])

    def _selection_rule(self) -> str:
        e = self.cfg.eval
        parts = []
        if e.calibrate:
            parts.append(
                f"epoch chosen by GZSL H on validation (class split train_loc/val_loc; val-seen = "
                f"{self.prep.val_holdout:.0%} per-class hold-out of train_loc), final model retrained on trainval "
                "for that many epochs"
            )
        else:
            parts.append(f"last epoch ({self.cfg.train.epochs})")
        parts.append(
            {"val": "gamma = exact best on validation", "none": "gamma = 0"}.get(e.gamma, f"gamma {e.gamma}")
        )
        return "; ".join(parts)

    def _run_eszsl(self, split: Any, test_idx: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """ESZSL on pooled features of the (frozen) backbone; (alpha, beta) and gamma chosen on validation."""
        from unseen.attribute.baselines import ESZSL

        d, cfg = self.data, self.cfg
        feats = self.pooled_features()
        A = d.class_attributes
        best: tuple[float, Any] = (-1.0, None)
        if split is not None:
            val_idx = np.concatenate([split.val_seen, split.val_unseen])
            lut = _index_map(split.seen_classes, d.n_classes).numpy()
            for a, b in ESZSL.grid(cfg.model):
                model = ESZSL(cfg.model, alpha=a, beta=b).fit(
                    feats[split.train], lut[d.labels[split.train]], A[split.seen_classes]
                )
                scores = model.scores(feats[val_idx], A)
                g, res = self._gamma_on(scores, d.labels[val_idx], split.seen_classes, split.unseen_classes)
                if res.H > best[0]:
                    best = (
                        res.H,
                        {"alpha": a, "beta": b, "gamma": g, "val_H": res.H, "val_S": res.S, "val_U": res.U},
                    )
        sel = best[1] or {"alpha": cfg.model.alpha, "beta": cfg.model.beta}
        lut = _index_map(d.seen_classes, d.n_classes).numpy()
        model = ESZSL(cfg.model, alpha=sel["alpha"], beta=sel["beta"]).fit(
            feats[d.trainval_loc], lut[d.labels[d.trainval_loc]], A[d.seen_classes]
        )
        return model.scores(feats[test_idx], A), sel

    def pooled_features(self) -> np.ndarray:
        d = self.data
        if d.features is not None and self.cfg.model.backbone == "res101.mat":
            return d.features
        backbone = build_backbone(
            self.cfg.model.backbone,
            weights=self.cfg.model.backbone_weights or None,
            pretrained=getattr(self.cfg.model, "pretrained", False),
            tiny_widths=getattr(self.cfg.model, "tiny_widths", None),
        )
        pooled, _ = self.cached_features(backbone, pooled=True)
        return pooled.astype(np.float64)

    # ---- artefacts
    def save_semantics(self) -> None:
        """Class names/attributes and word vectors: what ``unseen predict`` needs besides the weights."""
        d = self.data
        tensors = {
            "class_attributes": self.class_attributes,
            "seen_classes": torch.as_tensor(d.seen_classes),
            "unseen_classes": torch.as_tensor(d.unseen_classes),
        }
        if self.embeddings is not None:
            tensors["attribute_embeddings"] = self.embeddings
        save_safetensors(self.run_dir / "semantics.safetensors", tensors)
        atomic_write_json(
            self.run_dir / "classes.json",
            {
                "class_names": d.class_names,
                "attribute_names": d.attribute_names,
                "image_size": self.prep.image_size,
            },
        )

    def plots(self, scores: np.ndarray, labels: np.ndarray, gamma: float, results: dict) -> None:
        from unseen import report

        d = self.data
        plots = self.run_dir / "plots"
        try:
            sweep = gamma_sweep(scores, labels, d.seen_classes, d.unseen_classes)
            grid = oracle_grid_sweep(scores, labels, d.seen_classes, d.unseen_classes)
            report.plot_gamma_curve(
                sweep,
                gamma,
                grid.best,
                plots / "gzsl_gamma_curve.png",
                title=f"{results['method']} on {d.dataset}: test S/U over gamma",
            )
        except Exception as exc:  # a plot must never lose a finished run
            log.warning("could not write the gamma plot: %s", exc)

    @torch.no_grad()
    def plot_attention(self, model: nn.Module, n_attributes: int = 4) -> None:
        """Per-level attention of the strongest attributes of an unseen-class test image (the papers' figure)."""
        from PIL import Image

        from unseen import report

        d = self.data
        if self.cfg.features.cache or d.image_files is None or not len(d.test_unseen_loc):
            return
        try:
            i = int(d.test_unseen_loc[0])
            x = make_transforms(self.prep.image_size, train=False)(
                Image.open(d.image_files[i]).convert("RGB")
            )
            model.eval()
            out = model(x[None].to(self.device), self.class_attributes.to(self.device), return_attention=True)
            h, w = out["grid"]
            c = int(d.labels[i])
            top = np.argsort(-d.class_attributes[c])[:n_attributes]
            names = [(d.attribute_names or [f"attribute {a}" for a in range(d.n_attributes)])[a] for a in top]
            maps = [
                a[0, top, : h * w].reshape(len(top), h, w).float().cpu().numpy() for a in out["attention"]
            ]
            mean = np.array(IMAGENET_MEAN)[:, None, None]
            std = np.array(IMAGENET_STD)[:, None, None]
            img = np.clip(x.numpy() * std + mean, 0, 1).transpose(1, 2, 0)
            report.plot_attention_maps(
                img,
                maps,
                [f"level {lv}" for lv in out["levels"]],
                names,
                self.run_dir / "plots" / "attention_maps.png",
                title=f"{self.cfg.model.name}: '{d.class_names[c]}' (unseen class)",
            )
        except Exception as exc:  # a plot must never lose a finished run
            log.warning("could not write the attention plot: %s", exc)


def load_run_config(run_dir: str | Path) -> RunConfig:
    from unseen.config import load_config

    return load_config(Path(run_dir) / "config.yaml")


def load_semantics(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    run_dir = Path(run_dir)
    return load_safetensors(run_dir / "semantics.safetensors"), json.loads(
        (run_dir / "classes.json").read_text()
    )


def load_trained_model(run_dir: str | Path) -> tuple[nn.Module, RunConfig, dict[str, torch.Tensor], dict]:
    """Rebuild a finished run's final model from its folder (config.yaml + semantics + final weights)."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    sem, classes = load_semantics(run_dir)
    if cfg.model.name == "eszsl":
        raise ValueError("ESZSL runs keep no network weights; use `unseen eval` on its folder instead")
    weights = run_dir / "final" / "last.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: the run has no final weights (did it finish?)")
    m = cfg.model
    if not cfg.features.cache:
        m.backbone_weights, m.pretrained = None, False  # fine-tuned backbone weights come from the checkpoint
    model = create_model(m.name, m, "attribute", attribute_embeddings=sem.get("attribute_embeddings"))
    missing, unexpected = model.load_state_dict(load_safetensors(weights), strict=not cfg.features.cache)
    # frozen-backbone runs store the head only; the backbone comes from model.backbone_weights
    bad = [k for k in missing if not k.startswith("backbone.")] + list(unexpected)
    if bad:
        raise ValueError(f"{weights}: weights do not match the model: {bad[:5]}")
    return model.eval(), cfg, sem, classes


# --------------------------------------------------------------------------------------------- runs.py hooks
run_class = AttributeRun


def evaluate_saved(run_dir: Path) -> dict[str, Any]:
    """Recompute a finished run's test metrics from its final model (ESZSL: from its saved test scores)."""
    results = json.loads((run_dir / "results.json").read_text())
    cfg = load_run_config(run_dir)
    run = AttributeRun(cfg, run_dir)
    d = run.data
    test_idx = np.concatenate([d.test_seen_loc, d.test_unseen_loc])
    if cfg.model.name == "eszsl":
        scores = np.load(run_dir / "test_scores.npy").astype(np.float64)
    else:
        model, *_ = load_trained_model(run_dir)
        if cfg.features.cache:
            model.backbone = run._packed_backbone(model.backbone)
        model.to(run.device)
        scores = compute_scores(model, run.dataset(test_idx, train=False), run.class_attributes, run.device)
    gamma = results["selection"]["gamma_used"]
    return evaluate_attribute(
        scores,
        d.labels[test_idx],
        d.seen_classes,
        d.unseen_classes,
        gamma,
        oracle=cfg.eval.oracle,
        ausuc_mode=cfg.eval.ausuc,
    )


def predict_images(run_dir: Path, images: list[str], classes: str, topk: int) -> list[dict]:
    from PIL import Image

    from unseen.runs import select_classes

    model, cfg, sem, info = load_trained_model(run_dir)
    names = info["class_names"]
    keep = select_classes(names, sem["seen_classes"].tolist(), classes)
    attrs = sem["class_attributes"][torch.as_tensor(keep)]
    seen = set(sem["seen_classes"].tolist())
    tf = make_transforms(info["image_size"], train=False)
    out = []
    for path in images:
        x = tf(Image.open(path).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            s = model(x, attrs)["scores"][0]
        vals, idx = s.topk(min(topk, len(keep)))
        out.append(
            {
                "image": path,
                "top": [
                    {"class": names[int(keep[i])], "score": float(v), "seen": int(keep[i]) in seen}
                    for v, i in zip(vals.tolist(), idx.tolist())
                ],
            }
        )
    return out


DEMO_METHODS = ["demo_mgmrn", "demo_attn1", "demo_eszsl"]
DEMO_TITLE = "embedded attribute benchmark: accuracies in %, gamma and epoch chosen on validation"
DEMO_COLUMNS = [
    ("method", "method"),
    ("czsl", "CZSL T1"),
    ("U", "U"),
    ("S", "S"),
    ("H", "H"),
    ("oracle_H", "H oracle*"),
    ("time", "time"),
]
DEMO_FOOTER = (
    "* oracle = gamma swept on the test set (the field's usual, optimistic number): for comparison only."
)


def demo_rows(res: dict[str, Any], elapsed: str) -> list[dict[str, Any]]:
    m = res["metrics"]
    return [
        {
            "method": res["method"],
            "czsl": m["czsl_top1"],
            "U": m["U"],
            "S": m["S"],
            "H": m["H"],
            "oracle_H": res.get("oracle_test_selected", {}).get("oracle_H"),
            "time": elapsed,
        }
    ]


__all__ = ["AttributeRun", "XLSA17Config", "ShapesConfig", "compute_scores", "load_trained_model"]
