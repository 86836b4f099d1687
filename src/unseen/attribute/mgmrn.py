"""Mg-MRN: Multi-Granularity Mutual Refinement Network (arXiv 2511.08163).

Follows the released code (NingWang2049/Mg-MRN), completed from its parents ReZSL (FouriYe/ReZSL-TIP23) and
GEM-ZSL where the release lacks files.

Ablation switch (not in the release; the default is the model as described): ``attribute_head='pooled'`` replaces
each level's visual-semantic decoder (VSD: attribute queries from the word vectors attending over the level's
tokens) by a linear read-out of the same tokens averaged with equal weights (:class:`PooledAttributes`), so an
ablation measures what the attribute-specific attention adds (``unseen ablate attribute``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unseen.backbones import build_backbone, n_halvings
from unseen.config import ConfigError
from unseen.registry import register_model

NORM_EPS = 1e-10  # release: x / (||x|| + 1e-10) in the cosine head and the normalised MSE


# --------------------------------------------------------------------------------------------- config
@dataclass
class MgMRNConfig:
    """Mg-MRN settings (defaults: the release's shape-consistent wiring, with `parts` grouping instead of its
    `collapsed` no-op; see :class:`MgMRN`)."""

    name: str = "mgmrn"
    backbone: str = "resnet101"  # resnet101 | resnet50 | tiny
    backbone_weights: str | None = None  # local .safetensors/.pth (torchvision keys)
    pretrained: bool = False  # torchvision IMAGENET1K_V1 when no weights file is given (online only)
    allow_random_init: bool = False  # real datasets refuse a backbone without weights unless this is set
    tiny_widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    width: int = 2048  # channels of the level maps F_l (and of R_l, Z_l)
    model_dim: int = 1024  # VSD model dimension M
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])  # 1 = C3, 2 = C4, 3 = C5 (ascending)
    n_parts: int = 5  # K of the grouping unit
    grouping: str = "parts"  # parts | collapsed (release: x/K) | none
    refinement: bool = True  # SCAM refinement of finer levels by coarser ones (MRM)
    mrm_detach: bool = True  # stop-gradient on the refinement inputs (release)
    mrm_bidirectional: bool = False  # also refine the coarsest level by the finer ones
    down: str = "bilinear"  # bilinear (align_corners=True, release) | avgpool
    tau: float = 20.0  # cosine scale (CUB 20, SUN 25, AWA2 20)
    lam: float = 0.1  # weight of the normalised MSE (CUB 0.1, SUN 1.0, AWA2 1.0)
    level_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # score weights w_l
    step_mode: str = "joint"  # joint (one step on sum of L_l) | sequential (release: one step per level)
    attention_scale: bool = False  # release: no 1/sqrt(M) in the VSD softmax
    attribute_head: str = "vsd"  # vsd (attribute queries) | pooled (ablation: Linear of the mean token)

    def __post_init__(self) -> None:
        where = f"model '{self.name}'"
        lv = list(self.levels)
        if not lv or any(v not in (1, 2, 3) for v in lv) or lv != sorted(set(lv)):
            raise ConfigError(f"{where}.levels: expected an ascending subset of [1, 2, 3], got {lv}")
        choices = {
            "grouping": ("parts", "collapsed", "none"),
            "down": ("bilinear", "avgpool"),
            "step_mode": ("joint", "sequential"),
            "attribute_head": ("vsd", "pooled"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"{where}.{key}: expected one of {', '.join(allowed)}, got {getattr(self, key)!r}"
                )
        if len(self.level_weights) not in (len(lv), 3):
            raise ConfigError(
                f"{where}.level_weights: expected {len(lv)} (one per entry of levels) or 3 "
                f"(one per level 1..3) numbers, got {list(self.level_weights)}"
            )
        for key in ("width", "model_dim", "n_parts"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{where}.{key}: must be positive, got {getattr(self, key)}")
        if self.mrm_bidirectional and not self.refinement:
            raise ConfigError(f"{where}.mrm_bidirectional: needs refinement=true")

    def weight_of(self, level: int) -> float:
        """Score weight of level ``level`` (1..3): positional if one weight per entry of ``levels``, else by id."""
        if len(self.level_weights) == len(self.levels):
            return float(self.level_weights[list(self.levels).index(level)])
        return float(self.level_weights[level - 1])


# --------------------------------------------------------------------------------------------- parts
def gn_groups(channels: int) -> int:
    """GroupNorm(32) as released; widths not divisible by 32 use gcd(32, channels) groups."""
    return 32 if channels % 32 == 0 else math.gcd(32, channels)


def _no_autocast(t: torch.Tensor):
    if (
        t.device.type == "meta"
    ):  # no autocast backend for meta tensors (shape/FLOP analysis, see the benchmark)
        return contextlib.nullcontext()
    return torch.autocast(t.device.type, enabled=False)


class ConvBlock(nn.Module):
    """Conv3x3 (no bias) -> GroupNorm -> ReLU -> optional x0.5 downsampling (the release's RFM block)."""

    def __init__(self, cin: int, cout: int, downsample: bool, down: str = "bilinear") -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.norm = nn.GroupNorm(gn_groups(cout), cout)
        self.downsample, self.down = downsample, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        if not self.downsample:
            return x
        h, w = (
            (x.shape[-2] + 1) // 2,
            (x.shape[-1] + 1) // 2,
        )  # = x0.5 for even sizes, ceil like a stride-2 conv
        if self.down == "avgpool":
            return F.avg_pool2d(x, 2, 2, ceil_mode=True)
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)


class GroupingUnit(nn.Module):
    """Region grouping of Huang & Li (CVPR'20): K centres, smoothing factors beta_k = sigmoid(s_k)."""

    def __init__(self, channels: int, n_parts: int) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.empty(n_parts, channels))
        self.smooth = nn.Parameter(torch.zeros(n_parts))
        nn.init.kaiming_normal_(self.centres)
        with torch.no_grad():
            self.centres.clamp_(min=1e-5)

    @property
    def n_parts(self) -> int:
        return self.centres.shape[0]

    def assign_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Release assignment on raw features: softmax_k(min(0, 2c^T x - |x|^2 - |c|^2) / beta_k); B x K x HW."""
        with _no_autocast(x):
            x = x.float().flatten(2)
            c = self.centres.float()
            cx = torch.einsum("kc,bcn->bkn", c, x)
            logits = (2 * cx - x.pow(2).sum(1, keepdim=True) - c.pow(2).sum(1).view(1, -1, 1)).clamp(max=0.0)
            return torch.softmax(logits / torch.sigmoid(self.smooth.float()).view(1, -1, 1), dim=1)

    def assign_normalised(self, f: torch.Tensor) -> torch.Tensor:
        """`parts` assignment: softmax_k(-|f_hat - c_hat|^2 / beta_k) on L2-normalised pixels/centres; B x K x HW."""
        with _no_autocast(f):
            fh = F.normalize(f.float().flatten(2), dim=1)
            ch = F.normalize(self.centres.float(), dim=1)
            d2 = (
                fh.pow(2).sum(1, keepdim=True)
                + ch.pow(2).sum(1).view(1, -1, 1)
                - 2 * torch.einsum("kc,bcn->bkn", ch, fh)
            )
            return torch.softmax(-d2 / torch.sigmoid(self.smooth.float()).view(1, -1, 1), dim=1)

    def collapsed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Release output (1/K) sum_k a_k x = x / K (assignments sum to one); returns (output, assignment)."""
        a = self.assign_raw(x)
        B, K, _ = a.shape
        out = x * (a.sum(1).view(B, 1, *x.shape[-2:]) / K).to(x.dtype)
        return out, a

    def parts(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Part tokens z_k = sum_p a_kp f_p / (sum_p a_kp + 1e-6): (B x K x C, assignment B x K x HW)."""
        a = self.assign_normalised(f)
        with _no_autocast(f):
            z = torch.bmm(a, f.float().flatten(2).transpose(1, 2)) / (a.sum(-1, keepdim=True) + 1e-6)
        return z, a


class LevelModule(nn.Module):
    """MgM of one level: grouping unit + conv block(s), X_l (C_in) -> F_l (width x H5 x W5) [+ part tokens]."""

    def __init__(self, cin: int, width: int, n_down: int, grouping: str, n_parts: int, down: str) -> None:
        super().__init__()
        self.grouping = grouping
        self.group = None
        if grouping == "collapsed":
            self.group = GroupingUnit(cin, n_parts)  # centres on C_in, as released
        elif grouping == "parts":
            self.group = GroupingUnit(width, n_parts)
        n_blocks = max(1, n_down)
        self.blocks = nn.Sequential(
            *[
                ConvBlock(cin if i == 0 else width, width, downsample=i < n_down, down=down)
                for i in range(n_blocks)
            ]
        )

    def forward(self, x: torch.Tensor, with_parts: bool = True) -> tuple[torch.Tensor, Any, Any]:
        assign = parts = None
        if self.grouping == "collapsed":
            x, assign = self.group.collapsed(x)  # type: ignore[union-attr]
        f = self.blocks(x)
        if self.grouping == "parts" and with_parts:
            parts, assign = self.group.parts(f)  # type: ignore[union-attr]
        return f, parts, assign


class SCAM(nn.Module):
    """Spatial-channel attention as released: Y = W1*X; Y * sigmoid(MLP(GAP Y)) * sigmoid(W3*Y); no residual."""

    def __init__(self, cin: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.proj.weight, a=1)  # Caffe2 XavierFill
        self.fc1 = nn.Linear(channels, channels)
        self.fc2 = nn.Linear(channels, channels)
        self.spatial = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean(dim=(2, 3))))))
        return y * gate[:, :, None, None] * torch.sigmoid(self.spatial(y))


class VSD(nn.Module):
    """Visual-semantic decoder as released: attribute queries attend over the level's tokens; one head, no
    LN/FFN."""

    def __init__(
        self, emb_dim: int, width: int, model_dim: int, n_attributes: int, scale: bool = False
    ) -> None:
        super().__init__()
        self.q = nn.Linear(emb_dim, model_dim)
        self.k = nn.Linear(width, model_dim)
        self.v = nn.Linear(width, model_dim)
        self.o = nn.Linear(model_dim, width)
        self.prototypes = nn.Parameter(torch.randn(n_attributes, width))  # P, N(0, 1)
        self.scale = 1.0 / math.sqrt(model_dim) if scale else 1.0

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A x E, B x N x W) -> predicted attributes B x A, attention B x A x N."""
        q, k, v = self.q(embeddings), self.k(tokens), self.v(tokens)
        with _no_autocast(
            tokens
        ):  # the unscaled logits are large: keep them (and the softmax) in fp32 under AMP
            attn = torch.softmax(torch.einsum("am,bnm->ban", q.float(), k.float()) * self.scale, dim=-1)
        z = torch.bmm(attn.to(v.dtype), v)
        o = self.o(z)
        with _no_autocast(o):
            pred = (o.float() * self.prototypes.float().unsqueeze(0)).sum(-1)
        return pred, attn


class PooledAttributes(nn.Module):
    """The VSD's ablation (``attribute_head='pooled'``): a_hat = W mean_n(T_n) + b, the level's tokens averaged
    with equal weights and read out by one linear layer; the attribute word vectors are not used.

    Same call and outputs as :class:`VSD`; the returned attention is the uniform weight 1/N that the average
    gives every token (an expanded view, not a copy), so attention plots show that nothing is localised."""

    def __init__(self, width: int, n_attributes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, n_attributes)

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A x E, B x N x W) -> predicted attributes B x A, attention B x A x N (all 1/N)."""
        B, N, _ = tokens.shape
        with _no_autocast(tokens):  # the read-out in fp32 under AMP, as the VSD's
            pred = F.linear(tokens.float().mean(1), self.proj.weight.float(), self.proj.bias.float())
        attn = torch.full((1, 1, 1), 1.0 / N, device=tokens.device).expand(B, pred.shape[1], N)
        return pred, attn


def _l2n(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + NORM_EPS)


# --------------------------------------------------------------------------------------------- model
@register_model("mgmrn", setting="attribute", config=MgMRNConfig)
class MgMRN(nn.Module):
    """Mg-MRN as released, shape-consistent wiring, with our defaults and switches.

    Deviations from the release (NingWang2049/Mg-MRN), each a deliberate choice:

    1. Wiring: C3 512->W with 2 downsamplings, C4 1024->W with 1, C5 2048->W with 0 (the release declares
       1024/2048 input channels for C3/C4 and crashes); the number of downsamplings is derived from the backbone
       strides, and a downsampling halves with ceil (identical to x0.5 for the even sizes of 448 px inputs).
    2. ``grouping='parts'`` (default): the grouping unit works on the level map F_l with L2-normalised pixels and
       centres and yields K part tokens per level, appended to the VSD tokens; ``collapsed`` reproduces the
       release (output x/K, centres on C_in); ``none`` drops the unit.
    3. ``step_mode='joint'`` (default): one optimizer step on L1 + L2 + L3; ``sequential`` = release schedule.
    4. Under AMP the grouping assignment, the VSD logits/softmax, the attribute read-out, the cosine head and the
       losses run in fp32 (numerics only).
    5. Options not in the release: ``mrm_detach=false``, ``mrm_bidirectional``, ``down='avgpool'``,
       ``attention_scale``, ``level_weights``, ``levels`` subsets (R_l is built from the coarser levels that
       are in ``levels``; with all three levels this is the release's R1 = SCAM([F2 | F3]), R2 = SCAM(F3)),
       ``attribute_head='pooled'`` (ablation: :class:`PooledAttributes` instead of the VSD; the per-level
       modules are then ``self.pooled`` instead of ``self.vsd``).

    ``forward(images, class_attributes, targets=None, levels=None, ...)``: ``levels`` are positions in
    ``cfg.levels`` (the engine passes ``train_substeps()`` entries); see :meth:`forward`.
    """

    def __init__(
        self,
        cfg: MgMRNConfig,
        attribute_embeddings: torch.Tensor | None = None,
        backbone: nn.Module | None = None,
        **_: Any,
    ) -> None:
        super().__init__()
        if attribute_embeddings is None:
            raise ValueError(f"{cfg.name}: attribute_embeddings (A x word-vector dim) are required")
        emb = torch.as_tensor(attribute_embeddings).detach().float().clone()
        if emb.ndim != 2:
            raise ValueError(f"{cfg.name}: attribute_embeddings must be A x D, got shape {tuple(emb.shape)}")
        self.cfg = cfg
        self.register_buffer("attribute_embeddings", emb)
        if backbone is None:
            backbone = build_backbone(
                cfg.backbone,
                weights=cfg.backbone_weights,
                pretrained=cfg.pretrained,
                tiny_widths=cfg.tiny_widths,
            )
        self.backbone = backbone
        channels = tuple(backbone.out_channels)
        strides = tuple(getattr(backbone, "strides", (8, 16, 32)))
        self.levels: list[int] = list(cfg.levels)
        self.n_down = {lv: n_halvings(strides[lv - 1], strides[-1]) for lv in self.levels}
        self.mgm = nn.ModuleDict(
            {
                str(lv): LevelModule(
                    channels[lv - 1], cfg.width, self.n_down[lv], cfg.grouping, cfg.n_parts, cfg.down
                )
                for lv in self.levels
            }
        )
        self.sources: dict[int, list[int]] = {}
        if cfg.refinement:
            for lv in self.levels:
                coarser = [m for m in self.levels if m > lv]
                if coarser:
                    self.sources[lv] = coarser
            if cfg.mrm_bidirectional and len(self.levels) > 1:
                self.sources[self.levels[-1]] = self.levels[:-1]
        self.scam = nn.ModuleDict(
            {str(lv): SCAM(cfg.width * len(src), cfg.width) for lv, src in self.sources.items()}
        )
        A = emb.shape[0]
        if cfg.attribute_head == "vsd":
            self.vsd = nn.ModuleDict(
                {
                    str(lv): VSD(emb.shape[1], cfg.width, cfg.model_dim, A, cfg.attention_scale)
                    for lv in self.levels
                }
            )
        else:  # built last, as the VSDs: every other module gets the same initial weights as the default
            self.pooled = nn.ModuleDict({str(lv): PooledAttributes(cfg.width, A) for lv in self.levels})

    @property
    def attribute_heads(self) -> nn.ModuleDict:
        """The per-level attribute read-outs: the VSDs, or their pooled ablation (``attribute_head``)."""
        return self.vsd if self.cfg.attribute_head == "vsd" else self.pooled

    # ---- engine hooks
    def train_substeps(self) -> list[list[int] | None]:
        """``[None]`` (joint: one step on the summed loss) or one ``[position]`` per level (sequential)."""
        if self.cfg.step_mode == "sequential":
            return [[i] for i in range(len(self.levels))]
        return [None]

    # ---- internals
    def _positions(self, levels: Sequence[int] | None) -> list[int]:
        if levels is None:
            return list(range(len(self.levels)))
        pos = sorted({int(p) for p in levels})
        if not pos or any(p < 0 or p >= len(self.levels) for p in pos):
            raise ValueError(
                f"levels: positions into {self.levels} expected (0..{len(self.levels) - 1}), got {levels}"
            )
        return pos

    def _backbone_maps(self, images: torch.Tensor, grad_upto: int, upto: int) -> list[torch.Tensor]:
        """C3..C_upto; maps after ``grad_upto`` are computed without a graph when the backbone can continue."""
        if upto > grad_upto and torch.is_grad_enabled() and hasattr(self.backbone, "forward_from"):
            maps = list(self.backbone(images, upto=grad_upto))
            with torch.no_grad():
                maps += self.backbone.forward_from(maps[-1], start=grad_upto + 1, upto=upto)
            return maps
        return list(self.backbone(images, upto=upto))

    def compute_levels(self, images: torch.Tensor, want: list[int]) -> dict[str, Any]:
        """Backbone maps, F_l / part tokens / assignments for the levels in ``want`` and their refinement sources.

        Sources that only feed a detached refinement input are computed under ``torch.no_grad()`` (same values,
        no graph): level 1 alone needs C3 with a graph and F2/F3 without one; level 3 alone needs only C5's path.
        """
        needed = set(want)
        for lv in want:
            needed.update(self.sources.get(lv, []))
        ref_only = needed - set(want) if self.cfg.mrm_detach else set()
        grad_upto = max(lv - 1 for lv in needed - ref_only)
        maps = self._backbone_maps(images, grad_upto, max(lv - 1 for lv in needed))
        feats: dict[int, torch.Tensor] = {}
        parts: dict[int, torch.Tensor] = {}
        assign: dict[int, torch.Tensor] = {}
        for lv in sorted(needed):
            if lv in ref_only:
                with torch.no_grad():
                    feats[lv], _, _ = self.mgm[str(lv)](maps[lv - 1], with_parts=False)
                continue
            f, z, a = self.mgm[str(lv)](maps[lv - 1])
            feats[lv] = f
            if z is not None:
                parts[lv] = z
            if a is not None:
                assign[lv] = a
        sizes = {tuple(f.shape[-2:]) for f in feats.values()}
        if len(sizes) > 1:
            raise ValueError(
                f"level maps have different sizes {sorted(sizes)}: the input size must be divisible "
                "by the backbone's largest stride (32)"
            )
        return {"maps": maps, "F": feats, "Z": parts, "assign": assign}

    def tokens(self, lv: int, lvl: dict[str, Any]) -> tuple[torch.Tensor, list[tuple[str, int]], Any]:
        """T_l = [F_l; R_l; Z_l] (B x N x W), the layout [(name, count)], and R_l (or None)."""
        f = lvl["F"][lv]
        toks, layout, r = [f.flatten(2).transpose(1, 2)], [("F", f.shape[-2] * f.shape[-1])], None
        if lv in self.sources:
            src = [lvl["F"][m].detach() if self.cfg.mrm_detach else lvl["F"][m] for m in self.sources[lv]]
            r = self.scam[str(lv)](torch.cat(src, dim=1))
            toks.append(r.flatten(2).transpose(1, 2))
            layout.append(("R", r.shape[-2] * r.shape[-1]))
        if lv in lvl["Z"]:
            z = lvl["Z"][lv].to(f.dtype)
            toks.append(z)
            layout.append(("Z", z.shape[1]))
        return torch.cat(toks, dim=1), layout, r

    def head(self, attr_pred: torch.Tensor, class_attributes: torch.Tensor) -> torch.Tensor:
        """s(x, c) = tau * cos(a_hat(x), a_c)."""
        with _no_autocast(attr_pred):
            return self.cfg.tau * _l2n(attr_pred.float()) @ _l2n(class_attributes.float()).t()

    # ---- forward
    def forward(
        self,
        images: torch.Tensor,
        class_attributes: torch.Tensor,
        targets: torch.Tensor | None = None,
        levels: Sequence[int] | None = None,
        return_attention: bool = False,
        return_intermediates: bool = False,
    ) -> dict[str, Any]:
        """Scores of ``images`` against the rows of ``class_attributes`` (C x A).

        Returns ``scores`` (B x C, sum of w_l s_l over the computed levels), ``level_scores`` and ``attr_preds``
        (lists, one per computed level), ``levels`` (the level ids computed); with ``targets`` (B, row indices of
        ``class_attributes``) also ``loss`` (sum over computed levels of CE + lam * normalised MSE) and ``logs``
        (floats ``ce_l<id>``, ``mse_l<id>``); with ``return_attention`` ``attention`` (list of B x A x N),
        ``token_layout`` (per level, [("F", H*W), ("R", H*W), ("Z", K)]) and ``grid`` (H, W) of the F tokens
        (``attention[i][..., :H*W]`` reshapes to H x W); with ``return_intermediates`` ``intermediates``
        (C maps, F, Z, assignments, R, T per level id).
        """
        pos = self._positions(levels)
        want = [self.levels[p] for p in pos]
        if class_attributes.shape[-1] != self.attribute_embeddings.shape[0]:
            raise ValueError(
                f"class_attributes have {class_attributes.shape[-1]} attributes, the model "
                f"{self.attribute_embeddings.shape[0]}"
            )
        lvl = self.compute_levels(images, want)
        emb = self.attribute_embeddings
        out: dict[str, Any] = {"levels": want, "level_scores": [], "attr_preds": []}
        attention, layouts, inter_r, inter_t = [], [], {}, {}
        total = None
        for lv in want:
            t, layout, r = self.tokens(lv, lvl)
            pred, attn = self.attribute_heads[str(lv)](emb, t)
            s = self.head(pred, class_attributes)
            out["level_scores"].append(s)
            out["attr_preds"].append(pred)
            total = s * self.cfg.weight_of(lv) if total is None else total + s * self.cfg.weight_of(lv)
            if return_attention:
                attention.append(attn)
                layouts.append(layout)
            if return_intermediates:
                inter_t[lv] = t
                if r is not None:
                    inter_r[lv] = r
        out["scores"] = total
        if targets is not None:
            out["loss"], out["logs"] = self.loss(
                out["level_scores"], out["attr_preds"], want, class_attributes, targets
            )
        if return_attention:
            f = next(iter(lvl["F"].values()))
            out.update(attention=attention, token_layout=layouts, grid=(int(f.shape[-2]), int(f.shape[-1])))
        if return_intermediates:
            out["intermediates"] = {
                "C": lvl["maps"],
                "F": lvl["F"],
                "Z": lvl["Z"],
                "assign": lvl["assign"],
                "R": inter_r,
                "T": inter_t,
            }
        return out

    def loss(
        self,
        level_scores: list[torch.Tensor],
        attr_preds: list[torch.Tensor],
        want: list[int],
        class_attributes: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum over levels of CE(s_l, y) + lam * mean_{batch, attr}(a_hat/|a_hat| - a_y/|a_y|)^2 (the release's
        loss: ReZSL's ReMSE without its reweighting)."""
        targets = targets.long()
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= class_attributes.shape[0]):
            raise ValueError(
                f"targets must index the {class_attributes.shape[0]} rows of class_attributes "
                f"(got values in [{int(targets.min())}, {int(targets.max())}])"
            )
        with _no_autocast(class_attributes):
            goal = _l2n(class_attributes.float()[targets])
            total = None
            logs: dict[str, float] = {}
            for lv, s, pred in zip(want, level_scores, attr_preds):
                ce = F.cross_entropy(s.float(), targets)
                mse = (_l2n(pred.float()) - goal).pow(2).mean()
                term = ce + self.cfg.lam * mse
                total = term if total is None else total + term
                logs[f"ce_l{lv}"] = float(ce.detach())
                logs[f"mse_l{lv}"] = float(mse.detach())
        return total, logs  # type: ignore[return-value]


__all__ = [
    "MgMRN",
    "MgMRNConfig",
    "SCAM",
    "VSD",
    "PooledAttributes",
    "GroupingUnit",
    "ConvBlock",
    "LevelModule",
]
