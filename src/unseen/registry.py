"""Name -> constructor registries for models and datasets (timm-style ``register_model`` / ``create_model``).

A model registers with the setting it belongs to and the dataclass that is its config schema:

    @register_model("mgmrn", setting="attribute", config=MgMRNConfig)
    class MgMRN(nn.Module):
        def __init__(self, cfg: MgMRNConfig, **context): ...

``create_model("mgmrn", {"n_levels": 1}, **context)`` validates the overrides against the schema (unknown keys
are rejected with the valid ones listed) and builds the model. Datasets register the same way; their
builder takes the dataset config and returns the setting's data object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    name: str
    setting: str
    builder: Callable[..., Any]
    config: type | None
    description: str


# keyed by (setting, name): each setting has its own namespace (e.g. a "shapes" world per setting)
MODELS: dict[tuple[str, str], Entry] = {}
DATASETS: dict[tuple[str, str], Entry] = {}


def _register(
    table: dict[tuple[str, str], Entry],
    kind: str,
    name: str,
    setting: str,
    config: type | None,
    description: str,
):
    def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
        if (setting, name) in table and table[(setting, name)].builder is not obj:
            raise KeyError(f"{kind} '{name}' is already registered for setting '{setting}'")
        doc = description or (obj.__doc__ or "").strip().split("\n")[0]
        table[(setting, name)] = Entry(name, setting, obj, config, doc)
        return obj

    return deco


def register_model(name: str, setting: str, config: type | None = None, description: str = ""):
    """Decorator: register a model class/builder under ``name`` for ``setting``."""
    return _register(MODELS, "model", name, setting, config, description)


def register_dataset(name: str, setting: str, config: type | None = None, description: str = ""):
    """Decorator: register a dataset builder under ``name`` for ``setting``."""
    return _register(DATASETS, "dataset", name, setting, config, description)


def _ensure_loaded() -> None:
    # Importing the settings registers their models and datasets.
    import unseen.attribute  # noqa: F401
    import unseen.compositional  # noqa: F401
    import unseen.multilabel  # noqa: F401


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
        return entry.builder(**context)
    if config is None or isinstance(config, dict):
        config = build_dataclass(entry.config, config or {}, where=f"model '{name}'")
    return entry.builder(config, **context)
