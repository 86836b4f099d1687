"""Everything registered is exercised (timm-style: every ``list_models()`` entry is built and stepped), every packaged
config validates, configs are refused at load, the core never imports a setting, and the interface check bites.

Nothing here names a model: a model registered by a setting is picked up from ``unseen.registry.MODELS``. A new
*setting* needs one tiny context in ``HARNESSES`` (the test says so when it is missing).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from unseen import registry, runs
from unseen.cli import main
from unseen.config import ConfigError, build_dataclass, load_config
from unseen.registry import (
    MODELS,
    TASKS,
    Entry,
    check_interface,
    create_model,
    get_task,
    list_models,
    list_settings,
    register_model,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "unseen"
SETTINGS = list_settings()  # imports the built-in settings, which registers their models
ENTRIES: list[Entry] = sorted(MODELS.values(), key=lambda e: (e.setting, e.name))
PACKAGED = runs.packaged_configs()
# the setting packages: the built-in list and wherever a registered task lives
SETTING_PACKAGES = tuple(
    sorted(set(registry.BUILTIN_SETTINGS) | {cls.__module__.rsplit(".", 1)[0] for cls in TASKS.values()})
)

# Config values that make a model tiny, per setting; each model takes the keys its schema has.
TINY: dict[str, dict[str, Any]] = {
    "attribute": {
        "backbone": "tiny",
        "tiny_widths": [8, 16, 16],
        "width": 16,
        "model_dim": 8,
        "n_parts": 2,
        "alpha_grid": [-1.0, 0.0],
        "beta_grid": [0.0],
    },
    "multilabel": {"dim": 16, "heads": 2, "top_k": 2, "layers": 1, "global_dim": 16},
    "compositional": {"clip_arch": "unseen-test-clip", "n_queries": 4, "refine_blocks": 2, "text_chunk": 4},
}


def _tiny_overrides(entry: Entry) -> dict[str, Any]:
    if entry.config is None:
        return {}
    keys = {f.name for f in dataclasses.fields(entry.config)}
    return {k: v for k, v in TINY.get(entry.setting, {}).items() if k in keys}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the spinning OpenMP workers
    cost seconds per forward; one thread keeps the file fast (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------- tiny contexts
@dataclass
class Harness:
    """How the setting's protocol builds, scores and trains its models, on tiny inputs.

    ``context()`` -> create_model keyword arguments; ``forward(model)`` -> (scores, expected shape);
    ``loss(model)`` -> the loss the engine would back-propagate (the model's own loss path);
    ``closed_form(cls, cfg)`` -> (scores, expected shape) after fitting a tiny random problem.
    """

    context: Callable[[], dict[str, Any]]
    forward: Callable[[Any], tuple[torch.Tensor, tuple[int, ...]]]
    loss: Callable[[Any], torch.Tensor]
    closed_form: Callable[[type, Any], tuple[np.ndarray, tuple[int, ...]]] | None = None


# attribute: A attributes (word vectors of width 4), C classes, 32 px images (the backbone's largest stride)
A, C_ATTR = 6, 5


def _attr_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 32, 32, generator=g), torch.rand(C_ATTR, A, generator=g)


def _attr_forward(model: Any) -> tuple[torch.Tensor, tuple[int, ...]]:
    images, attrs = _attr_batch()
    return model(images, attrs)["scores"], (2, C_ATTR)


def _attr_loss(model: Any) -> torch.Tensor:
    images, attrs = _attr_batch()
    total = None
    for sub in getattr(model, "train_substeps", lambda: [None])():  # one optimizer step each in the engine
        out = model(images, attrs, targets=torch.tensor([0, 3]), levels=sub)
        assert out["scores"].shape == (2, C_ATTR)
        total = out["loss"] if total is None else total + out["loss"]
    return total


def _attr_closed_form(cls: type, cfg: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    rng = np.random.default_rng(0)
    X, labels = rng.normal(size=(12, 7)), np.arange(12) % 3  # 3 seen classes (rows of the seen attributes)
    seen_attrs, all_attrs = rng.random((3, A)), rng.random((C_ATTR, A))
    candidates = cls.candidates(cfg)
    assert candidates, "closed-form models must offer at least one hyper-parameter candidate"
    model = cls(cfg, **candidates[0]).fit(X, labels, seen_attrs)
    assert isinstance(model.params(), dict)
    return np.asarray(model.scores(X, all_attrs)), (12, C_ATTR)


# multilabel: B x T x C_in region features (T square for the region-grid models), L labels, D-dim embeddings
def _ml_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([[1, -1, 0, -1, 1], [-1, 1, -1, 0, -1]], dtype=torch.int8)
    return torch.randn(2, 16, 8, generator=g), torch.randn(5, 6, generator=g), labels


def _ml_forward(model: Any) -> tuple[torch.Tensor, tuple[int, ...]]:
    x, emb, _ = _ml_inputs()
    return model(x, emb, None)["scores"], (2, 5)


def _ml_loss(model: Any) -> torch.Tensor:
    x, emb, labels = _ml_inputs()
    loss, logs = model.loss(model(x, emb, None), labels, emb)
    assert isinstance(logs, dict)
    return loss


# compositional: a fresh random test CLIP per model (the models freeze it in place), 3 states x 4 objects
ATTRS, OBJS = ["red", "old", "wet"], ["dog", "cat", "car", "tree"]
PAIRS = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 3]])


def _comp_context() -> dict[str, Any]:
    from unseen.compositional.clip import create_clip

    torch.manual_seed(0)
    return {"clip_model": create_clip("unseen-test-clip"), "attr_names": ATTRS, "obj_names": OBJS}


def _comp_images(model: Any) -> torch.Tensor:
    size = model.clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _comp_forward(model: Any) -> tuple[torch.Tensor, tuple[int, ...]]:
    images = _comp_images(model)
    scores = model(images, PAIRS)["scores"]
    # the evaluation path (texts encoded once, images batch by batch) gives the same scores
    streamed = model.score(model.encode_images(images), model.encode_pairs(PAIRS, 2))["scores"]
    torch.testing.assert_close(streamed, scores, rtol=1e-5, atol=1e-4)
    return scores, (2, len(PAIRS))


def _comp_loss(model: Any) -> torch.Tensor:
    out = model(_comp_images(model), PAIRS)
    loss, logs = model.loss(out, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert isinstance(logs, dict)
    return loss


HARNESSES: dict[str, Harness] = {
    "attribute": Harness(
        lambda: {"attribute_embeddings": torch.randn(A, 4)}, _attr_forward, _attr_loss, _attr_closed_form
    ),
    "multilabel": Harness(lambda: {"in_dim": 8, "n_tokens": 16, "embed_dim": 6}, _ml_forward, _ml_loss),
    "compositional": Harness(_comp_context, _comp_forward, _comp_loss),
}


def _harness(setting: str) -> Harness:
    if setting not in HARNESSES:
        pytest.fail(f"setting '{setting}' has registered models but no tiny context: add one to HARNESSES")
    return HARNESSES[setting]


# --------------------------------------------------------------------------------------------- 1. every model
def test_the_registry_is_populated():
    assert set(SETTINGS) <= set(HARNESSES), (
        f"settings without a tiny context: {set(SETTINGS) - set(HARNESSES)}"
    )
    for setting in SETTINGS:
        assert list_models(setting), f"setting '{setting}' registers no model"
    assert {e.fit for e in ENTRIES} <= set(registry.FIT_KINDS)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_registered_model_builds_and_steps(entry: Entry):
    harness = _harness(entry.setting)
    # a model of a fit kind without an interface would never be checked
    assert entry.fit in registry.INTERFACES.get(entry.setting, {}), (
        f"no {entry.fit!r} interface registered for setting '{entry.setting}'"
    )
    torch.manual_seed(0)
    overrides = _tiny_overrides(entry)

    if entry.fit == "closed_form":
        model = create_model(entry.name, overrides, entry.setting)
        check_interface(model, entry)
        check_interface(entry.builder, entry)  # the protocol calls candidates() on the class
        if harness.closed_form is None:
            pytest.fail(f"setting '{entry.setting}' has a closed-form model but no closed-form tiny problem")
        cfg = build_dataclass(entry.config, overrides) if entry.config else None
        scores, shape = harness.closed_form(entry.builder, cfg)
        assert scores.shape == shape and np.isfinite(scores).all()
        return

    model = create_model(entry.name, overrides, entry.setting, **harness.context())
    check_interface(model, entry)
    assert isinstance(model, nn.Module)

    if entry.fit == "none":
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert not trainable, f"fit='none' but trainable parameters: {trainable[:5]}"
        model.eval()
        with torch.no_grad():
            scores, shape = harness.forward(model)
        assert scores.shape == shape and torch.isfinite(scores).all()
        return

    # engine: the scores of the evaluation path, then one training forward + backward on the model's own loss
    model.eval()
    with torch.no_grad():
        scores, shape = harness.forward(model)
    assert scores.shape == shape and torch.isfinite(scores).all()
    model.train()
    loss = harness.loss(model)
    assert loss.ndim == 0 and torch.isfinite(loss), loss
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "an engine-fit model must have trainable parameters"
    grads = {n: p.grad for n, p in trainable.items() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values()), [
        n for n, g in grads.items() if not torch.isfinite(g).all()
    ]
    assert any(float(g.abs().sum()) > 0 for g in grads.values()), "no parameter received a non-zero gradient"


# --------------------------------------------------------------------------------------------- 2. packaged configs
def test_packaged_configs_cover_every_setting_model_and_demo():
    assert PACKAGED
    for setting in SETTINGS:
        names = {n for n in PACKAGED if n.split("/")[0] == setting}
        assert names, f"no packaged config for setting '{setting}'"
        demo = get_task(setting).demo
        if demo is not None:
            missing = [m for m in demo.methods if f"{setting}/{m}" not in PACKAGED]
            assert not missing, f"{setting} demo methods without a packaged config: {missing}"
    # adding a method = one module + one packaged YAML: every registered model has a config to run it
    used = {(n.split("/")[0], load_config(runs.resolve_config_path(n)).model.name) for n in PACKAGED}
    builtin = [(e.setting, e.name) for e in ENTRIES if e.builder.__module__.startswith("unseen.")]
    assert not [k for k in builtin if k not in used], [k for k in builtin if k not in used]


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_config_loads_and_validates(name: str):
    assert not Path(name).name.startswith("_")
    path = runs.resolve_config_path(name)
    assert path.is_file() and path.parent.parent == runs.PACKAGE_CONFIGS
    cfg = load_config(path)
    setting = name.split("/")[0]
    assert cfg.setting == setting
    assert cfg.model.name in list_models(setting)
    schema = registry.get_model_entry(cfg.model.name, setting).config
    assert schema is None or isinstance(cfg.model, schema)
    assert dataclasses.is_dataclass(cfg.eval)


def test_base_fragments_are_not_runnable(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a relative path must not resolve against the working directory by accident
    fragments = sorted(runs.PACKAGE_CONFIGS.glob("*/_base_*.yaml"))
    assert fragments, "the packaged _base_ fragments are expected to exist"
    assert (runs.PACKAGE_CONFIGS / "attribute" / "_base_demo.yaml") in fragments
    for f in fragments:
        name = f"{f.parent.name}/{f.stem}"
        assert name not in PACKAGED
        for query in (name, f"{name}.yaml"):
            with pytest.raises(FileNotFoundError, match="not found"):
                runs.resolve_config_path(query)
    with pytest.raises(
        FileNotFoundError, match="attribute/demo_mgmrn"
    ):  # the message lists the runnable ones
        runs.resolve_config_path("attribute/_base_demo")


def test_cli_list_shows_configs_and_models_but_no_fragments(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in PACKAGED:
        assert name in out, name
    for _, model in MODELS:
        assert model in out, model
    assert "_base_" not in out


# --------------------------------------------------------------------------------------------- 3. validation
REFUSED = [
    ("attribute/demo_mgmrn", ["train.epochs=-1"], "train.epochs"),
    ("attribute/demo_mgmrn", ["train.epochs=0"], "train.epochs"),
    ("multilabel/demo_epsilon", ["train.epochs=0"], "train.epochs"),
    ("compositional/demo_refiner", ["train.epochs=0"], "train.epochs"),
    ("attribute/demo_mgmrn", ["train.lr=nan"], "train.lr"),
    ("attribute/demo_mgmrn", ["train.lr=inf"], "train.lr"),
    ("attribute/demo_mgmrn", ["train.lr=abc"], "train.lr"),
    ("attribute/demo_mgmrn", ["train.lr=0"], "train.lr"),
    ("attribute/demo_mgmrn", ["train.optimizer=foo"], "train.optimizer"),
    ("attribute/demo_mgmrn", ["train.lr_schedule=foo"], "train.lr_schedule"),
    ("attribute/demo_mgmrn", ["eval.gamma=foo"], "eval.gamma"),
    ("attribute/demo_mgmrn", ["eval.gamma=fixed:abc"], "eval.gamma"),
    ("attribute/demo_mgmrn", ["eval.gamma=val", "eval.calibrate=false"], "eval.gamma"),
    ("attribute/demo_eszsl", ["eval.gamma=val", "eval.calibrate=false"], "eval.gamma"),
    ("multilabel/demo_epsilon", ["eval.gamma=val"], "gamma"),
    ("compositional/demo_refiner", ["eval.gamma=fixed:1.5"], "gamma"),
    ("multilabel/demo_epsilon", ["features.cache=true"], "has no 'features'"),
    ("compositional/demo_csp", ["features.cache=false"], "has no 'features'"),
]


@pytest.mark.parametrize(
    ("name", "overrides", "match"), REFUSED, ids=[f"{n}:{' '.join(o)}" for n, o, _ in REFUSED]
)
def test_invalid_config_is_refused_at_load(name: str, overrides: list[str], match: str):
    with pytest.raises(ConfigError, match=match):
        load_config(runs.resolve_config_path(name), overrides)


ACCEPTED = [
    ("compositional/demo_zeroshot", ["train.epochs=0"]),  # fit="none": nothing to train
    ("attribute/demo_eszsl", ["train.epochs=0"]),  # fit="closed_form": no engine epochs
    ("attribute/demo_mgmrn", ["eval.gamma=fixed:1.5"]),
    ("attribute/demo_mgmrn", ["eval.gamma=none", "eval.calibrate=false"]),
    ("attribute/demo_mgmrn", ["train.lr=1e-3", "train.lr_schedule=cosine", "train.optimizer=adam"]),
]


@pytest.mark.parametrize(("name", "overrides"), ACCEPTED, ids=[f"{n}:{' '.join(o)}" for n, o in ACCEPTED])
def test_valid_config_is_accepted(name: str, overrides: list[str]):
    cfg = load_config(runs.resolve_config_path(name), overrides)
    if "eval.gamma=fixed:1.5" in overrides:
        assert cfg.eval.fixed_gamma() == 1.5
    if "train.epochs=0" in overrides:
        assert cfg.train.epochs == 0
    if "train.lr=1e-3" in overrides:
        assert cfg.train.lr == pytest.approx(1e-3)


def test_train_refuses_before_any_work(tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(ConfigError, match="eval.gamma"):
        runs.train("attribute/demo_mgmrn", ["eval.gamma=foo", f"output_dir={out}"])
    assert not out.exists()


# a tiny compositional world (tests/test_compositional_run.py): rendering it takes a second or two
CZSL_WORLD = (
    "{seed: 1, n_states: 5, n_objects: 5, n_val_unseen: 2, n_test_unseen: 3, n_val_seen: 2, n_test_seen: 3, "
    "train_images: 4, val_images: 3, test_images: 3, pretrain_images: 2, n_na_images: 2}"
)
TYPOS = [
    ("attribute/demo_mgmrn", ["data.world={n_clases: 3}"], "data.world"),
    ("multilabel/demo_biam", ["data.world={sed: 3}"], "data.world"),
    ("compositional/demo_csp", ["data.world={sed: 3}"], "data.world"),
    ("compositional/demo_csp", [f"data.world={CZSL_WORLD}", "data.pretrain={stepz: 3}"], "data.pretrain"),
]


@pytest.mark.parametrize(
    ("name", "overrides", "match"), TYPOS, ids=[f"{n}:{o[-1].split('=')[0]}" for n, o, _ in TYPOS]
)
def test_embedded_world_typos_are_refused_before_any_work(tmp_path, monkeypatch, name, overrides, match):
    """``data.world`` / ``data.pretrain`` are free-form mappings checked by the dataset builder: a typo must still
    be refused before anything is rendered, pretrained or written."""
    cache, out = tmp_path / "cache", tmp_path / "runs"
    monkeypatch.setenv("UNSEEN_CACHE", str(cache))
    with pytest.raises(ConfigError, match=match):
        runs.train(name, [*overrides, f"output_dir={out}"])
    assert not out.exists()
    written = sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []
    assert not written, f"work done before the config error: {written[:5]}"


def test_cli_config_error_is_one_line_and_exit_2(tmp_path, capsys):
    # in-process (tests/test_attribute_run.py runs the CLI in a real process once for "no traceback escapes")
    out = tmp_path / "runs"
    rc = main(["train", "attribute/demo_mgmrn", "eval.gamma=foo", f"output_dir={out}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "eval.gamma" in lines[0] and "foo" in lines[0], err
    assert not out.exists()


# --------------------------------------------------------------------------------------------- 4. core vs settings
CORE_IMPORTS = (
    "unseen.config",
    "unseen.engine",
    "unseen.task",
    "unseen.registry",
    "unseen.runs",
    "unseen.io",
    "unseen.features",
    "unseen.backbones",
    "unseen.report",
)


def _is_setting(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in SETTING_PACKAGES)


def test_importing_the_core_imports_no_setting():
    code = (
        "import json, sys\n"
        f"import {', '.join(CORE_IMPORTS)}\n"
        f"settings = {SETTING_PACKAGES!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if any(m == p or m.startswith(p + '.') for p in settings))))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == []


def _imported_names(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import in ``tree`` (any depth), relative imports resolved against ``package``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]  # from unseen import attribute
        elif isinstance(node, ast.Call):  # importlib.import_module("unseen.attribute") / __import__(...)
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append((node.lineno, arg.value))
    return found


# the CLI layer is the top (core <- settings <- CLI): the command line and the own-data builders behind
# `unseen data make` (which write each setting's file layouts) may name settings; nothing below imports them
CLI_LAYER = ("cli.py", "make_data.py", "__main__.py")
CORE_FILES = sorted(p for p in SRC.glob("*.py") if p.name not in CLI_LAYER)


def test_nothing_below_the_cli_layer_imports_it():
    below = [p for p in SRC.rglob("*.py") if p.name not in CLI_LAYER]
    bad = [
        f"{p.relative_to(SRC)}:{line} imports {mod}"
        for p in below
        for line, mod in _imported_names(ast.parse(p.read_text(encoding="utf-8")), "unseen")
        if mod.split(".")[:2] in (["unseen", "cli"], ["unseen", "make_data"])
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", CORE_FILES, ids=[p.name for p in CORE_FILES])
def test_core_module_never_names_a_setting(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [
        f"{path.name}:{line} imports {mod}"
        for line, mod in _imported_names(tree, "unseen")
        if _is_setting(mod)
    ]
    assert not bad, "\n".join(bad)


def test_the_import_scanner_sees_nested_and_relative_imports():
    src = (
        "def f():\n    from unseen.attribute.data import x\n"
        "from . import multilabel\n"
        "import importlib\nimportlib.import_module('unseen.compositional')\n"
        "import unseen.attributes_like_name\n"
    )
    mods = sorted(m for _, m in _imported_names(ast.parse(src), "unseen") if _is_setting(m))
    assert mods == [
        "unseen.attribute.data",
        "unseen.attribute.data.x",
        "unseen.compositional",
        "unseen.multilabel",
    ]


# --------------------------------------------------------------------------------------------- 5. interface check
@pytest.fixture
def scratch_models():
    """Models registered inside a test are removed afterwards (the registry is process-global)."""
    before = set(MODELS)
    yield
    for key in set(MODELS) - before:
        del MODELS[key]


def test_interface_refuses_a_model_without_a_method(scratch_models):
    class ForwardOnly(nn.Module):  # a multi-label model must also provide loss()
        def __init__(self, in_dim: int, n_tokens: int, embed_dim: int, **_: Any) -> None:
            super().__init__()
            self.proj = nn.Linear(in_dim, embed_dim)

        def forward(self, x: torch.Tensor, emb: torch.Tensor, cls: torch.Tensor | None = None) -> dict:
            return {"scores": self.proj(x.mean(1)) @ emb.T}

    register_model("_registry_test_forward_only", setting="multilabel")(ForwardOnly)
    assert "_registry_test_forward_only" in list_models("multilabel")
    with pytest.raises(TypeError, match=r"does not provide loss of the multilabel interface MultilabelModel"):
        create_model("_registry_test_forward_only", setting="multilabel", in_dim=4, n_tokens=4, embed_dim=3)


def test_interface_refuses_a_closed_form_model_without_params(scratch_models):
    class NoParams:
        def __init__(self, cfg: Any = None, **_: Any) -> None:
            self.cfg = cfg

        @classmethod
        def candidates(cls, cfg: Any) -> list[dict[str, float]]:
            return [{}]

        def fit(self, features: Any, labels: Any, class_attributes: Any) -> Any:
            return self

        def scores(self, features: Any, class_attributes: Any) -> Any:
            return features @ class_attributes.T

    register_model("_registry_test_no_params", setting="attribute", fit="closed_form")(NoParams)
    with pytest.raises(TypeError, match=r"does not provide params\b"):
        create_model("_registry_test_no_params", setting="attribute")


def test_interface_refuses_a_plain_object_without_forward(scratch_models):
    class Scorer:
        def __init__(self, **_: Any) -> None:
            pass

        def __call__(self, images: Any, class_attributes: Any, **_: Any) -> dict:
            return {"scores": images @ class_attributes.T}

    register_model("_registry_test_plain_no_forward", setting="attribute")(Scorer)
    with pytest.raises(TypeError, match=r"does not provide forward"):
        create_model("_registry_test_plain_no_forward", setting="attribute")


def test_interface_refuses_an_nn_module_without_forward(scratch_models):
    """``nn.Module`` has a callable placeholder ``forward`` (``_forward_unimplemented``): a module that does not
    define forward still lacks the method and must be refused at create_model, not at the first batch."""

    class NoForward(nn.Module):
        def __init__(self, **_: Any) -> None:
            super().__init__()
            self.w = nn.Linear(3, 3)

    register_model("_registry_test_module_no_forward", setting="attribute")(NoForward)
    with pytest.raises(TypeError, match=r"does not provide forward"):
        create_model("_registry_test_module_no_forward", setting="attribute")


def test_registration_errors(scratch_models):
    class Dummy:
        pass

    with pytest.raises(ValueError, match="fit must be one of"):
        register_model("_registry_test_bad_fit", setting="attribute", fit="sometimes")
    existing = ENTRIES[0]
    with pytest.raises(KeyError, match="already registered"):
        register_model(existing.name, setting=existing.setting)(Dummy)
    assert MODELS[(existing.setting, existing.name)].builder is existing.builder
    with pytest.raises(KeyError, match="unknown model"):
        create_model("_registry_test_no_such_model", setting="attribute")
