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

Ablation switches (the defaults are the model above): ``branches`` = the branches that are built, scored and
regularised (``[gpa]``: no GFP MLP, s_c = max_g <P_g, w_c>; ``[gfp]``: no group tokens, grouping or prompt layers,
the encoder runs over X alone and s_c = max_h <Q_h, w_c>; the fusion applies only with both), and
``fusion_weight`` = a fixed weight w of the GPA scores instead of the learned sigmoid(a) (w = 0.5 is the learned
weight's initial value; ``unseen ablate multilabel``).

``forward(x, label_embeddings, cls=None)``: x is B x N x d_in (regions x channels; BiAM h5 stores channels x
regions and the reader transposes), cls an optional B x d_in global token. Returns a dict with ``scores`` (B x C),
``local`` / ``global`` (B x C), ``prompts`` P, ``global_prompts`` Q (B x G x D, B x G' x D), ``attention`` A
(B x G x N); a branch that is switched off has no keys (GPA: local, prompts, attention; GFP: global,
global_prompts). ``loss(out, labels, label_embeddings)`` = ranking loss + lambda_reg * regulariser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from unseen.config import ConfigError
from unseen.multilabel.losses import biam_ranking_loss, orthogonality, sdl_loss, variance_l1
from unseen.registry import register_model

BRANCHES = ("gpa", "gfp")  # group prompts aggregation (local), global forward propagation


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
    branches: list[str] = field(default_factory=lambda: list(BRANCHES))  # gpa and/or gfp (one: ablation)
    fusion_weight: float | None = None  # None = learned sigmoid(a), a init 0; w in [0, 1] = fixed GPA weight

    def __post_init__(self) -> None:
        check_config(self)


def _check_choice(value: str, options: tuple[str, ...], key: str) -> None:
    if value not in options:
        raise ConfigError(f"model.{key}: '{value}' is not one of {', '.join(options)}")


def check_config(cfg: EpsilonConfig) -> None:
    """Choices and their combinations (at config load, so that a bad value fails before a run starts)."""
    _check_choice(cfg.group_softmax, ("patches", "groups"), "group_softmax")
    _check_choice(cfg.fusion, ("score", "prompt"), "fusion")
    _check_choice(cfg.global_token, ("auto", "mean", "cls"), "global_token")
    _check_choice(cfg.loss, ("biam", "sdl"), "loss")
    _check_choice(cfg.reg, ("var_l1", "orth", "none"), "reg")
    branches = list(cfg.branches)
    if not branches or len(set(branches)) != len(branches) or not set(branches) <= set(BRANCHES):
        raise ConfigError(f"model.branches: expected gpa, gfp or both (once each), got {branches}")
    both = len(branches) == 2
    if cfg.fusion_weight is not None and not 0.0 <= cfg.fusion_weight <= 1.0:
        raise ConfigError(
            f"model.fusion_weight: expected a weight in [0, 1] or null, got {cfg.fusion_weight}"
        )
    if not both and (cfg.fusion_weight is not None or cfg.fusion != "score"):
        raise ConfigError(
            f"model.branches={branches}: one branch scores alone; fusion_weight and fusion=prompt need both"
        )
    if both and cfg.fusion == "prompt" and cfg.global_groups != cfg.groups:
        raise ConfigError(
            "model.fusion=prompt mixes P and Q row by row: needs model.global_groups == model.groups"
        )


class Epsilon(nn.Module):
    ddp_find_unused_parameters = (
        True  # the CLS stem gets no gradient on features without a CLS token (BiAM's)
    )

    def __init__(self, cfg: EpsilonConfig, in_dim: int, n_tokens: int, embed_dim: int) -> None:
        super().__init__()
        check_config(cfg)  # again: a config may have been changed after it was built
        self.cfg, self.in_dim, self.n_tokens = cfg, in_dim, n_tokens
        # creation order as with both branches: a switched-off branch only leaves its modules out
        self.has_gpa, self.has_gfp = "gpa" in cfg.branches, "gfp" in cfg.branches
        d, D = cfg.dim, embed_dim
        self.stem = nn.Sequential(nn.Linear(in_dim, d), nn.LayerNorm(d))
        self.cls_stem = nn.Sequential(nn.Linear(in_dim, d), nn.LayerNorm(d))
        self.pos = nn.Parameter(torch.zeros(n_tokens, d)) if cfg.pos_embed else None
        self.group_tokens = nn.Parameter(torch.zeros(cfg.groups, d)) if self.has_gpa else None
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
        if self.has_gpa:
            self.q = nn.Linear(d, d, bias=False)
            self.k = nn.Linear(d, d, bias=False)
            self.v = nn.Linear(d, d, bias=False)
            self.o = nn.Linear(d, d)
            self.prompt_norm = nn.LayerNorm(d)
            self.prompt_proj = nn.Linear(d, D)
        if self.has_gfp:
            self.gfp = nn.Sequential(
                nn.LayerNorm(d),
                nn.Linear(d, 2 * d),
                nn.GELU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(2 * d, cfg.global_groups * D),
            )
        if self.has_gpa and self.has_gfp:
            if cfg.fusion_weight is None:
                self.alpha = nn.Parameter(torch.zeros(()))
            else:  # fixed: a buffer, so the weight is saved with the model but never trained
                self.register_buffer("alpha", torch.logit(torch.tensor(float(cfg.fusion_weight))))
        for p in (self.pos, self.group_tokens):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    # ---- stages (public so tests and plots can look inside)
    def encode(
        self, x: torch.Tensor, cls: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> group tokens GT' (B x G x d; G = 0 without GPA), tokens X' (B x N x d), global vector u (B x d)."""
        if x.dim() != 3 or x.shape[1:] != (self.n_tokens, self.in_dim):
            raise ValueError(
                f"Epsilon expects tokens B x {self.n_tokens} x {self.in_dim}, got {tuple(x.shape)}"
            )
        h = self.stem(x)
        if self.pos is not None:
            h = h + self.pos
        B = x.shape[0]
        G = self.cfg.groups if self.group_tokens is not None else 0
        seq = [self.group_tokens.expand(B, G, -1)] if self.group_tokens is not None else []
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

    def local_weight(self) -> torch.Tensor:
        """The fusion's weight of the GPA scores: sigmoid(a), learned or fixed (``fusion_weight``)."""
        return torch.sigmoid(self.alpha)

    def forward(
        self, x: torch.Tensor, label_embeddings: torch.Tensor, cls: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        gt, tokens, u = self.encode(x, cls)
        if not self.has_gfp:  # GPA alone
            P, attn = self.group(gt, tokens)
            s_loc = (P @ label_embeddings.to(P.dtype).T).amax(1)
            return {"scores": s_loc, "local": s_loc, "prompts": P, "attention": attn}
        if not self.has_gpa:  # GFP alone
            Q = self.global_prompts(u)
            s_glob = (Q @ label_embeddings.to(Q.dtype).T).amax(1)
            return {"scores": s_glob, "global": s_glob, "global_prompts": Q}
        P, attn = self.group(gt, tokens)
        Q = self.global_prompts(u)
        w = label_embeddings.to(P.dtype)
        a = self.local_weight()
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
        elif self.has_gpa and self.has_gfp:
            f = variance_l1 if c.reg == "var_l1" else orthogonality
            reg = f(out["prompts"].float()) + f(out["global_prompts"].float())
        else:  # the one branch's rows only
            f = variance_l1 if c.reg == "var_l1" else orthogonality
            reg = f(out["prompts" if self.has_gpa else "global_prompts"].float())
        logs = {"rank": float(rank.detach()), "reg": float(reg.detach())}
        if self.has_gpa and self.has_gfp:
            logs["fusion_local"] = float(self.local_weight().detach())
        return rank + c.lambda_reg * reg, logs


@register_model(
    "epsilon",
    setting="multilabel",
    config=EpsilonConfig,
    description="Epsilon-R: group prompts aggregation + global forward propagation (reconstruction)",
)
def build_epsilon(cfg: EpsilonConfig, in_dim: int, n_tokens: int, embed_dim: int, **_: object) -> Epsilon:
    return Epsilon(cfg, in_dim, n_tokens, embed_dim)
