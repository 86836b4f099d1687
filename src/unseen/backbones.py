"""Image backbones: multi-scale CNNs (C3, C4, C5) for Mg-MRN, single-map extractors, transforms, pooled features.

``build_backbone(name)`` returns a :class:`MultiScaleBackbone`:

- ``forward(x, upto=None) -> [C3, C4, C5]`` (``upto=k`` returns the first ``k + 1`` maps and never runs the later
  stages; ``forward_from(h, start, upto)`` continues from map ``start - 1``, e.g. under ``torch.no_grad()``),
- ``out_channels`` (3 ints) and ``strides`` (3 ints, e.g. 8/16/32).

Names: ``resnet101`` / ``resnet50`` (torchvision; layer2/3/4: 512x56x56, 1024x28x28, 2048x14x14 at 448 px),
``tiny`` (a small CPU ResNet-like net, strides 8/16/32, widths ``tiny_widths``). ``vgg19`` is a single-map
extractor (conv5_4 after ReLU, 512 x H/16 x W/16): ``build_feature_extractor("vgg19")``.

Weights (``weights=``; every failure is a :class:`WeightsError` naming the file and what was expected):

- a local ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` state dict (``torch.load(weights_only=True)``) or ``.safetensors``
  file, in torchvision's layout or timm's (the same key names for ResNets and for VGG's ``features``); classifier
  heads (``fc.*``, ``classifier.*``, ``head.*``, ``pre_logits.*``) are ignored, everything the module uses must be
  present and nothing else may be;
- a TorchScript archive (``torch.jit.save``), read as data by :func:`read_torchscript` without running its code;
- ``hf-hub:<org>/<name>``: the repository's ``model.safetensors`` (else ``pytorch_model.bin``) from the Hugging
  Face cache (``HF_HUB_CACHE``; with ``HF_HUB_OFFLINE=1`` nothing is downloaded), e.g.
  ``hf-hub:timm/resnet101.tv_in1k``.

``pretrained=True`` without weights asks torchvision for ``IMAGENET1K_V1`` (online only); default: random init.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MULTISCALE_NAMES = ("resnet101", "resnet50", "tiny")
EXTRACTOR_NAMES = ("vgg19", *MULTISCALE_NAMES)
# classifier heads, never used by a backbone: torchvision's fc / classifier, timm's head / pre_logits (timm's VGG)
IGNORED_PREFIXES = ("fc.", "classifier.", "head.", "pre_logits.")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
HUB_PREFIX = "hf-hub:"
TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # a timm hub repo's weights, safetensors first


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
def _hub_cache() -> tuple[str, bool]:
    """(cache folder, offline) from the environment as it is now: huggingface_hub reads ``HF_HUB_CACHE`` /
    ``HF_HUB_OFFLINE`` once, when it is imported, and a cache chosen later (a notebook, a test) must still count."""
    from huggingface_hub import constants

    cache = os.path.expanduser(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return cache, flag or bool(constants.HF_HUB_OFFLINE)


def hub_file(spec: str, filenames: Sequence[str], required: bool = True) -> Path | None:
    """The local path of the first of ``filenames`` found in the Hugging Face hub repo ``hf-hub:<org>/<name>``.

    With ``HF_HUB_OFFLINE=1`` only the cache (``HF_HUB_CACHE``, laid out by huggingface_hub:
    ``models--<org>--<name>/{refs/main, snapshots/<revision>/<file>}``) is read; otherwise huggingface_hub fetches
    the file or reuses its cached copy. ``required=False``: ``None`` when none is there."""
    repo = spec[len(HUB_PREFIX) :].strip() if spec.startswith(HUB_PREFIX) else ""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise WeightsError(f"{spec}: expected {HUB_PREFIX}<org>/<name> (a Hugging Face hub repository)")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise WeightsError(f"{spec}: the {HUB_PREFIX} route needs the huggingface_hub package") from exc
    cache, offline = _hub_cache()
    failures = []
    for name in filenames:
        try:
            return Path(hf_hub_download(repo, name, cache_dir=cache, local_files_only=offline))
        except Exception as exc:  # not in the cache, not in the repo, no network: try the next name
            failures.append(type(exc).__name__)
    if not required:
        return None
    org, name = repo.split("/")
    where = "the cache (HF_HUB_OFFLINE=1)" if offline else "the cache or on the hub"
    raise WeightsError(
        f"{spec}: none of {', '.join(filenames)} found in {where}; expected "
        f"{Path(cache) / f'models--{org}--{name}'}/snapshots/<revision>/<file> with refs/main naming the "
        f"revision ({', '.join(sorted(set(failures)))})"
    )


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``: a zip holding ``code/`` and
    ``constants.pkl``), such as OpenAI's CLIP ``.pt`` files; a ``torch.save`` zip has neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.count("/") >= 1 and n.split("/")[1] in ("code", "constants.pkl") for n in zf.namelist())


def read_state_dict(source: str | Path, hub_files: Sequence[str] = TIMM_HUB_FILES) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: ``.safetensors``; ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` state dicts (through
    ``torch.load(weights_only=True)``) or TorchScript archives (tensors read without running the archive, see
    :func:`read_torchscript`); ``hf-hub:<org>/<name>`` = the first of ``hub_files`` in that hub repository."""
    if str(source).startswith(HUB_PREFIX):
        path = hub_file(str(source), hub_files)
        assert path is not None  # required=True raises instead
    else:
        path = Path(source)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        elif suffix in TORCH_SUFFIXES:
            if is_torchscript_archive(path):
                obj = read_torchscript(path)
            else:
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise WeightsError(
                f"{path}: unsupported weights format '{suffix}' (expected .safetensors, .pth, .pt, .bin or .ckpt)"
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


# ---- TorchScript archives, read as data
# torch.jit.load compiles the archive's code/ and runs its __setstate__ methods, and torch.load(weights_only=True)
# refuses archives. The tensors live in data.pkl (the module tree: one object per module, whose state is a dict
# of attributes) and data/<key> (raw storages), so a restricted unpickler that only rebuilds tensors reads them.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_CLASS_BODY = re.compile(r"^class (\w+)\(Module\):\n((?:  .*\n)*)", re.M)
_DECLARED = re.compile(r"^  __(?:parameters|buffers)__ = \[(.*)\]$", re.M)


class _ScriptObject:
    """Stands for one TorchScript object (a module) of data.pkl: keeps the state stored for it, runs no code."""

    qualname = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: store, never interpret
        self.state = state


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("a tensor without a storage record")
    return storage.as_strided(tuple(size), tuple(stride), int(offset))  # bounds-checked against the record


def _restore_type_tag(value: Any, _type: Any) -> Any:
    return value


# (module, name) -> what data.pkl gets: tensor rebuilding and plain containers, nothing that acts
_SCRIPT_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    **{("torch.jit._pickle", f"build_{t}list"): list for t in ("int", "double", "bool", "tensor")},
}


class _ScriptUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix = zf, prefix
        self.classes: dict[str, type] = {}
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith(
            "__torch__."
        ):  # a scripted class: a stand-in, not its code
            qualname = f"{module}.{name}"
            if qualname not in self.classes:
                self.classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return self.classes[qualname]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in _SCRIPT_GLOBALS:
            return _SCRIPT_GLOBALS[module, name]
        raise pickle.UnpicklingError(f"data.pkl asks for {module}.{name}, which is not tensor data")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown record reference {pid!r:.60}")
        _, dtype, key, _location, numel = (
            pid  # the location (e.g. cuda:0) is ignored: tensors land on the CPU
        )
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"storage {key!r}: unknown storage type")
        key = str(key)
        if key not in self.storages:
            raw = self.zf.read(f"{self.prefix}/data/{key}")
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                raise pickle.UnpicklingError(
                    f"record data/{key} holds {len(raw)} bytes, expected {numel} x {itemsize} ({dtype})"
                )
            self.storages[key] = (
                torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            )
        return self.storages[key]


def _declared_state(zf: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """Qualified class name -> its declared parameters and buffers, read from the text of code/ (never run).

    A scripted module also pickles plain tensor attributes (e.g. an attention mask), which are not part of its
    state dict; the declarations tell them apart, as ``ScriptModule.state_dict()`` does."""
    out: dict[str, set[str]] = {}
    code = f"{prefix}/code/"
    for name in zf.namelist():
        if name.startswith(code) and name.endswith(".py"):
            module = name[len(code) : -3].replace("/", ".")  # code/__torch__/a/b.py declares __torch__.a.b.*
            text = zf.read(name).decode("utf-8", "replace")
            for cls in _CLASS_BODY.finditer(text):
                lists = _DECLARED.findall(cls.group(2))
                if lists:
                    out[f"{module}.{cls.group(1)}"] = {
                        n for lst in lists for n in re.findall(r'"([^"]*)"', lst)
                    }
    return out


def read_torchscript(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive (the names ``torch.jit.load(path).state_dict()`` gives), read
    without compiling or running any of the archive's code: data.pkl is unpickled with an unpickler that only
    rebuilds tensors from the archive's records and refuses every other global."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            roots = [
                n[: -len("/data.pkl")] for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")
            ]
            if len(roots) != 1:
                raise WeightsError(f"{path}: expected one <archive>/data.pkl in the TorchScript archive")
            prefix = roots[0]
            if f"{prefix}/byteorder" in zf.namelist():
                order = zf.read(f"{prefix}/byteorder").decode().strip()
                if order != sys.byteorder:
                    raise WeightsError(
                        f"{path}: a {order}-endian archive; this machine is {sys.byteorder}-endian"
                    )
            root = _ScriptUnpickler(zf.read(f"{prefix}/data.pkl"), zf, prefix).load()
            declared = _declared_state(zf, prefix)
    except WeightsError:
        raise
    except Exception as exc:  # refused global, missing or short record, corrupt zip
        msg = str(exc).strip().split("\n")[0]
        raise WeightsError(
            f"{path}: not a readable TorchScript archive ({type(exc).__name__}: {msg})"
        ) from exc
    if not isinstance(root, _ScriptObject):
        raise WeightsError(
            f"{path}: expected a scripted module at the root of data.pkl, got {type(root).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", declared, out, path)
    return out


def _collect(obj: _ScriptObject, prefix: str, declared: dict[str, set[str]], out: dict, path: Path) -> None:
    state = obj.state if obj.state is not None else {}
    if not isinstance(state, dict):  # its own __getstate__/__setstate__: the stored values are not its state
        raise WeightsError(
            f"{path}: module {prefix.rstrip('.') or '<root>'} ({obj.qualname}) restores its state with its own "
            "code (__setstate__); only archives of plain modules are read"
        )
    names = declared.get(obj.qualname)  # None: no declaration found, keep every tensor
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and (names is None or name in names):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", declared, out, path)


def _keys(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str | Path,
    ignore: tuple[str, ...] = IGNORED_PREFIXES,
    what: str | None = None,
) -> nn.Module:
    """Load ``state`` (read from ``source``, named in errors) into ``module``: every key of the module must be
    there with its shape, and nothing else (keys starting with ``ignore`` are dropped first). Values are cast to
    the module's dtypes (OpenAI's half-precision tensors into a float32 model)."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    what = what or f"backbone {type(module).__name__}"
    own = module.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_keys(unexpected)}")
        dropped = f" ({'/'.join(p.rstrip('.') for p in ignore)} ignored)" if ignore else ""
        raise WeightsError(
            f"{source}: does not fit {what}: the file has {len(state)} tensors{dropped}, the model "
            f"{len(own)}; {'; '.join(parts)}"
        )
    bad = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if state[k].shape != own[k].shape
    ]
    if bad:
        raise WeightsError(f"{source}: shape mismatch for {len(bad)} tensor(s): {'; '.join(bad[:5])}")
    module.load_state_dict(state, strict=True)
    return module


def load_weights(
    module: nn.Module, source: str | Path, ignore: tuple[str, ...] = IGNORED_PREFIXES
) -> nn.Module:
    """Load the weights file (or ``hf-hub:<org>/<name>``) ``source`` into ``module`` strictly for the used parts:
    keys starting with ``ignore`` (by default the classifier heads of torchvision and timm) are dropped."""
    return load_state(module, read_state_dict(source), source, ignore)


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
    "hub_file",
    "is_torchscript_archive",
    "load_state",
    "load_weights",
    "make_transforms",
    "read_state_dict",
    "read_torchscript",
]
