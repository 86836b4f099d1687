"""Typed configs: dataclass schemas, YAML files, dotted command-line overrides.

A run is described by :class:`RunConfig`. Its ``model`` and ``data`` sections are validated against the schema
that the chosen model / dataset registered (``unseen.registry``), so ``model.levels=[3]`` is checked against
Mg-MRN's config and a typo such as ``model.n_level=1`` is rejected with the list of valid keys.

Overrides are ``key.sub=value`` strings; values are parsed as YAML scalars/lists (``1e-3``, ``true``,
``[1,1,1]``, ``null``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
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
    batch_size: int = 32  # per process (per GPU under torchrun)
    lr: float = 1e-3
    optimizer: str = "sgd"  # sgd | adam | adamw
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-5
    lr_step: int = 0  # StepLR step size in epochs (0 = constant LR)
    lr_gamma: float = 0.1  # StepLR decay factor
    lr_shift_compat: bool = False  # the release's StepLR stepped at epoch start (decay one epoch early)
    lr_schedule: str = "step"  # step (StepLR by lr_step/lr_gamma) | cosine (per epoch, down to min_lr)
    warmup_epochs: int = 0  # linear warm-up from lr/warmup_epochs (both schedules)
    min_lr: float = 0.0  # cosine floor
    batches_per_epoch: int = 0  # 0 = one pass over the data; >0 = fixed number of (episodic) batches
    shots: int = 0  # >0: class-balanced episodes of (batch_size // shots) classes x shots images (release: 2)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 0.0  # max gradient norm (0 = no clipping)
    amp: bool = True  # mixed precision (used on CUDA only)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0  # DataLoader worker processes
    deterministic: bool = False  # deterministic torch/cuDNN algorithms (slower on GPU)
    eval_every: int = 1  # validate every N epochs (and after the last)
    progress: bool = True  # tqdm bars on a terminal, log lines elsewhere (CI, nohup, cluster logs)
    log_to: list[str] = field(default_factory=lambda: ["csv"])  # + tensorboard, wandb (optional extras)

    def __post_init__(self) -> None:
        check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        check_choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for key in ("epochs", "lr_step", "warmup_epochs", "batches_per_epoch", "shots", "num_workers"):
            check_range(f"train.{key}", getattr(self, key), low=0)
        for key in ("batch_size", "grad_accum", "eval_every"):
            check_range(f"train.{key}", getattr(self, key), low=1)
        check_range("train.lr", self.lr, low=0, inclusive=False)
        check_range("train.lr_gamma", self.lr_gamma, low=0, inclusive=False)
        check_range("train.momentum", self.momentum, low=0, high=1)
        for key in ("weight_decay", "min_lr", "grad_clip"):
            check_range(f"train.{key}", getattr(self, key), low=0)
        for backend in self.log_to:
            check_choice("train.log_to", backend, LOG_BACKENDS)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class EvalConfig:
    """Evaluation settings every setting reads; a setting with more declares a subclass (its task's ``sections``)."""

    batch_size: int = 64

    def __post_init__(self) -> None:
        check_range("eval.batch_size", self.batch_size, low=1)


@dataclass
class RunConfig:
    """One experiment: setting + dataset + model + engine + evaluation."""

    setting: str = "attribute"  # attribute | multilabel | compositional
    seed: int = 0  # training seed (the embedded worlds have their own data.world.seed)
    output_dir: str = "runs"  # run folders go to output_dir/name
    name: str = ""  # run folder name; default: <model>_<dataset>_<timestamp>
    data: Any = None  # dataset schema (registered with the dataset), chosen by data.name
    model: Any = None  # model schema (registered with the model), chosen by model.name
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: Any = None  # the setting's eval schema (its task's ``sections``)
    features: Any = None  # only for settings that declare a ``features`` section
    notes: str = ""  # free text kept in config.yaml


# --------------------------------------------------------------------------------------------- checks
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("step", "cosine")
LOG_BACKENDS = ("csv", "tensorboard", "wandb")  # unseen.tracking


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")


def check_range(
    key: str, value: float, low: float | None = None, high: float | None = None, inclusive: bool = True
) -> None:
    """``low <= value`` (``<`` when not ``inclusive``) and ``value < high``."""
    ok = (low is None or (value >= low if inclusive else value > low)) and (high is None or value < high)
    if not ok:
        lo = "" if low is None else f"{'>=' if inclusive else '>'} {low}"
        hi = "" if high is None else f"< {high}"
        raise ConfigError(f"{key}: expected a value {' and '.join(x for x in (lo, hi) if x)}, got {value!r}")


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
        return build_dataclass(typing.cast(type, tp), value, where)
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
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
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
    """``key.sub=value`` (a mapping value merges into the section key by key) or ``key.sub:=value`` (replaces
    the whole section). The replace form is marked by a trailing ``:`` on the key (see :func:`apply_overrides`)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key.rstrip(":"):
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
    """Apply dotted overrides in order. ``data.world={seed: 7}`` changes only the seed of the configured world;
    ``data.world:={seed: 7}`` replaces the world section (its other keys fall back to their defaults)."""
    tree = copy.deepcopy(tree)
    for ov in overrides:
        path, value = parse_override(ov)
        replace = path[-1].endswith(":")
        path[-1] = path[-1].rstrip(":")
        node = tree
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{ov}': '{p}' is a value, not a section")
            node = nxt
        if isinstance(value, dict) and isinstance(node.get(path[-1]), dict) and not replace:
            node[path[-1]] = _deep_merge(node[path[-1]], value)
        else:
            node[path[-1]] = value
    return tree


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = Path(path)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"{_chain[-1]}: _base_ includes a file that includes it again ({cycle})")
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
        parent = load_yaml(path.parent / base, (*_chain, path.resolve()))
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
    """Validate a config tree. ``model`` and ``data`` are checked against their registered schemas, the other
    sections against the setting's task (a section the setting does not read is an error, not ignored)."""
    try:
        return _build_run_config(tree, where)
    except ConfigError as exc:  # range/choice checks name the key; say which file it is in too
        if str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}") from None


def _build_run_config(tree: dict[str, Any], where: str) -> RunConfig:
    from unseen.registry import get_dataset_entry, get_model_entry, get_task

    tree = copy.deepcopy(tree)
    model = tree.pop("model", None) or {}
    data = tree.pop("data", None) or {}
    setting = tree.get("setting", RunConfig.setting)
    try:
        task = get_task(setting)
    except KeyError as exc:
        raise ConfigError(f"{where}.setting: {exc.args[0]}") from None
    sections = {k: tree.pop(k) for k in ("eval", "features") if tree.get(k) is not None}
    cfg = build_dataclass(RunConfig, tree, where)
    for key in sections:
        if key not in task.sections:
            raise ConfigError(f"{where}.{key}: the {setting} setting has no '{key}' section")
    for key, schema in task.sections.items():
        setattr(cfg, key, build_dataclass(schema, sections.get(key) or {}, f"{where}.{key}"))
    entries = {}
    for section, values, getter in (("model", model, get_model_entry), ("data", data, get_dataset_entry)):
        if not isinstance(values, dict) or "name" not in values:
            raise ConfigError(f"{where}.{section}: a '{section}.name' is required")
        try:
            entries[section] = entry = getter(values["name"], cfg.setting)
        except KeyError as exc:
            raise ConfigError(f"{where}.{section}.name: {exc.args[0]}") from None
        schema = entry.config
        setattr(
            cfg, section, build_dataclass(schema, values, f"{where}.{section}") if schema else dict(values)
        )
    if entries["model"].fit == "engine" and cfg.train.epochs < 1:
        raise ConfigError(
            f"{where}.train.epochs: model '{cfg.model.name}' is trained: expected at least 1, got {cfg.train.epochs}"
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


# Keys that earlier versions wrote into every run's config.yaml with these values, and that no longer exist for
# some settings (one eval/features schema for all settings). A run folder written then still loads; a value other
# than the old default would have changed that run, so it is still an error.
RETIRED_DEFAULTS: dict[str, dict[str, Any]] = {
    "eval": {"gamma": "val", "calibrate": True, "oracle": True, "ausuc": "grid"},
    "features": {"cache": False, "cache_dir": ""},
    "model": {"cmt": False},
}


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The saved config of a run folder (``config.yaml``), with the keys earlier versions wrote by default."""
    from unseen.registry import get_model_entry, get_task

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml)")
    tree = load_yaml(path)
    try:
        task = get_task(tree.get("setting", RunConfig.setting))
        model_schema = get_model_entry(tree["model"]["name"], task.setting).config
    except (KeyError, TypeError):
        task, model_schema = None, None
    if task is not None:
        for section, old in RETIRED_DEFAULTS.items():
            values = tree.get(section)
            if not isinstance(values, dict):
                continue
            schema = model_schema if section == "model" else task.sections.get(section)
            known = {f.name for f in dataclasses.fields(schema)} if schema else set()
            for key, default in old.items():
                if key not in known and values.get(key, object()) == default:
                    del values[key]
            if section != "model" and schema is None and not values:
                del tree[section]
    tree = apply_overrides(tree, overrides or [])
    return build_run_config(tree, where=str(path))


def dump_yaml(cfg: Any) -> str:
    tree = to_dict(cfg)
    if isinstance(cfg, RunConfig):  # sections the setting does not have are left out, not written as null
        tree = {k: v for k, v in tree.items() if not (k in ("eval", "features") and v is None)}
    return yaml.safe_dump(tree, sort_keys=False)
