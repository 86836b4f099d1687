"""Compositional baselines on frozen CLIP: zero-shot CLIP and CSP, as in BatsResearch/csp.

Both follow the shared interface of :class:`unseen.compositional.clip.FrozenClipCZSL` (see that module's
docstring): ``Model(cfg, clip_model, attr_names, obj_names)``; ``model(images, pairs)`` -> ``{"scores",
"logits_comp"}`` (B, K) with scores = logits = ``logit_scale`` * cos(image embedding, prompt feature);
``model.loss(out, attr, obj, pair_target)``; ``encode_pairs`` / ``encode_images`` / ``score`` for chunked
evaluation.

- ``zeroshot_clip``: prompt ``"a photo of {attr} {obj}"`` with names lower-cased and ``.`` -> space, ``_`` kept
  (CSP's ``clip_baseline``), tokenized at the model's full context length; nothing to train.
- ``csp`` (Compositional Soft Prompting, ICLR'23): the only trainable tensor is the soft vocabulary
  (|A| + |O|, text width), initialised with the mean BPE token embedding of each name; prompt ``SOT a photo of
  [attr] [obj] EOT`` with the two slots before EOT replaced by the vocabulary rows; dropout on the vocabulary
  matrix (CSP's ``attr_dropout``, applied to all rows as its code does); cross-entropy over the K train pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unseen.compositional.clip import (
    FrozenClipCZSL,
    ImageFeatures,
    TextCache,
    bpe_ids,
    clip_logit_scale,
    embed_dim,
    encode_in_chunks,
    encode_text,
    max_context_length,
    prompt_name,
    soft_vocabulary_init,
    template_ids,
    tokenize,
)
from unseen.config import ConfigError
from unseen.registry import register_model


# --------------------------------------------------------------------------------------------- configs
@dataclass
class ClipModelConfig:
    """Fields every CLIP-based compositional model has; the task code builds the CLIP from ``clip_arch`` /
    ``clip_weights`` with :func:`unseen.compositional.clip.create_clip`."""

    name: str = ""
    clip_arch: str = (
        "ViT-L-14-quickgelu"  # any open_clip architecture; unseen-tiny-clip / unseen-test-clip packaged
    )
    clip_weights: str | None = None  # local weights file; None = random init; "openai" = open_clip's (online)
    allow_random_init: bool = False  # real datasets refuse a CLIP without weights unless this is set
    text_chunk: int = (
        1024  # prompts per text-tower call (memory bound on C-GQA: 5,592 train / 278k OW prompts)
    )

    def _check_scale(self, key: str) -> None:
        if getattr(self, key) < 0:
            raise ConfigError(
                f"model '{self.name}'.{key}: expected a positive number (or 0 = the CLIP's own "
                f"exp(logit_scale)), got {getattr(self, key)}"
            )

    def _check_positive(self, *keys: str) -> None:
        for key in keys:
            if getattr(self, key) <= 0:
                raise ConfigError(
                    f"model '{self.name}'.{key}: expected a positive number, got {getattr(self, key)}"
                )

    def _check_unit(self, *keys: str) -> None:
        for key in keys:
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(
                    f"model '{self.name}'.{key}: expected a probability in [0, 1), got {getattr(self, key)}"
                )


@dataclass
class ZeroShotCLIPConfig(ClipModelConfig):
    """Zero-shot CLIP (CSP's ``clip_baseline``)."""

    name: str = "zeroshot_clip"
    template: str = "a photo of {attr} {obj}"  # names: lower-case, '.' -> space, '_' kept
    logit_scale: float = 100.0  # logits = 100 * cos (OpenAI CLIP's exp(logit_scale)); 0 = the CLIP's own
    context_length: int = 0  # 0 = the model's own (77 OpenAI CLIP, 16 packaged tiny configs)

    def __post_init__(self) -> None:
        self._check_positive("text_chunk")
        self._check_scale("logit_scale")
        if "{attr}" not in self.template or "{obj}" not in self.template:
            raise ConfigError(
                f"model '{self.name}'.template: expected a string with {{attr}} and {{obj}}, "
                f"got {self.template!r}"
            )
        if self.context_length < 0:
            raise ConfigError(
                f"model '{self.name}'.context_length: expected >= 0 (0 = the model's), "
                f"got {self.context_length}"
            )


@dataclass
class CSPConfig(ClipModelConfig):
    """CSP with the README's best hyper-parameters (Adam lr 5e-5, wd 1e-5, batch 64 x 2 accumulation, 20 epochs
    belong to the run config)."""

    name: str = "csp"
    prefix: str = "a photo of"  # frozen prompt context before the two soft slots
    vocab_dropout: float = 0.3  # CSP's attr_dropout (on every row of the soft vocabulary)
    logit_scale: float = 100.0  # 0 = the CLIP's own exp(logit_scale)
    context_length_train: int = 8  # prompt length while training (CSP: 8)
    context_length_eval: int = 16  # at evaluation (CSP: 16); features do not depend on it (causal mask)
    split_underscore: bool = True  # vocabulary init: 'traffic_light' -> mean of "traffic light" tokens
    text_checkpoint: bool = True  # activation checkpointing per text chunk while training

    def __post_init__(self) -> None:
        self._check_positive("text_chunk", "context_length_train", "context_length_eval")
        self._check_scale("logit_scale")
        self._check_unit("vocab_dropout")


# --------------------------------------------------------------------------------------------- helpers
def _context_length(clip: nn.Module, wanted: int) -> int:
    """``wanted`` capped at the model's context (the EOT features do not depend on padding after EOT)."""
    return min(wanted, max_context_length(clip)) if wanted > 0 else max_context_length(clip)


def _cos_logits(image: Tensor, text: Tensor, scale: float | Tensor) -> Tensor:
    """scale * image (B, D) @ text (K, D)^T for L2-normalised inputs -> (B, K) float32."""
    return scale * image.float() @ text.float().t()


# --------------------------------------------------------------------------------------------- zero-shot CLIP
@register_model(
    "zeroshot_clip",
    setting="compositional",
    config=ZeroShotCLIPConfig,
    description="zero-shot CLIP: 'a photo of {attr} {obj}', 100 * cos (no training)",
    fit="none",
)
class ZeroShotCLIP(FrozenClipCZSL):
    """Zero-shot CLIP: logits = 100 * cos(image embedding, text embedding of the prompt). No trainable tensor."""

    def __init__(
        self,
        cfg: ZeroShotCLIPConfig,
        clip_model: nn.Module,
        attr_names: Sequence[str],
        obj_names: Sequence[str],
    ):
        super().__init__(clip_model, attr_names, obj_names)
        self.cfg = cfg
        self.logit_scale = clip_logit_scale(clip_model, cfg.logit_scale)

    def prompts(self, pairs: Tensor) -> list[str]:
        """The prompt strings of ``pairs`` (K, 2)."""
        return [
            self.cfg.template.format(attr=prompt_name(self.attr_names[a]), obj=prompt_name(self.obj_names[o]))
            for a, o in pairs.tolist()
        ]

    def encode_pairs(
        self, pairs: Tensor, chunk_size: int | None = None, primitives: TextCache | None = None
    ) -> TextCache:
        pairs = self.check_pairs(pairs)
        length = _context_length(self.clip, self.cfg.context_length)
        device = self.clip.positional_embedding.device

        def chunk(start: int, stop: int) -> Tensor:
            return encode_text(self.clip, tokenize(self.prompts(pairs[start:stop]), length).to(device))

        comp = encode_in_chunks(chunk, len(pairs), chunk_size or self.cfg.text_chunk)
        return TextCache(pairs=pairs, comp=comp)

    def encode_images(self, images: Tensor, return_attention: bool = False) -> ImageFeatures:
        if return_attention:
            raise ValueError("zeroshot_clip has no refinement attention to return")
        return ImageFeatures(image=F.normalize(self.clip.encode_image(images), dim=-1))

    def score(self, images: Tensor | ImageFeatures, cache: TextCache) -> dict[str, Tensor]:
        logits = _cos_logits(self._features(images).image, cache.comp, self.logit_scale)
        return {"scores": logits, "logits_comp": logits}

    def loss(
        self, out: dict[str, Tensor], attr: Tensor, obj: Tensor, pair_target: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the composition logits (for monitoring: nothing is trainable)."""
        ce = F.cross_entropy(out["logits_comp"], pair_target)
        return ce, {"ce_comp": float(ce.detach())}


# --------------------------------------------------------------------------------------------- CSP
@register_model(
    "csp",
    setting="compositional",
    config=CSPConfig,
    description="CSP: compositional soft prompting (soft attribute/object vocabulary on frozen CLIP)",
)
class CSP(FrozenClipCZSL):
    """CSP: frozen CLIP; trainable soft vocabulary ``vocab`` (|A| + |O|, text width), attrs first then objs."""

    def __init__(
        self, cfg: CSPConfig, clip_model: nn.Module, attr_names: Sequence[str], obj_names: Sequence[str]
    ):
        super().__init__(clip_model, attr_names, obj_names)
        self.cfg = cfg
        self.logit_scale = clip_logit_scale(clip_model, cfg.logit_scale)
        names = list(attr_names) + list(obj_names)
        self.vocab = nn.Parameter(soft_vocabulary_init(clip_model, names, cfg.split_underscore))
        self.vocab_dropout = nn.Dropout(cfg.vocab_dropout)
        self.prefix_ids = bpe_ids(cfg.prefix)
        self.dim = embed_dim(clip_model)

    def context_length(self) -> int:
        """The prompt length in use: ``context_length_train`` in training mode, else ``context_length_eval``."""
        wanted = self.cfg.context_length_train if self.training else self.cfg.context_length_eval
        return _context_length(self.clip, wanted)

    def encode_pairs(
        self, pairs: Tensor, chunk_size: int | None = None, primitives: TextCache | None = None
    ) -> TextCache:
        pairs = self.check_pairs(pairs).to(self.vocab.device)
        row = template_ids(self.prefix_ids, 2, self.context_length()).to(self.vocab.device)
        slot = 1 + len(self.prefix_ids)
        vocab = self.vocab_dropout(self.vocab)  # one dropout mask per call, shared by every chunk

        def chunk(start: int, stop: int) -> Tensor:
            p = pairs[start:stop]
            soft = torch.stack([vocab[p[:, 0]], vocab[self.n_attrs + p[:, 1]]], dim=1)  # (k, 2, W)
            return encode_text(self.clip, row.expand(len(p), -1), [(slot, soft)])

        comp = encode_in_chunks(
            chunk,
            len(pairs),
            chunk_size or self.cfg.text_chunk,
            use_checkpoint=self.cfg.text_checkpoint and self.training,
        )
        return TextCache(pairs=pairs, comp=comp)

    def encode_images(self, images: Tensor, return_attention: bool = False) -> ImageFeatures:
        if return_attention:
            raise ValueError("csp has no refinement attention to return")
        with torch.no_grad():
            image = self.clip.encode_image(images)
        return ImageFeatures(image=F.normalize(image, dim=-1))

    def score(self, images: Tensor | ImageFeatures, cache: TextCache) -> dict[str, Tensor]:
        logits = _cos_logits(self._features(images).image, cache.comp, self.logit_scale)
        return {"scores": logits, "logits_comp": logits}

    def loss(
        self, out: dict[str, Tensor], attr: Tensor, obj: Tensor, pair_target: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy over the K pairs of the forward (train pairs at training time)."""
        ce = F.cross_entropy(out["logits_comp"], pair_target)
        return ce, {"ce_comp": float(ce.detach())}
