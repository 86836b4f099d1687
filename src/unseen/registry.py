"""Name -> constructor registries for models and datasets (timm-style ``register_model`` / ``create_model``).

A model registers with the setting it belongs to and the dataclass that is its config schema:

    @register_model("mgmrn", setting="attribute", config=MgMRNConfig)
    class MgMRN(nn.Module):
        def __init__(self, cfg: MgMRNConfig, **context): ...

``create_model("mgmrn", {"levels": [3]}, **context)`` validates the overrides against the schema (unknown keys
are rejected with the valid ones listed), builds the model and checks it against the setting's model interface
(:func:`register_interface`). ``fit`` declares how the run protocol fits it: ``engine`` (trained, the default),
``closed_form`` (solved in closed form; the setting's closed-form interface) or ``none`` (nothing to train).
Datasets register the same way; their builder takes the dataset config (and the model config, read-only) and
returns an :class:`unseen.task.Prepared`. Each setting registers its :class:`unseen.task.Task` subclass with
:func:`register_task`.

Adding a method = one module with ``@register_model``, one packaged YAML, one import line in the setting's
``__init__``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# the settings shipped with the package, imported on first use of a registry (plugins: import yours, then use it)
BUILTIN_SETTINGS = ("unseen.attribute", "unseen.multilabel", "unseen.compositional")
FIT_KINDS = ("engine", "closed_form", "none")


@dataclass(frozen=True)
class Entry:
    name: str
    setting: str
    builder: Callable[..., Any]
    config: type | None
    description: str
    fit: str = "engine"


# keyed by (setting, name): each setting has its own namespace (e.g. a "shapes" world per setting)
MODELS: dict[tuple[str, str], Entry] = {}
DATASETS: dict[tuple[str, str], Entry] = {}
TASKS: dict[str, type] = {}
# setting -> {fit kind -> the interface (a class whose public methods its models must provide)}
INTERFACES: dict[str, dict[str, type]] = {}


def _register(
    table: dict[tuple[str, str], Entry],
    kind: str,
    name: str,
    setting: str,
    config: type | None,
    description: str,
    fit: str = "engine",
):
    if fit not in FIT_KINDS:
        raise ValueError(f"{kind} '{name}': fit must be one of {', '.join(FIT_KINDS)}, got {fit!r}")

    def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
        if (setting, name) in table and table[(setting, name)].builder is not obj:
            raise KeyError(f"{kind} '{name}' is already registered for setting '{setting}'")
        doc = description or (obj.__doc__ or "").strip().split("\n")[0]
        table[(setting, name)] = Entry(name, setting, obj, config, doc, fit)
        return obj

    return deco


def register_model(
    name: str, setting: str, config: type | None = None, description: str = "", fit: str = "engine"
):
    """Decorator: register a model class/builder under ``name`` for ``setting`` (``fit``: see the module doc)."""
    return _register(MODELS, "model", name, setting, config, description, fit)


def register_interface(setting: str, interface: type, fit: str = "engine") -> None:
    """The methods every ``setting`` model of this ``fit`` kind provides (checked by :func:`create_model`)."""
    INTERFACES.setdefault(setting, {})[fit] = interface


def interface_methods(interface: type) -> list[str]:
    """The public methods an interface class declares."""
    return sorted(n for n, v in vars(interface).items() if callable(v) and not n.startswith("_"))


def _implements(obj: Any, interface: type, name: str) -> bool:
    impl = getattr(obj, name, None)
    if not callable(impl):
        return False
    func = getattr(impl, "__func__", impl)
    # the interface's own stub and torch's placeholder forward (nn.Module without a forward) do not count
    return func is not vars(interface).get(name) and getattr(func, "__name__", "") != "_forward_unimplemented"


def check_interface(obj: Any, entry: Entry) -> None:
    """Refuse a built model that lacks a method of its setting's interface (the message names them)."""
    interface = INTERFACES.get(entry.setting, {}).get(entry.fit)
    if interface is None:
        return
    missing = [n for n in interface_methods(interface) if not _implements(obj, interface, n)]
    if missing:
        raise TypeError(
            f"model '{entry.name}' ({type(obj).__name__}) does not provide {', '.join(missing)} "
            f"of the {entry.setting} interface {interface.__name__}"
        )


def register_task(cls: type) -> type:
    """Class decorator: the run protocol of the setting ``cls.setting`` (a :class:`unseen.task.Task`)."""
    setting = getattr(cls, "setting", "")
    if not setting:
        raise ValueError(f"{cls.__name__}: a task needs a 'setting' name")
    if setting in TASKS and TASKS[setting] is not cls:
        raise KeyError(f"a task is already registered for setting '{setting}'")
    TASKS[setting] = cls
    return cls


def get_task(setting: str) -> Any:
    """The :class:`unseen.task.Task` subclass of ``setting``."""
    _ensure_loaded()
    if setting not in TASKS:
        raise KeyError(f"unknown setting '{setting}' (one of {', '.join(sorted(TASKS))})")
    return TASKS[setting]


def list_settings() -> list[str]:
    _ensure_loaded()
    return sorted(TASKS)


def register_dataset(name: str, setting: str, config: type | None = None, description: str = ""):
    """Decorator: register a dataset builder under ``name`` for ``setting``."""
    return _register(DATASETS, "dataset", name, setting, config, description)


def _ensure_loaded() -> None:
    # Importing a setting registers its task, models and datasets; by module name, so that the core never imports
    # a setting at module level.
    for module in BUILTIN_SETTINGS:
        importlib.import_module(module)


def _get(table: dict[tuple[str, str], Entry], kind: str, name: str, setting: str | None) -> Entry:
    _ensure_loaded()
    hits = [e for (s, n), e in table.items() if n == name and (setting is None or s == setting)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        known = sorted(n for (s, n) in table if setting is None or s == setting)
        where = f" for setting '{setting}'" if setting else ""
        raise KeyError(f"unknown {kind} '{name}'{where}; available: {', '.join(known) or '(none)'}")
    raise KeyError(
        f"{kind} '{name}' exists in several settings ({', '.join(e.setting for e in hits)}): name the setting"
    )


def get_model_entry(name: str, setting: str | None = None) -> Entry:
    return _get(MODELS, "model", name, setting)


def get_dataset_entry(name: str, setting: str | None = None) -> Entry:
    return _get(DATASETS, "dataset", name, setting)


def _names(table: dict[tuple[str, str], Entry], setting: str | None) -> list[str]:
    _ensure_loaded()
    return sorted({n for (s, n) in table if setting is None or s == setting})


def list_models(setting: str | None = None) -> list[str]:
    return _names(MODELS, setting)


def list_datasets(setting: str | None = None) -> list[str]:
    return _names(DATASETS, setting)


def create_model(name: str, config: Any = None, setting: str | None = None, **context: Any) -> Any:
    """Build model ``name``. ``config`` is its config dataclass, a dict of overrides, or None (defaults)."""
    from unseen.config import build_dataclass

    entry = get_model_entry(name, setting)
    if entry.config is None:
        model = entry.builder(**context)
    else:
        if config is None or isinstance(config, dict):
            config = build_dataclass(entry.config, config or {}, where=f"model '{name}'")
        model = entry.builder(config, **context)
    check_interface(model, entry)
    return model
