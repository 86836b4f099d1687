"""Typed configs: dataclass schemas, YAML files, dotted command-line overrides.

A run is described by :class:`RunConfig`. Its ``model`` and ``data`` sections are validated against the schema
that the chosen model / dataset registered (``unseen.registry``), so ``model.n_levels=1`` is checked against
Mg-MRN's config and a typo such as ``model.n_level=1`` is rejected with the list of valid keys.

Overrides are ``key.sub=value`` strings; values are parsed as YAML scalars/lists (``1e-3``, ``true``,
``[1,1,1]``, ``null``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message says which key and what is expected."""


# --------------------------------------------------------------------------------------------- schemas
@dataclass
class TrainConfig:
    """The training engine's settings (shared by every setting and method)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "sgd"  # sgd | adam | adamw
    momentum: float = 0.9
    weight_decay: float = 1e-5
    lr_step: int = 0  # StepLR step size in epochs (0 = constant LR)
    lr_gamma: float = 0.1
    lr_shift_compat: bool = (
        False  # reproduce the release's StepLR stepped at epoch start (decay one epoch early)
    )
    lr_schedule: str = "step"  # step (StepLR by lr_step/lr_gamma) | cosine (per epoch, down to min_lr)
    warmup_epochs: int = 0  # linear warm-up from lr/warmup_epochs (both schedules)
    min_lr: float = 0.0  # cosine floor
    batches_per_epoch: int = 0  # 0 = one pass over the data; >0 = fixed number of (episodic) batches
    shots: int = 0  # >0: class-balanced episodes of (batch_size // shots) classes x shots images (release: 2)
    grad_accum: int = 1
    grad_clip: float = 0.0
    amp: bool = True  # mixed precision (used on CUDA only)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0
    deterministic: bool = False
    eval_every: int = 1
    progress: bool = True  # tqdm bars (silent off-terminal and under CI=true anyway)


@dataclass
class EvalConfig:
    """Evaluation settings (setting-specific keys are ignored by the other settings)."""

    gamma: str = "val"  # attribute GZSL calibration: val | fixed:<value> | none
    calibrate: bool = True  # run the validation (calibration) phase that picks the epoch and gamma
    batch_size: int = 64
    oracle: bool = True  # also report the test-set oracle block (labelled as such)
    ausuc: str = "grid"  # grid | exact


@dataclass
class FeaturesConfig:
    """Frozen-backbone mode: backbone outputs computed once per image and cached (with a provenance sidecar)."""

    cache: bool = False  # true = freeze the backbone and train the head on cached maps (no augmentation)
    cache_dir: str = ""  # default: $UNSEEN_CACHE/features or ~/.cache/unseen/features


@dataclass
class RunConfig:
    """One experiment: setting + dataset + model + engine + evaluation."""

    setting: str = "attribute"
    seed: int = 0
    output_dir: str = "runs"
    name: str = ""  # run folder name; default: <model>_<dataset>_<timestamp>
    data: Any = None  # dataset schema (registered with the dataset), chosen by data.name
    model: Any = None  # model schema (registered with the model), chosen by model.name
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    notes: str = ""


# --------------------------------------------------------------------------------------------- building
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to annotation ``tp`` (a small, strict subset of typing)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {tp}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {_type_name(tp)} keys, got {value!r}")
        return build_dataclass(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def build_dataclass(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Instantiate dataclass ``cls`` from a (possibly nested) dict, rejecting unknown keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """Plain-dict view of a (nested) config, fit for YAML/JSON and checkpoints."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def config_hash(cfg: Any) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    tree = copy.deepcopy(tree)
    for ov in overrides:
        path, value = parse_override(ov)
        node = tree
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{ov}': '{p}' is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return tree


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("_base_", None)
    if base:
        parent = load_yaml(path.parent / base)
        data = _deep_merge(parent, data)
    return data


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def build_run_config(tree: dict[str, Any], where: str = "config") -> RunConfig:
    """Validate a config tree. ``model`` and ``data`` are checked against their registered schemas."""
    from unseen.registry import get_dataset_entry, get_model_entry

    tree = copy.deepcopy(tree)
    model = tree.pop("model", None) or {}
    data = tree.pop("data", None) or {}
    cfg = build_dataclass(RunConfig, tree, where)
    for section, values, getter in (("model", model, get_model_entry), ("data", data, get_dataset_entry)):
        if not isinstance(values, dict) or "name" not in values:
            raise ConfigError(f"{where}.{section}: a '{section}.name' is required")
        try:
            entry = getter(values["name"], cfg.setting)
        except KeyError as exc:
            raise ConfigError(f"{where}.{section}.name: {exc.args[0]}") from None
        schema = entry.config
        setattr(
            cfg, section, build_dataclass(schema, values, f"{where}.{section}") if schema else dict(values)
        )
    return cfg


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None
) -> RunConfig:
    """YAML file (optional) -> overrides -> validated :class:`RunConfig`."""
    tree = copy.deepcopy(base or {})
    if path is not None:
        tree = _deep_merge(tree, load_yaml(path))
    tree = apply_overrides(tree, overrides or [])
    return build_run_config(tree, where=str(path) if path else "config")


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
