"""Epsilon-R: our reconstruction of Epsilon (Liu et al., AAAI 2025) for multi-label zero-shot learning.

Epsilon has no public code and its method details are not public; what is known (group prompts aggregation,
global forward propagation, a learnable fusion, a ranking loss with a regulariser) is filled in from the closest
readable relatives, the first author's (ML)2P-Encoder and SDL, and every unknown is a config switch. Name results
"Epsilon-R".

Data flow (B images, N region/patch tokens of width d_in, C scored labels with D-dim label embeddings):

* stem: Linear(d_in -> d) + LayerNorm, plus a learnable N x d positional embedding;
* **GPA** (group prompts aggregation, local): G learnable group tokens prepended, ``layers`` pre-LN Transformer
  encoder layers over [GT ; X], then a single-head grouping cross-attention of the group tokens over the N tokens
  (A: B x G x N, softmax over the tokens by default), P = Linear_{d->D}(LN(GT' + A X' W_V W_O)) -> B x G x D;
* **GFP** (global forward propagation): u = mean of X' (or the encoded CLS token for ViT input) -> LN -> MLP ->
  Q: B x G' x D ("semantic diversity": several global vectors);
* **fusion**: s_c = sigmoid(a) max_g <P_g, w_c> + (1 - sigmoid(a)) max_h <Q_h, w_c>, learnable scalar a (init 0);
  ``fusion: prompt`` mixes the prompts before scoring instead;
* label embeddings w_c are L2-normalised rows handed in by the caller (seen rows in training, unseen/all at test).

``forward(x, label_embeddings, cls=None)``: x is B x N x d_in (regions x channels; BiAM h5 stores channels x
regions and the reader transposes), cls an optional B x d_in global token. Returns a dict with ``scores`` (B x C),
``local`` / ``global`` (B x C), ``prompts`` P, ``global_prompts`` Q (B x G x D, B x G' x D), ``attention`` A
(B x G x N). ``loss(out, labels, label_embeddings)`` = ranking loss + lambda_reg * regulariser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from unseen.multilabel.losses import biam_ranking_loss, orthogonality, sdl_loss, variance_l1
from unseen.registry import register_model


@dataclass
class EpsilonConfig:
    """Epsilon-R hyper-parameters (defaults are our reconstruction's choices; the paper's are unknown)."""

    name: str = "epsilon"
    dim: int = 512  # d, the token width inside the model
    groups: int = 7  # G group tokens -> G semantic prompts (the first author's (ML)2P-Encoder uses 7)
    global_groups: int = 7  # G' global semantic vectors
    layers: int = 2  # Transformer encoder layers over [GT ; X]
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    group_softmax: str = "patches"  # patches (each group attends over the tokens) | groups (GroupViT-style)
    fusion: str = "score"  # score | prompt (needs global_groups == groups)
    global_token: str = "auto"  # auto (CLS if given, else mean) | mean | cls
    pos_embed: bool = True
    loss: str = "biam"  # biam (pairwise hinge) | sdl
    reg: str = "var_l1"  # var_l1 | orth | none
    lambda_reg: float = 0.1
    margin: float = 1.0


def _check_choice(value: str, options: tuple[str, ...], key: str) -> None:
    if value not in options:
        raise ValueError(f"model.{key}: '{value}' is not one of {', '.join(options)}")


class Epsilon(nn.Module):
    def __init__(self, cfg: EpsilonConfig, in_dim: int, n_tokens: int, embed_dim: int) -> None:
        super().__init__()
        _check_choice(cfg.group_softmax, ("patches", "groups"), "group_softmax")
        _check_choice(cfg.fusion, ("score", "prompt"), "fusion")
        _check_choice(cfg.global_token, ("auto", "mean", "cls"), "global_token")
        _check_choice(cfg.loss, ("biam", "sdl"), "loss")
        _check_choice(cfg.reg, ("var_l1", "orth", "none"), "reg")
        if cfg.fusion == "prompt" and cfg.global_groups != cfg.groups:
            raise ValueError(
                "model.fusion=prompt mixes P and Q row by row: needs model.global_groups == model.groups"
            )
        self.cfg, self.in_dim, self.n_tokens = cfg, in_dim, n_tokens
        d, D = cfg.dim, embed_dim
        self.stem = nn.Sequential(nn.Linear(in_dim, d), nn.LayerNorm(d))
        self.cls_stem = nn.Sequential(nn.Linear(in_dim, d), nn.LayerNorm(d))
        self.pos = nn.Parameter(torch.zeros(n_tokens, d)) if cfg.pos_embed else None
        self.group_tokens = nn.Parameter(torch.zeros(cfg.groups, d))
        layer = nn.TransformerEncoderLayer(
            d,
            cfg.heads,
            int(d * cfg.mlp_ratio),
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.enc_norm = nn.LayerNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = nn.Linear(d, d)
        self.prompt_norm = nn.LayerNorm(d)
        self.prompt_proj = nn.Linear(d, D)
        self.gfp = nn.Sequential(
            nn.LayerNorm(d),
            nn.Linear(d, 2 * d),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(2 * d, cfg.global_groups * D),
        )
        self.alpha = nn.Parameter(torch.zeros(()))
        for p in (self.pos, self.group_tokens):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    # ---- stages (public so tests and plots can look inside)
    def encode(
        self, x: torch.Tensor, cls: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> group tokens GT' (B x G x d), tokens X' (B x N x d), global vector u (B x d)."""
        if x.dim() != 3 or x.shape[1:] != (self.n_tokens, self.in_dim):
            raise ValueError(
                f"Epsilon expects tokens B x {self.n_tokens} x {self.in_dim}, got {tuple(x.shape)}"
            )
        h = self.stem(x)
        if self.pos is not None:
            h = h + self.pos
        B, G = x.shape[0], self.cfg.groups
        seq = [self.group_tokens.expand(B, G, -1)]
        use_cls = cls is not None and self.cfg.global_token in ("auto", "cls")
        if self.cfg.global_token == "cls" and cls is None:
            raise ValueError("model.global_token=cls needs a CLS token (ViT features with '<name>-cls')")
        if use_cls:
            seq.append(self.cls_stem(cls)[:, None])
        out = self.enc_norm(self.encoder(torch.cat([*seq, h], 1)))
        gt, rest = out[:, :G], out[:, G:]
        if use_cls:
            u, tokens = rest[:, 0], rest[:, 1:]
        else:
            tokens = rest
            u = tokens.mean(1)
        return gt, tokens, u

    def group(self, gt: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GPA grouping: -> prompts P (B x G x D), attention A (B x G x N)."""
        logits = self.q(gt) @ self.k(tokens).transpose(1, 2) / math.sqrt(gt.shape[-1])
        attn = logits.softmax(-1 if self.cfg.group_softmax == "patches" else 1)
        h = self.o(attn @ self.v(tokens))
        return self.prompt_proj(self.prompt_norm(gt + h)), attn

    def global_prompts(self, u: torch.Tensor) -> torch.Tensor:
        """GFP: B x d -> Q (B x G' x D)."""
        return self.gfp(u).view(u.shape[0], self.cfg.global_groups, -1)

    def forward(
        self, x: torch.Tensor, label_embeddings: torch.Tensor, cls: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        gt, tokens, u = self.encode(x, cls)
        P, attn = self.group(gt, tokens)
        Q = self.global_prompts(u)
        w = label_embeddings.to(P.dtype)
        a = torch.sigmoid(self.alpha)
        s_loc = (P @ w.T).amax(1)
        s_glob = (Q @ w.T).amax(1)
        if self.cfg.fusion == "score":
            scores = a * s_loc + (1 - a) * s_glob
        else:
            scores = ((a * P + (1 - a) * Q) @ w.T).amax(1)
        return {
            "scores": scores,
            "local": s_loc,
            "global": s_glob,
            "prompts": P,
            "global_prompts": Q,
            "attention": attn,
        }

    def loss(
        self, out: dict[str, torch.Tensor], labels: torch.Tensor, label_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        s = out["scores"].float()
        rank = (
            biam_ranking_loss(s, labels, c.margin)
            if c.loss == "biam"
            else sdl_loss(s, labels, label_embeddings.float())
        )
        if c.reg == "none":
            reg = s.new_zeros(())
        else:
            f = variance_l1 if c.reg == "var_l1" else orthogonality
            reg = f(out["prompts"].float()) + f(out["global_prompts"].float())
        logs = {
            "rank": float(rank.detach()),
            "reg": float(reg.detach()),
            "fusion_local": float(torch.sigmoid(self.alpha.detach())),
        }
        return rank + c.lambda_reg * reg, logs


@register_model(
    "epsilon",
    setting="multilabel",
    config=EpsilonConfig,
    description="Epsilon-R: group prompts aggregation + global forward propagation (reconstruction)",
)
def build_epsilon(cfg: EpsilonConfig, in_dim: int, n_tokens: int, embed_dim: int, **_: object) -> Epsilon:
    return Epsilon(cfg, in_dim, n_tokens, embed_dim)
