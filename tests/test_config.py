from dataclasses import dataclass, field

import pytest
import torch

from unseen.config import (
    ConfigError,
    RunConfig,
    TrainConfig,
    apply_overrides,
    build_dataclass,
    dump_yaml,
    load_config,
    parse_override,
)


@dataclass
class Inner:
    a: int = 1
    b: float = 0.5
    names: list[str] = field(default_factory=lambda: ["x"])
    opt: str | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    flag: bool = False


def test_parse_override_yaml_values():
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 1e-3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[1,2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=hello") == (["a"], "hello")
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        parse_override("nokey")


def test_build_dataclass_nested_and_types():
    cfg = build_dataclass(Outer, {"inner": {"a": 3, "b": 2, "names": ["p", "q"]}, "flag": True})
    assert cfg.inner.a == 3 and cfg.inner.b == 2.0 and isinstance(cfg.inner.b, float)
    assert cfg.inner.names == ["p", "q"] and cfg.flag is True


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        build_dataclass(Outer, {"inner": {"c": 1}})
    msg = str(e.value)
    assert "'c'" in msg and "valid keys: a, b, names, opt" in msg and "inner" in msg


@pytest.mark.parametrize(
    "values,needle",
    [
        ({"inner": {"a": "three"}}, "expected an integer"),
        ({"inner": {"b": "x"}}, "expected a number"),
        ({"flag": "yes"}, "expected true/false"),
        ({"inner": {"names": 3}}, "expected a list"),
        ({"inner": 5}, "expected a mapping"),
    ],
)
def test_type_errors(values, needle):
    with pytest.raises(ConfigError, match=needle):
        build_dataclass(Outer, values)


def test_apply_overrides_creates_sections_and_rejects_value_paths():
    tree = apply_overrides({"train": {"lr": 1.0}}, ["train.epochs=3", "model.name=mgmrn"])
    assert tree == {"train": {"lr": 1.0, "epochs": 3}, "model": {"name": "mgmrn"}}
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"train": 3}, ["train.lr=1"])


def test_run_config_from_yaml_with_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "setting: attribute\ndata: {name: shapes}\ntrain: {epochs: 3, lr: 0.1}\n"
    )
    (tmp_path / "run.yaml").write_text(
        "_base_: base.yaml\nmodel: {name: mgmrn, backbone: tiny}\ntrain: {lr: 0.2}\n"
    )
    cfg = load_config(tmp_path / "run.yaml", ["train.batch_size=4", "model.n_parts=3"])
    assert isinstance(cfg, RunConfig) and isinstance(cfg.train, TrainConfig)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (3, 0.2, 4)
    assert cfg.model.name == "mgmrn" and cfg.model.backbone == "tiny" and cfg.model.n_parts == 3
    # the resolved config round-trips through YAML
    (tmp_path / "resolved.yaml").write_text(dump_yaml(cfg))
    again = load_config(tmp_path / "resolved.yaml")
    assert dump_yaml(again) == dump_yaml(cfg)


def test_run_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.name is required|'model.name' is required"):
        load_config(None, ["data.name=shapes"])
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        load_config(None, ["data.name=shapes", "model.name=nope"])
    with pytest.raises(ConfigError, match="unknown key.*'n_levelz'.*valid keys"):
        load_config(None, ["data.name=shapes", "model.name=mgmrn", "model.n_levelz=2"])
    with pytest.raises(ConfigError, match="unknown key.*'epoch'"):
        load_config(None, ["data.name=shapes", "model.name=mgmrn", "train.epoch=2"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_overrides_after_an_option_reach_the_demo(monkeypatch, capsys):
    from unseen import runs
    from unseen.cli import main

    seen = {}
    monkeypatch.setattr(
        runs,
        "demo",
        lambda setting, out, overrides, seeds: seen.update(s=setting, o=out, ov=overrides, seeds=seeds) or "",
    )
    assert main(["demo", "compositional", "--output-dir", "/tmp/x", "data.world={seed: 1}", "seed=2"]) == 0
    assert seen == {
        "s": "compositional",
        "o": "/tmp/x",
        "ov": ["data.world={seed: 1}", "seed=2"],
        "seeds": None,
    }
    assert main(["demo", "attribute", "--seeds", "0-2", "train.epochs=1"]) == 0
    assert seen["seeds"] == [0, 1, 2] and seen["ov"] == ["train.epochs=1"]
    with pytest.raises(SystemExit):
        main(["demo", "compositional", "--output-dir", "/tmp/x", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_nested_override_merges_key_by_key_and_colon_replaces():
    from unseen.runs import resolve_config_path

    path = resolve_config_path("attribute/demo_mgmrn")
    merged = load_config(path, ["data.world={seed: 7}"])
    assert merged.data.world == {
        "seed": 7,
        "n_classes": 32,
        "n_unseen": 8,
        "n_val": 6,
    }  # the demo's world, seed 7
    assert load_config(path, ["data.world.seed=7"]).data.world == merged.data.world
    assert load_config(path, ["data.world:={seed: 7}"]).data.world == {
        "seed": 7
    }  # the whole section replaced
    assert (
        load_config(path, ["train:={epochs: 3}"]).train.lr == TrainConfig().lr
    )  # a schema section, replaced


def test_base_cycle_and_device_errors(tmp_path):
    from unseen.engine import resolve_device

    (tmp_path / "a.yaml").write_text("_base_: b.yaml\nsetting: attribute\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(
        ConfigError, match=r"_base_ includes a file that includes it again \(.*a.yaml -> .*b.yaml"
    ):
        load_config(tmp_path / "a.yaml")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device: 'cuda' but CUDA is not available"):
            resolve_device("cuda")
