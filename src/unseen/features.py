"""Frozen-backbone feature caches with a provenance sidecar.

A cache is ``<name>.safetensors`` (one tensor ``features``: N x D, the backbone's outputs for N images,
flattened and concatenated) plus ``<name>.json`` recording what produced it: backbone name, a hash of its
weights, the transform, the image list (hash + count) and the output shapes. ``FeatureCache.load_or_build``
compares the sidecar with what the caller is about to compute; any difference rebuilds the cache (the stale
one is replaced atomically), so a cache is never silently reused for different inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unseen.io import atomic_write_json, load_safetensors, save_safetensors, short_hash

log = logging.getLogger("unseen")

CACHE_VERSION = 1


def state_dict_hash(module: nn.Module) -> str:
    """SHA-256 over the module's parameters and buffers (names, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def list_hash(items: Sequence[str]) -> str:
    return short_hash("\n".join(items), 16)


def provenance(
    backbone_name: str, backbone: nn.Module, transform: Any, image_files: Sequence[str], **extra: Any
) -> dict:
    return {
        "version": CACHE_VERSION,
        "backbone": backbone_name,
        "weights_sha256": state_dict_hash(backbone),
        "transform": repr(transform),
        "image_list_sha256": list_hash(list(image_files)),
        "n_images": len(image_files),
        **extra,
    }


class PackedMaps(nn.Module):
    """Stands in for a multi-scale backbone when its outputs are cached.

    Input: B x D rows of a feature cache (the maps flattened and concatenated); output: the list of maps with
    their original shapes, exactly as the backbone returned them. ``upto`` mirrors the backbone's partial forward.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], out_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.out_channels = tuple(out_channels or [s[0] for s in self.shapes])

    def forward(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        parts = torch.split(x.float(), self.sizes, dim=1)
        maps = [p.reshape(x.shape[0], *s) for p, s in zip(parts, self.shapes)]
        return maps if upto is None else maps[: upto + 1]


@torch.no_grad()
def extract(
    fn: Callable[[torch.Tensor], list[torch.Tensor] | torch.Tensor],
    dataset: Dataset,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress_desc: str = "extracting features",
) -> tuple[np.ndarray, list]:
    """Run ``fn`` over ``dataset`` (items ``(image, label)``); return N x D float32 rows and the map shapes."""
    from unseen.engine import progress

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    rows, shapes = [], None
    for images, _ in progress(loader, desc=progress_desc):
        out = fn(images.to(device))
        maps = out if isinstance(out, (list, tuple)) else [out]
        shapes = [tuple(m.shape[1:]) for m in maps]
        rows.append(torch.cat([m.flatten(1).float().cpu() for m in maps], dim=1).numpy())
    return np.concatenate(rows, 0), shapes or []


class FeatureCache:
    """``path`` without suffix; files ``path.safetensors`` and ``path.json``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tensor_file = self.path.with_suffix(".safetensors")
        self.sidecar = self.path.with_suffix(".json")

    def read_sidecar(self) -> dict | None:
        if not (self.sidecar.is_file() and self.tensor_file.is_file()):
            return None
        return json.loads(self.sidecar.read_text())

    def is_valid(self, expected: dict) -> tuple[bool, str]:
        found = self.read_sidecar()
        if found is None:
            return False, "no cache yet"
        diff = [k for k in expected if found.get(k) != expected[k]]
        if diff:
            return False, "stale cache: " + ", ".join(
                f"{k} {found.get(k)!r} != {expected[k]!r}" for k in diff
            )
        return True, "up to date"

    def load(self) -> tuple[np.ndarray, dict]:
        meta = self.read_sidecar()
        if meta is None:
            raise FileNotFoundError(f"{self.path}: no feature cache")
        feats = load_safetensors(self.tensor_file)["features"].numpy()
        if feats.shape[0] != meta["n_images"]:
            raise ValueError(
                f"{self.tensor_file}: {feats.shape[0]} rows but the sidecar says {meta['n_images']}"
            )
        return feats, meta

    def save(self, features: np.ndarray, meta: dict) -> None:
        # tensor first, sidecar last: a crash in between leaves a cache without a valid sidecar (rebuilt next time)
        if self.sidecar.exists():
            self.sidecar.unlink()
        save_safetensors(self.tensor_file, {"features": torch.from_numpy(np.ascontiguousarray(features))})
        atomic_write_json(self.sidecar, meta)

    def load_or_build(
        self, expected: dict, build: Callable[[], tuple[np.ndarray, list]]
    ) -> tuple[np.ndarray, dict]:
        ok, why = self.is_valid(expected)
        if ok:
            log.info("feature cache %s: %s", self.tensor_file, why)
            return self.load()
        log.info("feature cache %s: %s; building", self.tensor_file, why)
        feats, shapes = build()
        meta = dict(expected, shapes=[list(s) for s in shapes], dim=int(feats.shape[1]))
        self.save(feats, meta)
        return feats, meta
