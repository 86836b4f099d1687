"""Results tables and plots (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    from unseen.io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    _plt().close(fig)
    return path


def format_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], title: str = "", percent: bool = True
) -> str:
    """Fixed-width text table. ``columns`` = (key, header); floats shown x100 with one decimal if ``percent``."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if np.isnan(v):
                return "-"
            return f"{100 * v:.1f}" if percent else f"{v:.3g}"
        return "-" if v is None else str(v)

    table = [[h for _, h in columns]] + [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = [
        " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in table
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return (title + "\n" if title else "") + "\n".join(lines)


def plot_gamma_curve(sweep: Any, chosen_gamma: float, oracle: Any, path: str | Path, title: str = "") -> Path:
    """Left: S, U, H (%) over gamma with the validation-chosen gamma; right: the seen-unseen curve (AUSUC)."""
    plt = _plt()
    g = np.asarray(sweep.gammas, dtype=float)
    S, U, H = (100 * np.asarray(x, dtype=float) for x in (sweep.S, sweep.U, sweep.H))
    finite = np.isfinite(g)
    lo, hi = np.percentile(g[finite], [1, 99]) if finite.any() else (-1, 1)
    pad = 0.1 * (hi - lo + 1e-9)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    order = np.argsort(g)
    for y, lab in ((S, "S (seen)"), (U, "U (unseen)"), (H, "H")):
        ax.step(g[order], y[order], where="post", label=lab)
    ax.axvline(chosen_gamma, color="k", ls="--", lw=1, label=f"validation gamma = {chosen_gamma:.3g}")
    if oracle is not None:
        ax.axvline(
            oracle.gamma, color="grey", ls=":", lw=1, label=f"oracle (test) gamma = {oracle.gamma:.3g}"
        )
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("gamma (subtracted from seen-class scores)")
    ax.set_ylabel("per-class accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title(title or "GZSL calibrated stacking")
    o2 = np.argsort(U)
    ax2.plot(U[o2], S[o2], "-", color="C0")
    ax2.set_xlabel("U: unseen accuracy (%)")
    ax2.set_ylabel("S: seen accuracy (%)")
    ax2.set_title("seen-unseen curve (area = AUSUC)")
    ax2.set_xlim(0, 100)
    ax2.set_ylim(0, 100)
    return _save(fig, path)


def plot_attention_maps(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    level_names: Sequence[str],
    attribute_names: Sequence[str],
    path: str | Path,
    title: str = "",
) -> Path:
    """Rows = attributes, columns = the image then one attention map per level, upsampled over the image.

    ``image``: H x W x 3 in [0, 1]; ``maps[l]``: n_attributes x h x w for level l.
    """
    plt = _plt()
    n_attr, n_lev = len(attribute_names), len(maps)
    fig, axes = plt.subplots(n_attr, n_lev + 1, figsize=(2.0 * (n_lev + 1), 2.0 * n_attr), squeeze=False)
    H, W = image.shape[:2]
    for r, name in enumerate(attribute_names):
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
        for c, (m, lev) in enumerate(zip(maps, level_names)):
            a = axes[r, c + 1]
            a.imshow(image)
            a.imshow(m[r], cmap="jet", alpha=0.5, extent=(0, W, H, 0), interpolation="bilinear")
            if r == 0:
                a.set_title(lev, fontsize=8)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_label_ap(
    ap: np.ndarray, names: Sequence[str], path: str | Path, title: str = "", max_labels: int = 60
) -> Path:
    """Horizontal bars of per-label AP (%), best first; labels without a positive (AP nan) are left out.
    More than ``max_labels`` labels: the best and the worst halves are shown."""
    plt = _plt()
    ap = np.asarray(ap, dtype=float)
    ok = np.flatnonzero(np.isfinite(ap))
    order = ok[np.argsort(-ap[ok], kind="stable")]
    if len(order) > max_labels:
        order = np.concatenate([order[: max_labels // 2], order[-(max_labels - max_labels // 2) :]])
    fig, ax = plt.subplots(figsize=(6, 0.22 * len(order) + 1.2))
    y = np.arange(len(order))
    ax.barh(y, 100 * ap[order], color="C0")
    ax.set_yticks(y)
    ax.set_yticklabels([names[i] for i in order], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("average precision (%)")
    mean = 100 * np.nanmean(ap) if len(ok) else float("nan")
    ax.axvline(mean, color="k", ls="--", lw=1, label=f"mAP = {mean:.1f}")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "per-label AP", fontsize=9)
    return _save(fig, path)


def plot_topk_labels(
    image_path: str | Path,
    scores: np.ndarray,
    names: Sequence[str],
    n_seen: int,
    labels: np.ndarray | None,
    path: str | Path,
    k: int = 5,
    title: str = "",
) -> Path:
    """An image beside its top-``k`` labels (score order); unseen labels marked, ground truth ticked when known."""
    from PIL import Image

    plt = _plt()
    scores = np.asarray(scores, dtype=float)
    top = np.argsort(-scores, kind="stable")[:k]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8, 3.2), gridspec_kw={"width_ratios": [1, 1.2]})
    ax.imshow(Image.open(image_path).convert("RGB"))
    ax.axis("off")
    ax2.axis("off")
    for r, c in enumerate(top):
        unseen = c >= n_seen
        truth = "" if labels is None else {1: "  [+]", -1: "  [-]", 0: "  [?]"}[int(labels[c])]
        ax2.text(
            0.0,
            1 - (r + 0.5) / max(k, 1),
            f"{r + 1}. {names[c]}{' (unseen)' if unseen else ''}{truth}",
            color="C3" if unseen else "C0",
            fontsize=9,
            va="center",
            transform=ax2.transAxes,
        )
    ax2.set_title("top labels: blue = seen, red = unseen; [+]/[-] = annotated positive/negative", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_seen_unseen_curve(result: Any, path: str | Path, title: str = "") -> Path:
    """The compositional bias sweep: seen vs unseen accuracy (%) with its AUC and the best-HM point marked.

    ``result``: a :class:`unseen.compositional.metrics.CZSLResult` (``seen_curve``, ``unseen_curve``, ``hm_curve``)."""
    plt = _plt()
    S = 100 * np.asarray(result.seen_curve, dtype=float)
    U = 100 * np.asarray(result.unseen_curve, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.plot(U, S, "o-", ms=3, color="C0", label=f"bias sweep (AUC = {100 * result.auc:.1f})")
    ax.fill_between(U, 0, S, color="C0", alpha=0.12)
    i = int(np.argmax(np.asarray(result.hm_curve)))
    ax.plot(
        U[i],
        S[i],
        "*",
        ms=14,
        color="C3",
        label=f"best HM = {100 * result.best_hm:.1f} (S {S[i]:.1f}, U {U[i]:.1f})",
    )
    ax.set_xlabel("unseen-pair accuracy (%)")
    ax.set_ylabel("seen-pair accuracy (%)")
    ax.set_xlim(0, max(5.0, float(U.max()) * 1.1))
    ax.set_ylim(0, max(5.0, float(S.max()) * 1.1))
    ax.legend(fontsize=8)
    ax.set_title(title or "seen-unseen accuracy curve", fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- comparing runs
# config keys that do not change a run's numbers: runs differing only in these (and the seed) are one group
_NOT_THE_EXPERIMENT = ("seed", "name", "output_dir", "notes", "train.progress", "train.log_to")


def find_runs(patterns: Sequence[str | Path]) -> list[Path]:
    """Finished run folders (with a ``results.json``) named by paths or globs; a folder that is not a run is
    searched for runs below it (e.g. a demo or seed-sweep folder)."""
    import glob

    found: dict[Path, None] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern))) or []
        if not matches:
            raise FileNotFoundError(f"{pattern}: no such run folder")
        for m in map(Path, matches):
            if m.is_file() and m.name == "results.json":
                m = m.parent
            if (m / "results.json").is_file():
                found[m.resolve()] = None
            elif m.is_dir():
                found.update(dict.fromkeys(sorted(p.parent.resolve() for p in m.rglob("results.json"))))
    if not found:
        raise FileNotFoundError(f"{', '.join(map(str, patterns))}: no finished runs (results.json) found")
    return list(found)


def _experiment_key(run_dir: Path) -> str:
    """A hash of the run's config without the keys that do not change the experiment (the seed among them)."""
    import hashlib
    import json

    from unseen.config import load_yaml

    tree = load_yaml(run_dir / "config.yaml")
    for dotted in _NOT_THE_EXPERIMENT:
        *parents, last = dotted.split(".")
        node = tree
        for p in parents:
            node = node.get(p) or {}
        if isinstance(node, dict):
            node.pop(last, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _not_results(run_dir: Path, why: object) -> Exception:
    from unseen.io import DataFormatError

    return DataFormatError(f"{run_dir / 'results.json'}: not a results file of unseen ({why!r})")


def read_results(run_dir: Path) -> dict[str, Any]:
    """A finished run's ``results.json`` (a JSON object), or a DataFormatError naming it."""
    import json

    try:
        res = json.loads((run_dir / "results.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _not_results(run_dir, exc) from None
    if not isinstance(res, dict):
        raise _not_results(run_dir, f"a JSON {type(res).__name__}, not an object")
    return res


def run_record(run_dir: Path) -> dict[str, Any]:
    """One finished run, flattened for comparison: headline metrics and the labelled test-selected block."""
    res = read_results(run_dir)
    try:
        values = {
            **res["metrics"],
            **{k: v for k, v in res.get("oracle_test_selected", {}).items() if k != "note"},
        }
        return {
            "run": str(run_dir),
            "setting": res["setting"],
            "method": res["method"],
            "dataset": res["dataset"],
            "seed": res.get("seed"),
            "rule": res.get("selection", {}).get("rule", ""),
            "experiment": _experiment_key(run_dir),
            "values": {
                k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
        }
    except (KeyError, TypeError, AttributeError) as exc:
        raise _not_results(run_dir, exc) from None


def columns(setting: str, records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The setting's demo columns where it has them (its headline metrics), else every metric of the runs."""
    from unseen.registry import get_task

    try:
        demo = get_task(setting).demo
    except KeyError:
        demo = None
    present = {k for r in records for k in r["values"]}
    if demo is not None:
        cols = [(k, h) for k, h in demo.columns if k in present]
        if cols:
            return cols
    keys: dict[str, None] = {}
    for r in records:
        keys.update(dict.fromkeys(r["values"]))
    return [(k, k) for k in keys]


def mean_std_cell(records: list[dict[str, Any]], key: str) -> tuple[str, float, float | None, int] | None:
    """``key`` over the records that have it, in %: (``"mean ± std"`` cell, mean, sample std or None for one
    value, n); None when no record has it."""
    import statistics

    vals = [100 * float(r["values"][key]) for r in records if key in r["values"]]
    if not vals:
        return None
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return (f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"), mean, std, len(vals)


def compare_runs(patterns: Sequence[str | Path]) -> dict[str, Any]:
    """Runs grouped by experiment (same setting, method, dataset and config up to the seed), one row per group
    with mean ± std (sample std, n - 1) over its seeds. Returns ``{"tables": {setting: (columns, rows)}, "text",
    "markdown", "csv"}``; values in % as in the demo tables (fractions x 100)."""
    import csv
    import io

    records = [run_record(r) for r in find_runs(patterns)]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["setting"], r["method"], r["dataset"], r["experiment"]), []).append(r)
    text, md, tables = [], [], {}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["setting", "method", "dataset", "n", "seeds", "metric", "mean", "std", "selection", "runs"]
    )
    for setting in sorted({k[0] for k in groups}):
        members = [(k, g) for k, g in groups.items() if k[0] == setting]
        cols = columns(setting, [r for _, g in members for r in g])
        rows = []
        for (_, method, dataset, _), g in members:
            seeds = sorted(r["seed"] for r in g if r["seed"] is not None)
            row: dict[str, Any] = {"method": method, "dataset": dataset, "n": len(g), "seeds": seeds}
            for key, _ in cols:
                cell = mean_std_cell(g, key)
                if cell is None:
                    continue
                row[key], mean, std, n = cell
                writer.writerow(
                    [
                        setting,
                        method,
                        dataset,
                        n,
                        " ".join(map(str, seeds)),
                        key,
                        f"{mean:.4f}",
                        "" if std is None else f"{std:.4f}",
                        g[0]["rule"],
                        " ".join(r["run"] for r in g),
                    ]
                )
            row["rule"] = g[0]["rule"]
            rows.append(row)
        header = [("method", "method"), ("dataset", "dataset"), ("n", "n"), *cols]
        rows_txt = [{**r, "n": str(r["n"])} for r in rows]
        text.append(
            format_table(rows_txt, header, title=f"{setting}: mean ± std over seeds (%)", percent=False)
        )
        rules = sorted({r["rule"] for r in rows})
        text.append("selection: " + " | ".join(rules))
        md.append(f"### {setting}: mean ± std over seeds (%)\n")
        md.append("| " + " | ".join(h for _, h in header) + " |")
        md.append("|" + "---|" * len(header))
        md += ["| " + " | ".join(str(r.get(k, "-")) for k, _ in header) + " |" for r in rows_txt]
        md.append("\nselection: " + " | ".join(rules) + "\n")
        tables[setting] = (header, rows)
    return {
        "tables": tables,
        "text": "\n".join(text),
        "markdown": "\n".join(md) + "\n",
        "csv": out.getvalue(),
    }


def write_report(report: dict[str, Any], prefix: str | Path) -> list[Path]:
    """``prefix.csv`` (one line per group and metric: mean, std, seeds, runs) and ``prefix.md``."""
    from unseen.io import atomic_write_text

    paths = [Path(f"{prefix}.csv"), Path(f"{prefix}.md")]
    atomic_write_text(paths[0], report["csv"])
    atomic_write_text(paths[1], report["markdown"])
    return paths
