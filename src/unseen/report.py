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
