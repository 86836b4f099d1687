"""MkDocs hooks: pages generated from the code at build time, so that they cannot drift from it.

* ``reference/configuration.md``: every config key (the run, ``train``, each setting's sections, each registered
  dataset and model, the embedded worlds' nested mappings) from the config dataclasses: field, type, default and
  the field's comment in the source.
* ``reference/packaged-configs.md``: the YAML files shipped in the package.
* ``reference/cli.md``: the ``--help`` of ``unseen`` and of every sub-command, from the CLI's parser.
* ``changelog.md``: ``CHANGELOG.md`` at the repository root.

The API pages (mkdocstrings) show reST roles such as ``:class:`X``` literally; ``on_page_content`` drops the
role and keeps the code span.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import os
import re
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Any

import yaml
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # a checkout without `pip install -e .` still builds
    sys.path.insert(0, str(ROOT / "src"))


# --------------------------------------------------------------------------------------------- field docs
def _class_source(cls: type) -> tuple[ast.ClassDef, dict[int, str]] | None:
    """The class's AST and its comments by line (both relative to the class source)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return None
    tree = ast.parse(src)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    if node is None:
        return None
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    return node, comments


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the ``# ...`` comments on a field's lines (a field formatted over several lines
    keeps its comment anywhere inside); a subclass that only changes a default inherits the parent's comment."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or "__dataclass_fields__" not in vars(klass):
            continue
        parsed = _class_source(klass)
        if parsed is None:
            continue
        node, comments = parsed
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                end = stmt.end_lineno or stmt.lineno
                text = " ".join(comments[i] for i in range(stmt.lineno, end + 1) if i in comments)
                if text:
                    out[stmt.target.id] = text
    return out


def class_doc(cls: type) -> str:
    """The docstring written in the source (not the signature dataclasses generate when there is none)."""
    parsed = _class_source(cls)
    doc = ast.get_docstring(parsed[0]) if parsed else None
    return inspect.cleandoc(doc) if doc else ""


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if v else '""'
    if isinstance(v, (list, tuple, dict)):
        return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
    return repr(v)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _value(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _value(f.default_factory())
    return "(required)"


def _type(f: dataclasses.Field) -> str:
    t = f.type
    return t if isinstance(t, str) else getattr(t, "__name__", str(t)).replace("typing.", "")


def _code(text: str) -> str:
    """A code span (Python-Markdown's tables do not split cells on pipes inside one)."""
    tick = "``" if "`" in text else "`"
    return f"{tick}{text.replace(chr(10), ' ')}{tick}"


def _rst_to_md(text: str, one_line: bool = True) -> str:
    """Docstring or comment prose as Markdown: reST roles and double backticks become code spans; outside code
    spans, characters Markdown would read as HTML, emphasis or a table cell border are escaped."""
    text = re.sub(r":(?:class|func|meth|attr|mod|data|obj):`~?([^`]+)`", r"`\1`", text)
    parts = text.replace("``", "`").split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        p = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        parts[i] = p.replace("*", "\\*").replace("_", "\\_").replace("|", "\\|")
    text = "`".join(parts)
    return text.replace("\n", " ") if one_line else text


SECTION_LINKS = {
    "data": "[datasets](#data)",
    "model": "[models](#model)",
    "train": "[train](#train)",
    "eval": "[evaluation sections](#eval)",
    "features": "[evaluation sections](#eval)",
}


def field_table(cls: type, prefix: str) -> str:
    comments = field_comments(cls)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        desc = _rst_to_md(comments.get(f.name, ""))
        if cls.__name__ == "RunConfig" and f.name in SECTION_LINKS:  # sections: documented below, not inline
            kind, default = "section", "-"
            desc = (desc + "; " if desc else "") + "see " + SECTION_LINKS[f.name]
        else:
            kind, default = _code(_type(f)), _code(_default(f))
        rows.append(f"| {_code(prefix + f.name)} | {kind} | {default} | {desc} |")
    return "\n".join(rows)


def nested_config(owner: type, comment: str) -> type | None:
    """A free-form mapping field whose comment names a config class (``AttributeWorldConfig overrides``): that
    class, looked up in the owner's module."""
    module = sys.modules.get(owner.__module__)
    for name in re.findall(r"\b([A-Z]\w*Config)\b", comment):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            return cls
    return None


def summary(entry: Any) -> str:
    """The registry's one-line description, completed to the first paragraph when it is the docstring's first
    line (a sentence may go on past it)."""
    doc = inspect.getdoc(entry.builder) or ""
    lines = doc.split("\n\n")[0].split("\n")
    if lines and lines[0].strip() == entry.description:
        return " ".join(line.strip() for line in lines)
    return entry.description


# --------------------------------------------------------------------------------------------- the pages
def _section(title: str, anchor: str, cls: type, prefix: str, intro: str = "", level: int = 3) -> list[str]:
    doc = _rst_to_md(class_doc(cls), one_line=False)
    out = [f"{'#' * level} {title} {{#{anchor}}}", ""]
    if intro:
        out += [intro, ""]
    out += [f"Schema: `{cls.__module__}.{cls.__qualname__}`." + (f" {doc}" if doc else ""), ""]
    out += [field_table(cls, prefix), ""]
    return out


def configuration_page() -> str:
    from unseen.config import EvalConfig, RunConfig, TrainConfig
    from unseen.registry import DATASETS, MODELS, get_task, list_settings

    settings = list_settings()  # loads the built-in settings (and registers their models and datasets)
    out = [
        "# Configuration reference",
        "",
        "Generated from the config dataclasses when this site is built; do not edit by hand. A run config is a YAML",
        "file with the sections below; `key.sub=value` arguments after the config name override single keys",
        "(`unseen train attribute/demo_mgmrn train.epochs=4 model.n_parts=3`). Unknown keys are rejected with the",
        "list of valid ones; values are checked when the config is loaded. `data` and `model` are chosen by their",
        "`name`, and their keys depend on it; `eval` and `features` depend on the `setting`.",
        "",
        "## Run {#run}",
        "",
    ]
    out += _section("Top-level keys", "run-keys", RunConfig, "", level=3)
    out += _section(
        "train", "train", TrainConfig, "train.", "The training engine, shared by every setting.", 2
    )
    out += ["## Evaluation sections {#eval}", ""]
    for setting in settings:
        for key, schema in get_task(setting).sections.items():
            note = " (the common one)" if schema is EvalConfig else ""
            out += _section(
                f"{setting}: {key}", f"{setting}-{key}", schema, f"{key}.", f"Setting `{setting}`{note}."
            )
    nested: list[tuple[str, str, type]] = []
    for section, table in (("data", DATASETS), ("model", MODELS)):
        title = "Datasets (`data`)" if section == "data" else "Models (`model`)"
        out += [f"## {title} {{#{section}}}", ""]
        for (setting, name), entry in sorted(table.items()):
            anchor = f"{section}-{setting}-{name}".replace("_", "-")
            head = f"{setting}: {section}.name: {name}"
            if entry.config is None:
                out += [f"### {head} {{#{anchor}}}", "", entry.description, "", "No keys besides `name`.", ""]
                continue
            intro = _rst_to_md(summary(entry))
            if section == "model" and entry.fit != "engine":
                intro += f" (fit: `{entry.fit}`)"
            out += _section(head, anchor, entry.config, f"{section}.", intro)
            if section == "data":
                comments = field_comments(entry.config)
                for f in dataclasses.fields(entry.config):
                    sub = nested_config(entry.config, comments.get(f.name, ""))
                    if _type(f) == "dict" and sub is not None:
                        nested.append(
                            (f"{setting}: data.{f.name} (data.name: {name})", f"data.{f.name}.", sub)
                        )
    if nested:
        out += [
            "## Embedded worlds {#worlds}",
            "",
            "The `shapes` datasets take these mappings; every key changes the rendered data (or the pretrained",
            "model), so keep them fixed across the methods you compare.",
            "",
        ]
        for title, prefix, cls in nested:
            anchor = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
            out += _section(title, anchor, cls, prefix)
    out += [
        "## Packaged configs {#packaged}",
        "",
        "The configs shipped with unseen, with their full text: [packaged configs](packaged-configs.md).",
        "",
    ]
    return "\n".join(out) + "\n"


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def config_anchor(name: str) -> str:
    return name.replace("/", "-").replace("_", "-")


def packaged_configs_page() -> str:
    from unseen.runs import PACKAGE_CONFIGS, packaged_configs

    names = packaged_configs()
    fragments = sorted(f"{f.parent.name}/{f.stem}" for f in PACKAGE_CONFIGS.glob("*/_*.yaml"))
    out = [
        "# Packaged configs",
        "",
        "Generated from the YAML files shipped in the package when this site is built. Run one with",
        "`unseen train NAME key=value ...`; `unseen list` lists them. The `_base_*` fragments hold what several",
        "configs share and are included with `_base_:`; they are not runnable. Paths such as `/path/to/...` are",
        "placeholders to override.",
        "",
        "| name | description |",
        "|---|---|",
    ]
    out += [
        f"| [`{n}`](#{config_anchor(n)}) | {_rst_to_md(_first_comment(PACKAGE_CONFIGS / f'{n}.yaml'))} |"
        for n in names
    ]
    out.append("")
    for title, group in (("Runnable configs", names), ("Fragments", fragments)):
        out += [f"## {title}", ""]
        for name in group:
            text = (PACKAGE_CONFIGS / f"{name}.yaml").read_text(encoding="utf-8").rstrip()
            out += [f"### `{name}` {{#{config_anchor(name)}}}", "", "```yaml", text, "```", ""]
    return "\n".join(out) + "\n"


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:  # argparse has no public accessor for sub-commands
        if isinstance(action, argparse._SubParsersAction):
            out += list(action.choices.items())
    return out


def cli_page() -> str:
    from unseen.cli import build_parser

    out = [
        "# Command line",
        "",
        "The `--help` of every command, generated from the parser when this site is built. Config overrides",
        "(`key=value`) are described in the [configuration reference](configuration.md).",
        "",
    ]

    def walk(parser: argparse.ArgumentParser, path: str, level: int) -> None:
        anchor = path.replace(" ", "-")
        help_text = parser.format_help().rstrip()
        out.extend([f"{'#' * level} `{path}` {{#{anchor}}}", "", "```text", help_text, "```", ""])
        for name, sub in _subparsers(parser):
            walk(sub, f"{path} {name}", min(level + 1, 3))

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps --help to the terminal; the page has a fixed width
    try:
        walk(build_parser(), "unseen", 2)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(out) + "\n"


def on_files(files: Files, config: Any) -> Files:
    pages = {
        "reference/configuration.md": configuration_page(),
        "reference/packaged-configs.md": packaged_configs_page(),
        "reference/cli.md": cli_page(),
        "changelog.md": (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"),
    }
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    return files


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri.startswith("reference/api/"):
        html = re.sub(r":(?:class|func|meth|attr|mod|data|obj|exc):(<code>)~?", r"\1", html)
    return html
