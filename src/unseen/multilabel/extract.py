"""Region features from images into the BiAM h5 layout, as BiAM extracts them (the backend of ``unseen
extract``).

:func:`extract_h5` runs a frozen backbone over a list of images and writes, per image, ``<name>-features`` float32
``(C, N)`` = channels x regions (row-major over the H x W grid), its label vector(s) as int8 (``<name>-labels`` or
one dataset per suffix of a mapping) and, for a ViT, the class token as float32 ``<name>-cls`` ``(C,)``. Names are
the images' relative paths through :func:`unseen.multilabel.data.h5_name` (``/`` -> ``_``). Next to the file,
``<file>.json`` records the provenance: backbone, layer, a hash of the weights (and of the weights file), the
resolution, the transform, a hash of the image list, the feature shape. The h5 file is written atomically, the
sidecar after it; an existing output is never overwritten unless ``overwrite=True``.

Backbones (no download ever happens here; weights come from local files through
:func:`unseen.backbones.load_weights`, otherwise the network is randomly initialised):

* ``vgg19``: torchvision VGG-19 ``features`` up to conv5_4 + ReLU (512 x 14 x 14 at 224 px). BiAM's transform:
  bilinear resize to ``image_size`` x ``image_size`` (no crop), ImageNet mean/std.
* ``vit`` (= ``vit:vit_base_patch16_224``) or ``vit:<timm model name>``: timm ViT, the patch tokens after the final
  norm (N = 196, C = 768 for ViT-B/16 at 224) plus the CLS token; same resize, the model's own mean/std.
* ``tiny``: the small CPU ResNet of :mod:`unseen.backbones` (its C5 map after ReLU; ``tiny_widths``), ImageNet
  mean/std: the demo's extractor.

:func:`load_extractor` rebuilds the extractor a feature file was made with from its sidecar (``unseen predict``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unseen.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_feature_extractor,
    load_weights,
)
from unseen.features import provenance, state_dict_hash
from unseen.io import DataFormatError, atomic_write_json, file_sha256, load_npy, read_image
from unseen.multilabel.data import h5_name, write_biam_h5

DEFAULT_VIT = "vit_base_patch16_224"
SIDECAR_VERSION = 1


def sidecar_path(h5_path: str | os.PathLike[str]) -> Path:
    """The provenance sidecar of a feature file: ``<file>.json`` (``nus_wide_train.h5`` -> ``nus_wide_train.h5.json``)."""
    p = Path(h5_path)
    return p.with_name(p.name + ".json")


# --------------------------------------------------------------------------------------------- extractors
@dataclass
class Extractor:
    """A frozen backbone that turns a batch of normalised images (B x 3 x S x S) into region tokens.

    ``__call__(x)`` -> ``(tokens (B, N, C) float32, cls (B, C) float32 or None)``; N = H x W regions, row-major."""

    name: str  # canonical backbone name: vgg19 | tiny | vit:<timm model>
    module: nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layer: str  # which activations the tokens are
    options: dict[str, Any] = field(default_factory=dict)  # what else rebuilds it (tiny_widths, ...)
    weights_file: str | None = None

    @property
    def transform(self) -> Any:
        """The preprocessing as a torchvision transform (PIL image -> normalised tensor): bilinear resize to
        image_size x image_size (no crop), /255, mean/std. Extraction applies it as :meth:`load_image` per image
        then :meth:`normalize` per batch, which is the same computation."""
        from torchvision import transforms as T

        return T.Compose(
            [
                T.Resize((self.image_size, self.image_size), interpolation=T.InterpolationMode.BILINEAR),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def load_image(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """uint8 tensor 3 x S x S: the RGB image resized (PIL bilinear) to image_size x image_size."""
        from PIL import Image

        img = read_image(path).resize((self.image_size, self.image_size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S uint8 -> float32 (x / 255 - mean) / std."""
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x.float() / 255.0 - mean) / std

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.module.eval()
        if self.name.startswith("vit:"):
            out = self.module.forward_features(x)  # B x (prefix + N) x C, after the final norm
            k = int(getattr(self.module, "num_prefix_tokens", 1))
            return out[:, k:].float(), out[:, 0].float()
        fmap = self.module(x)  # B x C x H x W
        return fmap.flatten(2).transpose(1, 2).float(), None


def _canonical(backbone: str) -> str:
    b = backbone.strip()
    if b == "vit":
        return f"vit:{DEFAULT_VIT}"
    if b in ("vgg19", "tiny") or (b.startswith("vit:") and len(b) > 4):
        return b
    raise ValueError(
        f"unknown extraction backbone {backbone!r}; expected one of vgg19, tiny, vit or vit:<timm model>"
    )


def build_extractor(
    backbone: str = "vgg19",
    weights: str | os.PathLike[str] | None = None,
    image_size: int = 224,
    *,
    tiny_widths: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
) -> Extractor:
    """An :class:`Extractor` (eval mode, on ``device``). ``weights``: a local file, else random initialisation."""
    name = _canonical(backbone)
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
    wfile = str(Path(weights).resolve()) if weights else None
    options: dict[str, Any] = {}
    if name == "vgg19":
        module = build_feature_extractor("vgg19", weights)
        mean, std, layer = IMAGENET_MEAN, IMAGENET_STD, "VGG-19 conv5_4 after ReLU (features[:36])"
    elif name == "tiny":
        widths = [int(w) for w in (tiny_widths or (32, 64, 128))]
        options["tiny_widths"] = widths
        module = build_feature_extractor("tiny", weights, tiny_widths=widths)
        mean, std, layer = IMAGENET_MEAN, IMAGENET_STD, "tiny CNN C5 (layer4) after ReLU"
    else:
        import timm

        model_name = name[4:]
        try:
            module = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=image_size)
        except Exception as exc:  # unknown name, or a model without img_size
            raise ValueError(f"timm cannot build {model_name!r} at {image_size} px: {exc}") from exc
        if weights:
            load_weights(module, weights, ignore=("head.", "fc."))  # timm classifier head: not used
        cfg = getattr(module, "pretrained_cfg", {}) or {}
        mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))  # type: ignore[assignment]
        std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))  # type: ignore[assignment]
        layer = f"timm {model_name} patch tokens after the final norm (+ CLS)"
        options["timm_model"] = model_name
    module.eval().to(device)
    for p in module.parameters():
        p.requires_grad_(False)
    return Extractor(name, module, int(image_size), tuple(mean), tuple(std), layer, options, wfile)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- images
class _ImageFiles(Dataset):
    """uint8 images (3 x S x S, resized by the extractor); a missing or unreadable file names itself."""

    def __init__(self, root: Path, rels: Sequence[str], extractor: Extractor) -> None:
        self.root, self.rels, self.extractor = root, list(rels), extractor

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.root / self.rels[i]
        try:
            return self.extractor.load_image(path)
        except FileNotFoundError:
            raise DataFormatError(f"{path}: image not found (item {i}: {self.rels[i]!r})") from None
        except Exception as exc:
            raise DataFormatError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def _check_images(root: Path, rels: Sequence[str]) -> None:
    missing = [r for r in rels if not (root / r).is_file()]
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DataFormatError(
            f"{root}: {len(missing)} of {len(rels)} images not found: "
            f"{', '.join(repr(m) for m in missing[:5])}{more}"
        )


# --------------------------------------------------------------------------------------------- extract
def extract_h5(
    image_root: str | os.PathLike[str],
    items: Sequence[tuple[str, Any]],
    out_path: str | os.PathLike[str],
    *,
    backbone: str = "vgg19",
    weights: str | os.PathLike[str] | None = None,
    image_size: int = 224,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    tiny_widths: Sequence[int] | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
    compression: str | None = "gzip",
    extractor: Extractor | None = None,
    progress_desc: str | None = None,
) -> Path:
    """Extract region features of ``items`` into a BiAM-layout h5 file ``out_path`` (+ ``<out_path>.json``).

    ``items``: ``(relative image path under image_root, labels)``; ``labels`` is a vector in {-1, 0, +1} stored as
    ``<name>-labels`` int8, or a mapping ``{suffix: vector}`` stored as ``<name>-<suffix>`` (NUS test files:
    ``{"labels": [seen | unseen], "labels_81": unseen}``; Open Images: ``seenlabels`` / ``unseenlabels``).
    ``backbone`` / ``weights`` / ``image_size`` / ``tiny_widths``: see the module docstring (or pass a built
    ``extractor``). Every image must exist (checked before any work: :class:`DataFormatError` names the missing
    ones). An existing ``out_path`` or sidecar raises ``FileExistsError`` unless ``overwrite``. Returns ``out_path``.
    """
    from unseen.engine import progress

    root, out = Path(image_root), Path(out_path)
    side = sidecar_path(out)
    if not overwrite:
        for p in (out, side):
            if p.exists():
                raise FileExistsError(
                    f"{p}: already exists; refusing to overwrite it (pass overwrite=True, or "
                    "--overwrite on the command line, or choose another output path)"
                )
    items = list(items)
    if not items:
        raise ValueError("extract_h5: no images to extract (items is empty)")
    rels = [str(r) for r, _ in items]
    keys = [h5_name(r) for r in rels]
    if len(set(keys)) != len(keys):
        from collections import Counter

        dups = sorted(k for k, c in Counter(keys).items() if c > 1)
        raise ValueError(f"extract_h5: images map to the same h5 name: {dups[:5]}")
    if not root.is_dir():
        raise DataFormatError(f"{root}: image root folder not found")
    _check_images(root, rels)
    ext = extractor or build_extractor(backbone, weights, image_size, tiny_widths=tiny_widths, device=device)
    dev = next(ext.module.parameters()).device
    loader = DataLoader(
        _ImageFiles(root, rels, ext), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    batches = iter(progress(loader, desc=progress_desc or f"extracting {out.name}"))

    def run(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        tokens, cls = ext(ext.normalize(x.to(dev)))
        feats = tokens.transpose(1, 2).cpu().numpy()  # B x C x N: channels x regions, as stored
        return feats, (cls.cpu().numpy() if cls is not None else None)

    first = run(next(batches))  # its shape fixes the file's feature shape
    C, N, has_cls = int(first[0].shape[1]), int(first[0].shape[2]), first[1] is not None

    def rows() -> Iterator[tuple[Any, ...]]:
        i = 0
        done = False
        while not done:
            feats, cls_np = first if i == 0 else run(next(batches))
            for b in range(len(feats)):
                rel, labels = items[i]
                yield (rel, feats[b], labels, {"cls": cls_np[b]} if cls_np is not None else {})
                i += 1
            done = i >= len(items)

    meta = provenance(
        ext.name,
        ext.module,
        ext.transform,
        rels,
        sidecar_version=SIDECAR_VERSION,
        layer=ext.layer,
        resolution=ext.image_size,
        resize="bilinear to resolution x resolution, no crop",
        mean=list(ext.mean),
        std=list(ext.std),
        feature_shape=[C, N],
        layout="<name>-features float32 (C, N) channels x regions, row-major grid; <name>-<label suffix> int8"
        + ("; <name>-cls float32 (C,)" if has_cls else ""),
        has_cls=has_cls,
        options=ext.options,
        weights_file=ext.weights_file,
        weights_file_sha256=file_sha256(ext.weights_file) if ext.weights_file else None,
        label_keys=sorted(items[0][1]) if isinstance(items[0][1], Mapping) else ["labels"],
        h5_file=out.name,
    )
    if overwrite and side.exists():
        side.unlink()  # never leave the old provenance next to new features
    attrs = {
        "backbone": ext.name,
        "resolution": ext.image_size,
        "weights_sha256": meta["weights_sha256"],
        "layer": ext.layer,
        "provenance": json.dumps(meta),
    }
    write_biam_h5(out, rows(), feature_shape=(C, N), attrs=attrs, compression=compression)
    atomic_write_json(side, meta)
    return out


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def extract_items(
    image_root: str | os.PathLike[str],
    image_list: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    unseen_labels: str | os.PathLike[str] | None = None,
) -> list[tuple[str, Any]]:
    """The ``items`` of :func:`extract_h5` from files (what ``unseen extract`` reads).

    ``image_list``: a text file with one image path per line, relative to ``image_root`` (default: every image file
    under ``image_root``, sorted). ``labels``: ``.npy`` (N, L) in {-1, 0, +1}, one row per listed image, stored as
    ``<name>-labels`` (a training file); with ``unseen_labels`` ``.npy`` (N, U) the NUS-WIDE test layout is written
    instead (``labels`` = [seen | unseen], ``labels_81`` = unseen). Without ``labels`` every image gets an empty label
    vector (features only, e.g. for new images)."""
    root = Path(image_root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: image root folder not found")
    if image_list:
        lp = Path(image_list)
        if not lp.is_file():
            raise DataFormatError(f"{lp}: image list not found")
        rels = [line.strip() for line in lp.read_text(encoding="utf-8").splitlines() if line.strip()]
        where = str(lp)
    else:
        rels = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        where = f"{root} (image files found)"
    if not rels:
        raise DataFormatError(f"{where}: no images listed")

    def load(path: str | os.PathLike[str], what: str) -> np.ndarray:
        arr = load_npy(path, what)
        if arr.ndim != 2 or arr.shape[0] != len(rels):
            raise DataFormatError(
                f"{path}: {what} must be a 2-D array with one row per image ({len(rels)} rows from "
                f"{where}), got shape {arr.shape}"
            )
        return arr

    if labels is None:
        if unseen_labels is not None:
            raise ValueError("--unseen-labels needs --labels (the seen part of the test layout)")
        return [(r, np.zeros(0, np.int8)) for r in rels]
    seen = load(labels, "labels")
    if unseen_labels is None:
        return [(r, seen[i]) for i, r in enumerate(rels)]
    unseen = load(unseen_labels, "unseen labels")
    return [
        (r, {"labels": np.concatenate([seen[i], unseen[i]]), "labels_81": unseen[i]})
        for i, r in enumerate(rels)
    ]


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A feature file's provenance (``path`` = the sidecar or the h5 file next to it)."""
    p = Path(path)
    if p.suffix != ".json":
        p = sidecar_path(p)
    if not p.is_file():
        raise DataFormatError(f"{p}: provenance sidecar not found")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataFormatError(f"{p}: not valid JSON ({exc})") from exc
    for k in ("backbone", "resolution", "weights_sha256"):
        if k not in meta:
            raise DataFormatError(f"{p}: field '{k}' missing (not a feature provenance sidecar)")
    return meta


class ImageFeaturizer:
    """Image files -> the same region tokens a feature file holds: ``f(paths)`` -> ``(tokens (B, N, C), cls)``."""

    def __init__(self, extractor: Extractor, device: str | torch.device = "cpu") -> None:
        self.extractor, self.device = extractor, torch.device(device)

    def __call__(self, paths: Sequence[str | os.PathLike[str]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        ds = _ImageFiles(Path("/"), [str(Path(p).resolve()) for p in paths], self.extractor)
        x = torch.stack([ds[i] for i in range(len(ds))]).to(self.device)
        return self.extractor(self.extractor.normalize(x))


def load_extractor(sidecar: str | os.PathLike[str], device: str | torch.device = "cpu") -> ImageFeaturizer:
    """Rebuild the extractor recorded in a feature file's sidecar; its weights must hash as recorded.

    Features from randomly initialised weights (no ``weights_file``) cannot be reproduced: ``ValueError``."""
    meta = read_sidecar(sidecar)
    wfile = meta.get("weights_file")
    if not wfile:
        raise ValueError(
            f"{sidecar}: the features were extracted with randomly initialised {meta['backbone']} "
            "weights (no weights file), so they cannot be reproduced for new images"
        )
    opts = meta.get("options") or {}
    ext = build_extractor(
        meta["backbone"], wfile, int(meta["resolution"]), tiny_widths=opts.get("tiny_widths"), device=device
    )
    got = state_dict_hash(ext.module)
    if got != meta["weights_sha256"]:
        raise ValueError(
            f"{wfile}: weights hash {got} differs from {meta['weights_sha256']} recorded in {sidecar}: "
            "the file changed since the features were extracted"
        )
    return ImageFeaturizer(ext, device)


__all__ = [
    "Extractor",
    "ImageFeaturizer",
    "build_extractor",
    "extract_h5",
    "extract_items",
    "load_extractor",
    "read_sidecar",
    "sidecar_path",
]
