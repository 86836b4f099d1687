"""Attribute-setting baselines: the single-level attribute-attention network and ESZSL."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg

from unseen.attribute.mgmrn import MgMRN, MgMRNConfig
from unseen.config import ConfigError
from unseen.registry import register_model


# --------------------------------------------------------------------------------------------- attn1
@dataclass
class Attn1Config(MgMRNConfig):
    """Mg-MRN reduced to one level (C5), no mutual refinement and no grouping unit."""

    name: str = "attn1"
    levels: list[int] = field(default_factory=lambda: [3])
    grouping: str = "none"
    refinement: bool = False


@register_model("attn1", setting="attribute", config=Attn1Config)
class Attn1(MgMRN):
    """Single-level attribute-attention baseline: C5 -> conv block -> attribute-query decoder -> cosine head.

    Same code as :class:`MgMRN` with ``levels=[3]``, ``grouping='none'``, ``refinement=false``.
    """


# --------------------------------------------------------------------------------------------- ESZSL
def _default_grid() -> list[float]:
    return [float(v) for v in range(-3, 4)]


@dataclass
class ESZSLConfig:
    """ESZSL (Romera-Paredes & Torr, ICML'15) on globally pooled backbone features."""

    name: str = "eszsl"
    alpha: float = 3.0  # log10 of gamma, the feature-space ridge (used when search=false / no validation)
    beta: float = 0.0  # log10 of lambda, the attribute-space ridge
    search: bool = True  # pick (alpha, beta) on validation over alpha_grid x beta_grid
    alpha_grid: list[float] = field(default_factory=_default_grid)
    beta_grid: list[float] = field(default_factory=_default_grid)
    backbone: str = (
        "resnet101"  # resnet101 | resnet50 | tiny | res101.mat (the dataset's own pooled features)
    )
    backbone_weights: str | None = None
    pretrained: bool = False
    allow_random_init: bool = False  # real datasets refuse a backbone without weights unless this is set
    tiny_widths: list[int] = field(default_factory=lambda: [32, 64, 128])

    def __post_init__(self) -> None:
        if self.search and (not self.alpha_grid or not self.beta_grid):
            raise ConfigError(f"model '{self.name}': search=true needs non-empty alpha_grid and beta_grid")


def eszsl_solve(X: np.ndarray, Y: np.ndarray, S: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """V = (X^T X + gamma I)^-1 X^T Y S (S^T S + lam I)^-1 (rows = samples; S: Z x A class attributes); D x A."""
    X, Y, S = (np.asarray(a, dtype=np.float64) for a in (X, Y, S))
    D, A = X.shape[1], S.shape[1]
    left = X.T @ X + gamma * np.eye(D)
    right = S.T @ S + lam * np.eye(A)
    middle = X.T @ Y @ S  # D x A
    W = scipy.linalg.solve(left, middle, assume_a="pos")  # (X^T X + gI)^-1 X^T Y S
    return scipy.linalg.solve(right, W.T, assume_a="pos").T  # ... (S^T S + lI)^-1 (both factors symmetric)


@register_model("eszsl", setting="attribute", config=ESZSLConfig, fit="closed_form")
class ESZSL:
    """Embarrassingly simple ZSL, closed form (Romera-Paredes & Torr, ICML'15, eq. 8, sec. 3.2).

    Variant: the paper's closed form with the third regulariser weight set to ``beta = gamma * lambda``, i.e.
    ``V = (X^T X + gamma I)^-1 X^T Y S (S^T S + lambda I)^-1`` with ``gamma = 10**alpha``, ``lambda = 10**beta``,
    ``Y`` in {-1, +1} (one +1 per row at the label's column; seen classes only), raw (unnormalised) features and
    class attributes as given. Scores: ``X V S_all^T`` (N x C, any class rows, e.g. all classes for GZSL).
    """

    def __init__(
        self, cfg: ESZSLConfig | None = None, alpha: float | None = None, beta: float | None = None, **_: Any
    ) -> None:
        self.cfg = cfg or ESZSLConfig()
        self.alpha = float(self.cfg.alpha if alpha is None else alpha)
        self.beta = float(self.cfg.beta if beta is None else beta)
        self.V: np.ndarray | None = None

    @staticmethod
    def grid(cfg: ESZSLConfig | None = None) -> list[tuple[float, float]]:
        """(alpha, beta) candidates: 10^{-3..3} x 10^{-3..3} by default; just (alpha, beta) when search=false."""
        cfg = cfg or ESZSLConfig()
        if not cfg.search:
            return [(float(cfg.alpha), float(cfg.beta))]
        return [(float(a), float(b)) for a, b in itertools.product(cfg.alpha_grid, cfg.beta_grid)]

    @classmethod
    def candidates(cls, cfg: ESZSLConfig | None = None) -> list[dict[str, float]]:
        """The hyper-parameters validation chooses from (the closed-form protocol)."""
        return [{"alpha": a, "beta": b} for a, b in cls.grid(cfg)]

    def params(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta}

    def fit(self, features: np.ndarray, labels: np.ndarray, class_attributes: np.ndarray) -> ESZSL:
        """``features`` N x D, ``labels`` N indices into the rows of ``class_attributes`` (S x A, seen classes)."""
        X = np.asarray(features, dtype=np.float64)
        S = np.asarray(class_attributes, dtype=np.float64)
        y = np.asarray(labels).astype(np.int64).ravel()
        if X.ndim != 2 or S.ndim != 2 or len(y) != len(X):
            raise ValueError(
                f"ESZSL.fit: expected features N x D, labels N, class_attributes S x A; got "
                f"{X.shape}, {y.shape}, {S.shape}"
            )
        if len(y) and (y.min() < 0 or y.max() >= len(S)):
            raise ValueError(
                f"ESZSL.fit: labels must index the {len(S)} rows of class_attributes "
                f"(got values in [{y.min()}, {y.max()}])"
            )
        Y = -np.ones((len(y), len(S)))
        Y[np.arange(len(y)), y] = 1.0
        self.V = eszsl_solve(X, Y, S, 10.0**self.alpha, 10.0**self.beta)
        return self

    def scores(self, features: np.ndarray, class_attributes: np.ndarray) -> np.ndarray:
        """N x C compatibility scores x^T V s_c."""
        if self.V is None:
            raise RuntimeError("ESZSL.scores: call fit() first")
        X = np.asarray(features, dtype=np.float64)
        return X @ self.V @ np.asarray(class_attributes, dtype=np.float64).T


__all__ = ["Attn1", "Attn1Config", "ESZSL", "ESZSLConfig", "eszsl_solve"]
