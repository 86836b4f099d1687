"""Multi-label ZSL baselines through the same pipeline as Epsilon-R.

* ``biam``: the bi-level attention model of Narayan et al. (ICCV'21) on a region grid: region context (multi-head
  self-attention over regions, 1x1 projections, FFN) + scene context (a gate from the global feature over the
  region map), fused by a 1x1 conv; region-label scores e_f . (W w_c); an image's score for a label is the mean of
  its top-``top_k`` region scores. Deviation by default (``global_feature: mean_proj``): the VGG-19 fc7 global
  feature is replaced by a learned projection of the mean region feature (no ImageNet classifier is assumed).
  ``bn_momentum: 0.99`` reproduces the release's TensorFlow-style BatchNorm setting (PyTorch convention).
* ``global_linear``: mean-pooled regions -> Linear(d_in -> D) -> <., w_c>: a minutes-long sanity floor.

Both train with the BiAM ranking loss. Interface as :class:`unseen.multilabel.epsilon.Epsilon`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from unseen.multilabel.losses import biam_ranking_loss
from unseen.registry import register_model


def _rank_loss(
    out: dict[str, torch.Tensor], labels: torch.Tensor, margin: float
) -> tuple[torch.Tensor, dict]:
    loss = biam_ranking_loss(out["scores"].float(), labels, margin)
    return loss, {"rank": float(loss.detach())}


@dataclass
class GlobalLinearConfig:
    """The global-linear baseline: mean region feature projected into the label-embedding space."""

    name: str = "global_linear"
    dropout: float = 0.0
    margin: float = 1.0


class GlobalLinear(nn.Module):
    def __init__(self, cfg: GlobalLinearConfig, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.drop = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(in_dim, embed_dim)

    def forward(
        self, x: torch.Tensor, label_embeddings: torch.Tensor, cls: torch.Tensor | None = None
    ) -> dict:
        g = x.mean(1) if cls is None else cls
        return {"scores": self.proj(self.drop(g)) @ label_embeddings.to(x.dtype).T}

    def loss(
        self, out: dict, labels: torch.Tensor, label_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        return _rank_loss(out, labels, self.cfg.margin)


@dataclass
class BiAMConfig:
    """BiAM (Narayan et al., ICCV'21): region-level and scene-level attention over the region features."""

    name: str = "biam"
    dim: int = 256  # region feature width after the stem
    heads: int = 8  # region-context heads (8 on NUS-WIDE)
    top_k: int = 6  # image score = mean of the top-k region scores
    dropout: float = 0.1
    global_feature: str = "mean_proj"  # mean_proj (deviation, see module doc) | cls (ViT CLS token given)
    global_dim: int = 512
    bn_momentum: float = 0.1  # PyTorch default; 0.99 = the release's setting (biam_compat)
    margin: float = 1.0


class _RegionContext(nn.Module):
    """Multi-head self-attention over regions with per-region (1x1) projections, residual, FFN with residual."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.dim={dim} must be divisible by model.heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # B x N x dim
        B, N, d = h.shape
        q, k, v = self.qkv(h).view(B, N, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        h = h + self.drop(self.out(a.transpose(1, 2).reshape(B, N, d)))
        return h + self.ffn(h)


class BiAM(nn.Module):
    def __init__(self, cfg: BiAMConfig, in_dim: int, n_tokens: int, embed_dim: int) -> None:
        super().__init__()
        side = int(round(math.sqrt(n_tokens)))
        if side * side != n_tokens:
            raise ValueError(f"BiAM works on a square region grid; got {n_tokens} tokens")
        if cfg.global_feature not in ("mean_proj", "cls"):
            raise ValueError(f"model.global_feature: '{cfg.global_feature}' is not one of mean_proj, cls")
        self.cfg, self.side = cfg, side
        d, m = cfg.dim, cfg.bn_momentum
        self.stem = nn.Sequential(
            nn.Conv2d(in_dim, d, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(d, eps=1e-3, momentum=m)
        )
        self.region = _RegionContext(d, cfg.heads, cfg.dropout)
        self.global_in = nn.Sequential(nn.Linear(in_dim, cfg.global_dim), nn.ReLU())
        self.scene_qv = nn.Conv2d(d, d, 1)  # q and v share this conv (as in the release)
        self.scene_k = nn.Sequential(nn.Dropout(0.2), nn.Linear(cfg.global_dim, d))
        self.scene_refine = nn.Sequential(
            nn.Conv2d(d, d, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(d, eps=1e-3, momentum=m)
        )
        self.fuse = nn.Conv2d(2 * d, 2 * d, 1)
        self.label_proj = nn.Linear(embed_dim, 2 * d)

    def regions(self, x: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        """Fused region features e_f: B x N x 2*dim."""
        B, N, C = x.shape
        grid = x.transpose(1, 2).reshape(B, C, self.side, self.side)
        h = self.stem(grid)
        e_r = self.region(h.flatten(2).transpose(1, 2)).transpose(1, 2).reshape_as(h)
        if self.cfg.global_feature == "cls":
            if cls is None:
                raise ValueError("model.global_feature=cls needs a CLS token (ViT features)")
            g = self.global_in(cls)
        else:
            g = self.global_in(x.mean(1))
        qv = F.leaky_relu(self.scene_qv(h))
        gate = torch.sigmoid(qv.mean((2, 3)) * self.scene_k(g))
        c = gate[:, :, None, None] * qv
        e_g = c + self.scene_refine(c)
        e_f = F.leaky_relu(self.fuse(torch.cat([e_r, e_g], 1)), 0.2)
        return e_f.flatten(2).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, label_embeddings: torch.Tensor, cls: torch.Tensor | None = None
    ) -> dict:
        e = self.regions(x, cls)
        region_scores = e @ self.label_proj(label_embeddings.to(e.dtype)).T  # B x N x C
        k = min(self.cfg.top_k, region_scores.shape[1])
        return {"scores": region_scores.topk(k, dim=1).values.mean(1), "region_scores": region_scores}

    def loss(
        self, out: dict, labels: torch.Tensor, label_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        return _rank_loss(out, labels, self.cfg.margin)


@register_model(
    "global_linear",
    setting="multilabel",
    config=GlobalLinearConfig,
    description="mean-pooled regions projected onto label embeddings (sanity floor)",
)
def build_global_linear(
    cfg: GlobalLinearConfig, in_dim: int, n_tokens: int, embed_dim: int, **_: object
) -> GlobalLinear:
    return GlobalLinear(cfg, in_dim, embed_dim)


@register_model(
    "biam",
    setting="multilabel",
    config=BiAMConfig,
    description="BiAM region + scene context attention, top-k region pooling",
)
def build_biam(cfg: BiAMConfig, in_dim: int, n_tokens: int, embed_dim: int, **_: object) -> BiAM:
    return BiAM(cfg, in_dim, n_tokens, embed_dim)
