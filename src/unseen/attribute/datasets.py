"""Attribute datasets: a user's xlsa17 copy and the embedded ``shapes`` world (read back through the xlsa17 reader).

Builders return an :class:`unseen.task.Prepared` holding an :class:`AttributeData`; the embedded world also
suggests the weights of its pretrained CPU backbone (the stand-in for ImageNet weights).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unseen.attribute.data import ImageListDataset, XLSA17Data, load_xlsa17
from unseen.backbones import build_backbone, make_transforms
from unseen.config import TrainConfig, build_dataclass, to_dict
from unseen.engine import Engine
from unseen.io import cache_root, save_safetensors, short_hash, single_process_cache
from unseen.registry import register_dataset
from unseen.shapes import AttributeWorldConfig, export_attribute_world
from unseen.shapes.common import recorded_fingerprints
from unseen.task import Prepared, require_weights

log = logging.getLogger("unseen")


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
class AttributeShapesConfig:
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
class AttributeData:
    """An xlsa17 dataset and how the run reads it."""

    splits: XLSA17Data
    image_size: int
    val_holdout: float  # per-class fraction of train_loc held out as val-seen


@register_dataset("xlsa17", setting="attribute", config=XLSA17Config)
def prepare_xlsa17(cfg: XLSA17Config, model_cfg: Any = None) -> Prepared:
    """xlsa17 proposed splits (CUB, SUN, AWA2, AWA1, APY) from a user's copy: att_splits.mat + images."""
    if not cfg.root:
        raise ValueError(
            "data.root: the folder holding att_splits.mat is required (data.root=/path/to/xlsa17/CUB)"
        )
    if model_cfg is not None and getattr(model_cfg, "backbone", "") != "res101.mat":
        require_weights(model_cfg, "backbone_weights", f"{model_cfg.backbone} backbone")
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
    return Prepared(AttributeData(data, cfg.image_size, cfg.val_holdout))


@register_dataset("shapes", setting="attribute", config=AttributeShapesConfig)
def prepare_shapes(cfg: AttributeShapesConfig, model_cfg: Any = None) -> Prepared:
    """The embedded attribute world (rendered, exported to the xlsa17 layout, read back by the xlsa17 reader);
    for a model on the CPU backbone without weights, suggests the backbone pretrained on the world's own
    pretraining species."""

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
    return Prepared(
        AttributeData(data, world_cfg.image_size, cfg.val_holdout),
        suggestions={"backbone_weights": weights} if weights else {},
        world={**to_dict(world_cfg), **recorded_fingerprints(root)},
    )


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
