"""Ablations as runs: a method's components switched off one at a time, over training seeds and worlds.

An ablation spec is packaged data, one YAML per method of a setting (``configs/<setting>/ablations/<method>.yaml``):

.. code-block:: yaml

    base: attribute/demo_mgmrn          # the packaged config every variant starts from
    title: Mg-MRN ablations, ...        # the table's title
    variants:                           # in table order; the first is "full", without overrides
      - name: full
        about: what the variant is
        overrides: []
      - name: level_1
        about: level 1 alone
        overrides: ["model.levels=[1]"] # dotted overrides, as `unseen train CONFIG key=value`

:func:`ablate` expands variants x world seeds x training seeds into ordinary runs (``<output>/<variant>/w<W>-s<S>``;
world W = ``data.world.seed=W``, merged into the base's world), skips runs that finished (``results.json``), resumes
one that was stopped from its last checkpoint (or starts it again if it had none), and writes one row per variant,
mean ± std (sample std) over all its runs, to ``<output>/ablation.md`` and ``.csv``. The specs are found by the
setting's name; nothing here imports a setting.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unseen.config import ConfigError, RunConfig, apply_overrides, load_config, load_run_config, to_dict

log = logging.getLogger("unseen")

SPEC_FOLDER = "ablations"  # configs/<setting>/ablations/<method>.yaml
MANIFEST = "ablation.json"  # what an output folder was started with (a restart must match it)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")  # variant names are folder names
_SPEC_KEYS = {"base", "title", "variants"}
_VARIANT_KEYS = {"name", "about", "overrides"}
# set by the ablation itself, per run (with the option that sets them)
_RESERVED = {"seed": "--seeds", "name": "--output", "output_dir": "--output"}


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]
    about: str = ""


@dataclass(frozen=True)
class AblationSpec:
    setting: str
    method: str  # the spec file's stem = the base config's model name
    base: str  # packaged config name, e.g. attribute/demo_mgmrn
    title: str
    variants: tuple[Variant, ...]
    path: Path

    def names(self) -> list[str]:
        return [v.name for v in self.variants]


# --------------------------------------------------------------------------------------------- specs
def spec_root() -> Path:
    from unseen.runs import PACKAGE_CONFIGS

    return PACKAGE_CONFIGS


def list_specs(setting: str | None = None) -> list[str]:
    """Packaged ablation specs as ``setting/method``."""
    pattern = f"{setting}/{SPEC_FOLDER}/*.yaml" if setting else f"*/{SPEC_FOLDER}/*.yaml"
    return sorted(f"{p.parent.parent.name}/{p.stem}" for p in spec_root().glob(pattern))


def load_spec(setting: str, method: str | None = None) -> AblationSpec:
    """The spec of ``method`` for ``setting`` (``method`` may be left out when the setting has one spec)."""
    from unseen.registry import list_settings

    if setting not in list_settings():
        raise ConfigError(f"unknown setting '{setting}' (one of {', '.join(list_settings())})")
    names = [s.split("/", 1)[1] for s in list_specs(setting)]
    if not names:
        raise ConfigError(f"the {setting} setting has no ablation spec (specs: {', '.join(list_specs())})")
    if method is None:
        if len(names) > 1:
            raise ConfigError(
                f"the {setting} setting has several ablation specs: choose --method {'|'.join(names)}"
            )
        method = names[0]
    if method not in names:
        raise ConfigError(
            f"no ablation spec '{method}' for the {setting} setting (one of {', '.join(names)})"
        )
    return parse_spec(spec_root() / setting / SPEC_FOLDER / f"{method}.yaml")


def parse_spec(path: str | Path) -> AblationSpec:
    """Read and check a spec's structure (the configs it makes are checked by :func:`check_spec`)."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the ablation spec: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping with {', '.join(sorted(_SPEC_KEYS))}")
    unknown = sorted(set(tree) - _SPEC_KEYS)
    if unknown or "base" not in tree or "variants" not in tree:
        raise ConfigError(
            f"{path}: expected the keys base, variants (and title); got {', '.join(map(str, tree)) or 'none'}"
        )
    raw = tree["variants"]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: variants: expected a non-empty list")
    variants: list[Variant] = []
    for i, v in enumerate(raw):
        where = f"{path}: variants[{i}]"
        if not isinstance(v, dict) or "name" not in v or set(v) - _VARIANT_KEYS:
            raise ConfigError(f"{where}: expected a mapping with name, overrides (and about), got {v!r}")
        name, overrides = str(v["name"]), v.get("overrides") or []
        if not _NAME.match(name):
            raise ConfigError(
                f"{where}: name {name!r}: lower-case letters, digits, '_', '.', '-' (a folder name)"
            )
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError(f"{where} ({name}): overrides: expected a list of 'key=value' strings")
        variants.append(Variant(name, tuple(overrides), str(v.get("about") or "")))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: variant names must be distinct, got {names}")
    if variants[0].name != "full" or variants[0].overrides:
        raise ConfigError(f"{path}: the first variant must be 'full', without overrides")
    return AblationSpec(
        setting=path.parent.parent.name,
        method=path.stem,
        base=str(tree["base"]),
        title=str(tree.get("title") or f"{path.stem} ablations"),
        variants=tuple(variants),
        path=path,
    )


def variant_config(
    spec: AblationSpec,
    variant: Variant,
    overrides: Sequence[str] = (),
    world: int | None = None,
    seed: int | None = None,
) -> RunConfig:
    """The run config of one variant: base -> ``overrides`` (every variant's) -> the variant's -> world -> seed."""
    from unseen.runs import resolve_config_path

    extra = [*overrides, *variant.overrides]
    if world is not None:
        extra.append(f"data.world.seed={world}")
    if seed is not None:
        extra.append(f"seed={seed}")
    try:
        return load_config(resolve_config_path(spec.base), extra)
    except ConfigError as exc:
        raise ConfigError(f"{spec.path.name}, variant '{variant.name}': {exc}") from None


def check_spec(spec: AblationSpec, overrides: Sequence[str] = ()) -> dict[str, RunConfig]:
    """Load every variant through the config system: unknown keys and bad values are errors, the base must run the
    spec's method in its setting, and every variant must change the config (and differ from every other)."""
    configs = {v.name: variant_config(spec, v, overrides) for v in spec.variants}
    full = configs[spec.variants[0].name]
    if full.setting != spec.setting or full.model.name != spec.method:
        raise ConfigError(
            f"{spec.path}: base {spec.base} runs {full.setting}/{full.model.name}, not {spec.setting}/{spec.method}"
        )
    seen: dict[str, str] = {}
    for name, cfg in configs.items():
        key = json.dumps(to_dict(cfg), sort_keys=True, default=str)
        if key in seen:
            raise ConfigError(f"{spec.path}: variant '{name}' gives the same config as '{seen[key]}'")
        seen[key] = name
    return configs


def select_variants(spec: AblationSpec, names: Sequence[str] | None) -> list[Variant]:
    """The spec's variants named in ``names`` (spec order kept), all when None; an unknown name is an error."""
    if names is None:
        return list(spec.variants)
    unknown = [n for n in names if n not in spec.names()]
    if unknown or not names:
        raise ConfigError(
            f"--variants: unknown variant(s) {', '.join(unknown) or '(none given)'}; {spec.setting}/{spec.method} "
            f"has {', '.join(spec.names())}"
        )
    return [v for v in spec.variants if v.name in names]


def parse_names(text: str) -> list[str]:
    """``a,b`` -> ``["a", "b"]`` (distinct)."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"--variants: expected distinct comma-separated names, got {text!r}")
    return names


def check_overrides(overrides: Sequence[str]) -> list[str]:
    """Overrides for every variant; the keys an ablation sets itself per run are refused (with the option to use),
    since the per-run value would silently replace them."""
    for ov in overrides:
        tree = apply_overrides({}, [ov])  # every spelling: data.world.seed=1, data.world={seed: 1}, ...
        for key, option in _RESERVED.items():
            if key in tree:
                raise ConfigError(f"override '{ov}': the ablation sets {key} per run; use {option}")
        data = tree.get("data")
        world = data.get("world") if isinstance(data, dict) else None
        if isinstance(world, dict) and "seed" in world:
            raise ConfigError(f"override '{ov}': the ablation sets the world seed per run; use --worlds")
    return list(overrides)


# --------------------------------------------------------------------------------------------- running
def _run_name(cfg: RunConfig, world: int | None, seed: int) -> str:
    """``w<world seed>-s<training seed>``; without --worlds the world seed is the base config's."""
    if world is None:
        configured = getattr(cfg.data, "world", None)
        world = configured.get("seed") if isinstance(configured, dict) else None
    return f"s{seed}" if world is None else f"w{world}-s{seed}"


def _manifest(out: Path, spec: AblationSpec, variants: list[Variant], overrides: list[str]) -> None:
    """Record what the folder holds; a restart with another base, other overrides or a changed variant is refused
    (its finished runs would be reused as if they were the new ones)."""
    from unseen.io import atomic_write_json

    path = out / MANIFEST
    want: dict[str, Any] = {
        "setting": spec.setting,
        "method": spec.method,
        "base": spec.base,
        "overrides": overrides,
        "variants": {v.name: list(v.overrides) for v in variants},
    }
    if path.is_file():
        have = json.loads(path.read_text())
        for key in ("setting", "method", "base", "overrides"):
            if have.get(key) != want[key]:
                raise ConfigError(
                    f"{out} holds an ablation with {key} {have.get(key)!r}, not {want[key]!r}: "
                    "choose another --output (or remove that folder)"
                )
        for name, ovs in want["variants"].items():
            if name in have.get("variants", {}) and have["variants"][name] != ovs:
                raise ConfigError(
                    f"{out}: variant '{name}' was run with {have['variants'][name]}, the spec now says {ovs}: "
                    "choose another --output"
                )
        want["variants"] = {**have.get("variants", {}), **want["variants"]}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, want)


def _unfinished(run_dir: Path) -> bool:
    """For a folder without results.json: True to resume it (it has a checkpoint); else it is emptied, under its
    lock (a run another process is writing is never touched), and the run starts again."""
    from unseen.engine import CHECKPOINT_STATE
    from unseen.task import RunFolderClaim

    if not run_dir.is_dir():
        return False
    if any(run_dir.rglob(CHECKPOINT_STATE)):
        return True
    claim = RunFolderClaim(run_dir, resume=True)
    try:
        for f in run_dir.iterdir():
            if f.name == RunFolderClaim.LOCK:
                continue
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f)
            else:
                f.unlink()
    finally:
        claim.release()
    return False


def ablate(
    setting: str,
    method: str | None = None,
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    worlds: Sequence[int] | None = None,
    output: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run (or continue) an ablation and summarise it; see the module docstring. Returns ``text`` (the printed
    table), ``markdown``, ``csv``, ``rows``, ``output``, ``runs`` (variant -> run folders), ``trained``,
    ``reused`` and ``elapsed_s``; writes ``<output>/ablation.md``, ``.csv`` and ``ablation.json``."""
    from unseen.runs import new_run_dir, resolve_config_path, run_config

    t0 = time.perf_counter()
    spec = load_spec(setting, method)
    chosen = select_variants(spec, variants)
    extra = check_overrides(overrides)
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct seeds, got {seeds}")
    if worlds is not None and (not worlds or len(set(worlds)) != len(worlds)):
        raise ConfigError(f"--worlds: expected distinct world seeds, got {list(worlds)}")
    out = Path(output) if output else Path("runs") / f"ablate-{spec.setting}-{spec.method}"
    load_config(
        resolve_config_path(spec.base), extra
    )  # the user's overrides alone: their errors name no variant
    # every config is built (and so validated) before the first run starts
    plan: list[tuple[Variant, str, RunConfig]] = []
    for w in list(worlds) if worlds is not None else [None]:
        for s in seeds:
            for v in chosen:
                cfg = variant_config(spec, v, extra, w, s)
                cfg.output_dir, cfg.name = str(out / v.name), _run_name(cfg, w, s)
                plan.append((v, cfg.name, cfg))
    _manifest(out, spec, chosen, extra)
    trained = reused = 0
    run_dirs: dict[str, list[Path]] = {v.name: [] for v in chosen}
    for i, (v, label, cfg) in enumerate(plan, 1):
        run_dir = Path(cfg.output_dir) / cfg.name
        run_dirs[v.name].append(run_dir)
        step = f"ablate [{i}/{len(plan)}] {v.name} {label}"
        if (run_dir / "results.json").is_file():
            log.info("%s: finished before, reused", step)
            reused += 1
            continue
        resume = _unfinished(run_dir)
        log.info("%s: %s", step, "resumed from its checkpoint" if resume else "started")
        t = time.perf_counter()
        if resume:
            run_config(load_run_config(run_dir), run_dir, resume=True)
        else:
            run_config(cfg, new_run_dir(cfg))
        trained += 1
        log.info("%s: finished in %.0fs", step, time.perf_counter() - t)
    rep = summarize(spec, chosen, run_dirs, extra, seeds, worlds)
    elapsed = time.perf_counter() - t0
    rep["markdown"] += f"\nthis invocation: {trained} run(s) trained, {reused} reused, {elapsed:.0f}s\n"
    from unseen.report import write_report

    write_report(rep, out / "ablation")
    rep.update(output=out, runs=run_dirs, trained=trained, reused=reused, elapsed_s=elapsed)
    return rep


# --------------------------------------------------------------------------------------------- the table
def summarize(
    spec: AblationSpec,
    variants: Sequence[Variant],
    run_dirs: dict[str, list[Path]],
    overrides: Sequence[str] = (),
    seeds: Sequence[int] = (),
    worlds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One row per variant: mean ± std (sample std, n - 1) of each of the setting's demo-table metrics over the
    variant's runs, in % as in the demo tables; ``time`` = mean wall time of a run. Returns ``text``,
    ``markdown``, ``csv``, ``rows`` (the formatted cells) and ``columns``."""
    from unseen.registry import get_task
    from unseen.report import columns, format_table, mean_std_cell, run_record

    records = {v.name: [run_record(d) for d in run_dirs[v.name]] for v in variants}
    walls = {
        v.name: [
            float(json.loads((d / "results.json").read_text()).get("wall_time_s", 0.0))
            for d in run_dirs[v.name]
        ]
        for v in variants
    }
    cols = columns(spec.setting, [r for rs in records.values() for r in rs])
    header = [("variant", "variant"), ("n", "n"), *cols, ("time", "time/run")]
    rows: list[dict[str, Any]] = []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["variant", "overrides", "n", "worlds", "seeds", "metric", "mean", "std", "runs"])
    for v in variants:
        recs = records[v.name]
        row: dict[str, Any] = {"variant": v.name, "n": str(len(recs))}
        for key, _ in cols:
            cell = mean_std_cell(recs, key)
            if cell is None:
                continue
            row[key], mean, std, n = cell
            writer.writerow(
                [
                    v.name,
                    " ".join(v.overrides),
                    n,
                    " ".join(map(str, worlds)) if worlds is not None else "",
                    " ".join(map(str, seeds)),
                    key,
                    f"{mean:.4f}",
                    "" if std is None else f"{std:.4f}",
                    " ".join(str(d) for d in run_dirs[v.name]),
                ]
            )
        row["time"] = f"{statistics.fmean(walls[v.name]):.0f}s" if walls[v.name] else "-"
        rows.append(row)
    n_worlds = f"worlds {', '.join(map(str, worlds))}" if worlds is not None else "the configured world"
    title = f"{spec.title}: mean ± std (%) over training seeds {', '.join(map(str, seeds))} x {n_worlds}"
    legend = [f"  {v.name}: {' '.join(v.overrides) or '(the base config)'}" for v in variants]
    demo = get_task(spec.setting).demo
    notes = [f"base: {spec.base}" + (f"; every variant with {' '.join(overrides)}" if overrides else "")]
    if demo is not None and demo.footer:
        notes.append(demo.footer)
    text = "\n".join([format_table(rows, header, title=title, percent=False), "variants:", *legend, *notes])
    md = [f"### {title}", "", "| " + " | ".join(h for _, h in header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(r.get(k, "-")) for k, _ in header) + " |" for r in rows]
    md += ["", "| variant | overrides | what |", "|---|---|---|"]
    md += [f"| {v.name} | {' '.join(f'`{o}`' for o in v.overrides) or '-'} | {v.about} |" for v in variants]
    md += ["", *notes]
    return {
        "text": text,
        "markdown": "\n".join(md) + "\n",
        "csv": buf.getvalue(),
        "rows": rows,
        "columns": header,
    }
