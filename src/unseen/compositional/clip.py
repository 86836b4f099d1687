"""CLIP through open_clip for compositional zero-shot learning: the shared plumbing of Refiner-R, CSP and
zero-shot CLIP.

Model construction
    :func:`create_clip` builds any open_clip architecture, frozen and in eval mode, with weights from a local
    file (OpenAI's TorchScript ``.pt``, open_clip ``.bin`` / ``.pt``, ``.safetensors``), a Hugging Face hub cache
    (``hf-hub:<org>/<name>``, offline with ``HF_HUB_OFFLINE=1``) or an open_clip pretrained tag where the machine
    is online; the file's architecture is checked against the requested one. Two small architectures ship with the
    package (``clip_configs/``): ``unseen-tiny-clip`` (the embedded benchmark's CLIP, pretrained on CPU in a
    minute) and ``unseen-test-clip`` (random weights, unit tests). They use the standard BPE tokenizer (vocabulary
    49,408) and a context length of 16.

Text side
    :func:`tokenize` / :func:`bpe_ids` wrap open_clip's BPE tokenizer (SOT = 49406, EOT = 49407, pad = 0).
    :func:`encode_text` is a custom forward of the frozen text tower that accepts token ids plus embedding
    substitutions (soft vocabulary rows, learnable context vectors) placed into template slots; it slices the
    positional embedding and the causal mask to the context length of the ids (8 for training, 16 for evaluation on
    real CLIP, as CSP), pools at the EOT position (argmax of the ids), applies ``ln_final`` and
    ``text_projection`` and L2-normalises. Without substitutions it equals ``clip.encode_text`` (tested).
    :func:`encode_in_chunks` runs any per-chunk text encoder over many prompts (C-GQA: 5,592 train pairs, 278k
    open-world candidates) with optional activation checkpointing per chunk.
    :func:`soft_vocabulary_init` = mean token embedding of each name's BPE tokens (no SOT/EOT), CSP's init.

Visual side
    :func:`encode_image_tokens` returns the image embedding g = proj(ln_post(CLS)) and the token sequences
    (CLS prefix + patches, before ``ln_post``) of the last M blocks via ``VisionTransformer.forward_intermediates``.

Shared model interface (:class:`FrozenClipCZSL`, implemented by ``zeroshot_clip``, ``csp`` and ``refiner``)
    ``Model(cfg, clip_model, attr_names, obj_names)``; ``pairs`` is always a LongTensor (K, 2) of 0-based
    (attr_idx, obj_idx) into ``attr_names`` / ``obj_names``.

    - ``model(images, pairs, return_attention=False) -> dict``: ``"scores"`` (B, K), the inference score the
      evaluator uses; where the model has them ``"logits_comp"`` (B, K), ``"logits_global"`` (B, K),
      ``"logits_state"`` (B, |A|), ``"logits_obj"`` (B, |O|); ``"attention"`` (B, n_queries, T) on request.
    - ``model.loss(out, attr, obj, pair_target) -> (loss, logs)``: ``pair_target`` (B,) indexes the K pairs
      given to the forward (train pairs in file order at training time); ``attr``/``obj`` (B,) index the
      vocabularies; ``logs`` is a dict of floats.
    - Evaluation over many candidates: ``cache = model.encode_pairs(pairs, chunk_size)`` (a :class:`TextCache`,
      sliceable by ``cache.chunk(start, stop)``), ``feats = model.encode_images(images)`` (an
      :class:`ImageFeatures`), ``model.score(feats_or_images, cache)`` -> the same dict as the forward without
      re-encoding texts or images. Scores of a candidate chunk equal the matching columns of the full scores (the
      primitive softmaxes run over the whole vocabularies). To encode candidates chunk by chunk instead of holding
      all K x D features (C-GQA OW: 278k x 768 fp32 = 0.85 GB), pass ``primitives=<an earlier cache>`` to reuse
      its state/object features. Call these under ``torch.no_grad()`` at evaluation time.

    CLIP stays frozen and in eval mode (``model.train()`` does not switch it), and the frozen CLIP weights are left
    out of ``state_dict()`` (checkpoints hold only the trained tensors; ``load_state_dict`` accepts them alone).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger("unseen")

CONFIG_DIR = Path(__file__).resolve().parent / "clip_configs"
_registered = False

SOT_ID = 49406  # <start_of_text> of the OpenAI BPE vocabulary
EOT_ID = 49407  # <end_of_text>; the largest id, so argmax over a row of ids finds it
BPE_VOCAB_SIZE = 49408


# --------------------------------------------------------------------------------------------- construction
def register_tiny_configs() -> None:
    """Make the packaged architectures known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


# Packaged architectures whose ViT patch embedding (``visual.conv1``) is a small CNN (a hybrid ViT, as in the ViT
# paper): per stage 3x3 conv + BN + ReLU + 2x2 max-pool (one stage per halving of the patch size), then a 1x1 conv to
# the transformer width. Same token grid as the patch embedding it replaces. Measured on the embedded compositional
# world (objects, supervised, 200 steps): the plain ViT stays at ~13% test object accuracy, the hybrid with average
# pooling reaches ~50% (benchmarks/RESULTS.md, section 7).
CONV_STEMS: dict[str, tuple[int, ...]] = {"unseen-tiny-clip": (32, 64, 128)}


class ConvStem(nn.Module):
    """CNN patch embedding (see :data:`CONV_STEMS`): (B, 3, H, W) -> (B, width, H / patch, W / patch)."""

    def __init__(self, width: int, patch: int, widths: Sequence[int]) -> None:
        super().__init__()
        if patch != 2 ** len(widths):
            raise ValueError(
                f"conv stem: {len(widths)} stages halve the image {len(widths)} times, the patch is {patch}"
            )
        layers: list[nn.Module] = []
        c = 3
        for w in widths:
            layers += [
                nn.Conv2d(c, w, 3, 1, 1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c = w
        layers.append(nn.Conv2d(c, width, 1))
        self.stem = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.stem(x)


def _install_stem(model: nn.Module, arch: str) -> None:
    if arch in CONV_STEMS:
        conv1 = model.visual.conv1
        model.visual.conv1 = ConvStem(conv1.out_channels, conv1.kernel_size[0], CONV_STEMS[arch]).to(
            conv1.weight.device
        )


OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")  # in OpenAI's files, not model tensors
OPEN_CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's names
OPEN_CLIP_HUB_CONFIG = "open_clip_config.json"


def create_clip(
    arch: str, weights: str | Path | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """An open_clip model of architecture ``arch``, frozen and in eval mode, with weights from ``weights``:

    - ``None``: random init;
    - a local file: OpenAI's TorchScript ``.pt`` (tensors read without running the archive; its
      ``input_resolution`` / ``context_length`` / ``vocab_size`` entries dropped, as open_clip's OpenAI loader
      does), an open_clip ``.bin`` / ``.pt`` state dict or checkpoint, or ``.safetensors``;
    - ``hf-hub:<org>/<name>``: ``open_clip_model.safetensors`` (else ``open_clip_pytorch_model.bin``) of that hub
      repository, from the Hugging Face cache (``HF_HUB_CACHE``; nothing is downloaded with ``HF_HUB_OFFLINE=1``);
    - another string (``"openai"``, ``"laion2b_s32b_b82k"``): open_clip's own source (needs internet).

    The file must hold ``arch``: a different architecture (e.g. ViT-B/16 weights for ``ViT-L-14``) is a
    :class:`~unseen.backbones.WeightsError` naming both; weights trained with the other activation (QuickGELU for
    OpenAI's) are loaded with a warning."""
    import open_clip

    from unseen.backbones import HUB_PREFIX, WeightsError, hub_file, is_torchscript_archive, read_state_dict

    register_tiny_configs()
    path: Path | None = None
    trained_act: str | None = None  # the activation the weights were trained with, where the file says
    text = str(weights) if weights is not None else ""
    if text.startswith(HUB_PREFIX):
        path = hub_file(text, OPEN_CLIP_HUB_FILES)
        config = hub_file(text, (OPEN_CLIP_HUB_CONFIG,), required=False)
        if config is not None:
            try:
                model_cfg = json.loads(config.read_text()).get("model_cfg", {})
            except (OSError, ValueError, AttributeError) as exc:
                raise WeightsError(f"{config}: expected a JSON object with a 'model_cfg' ({exc})") from exc
            trained_act = "QuickGELU" if model_cfg.get("quick_gelu", False) else "GELU"  # open_clip's default
    elif weights is not None and (Path(text).suffix or Path(text).exists()):
        path = Path(text)
    root = logging.getLogger()
    # open_clip's notice when it initialises randomly: asked for, or the weights are loaded below
    quiet = _DropNotice("No pretrained weights loaded")
    root.addFilter(quiet)
    try:
        model = open_clip.create_model(
            arch, pretrained=None if (path or weights is None) else text, device=device
        )
    finally:
        root.removeFilter(quiet)
    _install_stem(model, arch)
    if path is not None:
        state = read_state_dict(path)
        if is_torchscript_archive(path) or any(k in state for k in OPENAI_METADATA):
            trained_act = "QuickGELU"  # an OpenAI file: all OpenAI CLIPs were trained with QuickGELU
            state = {k: v for k, v in state.items() if k not in OPENAI_METADATA}
        check_clip_architecture(state, model, arch, path)
        _check_activation(model, arch, path, trained_act)
        from unseen.backbones import load_state

        load_state(model, state, path, ignore=(), what=f"CLIP '{arch}'")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def describe_clip_state(state: Mapping[str, Tensor]) -> str:
    """The architecture a CLIP state dict (open_clip / OpenAI names) holds, from tensor shapes: e.g. ``ViT/14
    vision (width 1024, 24 blocks, 224 px), text (width 768, 12 blocks, context 77), embedding 768``."""

    def blocks(prefix: str) -> int:
        return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})

    def dim(key: str, axis: int) -> str:
        return str(state[key].shape[axis]) if key in state and state[key].dim() > axis else "?"

    parts = []
    if "visual.class_embedding" in state:  # a ViT
        conv = state.get("visual.conv1.weight")
        patch = int(conv.shape[-1]) if conv is not None and conv.dim() == 4 else 0
        tokens = (
            int(state["visual.positional_embedding"].shape[0])
            if "visual.positional_embedding" in state
            else 0
        )
        size = f", {patch * math.isqrt(tokens - 1)} px" if patch and tokens > 1 else ""
        parts.append(
            f"ViT{f'/{patch}' if patch else ' (conv stem)'} vision (width {dim('visual.class_embedding', 0)}, "
            f"{blocks('visual.transformer.resblocks.')} blocks{size})"
        )
    elif any(k.startswith("visual.layer1.") for k in state):  # OpenAI's modified ResNet
        layers = "-".join(str(blocks(f"visual.layer{i}.")) for i in range(1, 5))
        parts.append(f"ResNet vision (blocks {layers}, width {dim('visual.layer1.0.conv1.weight', 0)})")
    if "token_embedding.weight" in state:
        parts.append(
            f"text (width {dim('token_embedding.weight', 1)}, {blocks('transformer.resblocks.')} blocks, "
            f"context {dim('positional_embedding', 0)})"
        )
    if "text_projection" in state:
        parts.append(f"embedding {dim('text_projection', 1)}")
    return ", ".join(parts) or "no CLIP tensors"


def check_clip_architecture(
    state: Mapping[str, Tensor], model: nn.Module, arch: str, source: str | Path
) -> None:
    """Raise a WeightsError naming both architectures unless ``state`` has ``model``'s architecture (``arch``)."""
    from unseen.backbones import WeightsError

    held, wanted = describe_clip_state(state), describe_clip_state(model.state_dict())
    if held != wanted:
        raise WeightsError(
            f"{source}: holds a CLIP with {held}; the architecture '{arch}' is {wanted} "
            "(set model.clip_arch to the file's architecture)"
        )


def _activation(model: nn.Module) -> str | None:
    names = {type(m).__name__ for m in model.modules()}
    return "QuickGELU" if "QuickGELU" in names else "GELU" if "GELU" in names else None


def _check_activation(model: nn.Module, arch: str, source: Path, trained: str | None) -> None:
    """Warn when the weights were trained with another activation than the model's: no parameter tells QuickGELU
    from GELU, so such weights load, and give slightly wrong features."""
    used = _activation(model)
    if trained is not None and used is not None and trained != used:
        other = f"{arch}-quickgelu" if trained == "QuickGELU" else arch.removesuffix("-quickgelu")
        hint = (
            f"'{other}'"
            if other != arch
            else f"an architecture config with quick_gelu={trained == 'QuickGELU'}"
        )
        log.warning(
            "CLIP weights %s were trained with %s but '%s' uses %s: use %s", source, trained, arch, used, hint
        )
    elif trained is None and used == "GELU" and re.match(r"^(ViT|RN)", arch):
        # a plain state dict does not say; OpenAI's ViT/RN weights are the common case that needs QuickGELU
        log.warning(
            "CLIP %s from the local file %s uses GELU; OpenAI weights need QuickGELU: use '%s-quickgelu'",
            arch,
            source,
            arch,
        )


class _DropNotice(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def check_clip(clip: nn.Module) -> None:
    """Raise a clear error unless ``clip`` is an open_clip ``CLIP`` with the built-in text tower (argmax pooling)
    and a standard ViT visual tower: the custom forwards below rely on exactly these attributes."""
    need = (
        "token_embedding",
        "positional_embedding",
        "transformer",
        "ln_final",
        "text_projection",
        "attn_mask",
        "visual",
    )
    missing = [a for a in need if not hasattr(clip, a)]
    if missing:
        raise TypeError(
            f"CLIP model {type(clip).__name__}: expected an open_clip CLIP with the built-in text tower; "
            f"missing attribute(s) {', '.join(missing)}"
        )
    pool = getattr(clip, "text_pool_type", "argmax")
    if pool != "argmax":
        raise TypeError(
            f"CLIP model: text_pool_type is {pool!r}; the custom text forward pools at the EOT position "
            "found by argmax of the token ids (OpenAI BPE), so it needs 'argmax'"
        )
    if clip.token_embedding.num_embeddings != BPE_VOCAB_SIZE:
        raise TypeError(
            f"CLIP model: token vocabulary of {clip.token_embedding.num_embeddings} rows; expected the "
            f"OpenAI BPE vocabulary ({BPE_VOCAB_SIZE})"
        )
    if not hasattr(clip.visual, "forward_intermediates") or not hasattr(clip.visual, "ln_post"):
        raise TypeError(
            "CLIP model: expected an open_clip VisionTransformer visual tower (forward_intermediates)"
        )


def text_width(clip: nn.Module) -> int:
    """Width of the text token embeddings (768 for ViT-L/14)."""
    return int(clip.token_embedding.embedding_dim)


def clip_logit_scale(clip: nn.Module, value: float = 0.0) -> float:
    """The cosine-logit temperature: ``value`` when positive, else the CLIP's own ``exp(logit_scale)`` (100 for the
    OpenAI weights, ~14.3 = 1 / 0.07 for the embedded benchmark's briefly pretrained tiny CLIP)."""
    return float(value) if value > 0 else float(clip.logit_scale.detach().exp())


def embed_dim(clip: nn.Module) -> int:
    """Joint image-text embedding dimension D (768 for ViT-L/14)."""
    return int(clip.visual.output_dim)


def vision_width(clip: nn.Module) -> int:
    """Width W of the visual tokens (1024 for ViT-L/14)."""
    return int(clip.visual.transformer.width)


def vision_heads(clip: nn.Module) -> int:
    """Attention heads of the visual blocks (16 for ViT-L/14)."""
    return int(clip.visual.transformer.resblocks[0].attn.num_heads)


def vision_layers(clip: nn.Module) -> int:
    return len(clip.visual.transformer.resblocks)


def max_context_length(clip: nn.Module) -> int:
    """Rows of the positional embedding (77 for OpenAI CLIP, 16 for the packaged tiny configs)."""
    return int(clip.positional_embedding.shape[0])


# --------------------------------------------------------------------------------------------- names, tokens
def prompt_name(name: str) -> str:
    """A class name as CSP's clip_baseline writes it into zero-shot prompts: lower-cased, ``.`` -> space, ``_``
    kept."""
    return name.replace(".", " ").lower()


def vocab_name(name: str, split_underscore: bool = True) -> str:
    """A class name as text for the soft-vocabulary init: lower-cased, ``.`` -> space and (by default) ``_`` ->
    space, so ``traffic_light`` averages the tokens of "traffic light" (CSP itself keeps the ``_`` token)."""
    text = prompt_name(name)
    return " ".join(text.replace("_", " ").split()) if split_underscore else text


@lru_cache(maxsize=1)
def get_tokenizer():
    """open_clip's BPE tokenizer (the OpenAI vocabulary, shipped with the package: no download)."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    assert tok.sot_token_id == SOT_ID and tok.eot_token_id == EOT_ID
    return tok


def tokenize(texts: str | Sequence[str], context_length: int) -> Tensor:
    """Token ids (N, context_length): SOT, BPE tokens, EOT, zero padding; over-long texts are truncated with EOT
    kept in the last position (open_clip's rule)."""
    if isinstance(texts, str):
        texts = [texts]
    return get_tokenizer()(list(texts), context_length=context_length)


def bpe_ids(text: str) -> list[int]:
    """The BPE ids of ``text`` without SOT/EOT (the tokenizer lower-cases and cleans whitespace)."""
    return list(get_tokenizer().encode(text))


def template_ids(
    prefix_ids: Sequence[int], n_slots: int, context_length: int, slot_id: int | None = None
) -> Tensor:
    """One prompt row (context_length,) = ``SOT prefix x*n_slots EOT`` + zero padding, where ``x`` is the BPE id of
    "x" (CSP's placeholder word). Slots sit at positions ``1 + len(prefix) ...``, immediately before EOT."""
    slot = bpe_ids("x")[0] if slot_id is None else slot_id
    row = [SOT_ID, *prefix_ids, *([slot] * n_slots), EOT_ID]
    if len(row) > context_length:
        raise ValueError(
            f"prompt template of {len(row)} tokens (SOT + {len(prefix_ids)} context + {n_slots} slots "
            f"+ EOT) does not fit the context length {context_length}"
        )
    ids = torch.zeros(context_length, dtype=torch.long)
    ids[: len(row)] = torch.tensor(row)
    return ids


# --------------------------------------------------------------------------------------------- text forward
Substitution = tuple[int, Tensor]
"""(start position, values): values (W,) or (k, W) shared by every row, or (N, k, W) per row (a per-row single
token is (N, 1, W)), written into token positions start .. start + k - 1 of the embedded prompt."""


def embed_tokens(clip: nn.Module, token_ids: Tensor, substitutions: Sequence[Substitution] = ()) -> Tensor:
    """Token embeddings (N, L, W) of ``token_ids`` (N, L) with ``substitutions`` written into their slots."""
    x = clip.token_embedding(token_ids)
    if not substitutions:
        return x
    n, length, width = x.shape
    x = x.clone()
    for start, values in substitutions:
        v = values
        if v.dim() == 1:  # (W,): one token shared by every row
            v = v[None]
        if v.dim() == 2:  # (k, W): k tokens shared by every row
            v = v[None].expand(n, -1, -1)
        if v.dim() != 3 or v.shape[0] != n or v.shape[-1] != width:
            raise ValueError(
                f"substitution at position {start}: expected (k, {width}) or ({n}, k, {width}) values, "
                f"got {tuple(values.shape)}"
            )
        k = v.shape[1]
        if start < 1 or start + k > length:
            raise ValueError(
                f"substitution at positions {start}..{start + k - 1} is outside the prompt body "
                f"1..{length - 1} (context length {length})"
            )
        x[:, start : start + k] = v.to(x.dtype)
    return x


def encode_embeddings(clip: nn.Module, token_ids: Tensor, x: Tensor, normalize: bool = True) -> Tensor:
    """Run the frozen text tower on embedded prompts ``x`` (N, L, W) whose token ids are ``token_ids`` (N, L).

    The positional embedding and the causal mask are sliced to L (the context length in use, at most the model's);
    features are pooled at each row's EOT position (argmax of its ids), then ``ln_final``, ``text_projection`` and
    (by default) L2 normalisation. Returns (N, D)."""
    n, length = token_ids.shape
    if x.shape[:2] != (n, length):
        raise ValueError(
            f"text forward: embeddings {tuple(x.shape)} do not match token ids {tuple(token_ids.shape)}"
        )
    if length > max_context_length(clip):
        raise ValueError(
            f"text forward: context length {length} exceeds the model's {max_context_length(clip)}"
        )
    cast = clip.transformer.get_cast_dtype()
    x = x.to(cast) + clip.positional_embedding[:length].to(cast)
    mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
    x = clip.transformer(x, attn_mask=mask)
    x = x[torch.arange(n, device=x.device), token_ids.argmax(dim=-1)]
    x = clip.ln_final(x)
    proj = clip.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return F.normalize(x, dim=-1) if normalize else x


def encode_text(
    clip: nn.Module, token_ids: Tensor, substitutions: Sequence[Substitution] = (), normalize: bool = True
) -> Tensor:
    """Text features (N, D) of ``token_ids`` (N, L) with optional embedding ``substitutions`` (see
    :data:`Substitution`); with none it equals ``clip.encode_text`` at the same context length."""
    return encode_embeddings(clip, token_ids, embed_tokens(clip, token_ids, substitutions), normalize)


def encode_in_chunks(
    encode_chunk: Callable[[int, int], Tensor], n: int, chunk_size: int, use_checkpoint: bool = False
) -> Tensor:
    """Concatenate ``encode_chunk(start, stop)`` over [0, n) in chunks of ``chunk_size`` rows.

    With ``use_checkpoint`` (and gradients enabled) each chunk runs under activation checkpointing: only its
    inputs and outputs are kept and the text tower is re-run during backward, so memory no longer grows with the
    activations of all prompts (on C-GQA, 5,592 train prompts every step)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive number of prompts, got {chunk_size}")
    outs = []
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        if use_checkpoint and torch.is_grad_enabled():
            outs.append(checkpoint(encode_chunk, start, stop, use_reentrant=False))
        else:
            outs.append(encode_chunk(start, stop))
    if not outs:
        raise ValueError("encode_in_chunks: nothing to encode (n = 0)")
    return torch.cat(outs)


@torch.no_grad()
def soft_vocabulary_init(clip: nn.Module, names: Sequence[str], split_underscore: bool = True) -> Tensor:
    """(len(names), W) rows: the mean token embedding of each name's BPE tokens (no SOT/EOT), names prepared by
    :func:`vocab_name`."""
    emb = clip.token_embedding.weight
    rows = []
    for name in names:
        ids = bpe_ids(vocab_name(name, split_underscore))
        if not ids:
            raise ValueError(f"soft vocabulary: name {name!r} has no BPE tokens")
        rows.append(emb[torch.tensor(ids, device=emb.device)].float().mean(0))
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------- visual forward
def encode_image_tokens(clip: nn.Module, images: Tensor, n_blocks: int) -> tuple[Tensor, list[Tensor]]:
    """(g, tokens): g (B, D) = CLIP's image embedding, not normalised (proj(ln_post(CLS)), or the mean of the patch
    tokens for ``pool_type='avg'`` as in ``unseen-tiny-clip``) and, for the last
    ``n_blocks`` blocks in depth order, the block outputs (B, T, W) with the CLS prefix first (T = 1 + patches),
    before ``ln_post``. ``n_blocks = 0`` skips the tokens."""
    visual = clip.visual
    if not 0 <= n_blocks <= vision_layers(clip):
        raise ValueError(f"n_blocks: expected 0..{vision_layers(clip)} visual blocks, got {n_blocks}")
    if n_blocks == 0:
        return visual(images), []
    out = visual.forward_intermediates(images, indices=n_blocks, output_fmt="NLC", output_extra_tokens=True)
    # open_clip 3.3.0: 'image_intermediates' = patch tokens (B, P, W) per block, 'image_intermediates_prefix' =
    # the class token (B, 1, W) per block, split off by forward_intermediates.
    tokens = [
        torch.cat([pre, pat], dim=1)
        for pre, pat in zip(out["image_intermediates_prefix"], out["image_intermediates"], strict=True)
    ]
    return out["image_features"], tokens


# --------------------------------------------------------------------------------------------- shared model
@dataclass
class TextCache:
    """Encoded candidate texts: ``pairs`` (K, 2) (attr_idx, obj_idx); ``comp`` (K, D) composition prompt features
    (L2-normalised); ``state`` (|A|, D) / ``obj`` (|O|, D) primitive prompt features where the model has them.
    ``chunk(start, stop)`` slices the candidates and shares the primitives."""

    pairs: Tensor
    comp: Tensor
    state: Tensor | None = None
    obj: Tensor | None = None

    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    def chunk(self, start: int, stop: int) -> TextCache:
        return replace(self, pairs=self.pairs[start:stop], comp=self.comp[start:stop])


@dataclass
class ImageFeatures:
    """Encoded images: ``image`` (B, D) CLIP's image embedding g, L2-normalised; branch features ``comp``,
    ``state``, ``obj`` (B, D), or (B, n_queries, D) with max query pooling, L2-normalised; ``attention``
    (B, n_queries, T) of the last refinement (heads averaged) when requested."""

    image: Tensor
    comp: Tensor | None = None
    state: Tensor | None = None
    obj: Tensor | None = None
    attention: Tensor | None = None


class FrozenClipCZSL(nn.Module):
    """Base of the compositional models: holds the frozen CLIP (eval mode, no gradients, not in ``state_dict``),
    the vocabularies and the pair checks. Subclasses implement ``encode_pairs``, ``encode_images``, ``score`` and
    ``loss`` (interface in the module docstring)."""

    clip_prefix = "clip."

    def __init__(self, clip_model: nn.Module, attr_names: Sequence[str], obj_names: Sequence[str]):
        super().__init__()
        check_clip(clip_model)
        for what, names in (("attr_names", attr_names), ("obj_names", obj_names)):
            if len(names) == 0:
                raise ValueError(f"{what}: expected a non-empty vocabulary")
            if len(set(names)) != len(names):
                raise ValueError(f"{what}: names must be unique")
        self.attr_names = list(attr_names)
        self.obj_names = list(obj_names)
        self.clip = clip_model
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()
        self.register_state_dict_post_hook(_drop_clip_keys)
        self.register_load_state_dict_post_hook(_allow_missing_clip_keys)

    @property
    def n_attrs(self) -> int:
        return len(self.attr_names)

    @property
    def n_objs(self) -> int:
        return len(self.obj_names)

    def train(self, mode: bool = True) -> FrozenClipCZSL:
        super().train(mode)
        self.clip.eval()  # frozen CLIP: never in training mode (patch dropout, if any, stays off)
        return self

    def check_pairs(self, pairs: Tensor) -> Tensor:
        """Validate ``pairs`` (K, 2) integer (attr_idx, obj_idx) within the vocabularies."""
        if not isinstance(pairs, Tensor) or pairs.dim() != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
            shape = tuple(pairs.shape) if isinstance(pairs, Tensor) else type(pairs).__name__
            raise ValueError(
                f"pairs: expected a LongTensor (K, 2) of (attr_idx, obj_idx) with K >= 1, got {shape}"
            )
        if pairs.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"pairs: expected integer indices, got dtype {pairs.dtype}")
        pairs = pairs.long()
        a, o = pairs[:, 0], pairs[:, 1]
        if (
            int(a.min()) < 0
            or int(a.max()) >= self.n_attrs
            or int(o.min()) < 0
            or int(o.max()) >= self.n_objs
        ):
            raise ValueError(
                f"pairs: indices out of range (attrs 0..{self.n_attrs - 1}, objs 0..{self.n_objs - 1})"
            )
        return pairs

    def forward(self, images: Tensor, pairs: Tensor, return_attention: bool = False) -> dict[str, Tensor]:
        """Score ``images`` (B, 3, H, W) against ``pairs`` (K, 2): see the module docstring for the keys."""
        return self.score(
            self.encode_images(images, return_attention=return_attention), self.encode_pairs(pairs)
        )

    def encode_pairs(
        self, pairs: Tensor, chunk_size: int | None = None, primitives: TextCache | None = None
    ) -> TextCache:  # pragma: no cover
        """Text features of ``pairs`` (K, 2), ``chunk_size`` prompts per text-tower call; ``primitives``: an earlier
        cache whose state/object features are reused (models without primitive branches ignore it)."""
        raise NotImplementedError

    def encode_images(
        self, images: Tensor, return_attention: bool = False
    ) -> ImageFeatures:  # pragma: no cover
        raise NotImplementedError

    def score(
        self, images: Tensor | ImageFeatures, cache: TextCache
    ) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _features(self, images: Tensor | ImageFeatures) -> ImageFeatures:
        return images if isinstance(images, ImageFeatures) else self.encode_images(images)


def _drop_clip_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + FrozenClipCZSL.clip_prefix)]:
        del state_dict[key]


def _allow_missing_clip_keys(module: nn.Module, incompatible: object) -> None:
    missing = incompatible.missing_keys  # type: ignore[attr-defined]
    missing[:] = [k for k in missing if f".{FrozenClipCZSL.clip_prefix}" not in f".{k}"]
