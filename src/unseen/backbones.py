"""Image backbones: multi-scale CNNs (C3, C4, C5) for Mg-MRN, single-map extractors, transforms, pooled features.

``build_backbone(name)`` returns a :class:`MultiScaleBackbone`:

- ``forward(x, upto=None) -> [C3, C4, C5]`` (``upto=k`` returns the first ``k + 1`` maps and never runs the later
  stages; ``forward_from(h, start, upto)`` continues from map ``start - 1``, e.g. under ``torch.no_grad()``),
- ``out_channels`` (3 ints) and ``strides`` (3 ints, e.g. 8/16/32).

Names: ``resnet101`` / ``resnet50`` (torchvision; layer2/3/4: 512x56x56, 1024x28x28, 2048x14x14 at 448 px),
``tiny`` (a small CPU ResNet-like net, strides 8/16/32, widths ``tiny_widths``). ``vgg19`` is a single-map
extractor (conv5_4 after ReLU, 512 x H/16 x W/16): ``build_feature_extractor("vgg19")``.

Weights: ``weights=PATH`` loads a local ``.safetensors`` / ``.pth`` / ``.pt`` state dict (torchvision key names;
``fc.*`` / ``classifier.*`` ignored; everything the module uses must be present, nothing else may be);
``pretrained=True`` without a path asks torchvision for ``IMAGENET1K_V1`` (online only); default: random init.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MULTISCALE_NAMES = ("resnet101", "resnet50", "tiny")
EXTRACTOR_NAMES = ("vgg19", *MULTISCALE_NAMES)
IGNORED_PREFIXES = ("fc.", "classifier.")


class WeightsError(ValueError):
    """A weights file cannot be loaded into a backbone; the message names the file and the offending keys."""


# --------------------------------------------------------------------------------------------- multi-scale
class MultiScaleBackbone(nn.Module):
    """Base class: a stem followed by three stages whose outputs are C3, C4, C5."""

    out_channels: tuple[int, int, int]
    strides: tuple[int, int, int]

    def stem(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Maps [C3, C4, C5][: upto + 1]; stages after ``upto`` are not run."""
        upto = _check_upto(upto)
        h = self.stem(x)
        maps = []
        for stage in self.stages()[: upto + 1]:
            h = stage(h)
            maps.append(h)
        return maps

    def forward_from(self, h: torch.Tensor, start: int, upto: int | None = None) -> list[torch.Tensor]:
        """Continue from map ``start - 1`` (``h``): maps ``start .. upto`` (``start`` in 1..2)."""
        upto = _check_upto(upto)
        if not 1 <= start <= upto:
            raise ValueError(f"forward_from: start must be in 1..{upto}, got {start}")
        maps = []
        for stage in self.stages()[start : upto + 1]:
            h = stage(h)
            maps.append(h)
        return maps


def _check_upto(upto: int | None) -> int:
    if upto is None:
        return 2
    if upto not in (0, 1, 2):
        raise ValueError(f"upto must be 0, 1, 2 or None, got {upto!r}")
    return int(upto)


class ResNetBackbone(MultiScaleBackbone):
    """torchvision ResNet without ``fc``; submodule names are torchvision's, so its state dicts load unchanged."""

    def __init__(self, arch: str = "resnet101", pretrained: bool = False) -> None:
        super().__init__()
        import torchvision.models as tvm

        ctor = {
            "resnet101": (tvm.resnet101, "ResNet101_Weights"),
            "resnet50": (tvm.resnet50, "ResNet50_Weights"),
        }
        if arch not in ctor:
            raise ValueError(f"unknown ResNet '{arch}'; available: {', '.join(ctor)}")
        fn, enum_name = ctor[arch]
        weights = getattr(tvm, enum_name).IMAGENET1K_V1 if pretrained else None
        net = fn(weights=weights)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = (512, 1024, 2048)
        self.strides = (8, 16, 32)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))

    def stages(self) -> list[nn.Module]:
        return [self.layer2, self.layer3, self.layer4]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyBackbone(MultiScaleBackbone):
    """Small ResNet-like CPU net: stem (stride 2), then one basic block per stage at strides 4 / 8 / 16.

    Half the strides of a ResNet, so the small images of the embedded benchmark (64 px) still give 16 / 8 / 4
    maps (a ResNet at 448 px gives 56 / 28 / 14)."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"tiny_widths: expected 3 positive channel counts, got {list(widths)}")
        s = max(8, widths[0] // 2)
        self.stem_layers = nn.Sequential(
            nn.Conv2d(3, s, 3, 2, 1, bias=False),
            nn.BatchNorm2d(s),
            nn.ReLU(inplace=True),
            nn.Conv2d(s, s, 3, 1, 1, bias=False),
            nn.BatchNorm2d(s),
            nn.ReLU(inplace=True),
        )
        self.layer2 = _BasicBlock(s, widths[0], 2)
        self.layer3 = _BasicBlock(widths[0], widths[1], 2)
        self.layer4 = _BasicBlock(widths[1], widths[2], 2)
        self.out_channels = widths
        self.strides = (4, 8, 16)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem_layers(x)

    def stages(self) -> list[nn.Module]:
        return [self.layer2, self.layer3, self.layer4]


# --------------------------------------------------------------------------------------------- single map
class VGGFeatureExtractor(nn.Module):
    """VGG-19 ``features`` up to conv5_4 + ReLU (index 35): 512 x H/16 x W/16. Keys match torchvision."""

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        import torchvision.models as tvm

        net = tvm.vgg19(weights=tvm.VGG19_Weights.IMAGENET1K_V1 if pretrained else None)
        self.features = net.features[:36]
        self.out_channels = 512
        self.stride = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class LastMap(nn.Module):
    """Single-map view of a multi-scale backbone (its C5)."""

    def __init__(self, backbone: MultiScaleBackbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_channels = backbone.out_channels[-1]
        self.stride = backbone.strides[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[-1]


# --------------------------------------------------------------------------------------------- builders
def build_backbone(
    name: str,
    weights: str | Path | None = None,
    pretrained: bool = False,
    tiny_widths: Sequence[int] | None = None,
) -> MultiScaleBackbone:
    """Multi-scale backbone ``name`` (resnet101 | resnet50 | tiny); see the module docstring for ``weights``."""
    if name in ("resnet101", "resnet50"):
        model: MultiScaleBackbone = ResNetBackbone(name, pretrained=pretrained and not weights)
    elif name == "tiny":
        if pretrained and not weights:
            raise ValueError(
                "backbone 'tiny' has no published weights: give backbone_weights=PATH or pretrained=false"
            )
        model = TinyBackbone(tiny_widths or (32, 64, 128))
    elif name == "vgg19":
        raise ValueError("backbone 'vgg19' is a single-map extractor: use build_feature_extractor('vgg19')")
    else:
        raise ValueError(f"unknown backbone '{name}'; available: {', '.join(MULTISCALE_NAMES)}")
    if weights:
        load_weights(model, weights)
    return model


def build_feature_extractor(
    name: str,
    weights: str | Path | None = None,
    pretrained: bool = False,
    tiny_widths: Sequence[int] | None = None,
) -> nn.Module:
    """Single-map extractor: ``vgg19`` (conv5_4 + ReLU) or the C5 map of a multi-scale backbone."""
    if name == "vgg19":
        model: nn.Module = VGGFeatureExtractor(pretrained=pretrained and not weights)
        if weights:
            load_weights(model, weights)
        return model
    if name in MULTISCALE_NAMES:
        return LastMap(build_backbone(name, weights, pretrained, tiny_widths))
    raise ValueError(f"unknown feature extractor '{name}'; available: {', '.join(EXTRACTOR_NAMES)}")


# --------------------------------------------------------------------------------------------- weights
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file (.safetensors, or .pth/.pt through ``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise WeightsError(
                f"{path}: unsupported weights format '{suffix}' (expected .safetensors, .pth or .pt)"
            )
    except WeightsError:
        raise
    except (
        Exception
    ) as exc:  # corrupt, truncated, not a weights file, or pickled code refused by weights_only
        msg = str(exc).strip().split("\n")[0]
        raise WeightsError(f"{path}: not a readable weights file ({type(exc).__name__}: {msg})") from exc
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    if obj and all(k.startswith("module.") for k in obj):  # saved from (Distributed)DataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _keys(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights(
    module: nn.Module, path: str | Path, ignore: tuple[str, ...] = IGNORED_PREFIXES
) -> nn.Module:
    """Load ``path`` into ``module`` strictly for the used parts (keys starting with ``ignore``, by default the
    ``fc.*`` / ``classifier.*`` heads, are dropped from the file)."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(ignore)}
    own = module.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_keys(unexpected)}")
        raise WeightsError(
            f"{path}: does not fit backbone {type(module).__name__}: the file has {len(state)} "
            f"tensors ({'/'.join(p.rstrip('.') for p in ignore)} ignored), the backbone {len(own)}; "
            f"{'; '.join(parts)}"
        )
    bad = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if state[k].shape != own[k].shape
    ]
    if bad:
        raise WeightsError(f"{path}: shape mismatch for {len(bad)} tensor(s): {'; '.join(bad[:5])}")
    module.load_state_dict(state, strict=True)
    return module


# --------------------------------------------------------------------------------------------- transforms
def make_transforms(image_size: int, train: bool) -> Any:
    """The Mg-MRN / ReZSL release transforms. Train: shorter side -> image_size*8/7, RandomCrop, h-flip,
    normalise. Test: shorter side -> image_size, CenterCrop, normalise."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return T.Compose(
            [
                T.Resize(int(round(image_size * 8 / 7))),
                T.RandomCrop(image_size),
                T.RandomHorizontalFlip(0.5),
                *norm,
            ]
        )
    return T.Compose([T.Resize(image_size), T.CenterCrop(image_size), *norm])


def n_halvings(stride_from: int, stride_to: int) -> int:
    """Number of x0.5 resizes from a map of stride ``stride_from`` to one of stride ``stride_to``."""
    ratio = stride_to / stride_from
    n = int(round(math.log2(ratio))) if ratio >= 1 else -1
    if n < 0 or 2**n != ratio:
        raise ValueError(f"strides {stride_from} -> {stride_to}: not a power-of-two downsampling")
    return n


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiScaleBackbone",
    "ResNetBackbone",
    "TinyBackbone",
    "VGGFeatureExtractor",
    "WeightsError",
    "build_backbone",
    "build_feature_extractor",
    "load_weights",
    "make_transforms",
    "read_state_dict",
]
