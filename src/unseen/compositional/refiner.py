"""Refiner-R: a reconstruction of Refiner (ICASSP 2025) for compositional zero-shot learning on frozen CLIP.

Refiner's paper text, code and hyper-parameters are not public; this reconstruction follows its abstract
(learnable queries refining the visual tokens; alignment with states, objects and compositions) with the parts
taken from the closest readable relatives: Troika's multi-path text side + CAMS-style learnable queries on the
visual side.
Shapes below are for ViT-L/14 at 224 px; every width is read from the CLIP model, so the same code runs the
packaged tiny configs (W = vision width, D = joint embedding dim, Wt = text width).

1. Frozen CLIP visual tower, called once: g = proj(ln_post(CLS)) (B, D) and the token sequences X_l (B, T, W)
   (CLS + patches, before ``ln_post``) of the last M = ``refine_blocks`` blocks (M = 1: the final tokens after
   ``ln_post``).
2. Queries Q0 (n_queries, W) ~ N(0, 1), dropout 0.5 (training only), broadcast to (B, n_queries, W).
3. One refinement layer shared by the M blocks and applied after each in depth order:
   Q <- Q + MHA(LN_q(Q), LN_kv(X_l), LN_kv(X_l)); Q <- Q + MLP(LN(Q)) (4x, QuickGELU); heads = CLIP's vision heads.
4. Branches k in {state, obj, comp}: a separate 1-layer Transformer encoder over the queries (8 heads, FF 2W,
   dropout 0.1; PyTorch's post-norm ReLU layer) -> mean over queries -> shared LayerNorm -> separate Linear W -> D
   -> dropout 0.5 -> L2-normalise = v_k (B, D). ``query_pool='max'`` keeps the queries: v_k (B, n_queries, D) and
   the branch logit is the max over queries of the scaled cosine.
5. Text: CSP soft vocabulary (|A| + |O|, Wt) (mean BPE embedding init) and three learnable contexts C_c, C_s, C_o
   (n_ctx, Wt) initialised from the embeddings of "a photo of"; prompts ``SOT C_c [a] [o] EOT``,
   ``SOT C_s [a] EOT``, ``SOT C_o [o] EOT``; vocabulary dropout 0.3; frozen text tower (custom forward: context
   length 8 at training, 16 at evaluation; EOT pooling) -> t_c (K, D), t_s (|A|, D), t_o (|O|, D).
6. Per-branch alignment: l_k = tau v_k t_k^T, l_g = tau g t_c^T; tau = 100 fixed (``learn_tau``: learnable;
   ``tau: 0`` = the CLIP's own exp(logit_scale), which is 100 for the OpenAI weights).
7. Loss = w_comp CE(l_c, pair) + w_global CE(l_g, pair) + w_state CE(l_s, attr) + w_obj CE(l_o, obj)
   (1 / 1 / 0.5 / 0.5).
8. Inference: score(a, o) = beta l_g + (1 - beta) l_c + softmax(l_s)[a] softmax(l_o)[o] (beta 0.85; 0.65 UT-Zappos);
   without the global branch score = l_c + softmax(l_s)[a] softmax(l_o)[o].

Switches: ``adapters`` (AdaptFormer bottleneck adapters, parallel to every attention and MLP sub-layer of the
visual tower, up-projection zero-init, so training starts from CLIP's exact features); ``branches`` (ablation,
default all three): the query branches that are built, trained and scored. A branch left out has no encoder,
projection or text context (comp's context stays: the global branch uses it), no loss term and no logits; the
score keeps what is left: beta l_g + (1 - beta) l_c with both pair branches, l_g or l_c alone, and the product of
the primitive probabilities that remain (softmax(l_s)[a] with the state branch alone). ``global_branch``, ``beta``
and ``n_queries`` / ``refine_blocks`` are the other ablation knobs (``unseen ablate compositional``).

Interface (shared with the baselines, see :mod:`unseen.compositional.clip`): ``Refiner(cfg, clip_model,
attr_names, obj_names)``; ``model(images, pairs, return_attention=False)`` -> dict with ``scores``,
``logits_comp``, ``logits_global`` (when the global branch is on) (B, K), ``logits_state`` (B, |A|),
``logits_obj`` (B, |O|) and ``attention`` (B, n_queries, T) = the last refinement's attention over the tokens
(CLS first, heads averaged) when asked; ``model.loss(out, attr, obj, pair_target)``; ``encode_pairs``,
``encode_images``, ``score`` for chunked evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unseen.compositional.baselines import ClipModelConfig, _context_length
from unseen.compositional.clip import (
    FrozenClipCZSL,
    ImageFeatures,
    TextCache,
    bpe_ids,
    clip_logit_scale,
    embed_dim,
    encode_image_tokens,
    encode_in_chunks,
    encode_text,
    soft_vocabulary_init,
    template_ids,
    vision_heads,
    vision_layers,
    vision_width,
)
from unseen.config import ConfigError
from unseen.registry import register_model

BRANCHES = ("state", "obj", "comp")
LOGITS_ORDER = ("comp", "state", "obj")  # the key order of score()'s logits


@dataclass
class RefinerConfig(ClipModelConfig):
    """Refiner-R defaults (our reconstruction; loss weights as CAMS; MIT-States / C-GQA: beta 0.85,
    UT-Zappos: 0.65; C-GQA: vocab_dropout 0)."""

    name: str = "refiner"
    n_queries: int = 32
    query_dropout: float = 0.5
    refine_blocks: int = 8  # M: refine after each of the last M visual blocks (1 = once, after ln_post)
    refine_heads: int = 0  # 0 = the CLIP vision tower's head count (16 on ViT-L/14)
    refine_mlp_ratio: float = 4.0
    branch_heads: int = 8
    branch_ff_mult: float = 2.0  # branch encoder FF width = 2W (PyTorch's default 2048 at W = 1024)
    branch_dropout: float = 0.1
    proj_dropout: float = 0.5
    query_pool: str = "mean"  # mean | max (max over queries of the scaled cosine)
    branches: list[str] = field(default_factory=lambda: list(BRANCHES))  # state/obj/comp (ablation: fewer)
    global_branch: bool = True
    beta: float = 0.85  # weight of the global logits in the score
    prim_score: bool = True  # add softmax(l_s)[a] * softmax(l_o)[o] to the score
    tau: float = 100.0  # 0 = the CLIP's own exp(logit_scale) (100 for OpenAI weights)
    learn_tau: bool = False
    w_comp: float = 1.0
    w_global: float = 1.0
    w_state: float = 0.5
    w_obj: float = 0.5
    vocab_dropout: float = 0.3
    ctx_init: str = "a photo of"  # initial text of the three learnable contexts (n_ctx = its BPE tokens)
    split_underscore: bool = True
    context_length_train: int = 8
    context_length_eval: int = 16
    text_checkpoint: bool = True  # activation checkpointing per text chunk while training
    adapters: bool = (
        False  # AdaptFormer adapters in every visual block (trainable; gradients through the tower)
    )
    adapter_dim: int = 64
    adapter_scale: float = 0.1
    visual_checkpoint: bool = True  # with adapters: activation checkpointing per visual block while training

    def __post_init__(self) -> None:
        self._check_scale("tau")
        self._check_positive(
            "n_queries",
            "refine_blocks",
            "branch_heads",
            "branch_ff_mult",
            "refine_mlp_ratio",
            "text_chunk",
            "context_length_train",
            "context_length_eval",
            "adapter_dim",
        )
        self._check_unit("query_dropout", "branch_dropout", "proj_dropout", "vocab_dropout")
        if self.query_pool not in ("mean", "max"):
            raise ConfigError(
                f"model '{self.name}'.query_pool: expected one of mean, max, got {self.query_pool!r}"
            )
        b = list(self.branches)
        if not b or len(set(b)) != len(b) or not set(b) <= set(BRANCHES):
            raise ConfigError(
                f"model '{self.name}'.branches: expected a non-empty subset of {', '.join(BRANCHES)} "
                f"(once each), got {b}"
            )
        if "comp" not in b and not self.global_branch:
            raise ConfigError(
                f"model '{self.name}'.branches: without comp the pair score needs global_branch=true"
            )
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"model '{self.name}'.beta: expected a weight in [0, 1], got {self.beta}")
        if self.refine_heads < 0:
            raise ConfigError(
                f"model '{self.name}'.refine_heads: expected >= 0 (0 = CLIP's), got {self.refine_heads}"
            )


# --------------------------------------------------------------------------------------------- layers
class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x) (OpenAI CLIP's activation)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class RefinementLayer(nn.Module):
    """Cross-attention of the queries to one block's tokens, then an MLP, both pre-norm with residuals."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_q = nn.LayerNorm(width)
        self.ln_kv = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_mlp = nn.LayerNorm(width)
        hidden = int(round(width * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), QuickGELU(), nn.Linear(hidden, width))

    def forward(self, q: Tensor, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """q (B, n, W), x (B, T, W) -> refined q (B, n, W) and, if asked, the attention (B, n, T) (heads averaged)."""
        kv = self.ln_kv(x)
        a, w = self.attn(self.ln_q(q), kv, kv, need_weights=need_weights, average_attn_weights=True)
        q = q + a
        return q + self.mlp(self.ln_mlp(q)), w


class Adapter(nn.Module):
    """AdaptFormer bottleneck: scale * up(ReLU(down(h))), up-projection zero-initialised (identity at start)."""

    def __init__(self, width: int, bottleneck: int, scale: float):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale

    def forward(self, h: Tensor) -> Tensor:
        return self.scale * self.up(F.relu(self.down(h)))


# --------------------------------------------------------------------------------------------- model
@register_model(
    "refiner",
    setting="compositional",
    config=RefinerConfig,
    description="Refiner-R: learnable-query concept refinement + state/object/composition alignment",
)
class Refiner(FrozenClipCZSL):
    """Refiner-R (module docstring). Trainable: queries, refinement layer, branch encoders/norm/projections, soft
    vocabulary, three contexts (and adapters / log-tau when switched on)."""

    def __init__(
        self, cfg: RefinerConfig, clip_model: nn.Module, attr_names: Sequence[str], obj_names: Sequence[str]
    ):
        super().__init__(clip_model, attr_names, obj_names)
        self.cfg = cfg
        width, dim, layers = vision_width(clip_model), embed_dim(clip_model), vision_layers(clip_model)
        if cfg.refine_blocks > layers:
            raise ConfigError(
                f"model '{cfg.name}'.refine_blocks: {cfg.refine_blocks} exceeds the {layers} blocks of "
                "the CLIP visual tower"
            )
        heads = cfg.refine_heads or vision_heads(clip_model)
        for key, h in (("refine_heads", heads), ("branch_heads", cfg.branch_heads)):
            if width % h:
                raise ConfigError(
                    f"model '{cfg.name}'.{key}: {h} heads do not divide the vision width {width}"
                )
        self.width, self.dim = width, dim
        # in BRANCHES order whatever the config's order: the default builds exactly what it always did
        self.branches = tuple(k for k in BRANCHES if k in cfg.branches)
        self.primitives = tuple(k for k in ("state", "obj") if k in self.branches)

        # visual side
        self.queries = nn.Parameter(torch.randn(cfg.n_queries, width))
        self.query_dropout = nn.Dropout(cfg.query_dropout)
        self.refine = RefinementLayer(width, heads, cfg.refine_mlp_ratio)
        self.encoders = nn.ModuleDict(
            {
                k: nn.TransformerEncoderLayer(
                    width,
                    cfg.branch_heads,
                    int(round(width * cfg.branch_ff_mult)),
                    cfg.branch_dropout,
                    batch_first=True,
                )
                for k in self.branches
            }
        )
        self.branch_norm = nn.LayerNorm(width)
        self.projs = nn.ModuleDict({k: nn.Linear(width, dim) for k in self.branches})
        self.proj_dropout = nn.Dropout(cfg.proj_dropout)
        if cfg.adapters:
            self._check_adaptable()
            self.adapters = nn.ModuleList(
                nn.ModuleList([Adapter(width, cfg.adapter_dim, cfg.adapter_scale) for _ in range(2)])
                for _ in range(layers)
            )

        # text side
        names = list(attr_names) + list(obj_names)
        self.vocab = nn.Parameter(soft_vocabulary_init(clip_model, names, cfg.split_underscore))
        self.vocab_dropout = nn.Dropout(cfg.vocab_dropout)
        self.ctx_ids = bpe_ids(cfg.ctx_init)
        if not self.ctx_ids:
            raise ConfigError(f"model '{cfg.name}'.ctx_init: {cfg.ctx_init!r} has no BPE tokens")
        with torch.no_grad():
            emb = clip_model.token_embedding.weight
            ctx = emb[torch.tensor(self.ctx_ids, device=emb.device)].float()
        self.ctx = nn.ParameterDict(
            {k: nn.Parameter(ctx.clone()) for k in BRANCHES if k == "comp" or k in self.branches}
        )

        log_tau = torch.tensor(math.log(clip_logit_scale(clip_model, cfg.tau)))
        if cfg.learn_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau, persistent=False)

    # ----------------------------------------------------------------------------------------- text
    @property
    def tau(self) -> Tensor:
        return self.log_tau.exp()

    def context_length(self) -> int:
        """The prompt length in use: ``context_length_train`` in training mode, else ``context_length_eval``."""
        wanted = self.cfg.context_length_train if self.training else self.cfg.context_length_eval
        return _context_length(self.clip, wanted)

    def encode_pairs(
        self, pairs: Tensor, chunk_size: int | None = None, primitives: TextCache | None = None
    ) -> TextCache:
        """Composition features of ``pairs`` (K, 2) and state / object features of the whole vocabularies (taken
        from ``primitives``, an earlier cache, when given: no re-encoding per candidate chunk); a primitive branch
        that is switched off has none (None)."""
        device = self.vocab.device
        pairs = self.check_pairs(pairs).to(device)
        length, n_ctx = self.context_length(), len(self.ctx_ids)
        chunk_size = chunk_size or self.cfg.text_chunk
        ckpt = self.cfg.text_checkpoint and self.training
        vocab = self.vocab_dropout(self.vocab)  # one dropout mask per call, shared by all prompts and chunks

        def run(n: int, n_slots: int, ctx: Tensor, slots) -> Tensor:
            row = template_ids(self.ctx_ids, n_slots, length).to(device)

            def chunk(start: int, stop: int) -> Tensor:
                return encode_text(
                    self.clip, row.expand(stop - start, -1), [(1, ctx), (1 + n_ctx, slots(start, stop))]
                )

            return encode_in_chunks(chunk, n, chunk_size, use_checkpoint=ckpt)

        comp = run(
            len(pairs),
            2,
            self.ctx["comp"],
            lambda s, e: torch.stack([vocab[pairs[s:e, 0]], vocab[self.n_attrs + pairs[s:e, 1]]], dim=1),
        )
        if primitives is not None and all(getattr(primitives, k) is not None for k in self.primitives):
            state, obj = primitives.state, primitives.obj
        else:
            state = obj = None
            if "state" in self.branches:
                state = run(self.n_attrs, 1, self.ctx["state"], lambda s, e: vocab[s:e, None])
            if "obj" in self.branches:
                obj = run(
                    self.n_objs,
                    1,
                    self.ctx["obj"],
                    lambda s, e: vocab[self.n_attrs + s : self.n_attrs + e, None],
                )
        return TextCache(pairs=pairs, comp=comp, state=state, obj=obj)

    # ----------------------------------------------------------------------------------------- visual
    def _check_adaptable(self) -> None:
        from open_clip.transformer import ResidualAttentionBlock

        v = self.clip.visual
        ok = (
            all(type(b) is ResidualAttentionBlock for b in v.transformer.resblocks)
            and v.transformer.batch_first
            and v.attn_pool is None
            and v.pool_type == "tok"
            and not v.final_ln_after_pool
            and v.proj is not None
            and hasattr(v, "_embeds")
        )
        if not ok:
            raise ConfigError(
                f"model '{self.cfg.name}'.adapters: supported on the standard open_clip ViT only "
                "(default residual blocks, class-token pooling, projection)"
            )

    def _visual_with_adapters(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The visual tower re-run block by block with the adapters added in parallel to each attention and MLP
        sub-layer (input = the sub-layer's LayerNorm output, AdaptFormer). Same outputs as
        :func:`encode_image_tokens` (which it equals while the adapters' up-projections are zero)."""
        v = self.clip.visual
        x = v._embeds(images)
        keep_from = vision_layers(self.clip) - self.cfg.refine_blocks
        tokens = []
        for i, (blk, (ad_attn, ad_mlp)) in enumerate(
            zip(v.transformer.resblocks, self.adapters, strict=True)
        ):

            def step(x: Tensor, blk=blk, ad_attn=ad_attn, ad_mlp=ad_mlp) -> Tensor:
                h = blk.ln_1(x)
                x = x + blk.ls_1(blk.attention(q_x=h)) + ad_attn(h)
                h = blk.ln_2(x)
                return x + blk.ls_2(blk.mlp(h)) + ad_mlp(h)

            use_ckpt = self.cfg.visual_checkpoint and self.training and torch.is_grad_enabled()
            x = checkpoint(step, x, use_reentrant=False) if use_ckpt else step(x)
            if i >= keep_from:
                tokens.append(x)
        g = v.ln_post(x[:, 0]) @ v.proj
        return g, tokens

    def encode_images(self, images: Tensor, return_attention: bool = False) -> ImageFeatures:
        """Image embedding g and the three branch features (see :class:`ImageFeatures`)."""
        m = self.cfg.refine_blocks
        if self.cfg.adapters:
            g, tokens = self._visual_with_adapters(images)
        else:
            with torch.no_grad():
                g, tokens = encode_image_tokens(self.clip, images, m)
        if m == 1:  # refine once, on the final tokens after ln_post
            tokens = [self.clip.visual.ln_post(tokens[-1])]
        q = self.query_dropout(self.queries.expand(images.shape[0], -1, -1))
        attn = None
        for i, x in enumerate(tokens):
            last = i == len(tokens) - 1
            q, w = self.refine(q, x.to(q.dtype), need_weights=return_attention and last)
            if w is not None:
                attn = w
        feats = {}
        for k in self.branches:
            h = self.encoders[k](q)  # (B, n, W)
            if self.cfg.query_pool == "mean":
                h = h.mean(dim=1)
            feats[k] = F.normalize(self.proj_dropout(self.projs[k](self.branch_norm(h))), dim=-1)
        return ImageFeatures(image=F.normalize(g, dim=-1), attention=attn, **feats)

    # ----------------------------------------------------------------------------------------- scores, loss
    def _align(self, v: Tensor, t: Tensor) -> Tensor:
        """tau * cos: v (B, D) or (B, n, D) (max over the n queries), t (K, D) -> (B, K) float32."""
        tau = self.tau.float()
        if v.dim() == 3:
            return tau * torch.einsum("bnd,kd->bnk", v.float(), t.float()).amax(dim=1)
        return tau * v.float() @ t.float().t()

    def score(self, images: Tensor | ImageFeatures, cache: TextCache) -> dict[str, Tensor]:
        f = self._features(images)
        if any(getattr(cache, k) is None for k in self.primitives):
            raise ValueError("refiner: the text cache lacks state/object features (use Refiner.encode_pairs)")
        c = self.cfg
        text = {"comp": cache.comp, "state": cache.state, "obj": cache.obj}
        out = {f"logits_{k}": self._align(getattr(f, k), text[k]) for k in LOGITS_ORDER if k in self.branches}
        if c.global_branch:
            out["logits_global"] = self.tau.float() * f.image.float() @ cache.comp.float().t()
            if "comp" in self.branches:
                scores = c.beta * out["logits_global"] + (1.0 - c.beta) * out["logits_comp"]
            else:
                scores = out["logits_global"]
        else:
            scores = out["logits_comp"]
        if c.prim_score and self.primitives:
            a, o = cache.pairs[:, 0], cache.pairs[:, 1]
            if self.primitives == ("state", "obj"):
                scores = scores + out["logits_state"].softmax(-1)[:, a] * out["logits_obj"].softmax(-1)[:, o]
            elif self.primitives == ("state",):
                scores = scores + out["logits_state"].softmax(-1)[:, a]
            else:
                scores = scores + out["logits_obj"].softmax(-1)[:, o]
        out["scores"] = scores
        if f.attention is not None:
            out["attention"] = f.attention
        return out

    def loss(
        self, out: dict[str, Tensor], attr: Tensor, obj: Tensor, pair_target: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """w_comp CE(l_c, pair) + w_global CE(l_g, pair) + w_state CE(l_s, attr) + w_obj CE(l_o, obj) (the
        terms of the branches that are on)."""
        c = self.cfg
        terms = {
            "comp": (c.w_comp, out.get("logits_comp"), pair_target),
            "state": (c.w_state, out.get("logits_state"), attr),
            "obj": (c.w_obj, out.get("logits_obj"), obj),
        }
        terms = {k: t for k, t in terms.items() if k in self.branches}
        if c.global_branch:
            terms["global"] = (c.w_global, out["logits_global"], pair_target)
        total = next(iter(terms.values()))[1].new_zeros(())
        logs = {}
        for key, (w, logits, target) in terms.items():
            ce = F.cross_entropy(logits, target)
            total = total + w * ce
            logs[f"ce_{key}"] = float(ce.detach())
        if c.learn_tau:
            logs["tau"] = float(self.tau.detach())
        return total, logs
