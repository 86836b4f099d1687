"""Compositional datasets: a user's MIT-States / UT-Zappos / C-GQA copy in the czsl layout, and the embedded
compositional world with its small CLIP (read back through the czsl reader).

Builders return an :class:`unseen.task.Prepared` holding a :class:`CompositionalData`; the embedded world also
suggests its pretrained CLIP's weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unseen.compositional.data import (
    CZSLData,
    feasibility_scores,
    load_czsl,
    load_feasibility,
    load_glove_vectors,
)
from unseen.compositional.pretrain import CLIPPretrainConfig, pretrained_path, pretrained_tiny_clip
from unseen.config import ConfigError, build_dataclass, to_dict
from unseen.io import cache_root, single_process_cache
from unseen.registry import register_dataset
from unseen.shapes.common import recorded_fingerprints
from unseen.shapes.compositional_world import CompositionalWorldConfig, cached_compositional_world, world_key
from unseen.task import Prepared, require_weights


@dataclass
class CompositionalData:
    """A czsl dataset, the image size the user asked for, and the open-world feasibility scores."""

    czsl: CZSLData
    image_size: int  # data.image_size: 0 = the CLIP's input size; another value must equal it (checked)
    feasibility: np.ndarray | None  # (|A|*|O|,) in open-world order, or None (no open-world evaluation)


@dataclass
class CZSLConfig:
    """A user's copy of MIT-States, UT-Zappos or C-GQA in the czsl layout."""

    name: str = "czsl"
    root: str = ""  # <root>/images, <root>/compositional-split-natural/, <root>/metadata_compositional-split-natural.t7
    split: str = "compositional-split-natural"
    # A frozen CLIP reads images at its own input size only (fixed position embeddings), so the run always uses
    # it: 0 = that size; another value is an error unless it equals it (a check, e.g. when copying a paper's 224).
    image_size: int = 0
    feasibility: str = ""  # feasibility_<dataset>.pt ({'feasibility': tensor over OW pairs}), or
    glove: str = ""  # a GloVe text file (glove.6B.300d.txt) for CompCos feasibility; neither = no open world
    check_images: bool = True


@dataclass
class CompositionalShapesConfig:
    """The embedded compositional world (rendered, exported to the czsl layout, read back by the czsl reader)."""

    name: str = "shapes"
    root: str = ""  # default: $UNSEEN_CACHE/shapes-czsl-<hash>
    world: dict = field(default_factory=dict)  # CompositionalWorldConfig fields
    pretrain: dict = field(
        default_factory=dict
    )  # CLIPPretrainConfig fields (the tiny CLIP, train pairs only)


def check_image_size(requested: int, clip_size: int | None, arch: str) -> None:
    """``data.image_size`` against the CLIP's input size (``None``: not known yet, only the range is checked)."""
    if requested < 0:
        raise ConfigError(
            f"data.image_size: expected 0 (the CLIP's input size) or a size in pixels, got {requested}"
        )
    if requested and clip_size is not None and requested != clip_size:
        raise ConfigError(
            f"data.image_size={requested}: the frozen CLIP {arch} reads {clip_size}-pixel images only; "
            f"set data.image_size to {clip_size} or 0 (the CLIP's input size)"
        )


def clip_config_image_size(arch: str) -> int | None:
    """The input size of a CLIP architecture from its open_clip config, without building it (``None`` for names
    without a local config, e.g. ``hf-hub:`` ones, which open_clip would fetch)."""
    import open_clip

    from unseen.compositional.clip import register_tiny_configs

    register_tiny_configs()
    if arch not in open_clip.list_models():
        return None
    size = (open_clip.get_model_config(arch) or {}).get("vision_cfg", {}).get("image_size")
    if size is None:
        return None
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _feasibility(data: CZSLData, feasibility: str, glove: str) -> np.ndarray | None:
    if feasibility:
        return load_feasibility(feasibility, data.n_open_pairs)
    if glove:
        vectors = load_glove_vectors(glove, [*data.attrs, *data.objs])
        return feasibility_scores(data.attrs, data.objs, data.train_pairs, vectors)
    return None


@register_dataset("czsl", setting="compositional", config=CZSLConfig)
def prepare_czsl(cfg: CZSLConfig, model_cfg: Any = None) -> Prepared:
    """MIT-States / UT-Zappos / C-GQA from a czsl folder (pairs files + metadata .t7 + images)."""
    if not cfg.root:
        raise ValueError(
            "data.root: the dataset folder (with images/ and compositional-split-natural/) is required"
        )
    arch = getattr(model_cfg, "clip_arch", "")
    # refused before any data is read where the architecture's config gives its size (else when the CLIP is built)
    check_image_size(cfg.image_size, clip_config_image_size(arch) if cfg.image_size and arch else None, arch)
    if model_cfg is not None:
        require_weights(model_cfg, "clip_weights", f"CLIP {model_cfg.clip_arch}")
    data = load_czsl(cfg.root, cfg.split, check_images=cfg.check_images)
    if data.missing_images:
        raise FileNotFoundError(
            f"{cfg.root}: {len(data.missing_images)} images listed in the metadata are missing "
            f"(e.g. {data.missing_images[0]}); `unseen data check czsl --root {cfg.root}` lists them"
        )
    return Prepared(CompositionalData(data, cfg.image_size, _feasibility(data, cfg.feasibility, cfg.glove)))


@register_dataset("shapes", setting="compositional", config=CompositionalShapesConfig)
def prepare_shapes(cfg: CompositionalShapesConfig, model_cfg: Any = None) -> Prepared:
    """The embedded compositional world (small CLIP pretrained on its train pairs suggested as the weights).

    For a model on the world's small CLIP architecture without weights, it suggests that CLIP, pretrained on
    train-pair images and captions only."""

    wcfg = build_dataclass(CompositionalWorldConfig, cfg.world, "data.world")
    wcfg.validate()
    pcfg = build_dataclass(CLIPPretrainConfig, cfg.pretrain, "data.pretrain")  # checked before any rendering
    root = Path(cfg.root) if cfg.root else None
    if root is None:
        single_process_cache(
            cache_root() / f"shapes-czsl-{world_key(wcfg)}", cache_root(), "render the world"
        )
    root = cached_compositional_world(wcfg, root or "")
    weights = ""
    if model_cfg is None or getattr(model_cfg, "clip_arch", "") == pcfg.arch:
        single_process_cache(pretrained_path(root, pcfg), root, "pretrain the CLIP")
        weights = str(pretrained_tiny_clip(root, pcfg))
    data = load_czsl(root)
    return Prepared(
        # world.image_size is the rendering size; the CLIP reads the images at its own input size
        CompositionalData(data, 0, _feasibility(data, "", str(root / "glove.txt"))),
        suggestions={"clip_weights": weights} if weights else {},
        world={"world": to_dict(wcfg), "pretrain": to_dict(pcfg), **recorded_fingerprints(root)},
    )
