"""`unseen ablate`: the packaged specs (every variant validated through the config system), a real ablation on the
tiny attribute world (table recomputed from the runs' results.json), restarts, and the command line's errors."""

from __future__ import annotations

import ast
import json
import re
import statistics
from pathlib import Path

import pytest
import torch

from unseen import ablate, runs
from unseen.cli import main
from unseen.config import ConfigError
from unseen.registry import get_task, list_settings

ROOT = Path(__file__).resolve().parents[1]
SPECS = ablate.list_specs()
# the smallest attribute world of the tests (tests/test_attribute_run.py), its seed given by --worlds
WORLD = (
    "{n_classes: 10, n_unseen: 3, n_val: 2, images_per_class: 10, image_size: 32, n_pretrain_classes: 4, "
    "pretrain_images_per_class: 10}"
)
TINY = [
    f"data.world={WORLD}",
    "data.pretrain_epochs=1",
    "train.epochs=1",
    "train.batch_size=16",
    "model.tiny_widths=[8,16,16]",
    "model.width=16",
    "model.model_dim=8",
    "model.n_parts=2",
]
VARIANTS = ["full", "pooled_attributes"]


# --------------------------------------------------------------------------------------------- specs
def test_every_setting_has_a_spec_for_its_paper_method():
    assert SPECS == ["attribute/mgmrn", "compositional/refiner", "multilabel/epsilon"]
    for setting in list_settings():
        spec = ablate.load_spec(setting)  # the only spec of the setting, found by its name
        assert spec.base == f"{setting}/{get_task(setting).demo.methods[0]}"


@pytest.mark.parametrize("name", SPECS)
def test_spec_variants_load_through_the_config_system(name: str):
    setting, method = name.split("/")
    spec = ablate.load_spec(setting, method)
    configs = ablate.check_spec(spec)  # raises on an unknown key, a bad value or a no-op variant
    assert list(configs) == spec.names() and spec.names()[0] == "full"
    assert all(v.about for v in spec.variants)
    for v in spec.variants[1:]:
        assert v.overrides, v.name
        assert configs[v.name].model.name == method


def _write_spec(tmp_path: Path, text: str, setting: str = "attribute", method: str = "mgmrn") -> Path:
    path = tmp_path / setting / "ablations" / f"{method}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GOOD = "base: attribute/demo_mgmrn\nvariants:\n  - {name: full, overrides: []}\n"


@pytest.mark.parametrize(
    "variant, match",
    [
        ('{name: typo, overrides: ["model.refinment=false"]}', "variant 'typo'.*unknown key.*refinment"),
        ('{name: bad, overrides: ["model.grouping=parts2"]}', "variant 'bad'.*grouping"),
        ('{name: same, overrides: ["model.refinement=true"]}', "same config as 'full'"),
        ("{name: full, overrides: [model.refinement=false]}", "distinct"),
        ("{name: Bad Name, overrides: [model.refinement=false]}", "folder name"),
        ("{name: x, overrides: model.refinement=false}", "list of 'key=value'"),
        ("{name: x, overrides: [model.refinement=false], what: 1}", "expected a mapping"),
    ],
)
def test_a_bad_spec_fails(tmp_path: Path, variant: str, match: str):
    spec_file = _write_spec(tmp_path, GOOD + f"  - {variant}\n")
    with pytest.raises(ConfigError, match=match):
        ablate.check_spec(ablate.parse_spec(spec_file))


def test_a_spec_must_start_with_full_and_run_its_method(tmp_path: Path):
    first = _write_spec(tmp_path, "base: attribute/demo_mgmrn\nvariants:\n  - {name: a, overrides: []}\n")
    with pytest.raises(ConfigError, match="first variant must be 'full'"):
        ablate.parse_spec(first)
    other = _write_spec(tmp_path, GOOD, method="attn1")  # the base runs mgmrn, not attn1
    with pytest.raises(ConfigError, match="runs attribute/mgmrn, not attribute/attn1"):
        ablate.check_spec(ablate.parse_spec(other))
    with pytest.raises(ConfigError, match="base, variants"):
        ablate.parse_spec(_write_spec(tmp_path, "variants: []\nextra: 1\n"))


def test_specs_are_not_runnable_configs_and_are_installed():
    assert not [n for n in runs.packaged_configs() if "ablations" in n]
    # the `unseen = [...]` line of [tool.setuptools.package-data] (tomllib is 3.11+, the package supports 3.10)
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1]
    data = ast.literal_eval(re.search(r"^unseen = (\[.*\])$", section, re.M).group(1))
    pkg = ROOT / "src" / "unseen"
    installed = {p for pattern in data for p in pkg.glob(pattern)}  # setuptools globs as pathlib does
    for name in SPECS:
        setting, method = name.split("/")
        assert pkg / "configs" / setting / "ablations" / f"{method}.yaml" in installed, name


def test_cli_list_shows_the_specs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ablations (unseen ablate" in out and all(f"  {n}\n" in out for n in SPECS)


# --------------------------------------------------------------------------------------------- a real ablation
@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("ablate") / "abl"
        res = ablate.ablate(
            "attribute", variants=VARIANTS, seeds=[0, 1], worlds=[1], output=out, overrides=TINY
        )
    finally:
        torch.set_num_threads(n)
    return res


@pytest.mark.slow  # four tiny runs (~17 s): the default suite keeps under 3 minutes
def test_one_row_per_variant_with_mean_and_sample_std_of_its_runs(ablation):
    out = ablation["output"]
    assert ablation["trained"] == 4 and ablation["reused"] == 0
    assert [r["variant"] for r in ablation["rows"]] == VARIANTS
    keys = [k for k, _ in ablation["columns"][2:-1]]
    demo_keys = [k for k, _ in get_task("attribute").demo.columns]
    assert keys and keys == [k for k in demo_keys if k in keys] and "H" in keys
    for row in ablation["rows"]:
        dirs = sorted((out / row["variant"]).iterdir())
        assert [d.name for d in dirs] == ["w1-s0", "w1-s1"] and row["n"] == "2"
        results = [json.loads((d / "results.json").read_text()) for d in dirs]
        assert [r["seed"] for r in results] == [0, 1] and all(r["world"]["seed"] == 1 for r in results)
        cfg = (dirs[0] / "config.yaml").read_text()
        assert ("attribute_head: pooled" in cfg) == (row["variant"] == "pooled_attributes")
        for key in keys:
            vals = [100 * {**r["metrics"], **r.get("oracle_test_selected", {})}[key] for r in results]
            assert row[key] == f"{statistics.fmean(vals):.1f} ± {statistics.stdev(vals):.1f}", key
    # written next to the runs; the csv keeps the unrounded numbers and names the runs
    md = (out / "ablation.md").read_text()
    assert all(f"| {v} | 2 |" in md for v in VARIANTS) and "model.attribute_head=pooled" in md
    lines = (out / "ablation.csv").read_text().splitlines()
    assert lines[0].startswith("variant,overrides,n,worlds,seeds,metric,mean,std,runs")
    h_full = next(line.split(",") for line in lines if line.startswith("full,") and ",H," in line)
    assert float(h_full[6]) == pytest.approx(float(ablation["rows"][0]["H"].split(" ± ")[0]), abs=0.05)
    assert json.loads((out / "ablation.json").read_text())["overrides"] == TINY


@pytest.mark.slow  # four tiny runs (~17 s): the default suite keeps under 3 minutes
def test_restart_reuses_finished_runs_and_reruns_a_killed_one(ablation, capsys):
    out = ablation["output"]
    # a run killed before its first checkpoint: no results, no checkpoint, a stray file
    killed = out / "full" / "w1-s1"
    for f in sorted(killed.rglob("*"), reverse=True):
        if f.name != ".lock":
            f.rmdir() if f.is_dir() else f.unlink()
    (killed / "config.yaml").write_text("partial")
    argv = ["ablate", "attribute", "--variants", ",".join(VARIANTS), "--seeds", "0,1", "--worlds", "1"]
    assert main([*argv, "--output", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "1 run(s) trained, 3 reused" in printed and "pooled_attributes" in printed
    assert (killed / "results.json").is_file()
    # everything finished: nothing runs, the same table comes back
    assert main([*argv, "--output", str(out), *TINY]) == 0
    assert "0 run(s) trained, 4 reused" in capsys.readouterr().out
    # the same folder with other overrides would mix experiments: refused
    assert main([*argv, "--output", str(out), *TINY, "train.lr=0.1"]) == 2
    assert "choose another --output" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    "argv, match",
    [
        (["ablate", "nope"], "unknown setting 'nope'"),
        (["ablate", "attribute", "--method", "xyz"], "no ablation spec 'xyz'.*mgmrn"),
        (["ablate", "attribute", "--variants", "full,bogus"], "unknown variant.*bogus.*level_1"),
        (["ablate", "attribute", "--seeds", "a"], "--seeds"),
        (["ablate", "attribute", "--worlds", "1,1"], "--worlds"),
        (["ablate", "attribute", "seed=3"], "use --seeds"),
        (["ablate", "attribute", "data.world.seed=3"], "use --worlds"),
        (["ablate", "attribute", "model.n_level=1"], "unknown key.*n_level"),
    ],
)
def test_cli_errors_exit_2_with_one_line(tmp_path: Path, capsys, argv: list[str], match: str):
    assert main([*argv, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unseen ablate: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()  # refused before anything was written
