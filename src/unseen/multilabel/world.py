"""The multi-label demo benchmark: the embedded world plus a feature extractor trained on its seen labels only.

:func:`prepare_multilabel_world` renders the multi-label world (:mod:`unseen.shapes.multilabel_world`, cached under
``$UNSEEN_CACHE``), trains the demo's small CNN on the seen labels of the training images only
(:func:`train_seen_extractor`, :class:`SeenExtractorConfig`) and extracts ``nus_wide_train.h5`` /
``nus_wide_test.h5`` with it through :func:`unseen.multilabel.extract.extract_h5`, so that the BiAM reader sees the
world exactly as it sees NUS-WIDE. The world itself depends on no setting; this module is where the multi-label
setting meets it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from unseen.backbones import IMAGENET_MEAN, IMAGENET_STD, TinyBackbone
from unseen.config import build_dataclass
from unseen.engine import progress
from unseen.features import list_hash
from unseen.io import (
    atomic_write_json,
    file_sha256,
    read_image,
    safe_pickle_load,
    save_safetensors,
    short_hash,
    single_process_cache,
)
from unseen.multilabel.extract import build_extractor, extract_h5, sidecar_path
from unseen.multilabel.metrics import mean_average_precision
from unseen.shapes.common import load_world_meta
from unseen.shapes.multilabel_world import (
    CONCEPTS_FILE,
    GLOVE_FILE,
    IMAGE_DIR,
    TAGS_FILE,
    TEST_NAMES_FILE,
    TRAIN_NAMES_FILE,
    MultilabelWorldConfig,
    default_world_root,
    export_multilabel_world,
)

log = logging.getLogger("unseen")

EXTRACTOR_VERSION = "seen-extractor/1"
TRAIN_H5 = "nus_wide_train.h5"
TEST_H5 = "nus_wide_test.h5"


@dataclass
class SeenExtractorConfig:
    """The demo's feature extractor: the tiny CPU CNN (:class:`unseen.backbones.TinyBackbone`, C5 = a 7 x 7 grid at
    112 px) trained on the seen tags of the *training* names only (the first ``1 - val_fraction`` of them: the
    validation names are held out too), never on test images or unseen labels. Loss: masked binary cross-entropy
    (0 = unknown ignored) on per-label scores = log-sum-exp pooling (sharpness ``lse_r``) of a 1x1-conv classifier over
    the C5 regions. AdamW, cosine schedule, horizontal flips."""

    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    epochs: int = 16
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 1e-4
    lse_r: float = 8.0
    seed: int = 0


def _load_images(image_root: Path, names: list[str]) -> np.ndarray:
    """N x H x W x 3 uint8 array of the named images."""
    out = []
    for n in names:
        out.append(np.asarray(read_image(image_root / n), dtype=np.uint8))
    return np.stack(out)


def train_seen_extractor(
    world_root: str | os.PathLike[str], ecfg: SeenExtractorConfig, out_path: str | os.PathLike[str]
) -> dict[str, Any]:
    """Train the demo CNN on the world's training names (seen tags only) and save its backbone weights (safetensors,
    atomically, ``TinyBackbone`` key names) to ``out_path``. Returns a summary (losses per epoch, the classifier's
    mAP on the held-out validation names' seen tags)."""
    root = Path(world_root)
    meta = load_world_meta(root)
    cfg = build_dataclass(MultilabelWorldConfig, meta["config"], f"{root / 'world.json'}: config")
    names = safe_pickle_load(root / TRAIN_NAMES_FILE)["img_names"]
    labels = np.load(root / "train_labels.npy")
    n_fit = int(round(len(names) * (1.0 - cfg.val_fraction)))
    t0 = time.perf_counter()
    images = torch.from_numpy(_load_images(root / IMAGE_DIR, names)).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels.astype(np.float32))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def prep(idx: torch.Tensor) -> torch.Tensor:
        return (images[idx].float() / 255.0 - mean) / std

    torch.manual_seed(ecfg.seed)
    backbone = TinyBackbone(ecfg.widths)
    head = torch.nn.Conv2d(backbone.out_channels[-1], labels.shape[1], 1)
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=ecfg.lr, weight_decay=ecfg.weight_decay)
    steps = ecfg.epochs * math.ceil(n_fit / ecfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=ecfg.lr, total_steps=max(steps, 1), pct_start=0.15
    )
    gen = torch.Generator().manual_seed(ecfg.seed)

    def scores(x: torch.Tensor) -> torch.Tensor:
        z = head(backbone(x)[-1]).flatten(2)  # B x L x regions
        r = ecfg.lse_r
        return (torch.logsumexp(r * z, dim=2) - math.log(z.shape[2])) / r

    history = []
    for epoch in progress(range(ecfg.epochs), desc="training the demo extractor (seen labels)"):
        backbone.train()
        head.train()
        perm = torch.randperm(n_fit, generator=gen)
        total, count = 0.0, 0
        for b in range(0, n_fit, ecfg.batch_size):
            idx = perm[b : b + ecfg.batch_size]
            x = prep(idx)
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(3)
            t = y[idx]
            mask = (t != 0).float()
            loss = (
                F.binary_cross_entropy_with_logits(scores(x), (t + 1) / 2, reduction="none") * mask
            ).sum() / mask.sum().clamp_min(1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        history.append({"epoch": epoch + 1, "loss": total / max(count, 1)})
    backbone.eval()
    head.eval()
    val_map = None
    if n_fit < len(names):
        with torch.no_grad():
            idx = torch.arange(n_fit, len(names))
            s = torch.cat([scores(prep(idx[i : i + 256])) for i in range(0, len(idx), 256)]).numpy()
        val_map = float(mean_average_precision(s, labels[n_fit:])["mAP"])
    spec = json.dumps({"version": EXTRACTOR_VERSION, **asdict(ecfg)}, sort_keys=True)
    save_safetensors(out_path, backbone.state_dict(), metadata={"spec": spec, "world": meta["fingerprint"]})
    return {
        "spec": json.loads(spec),
        "world_fingerprint": meta["fingerprint"],
        "fit_images": n_fit,
        "history": history,
        "val_seen_mAP": val_map,
        "seconds": time.perf_counter() - t0,
    }


def _weights_spec(path: Path) -> tuple[str | None, str | None]:
    """(spec, world fingerprint) recorded in a saved extractor, or (None, None) if there is no readable file."""
    if not path.is_file():
        return None, None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        return md.get("spec"), md.get("world")
    except Exception:
        return None, None


def _h5_is_current(h5: Path, weights: Path, names: list[str], image_size: int) -> tuple[bool, str]:
    side = sidecar_path(h5)
    if not (h5.is_file() and side.is_file()):
        return False, "missing"
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except ValueError:
        return False, "unreadable sidecar"
    expected = {
        "backbone": "tiny",
        "resolution": image_size,
        "image_list_sha256": list_hash(names),
        "weights_file_sha256": file_sha256(weights),
    }
    diff = [k for k, v in expected.items() if meta.get(k) != v]
    return (not diff), ("stale: " + ", ".join(diff)) if diff else "current"


def prepare_multilabel_world(
    cfg: MultilabelWorldConfig | None = None,
    root: str | os.PathLike[str] | None = None,
    extractor: SeenExtractorConfig | None = None,
    *,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Build whatever is missing of the demo benchmark and return its paths; reuse what is current.

    1. the world (:func:`~unseen.shapes.multilabel_world.export_multilabel_world`) at ``root`` (default
       :func:`~unseen.shapes.multilabel_world.default_world_root`);
    2. ``features-<hash>/extractor.safetensors``: the tiny CNN trained on seen labels (:func:`train_seen_extractor`),
       keyed by the extractor config and the world's fingerprint;
    3. ``features-<hash>/nus_wide_train.h5`` (seen tags) and ``nus_wide_test.h5`` (``labels`` = [seen | unseen],
       ``labels_81`` = unseen) with their provenance sidecars, through
       :func:`unseen.multilabel.extract.extract_h5`; a feature file whose sidecar does not match the current
       weights, image list or resolution is rebuilt.

    Returns ``root``, ``image_root``, ``tags``, ``concepts``, ``glove``, ``train_names``, ``test_names``,
    ``train_h5``, ``test_h5``, ``train_sidecar``, ``test_sidecar``, ``extractor_weights``, ``world_json`` (Paths),
    ``world`` (world.json minus the file list), ``extractor`` (the training summary) and ``timings`` (seconds per
    stage; 0 when cached).
    """
    cfg = cfg or MultilabelWorldConfig()
    ecfg = extractor or SeenExtractorConfig()
    root = Path(root) if root else default_world_root(cfg)
    timings = {"world": 0.0, "extractor": 0.0, "features": 0.0}
    single_process_cache(root / "world.json", root.parent, "render the multi-label world")
    t = time.perf_counter()
    fresh = not (root / "world.json").is_file()
    if fresh:
        log.info("rendering the multi-label world (%d + %d images) into %s", cfg.n_train, cfg.n_test, root)
    export_multilabel_world(root, cfg)
    if fresh:
        timings["world"] = time.perf_counter() - t
    meta = load_world_meta(root)
    spec = json.dumps({"version": EXTRACTOR_VERSION, **asdict(ecfg)}, sort_keys=True)
    fdir = root / f"features-{short_hash(spec + meta['fingerprint'])}"
    weights = fdir / "extractor.safetensors"
    summary_path = fdir / "extractor.json"
    found_spec, found_world = _weights_spec(weights)
    if found_spec != spec or found_world != meta["fingerprint"] or not summary_path.is_file():
        single_process_cache(summary_path, root.parent, "train the demo feature extractor")
        log.info("training the demo feature extractor on the seen labels of %d training images", cfg.n_train)
        t = time.perf_counter()
        summary = train_seen_extractor(root, ecfg, weights)
        atomic_write_json(summary_path, summary)
        timings["extractor"] = time.perf_counter() - t
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    ns = meta["counts"]["seen"]
    train_names = safe_pickle_load(root / TRAIN_NAMES_FILE)["img_names"]
    test_names = safe_pickle_load(root / TEST_NAMES_FILE)
    train_labels = np.load(root / "train_labels.npy")
    test_labels = np.load(root / "test_labels.npy")
    ext = None
    t = time.perf_counter()
    for h5, names, items in (
        (fdir / TRAIN_H5, train_names, lambda: [(n, train_labels[i]) for i, n in enumerate(train_names)]),
        (
            fdir / TEST_H5,
            test_names,
            lambda: [
                (n, {"labels": test_labels[i], "labels_81": test_labels[i, ns:]})
                for i, n in enumerate(test_names)
            ],
        ),
    ):
        ok, why = _h5_is_current(h5, weights, names, cfg.image_size)
        if ok:
            continue
        if why != "missing":
            log.info("%s: %s; extracting again", h5, why)
        single_process_cache(sidecar_path(h5), root.parent, "extract the demo features")
        ext = ext or build_extractor("tiny", weights, cfg.image_size, tiny_widths=ecfg.widths)
        extract_h5(root / IMAGE_DIR, items(), h5, extractor=ext, batch_size=batch_size, overwrite=True)
    if ext is not None:
        timings["features"] = time.perf_counter() - t
    info = {k: v for k, v in meta.items() if k != "files"}
    return {
        "root": root,
        "image_root": root / IMAGE_DIR,
        "tags": root / TAGS_FILE,
        "concepts": root / CONCEPTS_FILE,
        "glove": root / GLOVE_FILE,
        "train_names": root / TRAIN_NAMES_FILE,
        "test_names": root / TEST_NAMES_FILE,
        "train_h5": fdir / TRAIN_H5,
        "test_h5": fdir / TEST_H5,
        "train_sidecar": sidecar_path(fdir / TRAIN_H5),
        "test_sidecar": sidecar_path(fdir / TEST_H5),
        "extractor_weights": weights,
        "world_json": root / "world.json",
        "world": info,
        "extractor": summary,
        "timings": timings,
    }
