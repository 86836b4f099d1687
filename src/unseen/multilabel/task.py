"""Multi-label ZSL: the run protocol's multi-label hooks (BiAM-layout features -> model -> engine -> masked metrics).

After every epoch the model scores the validation images on the **seen** labels and the epoch with the best
``select_metric`` (NUS-WIDE: F1@5) is kept. With ``data.refit: none`` that checkpoint is tested once; with
``data.refit: retrain`` a fresh model (same seed and initialisation) then trains on all training images (train +
validation names, same filter) for the chosen number of epochs in ``refit/``, and that model is the one tested and
saved. The learning-rate schedule is laid over the refit's own length (as for any run of that many epochs). ZSL
scores the unseen label embeddings only; GZSL scores seen and unseen jointly. Every model here scores each label
independently of the others, so the ZSL matrix is the unseen columns of the GZSL one. The test set never chooses
anything.

``data.biam_compat`` (Open Images) adds, apart from the metrics, the BiAM lineage's pooled mAP
(:func:`unseen.multilabel.metrics.biam_pooled_map`): the only Open Images mAP that BiAM-lineage papers' numbers can be compared with.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unseen.config import EvalConfig, RunConfig, load_run_config
from unseen.engine import LossFn, load_state_checked, progress
from unseen.io import atomic_write_json, load_safetensors, save_safetensors, short_hash
from unseen.multilabel.datasets import MultilabelData, dataset_labels
from unseen.multilabel.metrics import biam_pooled_map, evaluate_multilabel, mean_average_precision
from unseen.registry import create_model, register_task
from unseen.task import DemoSpec, Fitted, Predictor, Task, Tested

log = logging.getLogger("unseen")


class MultilabelModel:
    """What the multi-label protocol calls on a model.

    ``model(features B x T x C, label_embeddings L x D, cls B x C or None)`` -> dict with ``scores`` (B x L);
    ``model.loss(out, labels B x L in {-1, 0, 1}, label_embeddings)`` -> (loss, logs). Built as
    ``create_model(name, cfg, "multilabel", in_dim=C, n_tokens=T, embed_dim=D)``.
    """

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cls: torch.Tensor | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def loss(self, out: dict[str, Any], labels: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


def _unpack(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x, y = batch[0].to(device), batch[1].to(device)
    cls = batch[2].to(device) if len(batch) > 2 else None
    return x, y, cls


def _both(
    scores: np.ndarray,
    labels: np.ndarray,
    n_seen: int,
    ks: tuple[int, ...],
    image_filter: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for space, cols in (("zsl", slice(n_seen, None)), ("gzsl", slice(None))):
        r = evaluate_multilabel(scores[:, cols], labels[:, cols], ks=ks, image_filter=image_filter)
        for k, v in r.items():
            if k in ("mAP", "n_excluded", "n_images") or k.startswith(("P@", "R@", "F1@")):
                out[f"{space}/{k}"] = float(v) if k not in ("n_excluded", "n_images") else int(v)
    return out


@register_task
class MultilabelTask(Task):
    """One multi-label method on one dataset (protocol: module docstring)."""

    setting: ClassVar[str] = "multilabel"
    sections: ClassVar[dict[str, type]] = {"eval": EvalConfig}
    demo = DemoSpec(
        methods=("demo_epsilon", "demo_biam", "demo_global_linear"),
        title=(
            "embedded multi-label benchmark: mAP and overall F1@K in %, epoch chosen on validation F1 (seen labels); "
            "ZSL = unseen labels only, GZSL = seen + unseen scored jointly"
        ),
        columns=(
            ("method", "method"),
            ("zsl/mAP", "ZSL mAP"),
            ("zsl/F1@3", "F1@3"),
            ("zsl/F1@5", "F1@5"),
            ("gzsl/mAP", "GZSL mAP"),
            ("gzsl/F1@3", "F1@3 "),
            ("gzsl/F1@5", "F1@5 "),
            ("time", "time"),
        ),
        footer="Epsilon-R = our reconstruction of Epsilon (no public code); BiAM with a mean-region global feature.",
    )

    def setup(self, data: MultilabelData) -> None:
        self.data = d = data
        self.select_key = d.select_metric  # type: ignore[misc]
        self.emb = torch.as_tensor(d.embeddings, dtype=torch.float32)
        self.n_seen = d.labels.n_seen
        self._val_labels: np.ndarray | None = None
        if len(d.val) == 0:
            raise ValueError("the validation split is empty (data.val_fraction): the epoch cannot be chosen")

    def dataset_name(self) -> str:
        return self.data.labels.dataset if self.cfg.data.name != "shapes" else "shapes"

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

    def train_set(self) -> Dataset:
        return self.data.train

    def loss_fn(self) -> LossFn:
        seen_emb = self.emb[: self.n_seen].to(self.device)

        def loss_fn(model: nn.Module, batch: Any, sub: Any) -> tuple[torch.Tensor, dict[str, float]]:
            x, y, cls = _unpack(batch, self.device)
            return model.loss(model(x, seen_emb, cls), y, seen_emb)

        return loss_fn

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        d = self.data
        if self._val_labels is None:
            self._val_labels = dataset_labels(d.val)
        s = self.scores(model, d.val, self.emb[: self.n_seen], "validating")
        r = evaluate_multilabel(s, self._val_labels, ks=d.ks, image_filter=d.image_filter)
        return {k: float(v) for k, v in r.items() if k == "mAP" or k.startswith(("P@", "R@", "F1@"))}

    def selection_rule(self) -> str:
        rule = (
            f"epoch with the best validation {self.data.select_metric} on the seen labels "
            f"(last {getattr(self.cfg.data, 'val_fraction', 0):.0%} of the training names)"
        )
        if self.data.refit == "retrain":
            rule += (
                "; a fresh model then retrained on all training images (train + validation names) for that many "
                "epochs"
            )
        return rule + "; tested once"

    def fit(self) -> Fitted:
        """The core protocol (epoch chosen on validation), then the refit of ``data.refit: retrain``."""
        fitted = super().fit()
        d = self.data
        if d.refit == "none" or self.model_entry.fit != "engine":
            return fitted
        if d.train_all is None:
            raise ValueError("data.refit=retrain: the dataset did not build the all-training-images set")
        epochs = int(fitted.selection["epoch"]) + 1
        model = self.build_model()
        self.fit_phase("refit", model, d.train_all, self.loss_fn(), None, epochs)
        refit = {
            "rule": "retrained from scratch on all training images for the validation-chosen number of epochs; "
            "this model is the one tested",
            "epochs": epochs,
            "images": len(d.train_all),
            "images_validation_run": len(d.train),
            "folder": "refit",
        }
        return Fitted(model, {**fitted.selection, "refit": refit})

    @torch.no_grad()
    def scores(self, model: nn.Module, ds: Dataset, emb: torch.Tensor, desc: str) -> np.ndarray:
        """N x L float32 scores of ``ds``'s images against the label embeddings ``emb`` (L x D)."""
        model.eval()
        emb = emb.to(self.device)
        out = []
        for batch in progress(DataLoader(ds, batch_size=self.cfg.eval.batch_size), desc=desc):
            x, _, cls = _unpack(batch, self.device)
            out.append(model(x, emb, cls)["scores"].float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(emb)), np.float32)

    def test(self, fitted: Fitted) -> Tested:
        d = self.data
        labels = dataset_labels(d.test)
        scores = self.scores(fitted.model, d.test, self.emb, "testing")
        metrics = _both(scores, labels, self.n_seen, d.ks, d.image_filter)
        sidecar = Path(d.feature_sidecar) if d.feature_sidecar else None
        features = json.loads(sidecar.read_text()) if sidecar and sidecar.is_file() else None
        extra = {"label_space": {"n_seen": self.n_seen, "n_unseen": d.labels.n_unseen}, "features": features}
        if d.biam_compat:
            extra["biam_compat"] = {
                "note": BIAM_POOLED_NOTE,
                **{
                    f"zsl/{k}": v
                    for k, v in biam_pooled_map(scores[:, self.n_seen :], labels[:, self.n_seen :]).items()
                },
                **{
                    f"gzsl/{k}": v
                    for k, v in biam_pooled_map(scores, labels, drop_unannotated_labels=True).items()
                },
            }
        return Tested(metrics, scores=scores, extra=extra, detail=labels)

    def chance(self, tested: Tested, n_draws: int = 5) -> dict[str, float]:
        """ZSL/GZSL metrics of i.i.d. random scores (mean over draws)."""
        labels, d = tested.detail, self.data
        rng = np.random.default_rng(self.cfg.seed)
        acc: dict[str, float] = {}
        for _ in range(n_draws):
            s = rng.random(labels.shape, dtype=np.float32)
            for k, v in _both(s, labels, self.n_seen, d.ks, d.image_filter).items():
                acc[k] = acc.get(k, 0.0) + v / n_draws
        return acc

    def data_fingerprint(self, tested: Tested) -> str:
        d = self.data
        return short_hash(json.dumps(d.labels.names) + str(len(d.test)) + short_hash(tested.detail.tobytes()))

    def save_assets(self, fitted: Fitted) -> None:
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

    def plots(self, fitted: Fitted, tested: Tested, results: dict[str, Any]) -> None:
        from unseen import report

        d, scores, labels = self.data, tested.scores, tested.detail
        names = d.labels.display_names
        zsl_ap = mean_average_precision(
            scores[:, self.n_seen :], labels[:, self.n_seen :], image_filter=d.image_filter
        )["per_class"]
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

    # ---- finished runs
    @classmethod
    def load_model(cls, run_dir: Path, cfg: RunConfig) -> nn.Module:
        """The selected model of a finished run (config.yaml + labels.json + semantics + model.safetensors)."""
        info = json.loads((run_dir / "labels.json").read_text())
        emb = load_safetensors(run_dir / "semantics.safetensors")["label_embeddings"]
        weights = run_dir / cls.weights_file
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
        load_state_checked(model, weights, cfg.model.name)
        return model.eval()

    @classmethod
    def predictor(cls, run_dir: Path) -> Predictor:
        """Ranked labels for image files: features from the extractor recorded in the run's feature sidecar."""
        from unseen.multilabel.extract import load_extractor

        info = json.loads((run_dir / "labels.json").read_text())
        if not info.get("feature_sidecar"):
            raise ValueError(
                f"{run_dir}: the run's features have no provenance sidecar, so the extractor that made them "
                "is unknown; predict needs it to turn images into features"
            )
        model = cls.load_model(run_dir, load_run_config(run_dir))
        emb = load_safetensors(run_dir / "semantics.safetensors")["label_embeddings"]
        extractor = load_extractor(info["feature_sidecar"])

        def scorer(keep: np.ndarray):
            kept = emb[torch.as_tensor(keep)]

            def score(path: str) -> torch.Tensor:
                x, cls_token = extractor([path])
                return model(x, kept, cls_token)["scores"][0]

            return score

        return Predictor(info["display_names"], list(range(info["n_seen"])), scorer)


BIAM_POOLED_NOTE = (
    "the BiAM lineage's Open Images mAP (akshitac8/BiAM util_openimages.compute_AP): for each label, the AP of all "
    "annotated (image, label) entries of the images annotated for it, pooled over labels; labels without an "
    "annotated image count 0; only images with a positive; GZSL over the labels annotated in them. Not a "
    "per-class AP: not comparable with metrics' mAP, comparable only with BiAM-lineage Open Images numbers"
)


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
