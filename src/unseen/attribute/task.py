"""Attribute ZSL/GZSL: the run protocol's attribute hooks (data -> model -> engine -> evaluator).

Selection (the default): a *calibration* phase trains on the validation class split (``train_loc`` minus a 20%
per-class hold-out, "val-seen"), evaluates GZSL on val-seen + ``val_loc`` after every epoch and picks the epoch
e* with the best validation H and its exact best calibration offset gamma*. The *final* phase trains on
``trainval_loc`` for e*+1 epochs and is tested once, with gamma* (the protocol of the xlsa17 benchmark: the test
classes never choose anything). Test-set sweeps of gamma are reported only in the block labelled
``oracle_test_selected``. Closed-form methods (registry ``fit="closed_form"``, e.g. ESZSL) choose their
hyper-parameters and gamma on the same validation split, on pooled features of the frozen backbone.

``eval.report=release`` adds, after those phases and without touching them, the Mg-MRN release's own report: a
*release* phase trains on ``trainval_loc`` for the full schedule with the test set evaluated after every epoch, and
results.json gets the release's numbers (best-ever test T1; S/U/H at the epoch of the best test H, gamma on the
0.01 test grid) in a block of their own, ``release_test_selected``, labelled as chosen on the test set. The presets
``attribute/mgmrn_{cub,sun,awa2}_release`` run the release's schedule as released with it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from unseen.attribute.data import FeatureDataset, ImageListDataset, ValidationSplit
from unseen.attribute.datasets import AttributeData
from unseen.attribute.metrics import (
    GAMMA_TRANSFERS,
    czsl_accuracy,
    evaluate_attribute,
    gamma_sweep,
    gzsl_accuracy,
    oracle_grid_sweep,
    release_epoch_metrics,
    release_selection,
    seen_margins,
    select_gamma,
    transfer_gamma,
)
from unseen.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, make_transforms
from unseen.config import ConfigError, EvalConfig, RunConfig, check_choice, load_run_config
from unseen.engine import LossFn, load_state_checked, progress
from unseen.features import FeatureCache, PackedMaps, extract, provenance
from unseen.io import (
    atomic_path,
    atomic_write_json,
    cache_root,
    load_safetensors,
    read_image,
    save_safetensors,
    short_hash,
)
from unseen.registry import check_interface, create_model, get_model_entry, register_task
from unseen.task import TEST_SCORES_LIMIT, DemoSpec, Fitted, Predictor, Task, Tested, val_record

log = logging.getLogger("unseen")


# --------------------------------------------------------------------------------------------- config sections
REPORTS = ("validation", "release")

# The Mg-MRN release as released (NingWang2049/Mg-MRN train.py / model file): what `eval.report=release` checks a
# run against, so that the block says whether it is the release's schedule or only its reporting protocol.
RELEASE_MODEL = {
    "grouping": "collapsed",
    "step_mode": "sequential",
    "levels": [1, 2, 3],
    "level_weights": [1.0, 1.0, 1.0],
    "refinement": True,
    "mrm_detach": True,
    "mrm_bidirectional": False,
    "down": "bilinear",
    "attention_scale": False,
}
RELEASE_TRAIN = {"lr_shift_compat": True, "shots": 2, "optimizer": "sgd"}
RELEASE_NOTE = (
    "chosen on the TEST set as the Mg-MRN release reports it: the test set evaluated after every epoch of a "
    "full-schedule run on trainval; czsl_top1 = the best test T1 over epochs, S/U/H = those of the epoch with the "
    "best test H, gamma swept on the test set on the release's 0.01 grid. For comparison with the paper only, "
    "not a result"
)


@dataclass
class AttributeEvalConfig(EvalConfig):
    """How the attribute setting selects and evaluates."""

    gamma: str = "val"  # GZSL calibration offset: val (chosen on validation) | none (0) | fixed:<value>
    # how the validation-chosen gamma is carried from the calibration model to the final model, whose scores sit on
    # another scale: zscore (the same number of standard deviations of the training-image margins; chosen on
    # validation-level runs, benchmarks/RESULTS.md §10) | raw (unchanged, the field's usual rule) | scale | quantile
    gamma_transfer: str = "zscore"
    # test: the benchmark. val: the whole protocol one level down (the validation classes play the unseen test
    # classes, a subset of the training classes plays val_loc); nothing reads the test split
    split: str = "test"
    calibrate: bool = True  # run the validation (calibration) phase that picks the epoch and gamma
    oracle: bool = True  # also report the test-set oracle block (labelled as such)
    ausuc: str = "grid"  # grid | exact
    # validation: the result only. release: also the Mg-MRN release's own report (test after every epoch of a
    # full-schedule run on trainval, best-ever T1, S/U/H at the epoch of best H, gamma on the 0.01 test grid), kept
    # apart in results.json as release_test_selected; it costs one more training run
    report: str = "validation"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("eval.ausuc", self.ausuc, ("grid", "exact"))
        check_choice("eval.report", self.report, REPORTS)
        check_choice("eval.gamma_transfer", self.gamma_transfer, GAMMA_TRANSFERS)
        check_choice("eval.split", self.split, ("test", "val"))
        if self.split == "val" and self.report == "release":
            raise ConfigError("eval.report=release reads the test set: it cannot run with eval.split=val")
        if self.gamma not in ("val", "none"):
            value = self.gamma.split(":", 1)[1] if self.gamma.startswith("fixed:") else ""
            try:
                fixed = float(value)
            except ValueError:
                fixed = float("nan")
            if not np.isfinite(fixed):
                raise ConfigError(f"eval.gamma: expected val, none or fixed:<number>, got {self.gamma!r}")
        if self.gamma == "val" and not self.calibrate:
            raise ConfigError(
                "eval.gamma=val needs the validation phase: set eval.calibrate=true or fix gamma"
            )

    def fixed_gamma(self) -> float | None:
        """The gamma given in the config (none = 0), or None when validation chooses it."""
        if self.gamma == "val":
            return None
        return 0.0 if self.gamma == "none" else float(self.gamma.split(":", 1)[1])


@dataclass
class FeaturesConfig:
    """Frozen-backbone mode: backbone outputs computed once per image and cached (with a provenance sidecar)."""

    cache: bool = False  # true = freeze the backbone and train the head on cached maps (no augmentation)
    cache_dir: str = ""  # default: $UNSEEN_CACHE/features or ~/.cache/unseen/features


# --------------------------------------------------------------------------------------------- model interfaces
class AttributeModel:
    """What the attribute protocol calls on a trained model (``fit="engine"``).

    ``model(images, class_attributes, targets=None, levels=None, return_attention=False)`` -> dict with
    ``scores`` (B x C, one column per row of ``class_attributes``), and when ``targets`` (indices into those rows)
    are given ``loss`` (+ optional ``logs``). Optional: ``train_substeps()`` (one optimizer step per entry, passed
    as ``levels``), a ``backbone`` attribute (replaced by cached maps when ``features.cache=true``) and, with
    ``return_attention``, ``attention`` / ``grid`` / ``levels`` for the attention plot.
    """

    def forward(self, images: torch.Tensor, class_attributes: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError


class ClosedFormAttributeModel:
    """A closed-form attribute method (``fit="closed_form"``) on pooled backbone features.

    ``cls.candidates(cfg)`` -> hyper-parameter dicts to choose from on validation; ``cls(cfg, **params)``;
    ``fit(features N x D, labels N (rows of class_attributes), class_attributes S x A)`` -> self;
    ``scores(features, class_attributes)`` -> N x C; ``params()`` -> the hyper-parameters in use.
    """

    def candidates(self, cfg: Any) -> list[dict[str, float]]:
        raise NotImplementedError

    def fit(self, features: np.ndarray, labels: np.ndarray, class_attributes: np.ndarray) -> Any:
        raise NotImplementedError

    def scores(self, features: np.ndarray, class_attributes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def params(self) -> dict[str, float]:
        raise NotImplementedError


def _index_map(classes: np.ndarray, n_classes: int) -> torch.Tensor:
    lut = torch.full((n_classes,), -1, dtype=torch.long)
    lut[torch.as_tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
    return lut


# --------------------------------------------------------------------------------------------- the task
@register_task
class AttributeTask(Task):
    """One attribute method on one xlsa17-layout dataset (protocol: module docstring)."""

    setting: ClassVar[str] = "attribute"
    sections: ClassVar[dict[str, type]] = {"eval": AttributeEvalConfig, "features": FeaturesConfig}
    select_key: ClassVar[str] = "H"
    weights_file: ClassVar[str] = "final/last.safetensors"  # written by the engine's final phase
    demo = DemoSpec(
        methods=("demo_mgmrn", "demo_attn1", "demo_eszsl"),
        title="embedded attribute benchmark: accuracies in %, gamma and epoch chosen on validation",
        columns=(
            ("method", "method"),
            ("czsl_top1", "CZSL T1"),
            ("U", "U"),
            ("S", "S"),
            ("H", "H"),
            ("oracle_H", "H oracle*"),
            ("time", "time"),
        ),
        footer="* oracle = gamma swept on the test set (the field's usual, optimistic number): for comparison only.",
    )

    def setup(self, data: AttributeData) -> None:
        self.spec = data
        self.data = d = data.splits
        if self.cfg.eval.split == "val":
            self.data = d = d.validation_level(data.val_holdout, seed=self.cfg.seed)
            log.info(
                "eval.split=val: the validation classes are the unseen test classes here; the test split is "
                "not read (%d classes play val_loc)",
                len(np.unique(d.labels[d.val_loc])),
            )
        self.class_attributes = torch.as_tensor(d.class_attributes, dtype=torch.float32)
        if d.attribute_embeddings is None and self.model_entry.fit != "closed_form":
            raise ValueError(
                f"{d.root}: {self.cfg.model.name} needs attribute word vectors (data.w2v=... .npy/.pkl)"
            )
        self.embeddings = (
            None if d.attribute_embeddings is None else torch.as_tensor(d.attribute_embeddings).float()
        )
        self._maps: tuple[np.ndarray, dict] | None = None
        self.test_idx = np.concatenate([d.test_seen_loc, d.test_unseen_loc])
        self._release: dict[str, Any] | None = None  # eval.report=release: the test-selected block

    def dataset_name(self) -> str:
        return self.data.dataset

    # ---- datasets
    def image_dataset(self, idx: np.ndarray, train: bool) -> Dataset:
        d = self.data
        if d.image_files is None:
            raise ValueError(f"{d.root}: this method needs images; the image list has no image_files")
        tf = make_transforms(self.spec.image_size, train=train)
        return Subset(ImageListDataset(d.image_files, d.labels, tf), idx.tolist())

    def dataset(self, idx: np.ndarray, train: bool) -> Dataset:
        if self.cfg.features.cache:
            return FeatureDataset(self._cached[idx], self.data.labels[idx])
        return self.image_dataset(idx, train)

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
        tf = make_transforms(self.spec.image_size, train=False)
        kind = "pooled_c5" if pooled else "maps"
        name = f"{self.cfg.model.backbone}-{d.dataset}-{self.spec.image_size}-{kind}"
        cache_dir = (
            Path(self.cfg.features.cache_dir) if self.cfg.features.cache_dir else cache_root() / "features"
        )
        cache = FeatureCache(cache_dir / name)
        expected = provenance(
            self.cfg.model.backbone,
            backbone,
            tf,
            d.image_files or [],
            image_size=self.spec.image_size,
            output=kind,
        )
        backbone = backbone.to(self.device).eval()
        fn = (lambda x: backbone(x)[-1].mean((2, 3))) if pooled else backbone
        ds = ImageListDataset(d.image_files, d.labels, tf)
        return cache.load_or_build(
            expected, lambda: extract(fn, ds, 64, self.device, f"caching backbone {kind}")
        )

    @torch.no_grad()
    def scores(self, model: nn.Module, dataset: Dataset, desc: str) -> np.ndarray:
        """N x C scores (all classes, global order) of the images of ``dataset``."""
        model.eval()
        attrs = self.class_attributes.to(self.device)
        out = []
        loader = DataLoader(dataset, batch_size=self.cfg.eval.batch_size)
        for images, _ in progress(loader, desc=desc):
            out.append(model(images.to(self.device), attrs)["scores"].float().cpu())
        return torch.cat(out).numpy().astype(np.float64)

    # ---- one phase
    def phase_loss(self, seen: np.ndarray) -> LossFn:
        lut = _index_map(seen, self.data.n_classes).to(self.device)
        attrs = self.class_attributes[torch.as_tensor(seen)].to(self.device)

        def loss_fn(model: nn.Module, batch: Any, sub: Any) -> tuple[torch.Tensor, dict[str, float]]:
            images, labels = batch
            out = model(images, attrs, targets=lut[labels], levels=sub)
            return out["loss"], out.get("logs", {})

        return loss_fn

    def gamma_on(self, scores: np.ndarray, labels: np.ndarray, seen: np.ndarray, unseen: np.ndarray) -> Any:
        fixed = self.cfg.eval.fixed_gamma()
        if fixed is None:
            return select_gamma(scores, labels, seen, unseen)
        return fixed, gzsl_accuracy(scores, labels, seen, unseen, fixed)

    def phase(
        self, name: str, train_idx: np.ndarray, seen: np.ndarray, epochs: int, split: ValidationSplit | None
    ):
        model = self.build_model()
        evaluate = None
        if split is not None:
            val_idx = np.concatenate([split.val_seen, split.val_unseen])
            val_labels = self.data.labels[val_idx]
            val_set = self.dataset(val_idx, train=False)  # built once: with cached maps it copies them

            def evaluate(model: nn.Module, epoch: int) -> dict[str, Any]:
                g, res = self.gamma_on(
                    self.scores(model, val_set, "validating"),
                    val_labels,
                    split.seen_classes,
                    split.unseen_classes,
                )
                return {"H": res.H, "S": res.S, "U": res.U, "gamma": g}

        train_set = self.dataset(train_idx, train=not self.cfg.features.cache)
        result = self.fit_phase(
            name,
            model,
            train_set,
            self.phase_loss(seen),
            evaluate,
            epochs,
            labels=self.data.labels[train_idx],
        )
        return model, result

    def validation_split(self) -> ValidationSplit | None:
        if not self.cfg.eval.calibrate:
            return None
        return self.data.validation_split(self.spec.val_holdout, seed=self.cfg.seed)

    # ---- the protocol's fit step: calibrate on the validation split, retrain on trainval
    def fit(self) -> Fitted:
        if self.model_entry.fit != "engine":
            return super().fit()
        d, cfg = self.data, self.cfg
        split = self.validation_split()
        selection: dict[str, Any] = {}
        epochs_final = cfg.train.epochs
        if split is not None:
            calib_model, calib = self.phase("calib", split.train, split.seen_classes, cfg.train.epochs, split)
            rec = val_record(calib.history, calib.best_epoch)
            epochs_final = calib.best_epoch + 1
            selection = {
                "epoch": calib.best_epoch,
                "val_H": rec.get("val_H"),
                "val_S": rec.get("val_S"),
                "val_U": rec.get("val_U"),
                "gamma": rec.get("val_gamma"),
            }
        model, _ = self.phase("final", d.trainval_loc, d.seen_classes, epochs_final, None)
        if split is not None and selection.get("gamma") is not None and cfg.eval.fixed_gamma() is None:
            # the calibration model as selected (its best epoch), scored on its own training images
            self.restore_weights(calib_model, self.run_dir / "calib" / "best.safetensors")
            selection = self.transfer(
                selection,
                self.scores(calib_model, self.dataset(split.train, train=False), "scoring calibration train"),
                split,
                self.scores(model, self.dataset(d.trainval_loc, train=False), "scoring final train"),
            )
        if cfg.eval.report == "release":
            self._release = self.release_phase()
        return Fitted(model, self._selection(selection))

    def transfer(
        self, selection: dict[str, Any], source: np.ndarray, split: ValidationSplit, target: np.ndarray
    ) -> dict[str, Any]:
        """The validation gamma carried to the final model by ``eval.gamma_transfer`` (every rule's value is
        recorded). ``source``/``target``: scores (all classes) of the calibration model on its training images and
        of the final model on trainval; only training images are used, never test."""
        d = self.data
        src = seen_margins(source, split.seen_classes, split.unseen_classes)
        tgt = seen_margins(target, d.seen_classes, d.unseen_classes)
        gamma = float(selection["gamma"])
        candidates = {rule: transfer_gamma(gamma, src, tgt, rule) for rule in GAMMA_TRANSFERS}
        rule = self.cfg.eval.gamma_transfer
        return {
            **selection,
            "gamma_val": gamma,
            "gamma": candidates[rule],
            "gamma_transfer": rule,
            "gamma_candidates": candidates,
        }

    # ---- eval.report=release: the release's own (test-selected) protocol, run apart from the result
    def release_phase(self) -> dict[str, Any]:
        """Train on trainval for the full schedule (``train.epochs``) in ``release/``, test after every epoch and
        keep the release's bookkeeping (``release_selection``). Nothing here feeds the validation result: the
        calibration and final phases ran before, with their own engines and folders.

        ``release/metrics.jsonl`` logs the per-epoch TEST numbers under ``val/test_*`` (the engine prefixes every
        evaluation with ``val/``); ``release/best.safetensors`` is the test-selected model;
        ``release/test_scores/epoch_NNN.npy`` the per-epoch test scores (float32, rows = test_seen then
        test_unseen images, columns = all classes), for audit.
        """
        d, cfg = self.data, self.cfg
        phase_dir = self.run_dir / "release"
        labels = d.labels[self.test_idx]
        test_set = self.dataset(self.test_idx, train=False)

        def evaluate(model: nn.Module, epoch: int) -> dict[str, Any]:
            s = self.scores(model, test_set, f"testing (release protocol, epoch {epoch + 1})")
            if s.nbytes // 2 <= TEST_SCORES_LIMIT:  # the float32 copy
                with atomic_path(phase_dir / "test_scores" / f"epoch_{epoch:03d}.npy") as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, s.astype(np.float32))
            r = release_epoch_metrics(s, labels, d.seen_classes, d.unseen_classes)
            return {f"test_{k}": v for k, v in r.items()}

        model = self.build_model()  # same seed and init as the final phase: its run is a prefix of this one
        result = self.fit_phase(
            "release",
            model,
            self.dataset(d.trainval_loc, train=not cfg.features.cache),
            self.phase_loss(d.seen_classes),
            evaluate,
            cfg.train.epochs,
            d.labels[d.trainval_loc],
            select="test_H",
            train_cfg=dataclasses.replace(cfg.train, eval_every=1),  # the release tests after every epoch
        )
        keys = ("czsl_top1", "S", "U", "H", "gamma")
        per_epoch = [
            {"epoch": h["epoch"], **{k: h[f"val/test_{k}"] for k in keys}}
            for h in result.history
            if "val/test_H" in h
        ]
        schedule = self.release_schedule()
        if schedule.get("deviations_from_release"):
            log.warning(
                "eval.report=release: this run differs from the release's schedule in %s; the block reports the "
                "release's protocol on this schedule (attribute/mgmrn_<dataset>_release is the release as released)",
                schedule["deviations_from_release"],
            )
        return {
            "note": RELEASE_NOTE,
            "label": "test-selected (as the release reports)",
            **release_selection(per_epoch),
            "epochs_trained": cfg.train.epochs,
            "trained_on": "trainval_loc",
            "gamma_grid_step": 0.01,
            **schedule,
            "per_epoch": per_epoch,
        }

    def release_schedule(self) -> dict[str, Any]:
        """Whether this run trains as the release does (Mg-MRN only), and the keys where it does not."""
        cfg = self.cfg
        if cfg.model.name != "mgmrn":
            return {
                "schedule_as_released": None,
                "schedule_note": f"the release's reporting protocol applied to {cfg.model.name}; "
                "the release's schedule is Mg-MRN's",
            }
        dev: dict[str, Any] = {}
        for section, wanted in (("model", RELEASE_MODEL), ("train", RELEASE_TRAIN)):
            for key, value in wanted.items():
                have = getattr(getattr(cfg, section), key)
                if (list(have) if isinstance(have, (list, tuple)) else have) != value:
                    dev[f"{section}.{key}"] = have
        # AMP is only used on CUDA; the release trains in fp32
        if cfg.train.amp and self.device.type == "cuda":
            dev["train.amp"] = True
        return {"schedule_as_released": not dev, "deviations_from_release": dev}

    def fit_closed_form(self) -> Fitted:
        """Hyper-parameters and gamma chosen on the validation split; refit on trainval; test scores."""
        d, cfg = self.data, self.cfg
        torch.manual_seed(cfg.seed)  # a backbone without weights file is then the same random one every run
        method = self.model_entry.builder
        check_interface(method, self.model_entry)
        feats = self.pooled_features()
        A = d.class_attributes
        split = self.validation_split()
        best_h, params, chosen, calib_model = -1.0, {}, {}, None
        if split is not None:
            val_idx = np.concatenate([split.val_seen, split.val_unseen])
            lut = _index_map(split.seen_classes, d.n_classes).numpy()
            for cand in method.candidates(cfg.model):
                model = method(cfg.model, **cand).fit(
                    feats[split.train], lut[d.labels[split.train]], A[split.seen_classes]
                )
                scores = model.scores(feats[val_idx], A)
                g, res = self.gamma_on(scores, d.labels[val_idx], split.seen_classes, split.unseen_classes)
                if res.H > best_h:
                    best_h, params, calib_model = res.H, cand, model
                    chosen = {**cand, "gamma": g, "val_H": res.H, "val_S": res.S, "val_U": res.U}
        lut = _index_map(d.seen_classes, d.n_classes).numpy()
        model = method(cfg.model, **params).fit(
            feats[d.trainval_loc], lut[d.labels[d.trainval_loc]], A[d.seen_classes]
        )
        selection = chosen or model.params()
        if split is not None and calib_model is not None and cfg.eval.fixed_gamma() is None:
            selection = self.transfer(
                selection,
                calib_model.scores(feats[split.train], A),
                split,
                model.scores(feats[d.trainval_loc], A),
            )
        return Fitted(model, self._selection(selection), test_scores=model.scores(feats[self.test_idx], A))

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

    def _selection(self, selection: dict[str, Any]) -> dict[str, Any]:
        fixed = self.cfg.eval.fixed_gamma()
        gamma = fixed if fixed is not None else selection.get("gamma")
        if gamma is None:
            raise ValueError(
                "eval.gamma=val needs the validation (calibration) phase: set eval.calibrate=true"
            )
        return {"rule": self.selection_rule(), **selection, "gamma_used": float(gamma)}

    def selection_rule(self) -> str:
        e = self.cfg.eval
        if e.calibrate:
            first = (
                f"epoch chosen by GZSL H on validation (class split train_loc/val_loc; val-seen = "
                f"{self.spec.val_holdout:.0%} per-class hold-out of train_loc), final model retrained on trainval "
                "for that many epochs"
            )
        else:
            first = f"last epoch ({self.cfg.train.epochs})"
        second = {"val": "gamma = exact best on validation", "none": "gamma = 0"}.get(
            e.gamma, f"gamma {e.gamma}"
        )
        if e.gamma == "val" and e.calibrate:
            second += f", carried to the final model by the '{e.gamma_transfer}' rule (training images only)"
        level = ""
        if e.split == "val":
            level = "; VALIDATION LEVEL (eval.split=val): the 'test' numbers are on the validation classes"
        return f"{first}; {second}{level}"

    # ---- test, chance, artefacts
    def test(self, fitted: Fitted) -> Tested:
        d, e = self.data, self.cfg.eval
        scores = fitted.test_scores
        if scores is None:
            scores = self.scores(fitted.model, self.dataset(self.test_idx, train=False), "testing")
        labels = d.labels[self.test_idx]
        gamma = fitted.selection["gamma_used"]
        metrics = evaluate_attribute(
            scores, labels, d.seen_classes, d.unseen_classes, gamma, oracle=e.oracle, ausuc_mode=e.ausuc
        )
        oracle = {k: v for k, v in metrics.items() if k.startswith("oracle")}
        headline = {k: v for k, v in metrics.items() if not k.startswith("oracle")}
        extra: dict[str, Any] = {}
        if e.report == "release" and self._release is not None:
            extra["release_test_selected"] = self._release
            log.info("\n%s", self.release_table(headline, fitted.selection))
        elif e.report == "release" and self.model_entry.fit != "engine":
            extra["release_test_selected"] = {
                "note": f"not applicable: {self.cfg.model.name} has no training epochs to choose among "
                "(its test-swept gamma is in oracle_test_selected)"
            }
        return Tested(
            headline,
            scores=scores,
            oracle={
                "note": "gamma swept on the TEST set: comparison with papers only, not a result",
                **oracle,
            },
            extra=extra,
        )

    def release_table(self, metrics: dict[str, Any], selection: dict[str, Any]) -> str:
        """The validation block next to the release's test-selected one (printed at the end of the run)."""
        from unseen import report

        r = self._release or {}
        rows = [
            {
                "block": "validation-selected (the result)",
                **{k: metrics[k] for k in ("czsl_top1", "S", "U", "H")},
                "gamma": f"{selection['gamma_used']:.4g}",
                "epoch": f"{selection.get('epoch', '-')} (val)",
            },
            {
                "block": "test-selected (as the release reports)",
                **{k: r.get(k) for k in ("czsl_top1", "S", "U", "H")},
                "gamma": f"{r.get('gamma', float('nan')):.4g}",
                "epoch": f"T1 {r.get('czsl_top1_epoch')}, H {r.get('epoch')} (test)",
            },
        ]
        cols = (("block", "in %"), ("czsl_top1", "CZSL T1"), ("S", "S"), ("U", "U"), ("H", "H"))
        return report.format_table(
            rows,
            (*cols, ("gamma", "gamma"), ("epoch", "epoch (0-based)")),
            title=f"{self.cfg.model.name} on {self.data.dataset}: the test-selected row is chosen on the TEST "
            "set (the release's report), for comparison with the paper only",
        )

    def chance(self, tested: Tested, n_draws: int = 20) -> dict[str, float]:
        """Metrics of i.i.d. random scores (mean over draws): the floor every table is read against."""
        d = self.data
        labels, seen, unseen = d.labels[self.test_idx], d.seen_classes, d.unseen_classes
        czsl_labels = d.labels[d.test_unseen_loc]
        rng = np.random.default_rng(self.cfg.seed)
        C = int(max(labels.max(), seen.max(), unseen.max())) + 1
        acc = {"czsl_top1": 0.0, "S": 0.0, "U": 0.0, "H": 0.0}
        for _ in range(n_draws):
            r = gzsl_accuracy(rng.random((len(labels), C)), labels, seen, unseen, 0.0)
            acc["S"] += r.S / n_draws
            acc["U"] += r.U / n_draws
            acc["H"] += r.H / n_draws
            acc["czsl_top1"] += (
                czsl_accuracy(rng.random((len(czsl_labels), C)), czsl_labels, unseen) / n_draws
            )
        return acc

    def data_fingerprint(self, tested: Tested) -> str:
        d = self.data
        parts = [d.dataset, str(d.n_images), json.dumps(d.class_names)]
        for a in (d.trainval_loc, d.test_seen_loc, d.test_unseen_loc, d.labels, d.class_attributes):
            parts.append(short_hash(np.ascontiguousarray(a).tobytes()))
        return short_hash("|".join(parts))

    def save_model(self, fitted: Fitted) -> None:
        pass  # the final phase's engine already wrote final/last.safetensors

    def save_assets(self, fitted: Fitted) -> None:
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
                "image_size": self.spec.image_size,
            },
        )

    def plots(self, fitted: Fitted, tested: Tested, results: dict[str, Any]) -> None:
        from unseen import report

        d = self.data
        labels = d.labels[self.test_idx]
        if isinstance(fitted.model, nn.Module):
            self.plot_attention(fitted.model)
        sweep = gamma_sweep(tested.scores, labels, d.seen_classes, d.unseen_classes)
        grid = oracle_grid_sweep(tested.scores, labels, d.seen_classes, d.unseen_classes)
        report.plot_gamma_curve(
            sweep,
            fitted.selection["gamma_used"],
            grid.best,
            self.run_dir / "plots" / "gzsl_gamma_curve.png",
            title=f"{results['method']} on {d.dataset}: test S/U over gamma",
        )

    @torch.no_grad()
    def plot_attention(self, model: nn.Module, n_attributes: int = 4) -> None:
        """Per-level attention of the strongest attributes of an unseen-class test image (the papers' figure)."""

        from unseen import report

        d = self.data
        if self.cfg.features.cache or d.image_files is None or not len(d.test_unseen_loc):
            return
        try:
            i = int(d.test_unseen_loc[0])
            x = make_transforms(self.spec.image_size, train=False)(read_image(d.image_files[i]))
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

    # ---- finished runs
    @classmethod
    def load_model(cls, run_dir: Path, cfg: RunConfig) -> nn.Module:
        """The final model of a finished run (config.yaml + semantics + final weights)."""
        if get_model_entry(cfg.model.name, cls.setting).fit == "closed_form":
            raise ValueError(
                f"{cfg.model.name} runs keep no network weights; use `unseen eval` on its folder instead"
            )
        weights = run_dir / cls.weights_file
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: the run has no final weights (did it finish?)")
        sem = load_safetensors(run_dir / "semantics.safetensors")
        m = cfg.model
        if not cfg.features.cache:
            m.backbone_weights, m.pretrained = (
                None,
                False,
            )  # fine-tuned backbone weights come from the checkpoint
        model = create_model(m.name, m, "attribute", attribute_embeddings=sem.get("attribute_embeddings"))
        # frozen-backbone runs store the head only; the backbone comes from model.backbone_weights
        load_state_checked(model, weights, m.name, optional=("backbone.",) if cfg.features.cache else ())
        return model.eval()

    def load_fitted(self, selection: dict[str, Any]) -> Fitted:
        if self.model_entry.fit == "closed_form":  # the test scores were saved: nothing else to rebuild from
            scores = np.load(self.run_dir / "test_scores.npy").astype(np.float64)
            return Fitted(None, selection, test_scores=scores)
        model = type(self).load_model(self.run_dir, self.cfg)
        if self.cfg.features.cache:
            model.backbone = self._packed_backbone(model.backbone)
        return Fitted(model.to(self.device), selection)

    @classmethod
    def predictor(cls, run_dir: Path) -> Predictor:

        cfg = load_run_config(run_dir)
        model = cls.load_model(run_dir, cfg)
        sem = load_safetensors(run_dir / "semantics.safetensors")
        info = json.loads((run_dir / "classes.json").read_text())
        tf = make_transforms(info["image_size"], train=False)

        def scorer(keep: np.ndarray):
            attrs = sem["class_attributes"][torch.as_tensor(keep)]
            return lambda path: model(tf(read_image(path)).unsqueeze(0), attrs)["scores"][0]

        return Predictor(info["class_names"], sem["seen_classes"].tolist(), scorer)
