"""Contrastive pretraining of the embedded benchmark's small CLIP (``unseen-tiny-clip``) on TRAIN pairs only.

The stand-in for OpenAI's CLIP pretraining: the model learns the words of the compositional world from captioned
images of its **train pairs** (the ``pretrain/`` renders of :mod:`unseen.shapes.compositional_world`, disjoint
from every benchmark image; optionally also the benchmark's train-set images). It never sees a val/test image or
an unseen pair, so, as with real CLIP, zero-shot recognition of unseen pairs rests on how its text tower composes
known words. After pretraining the model is frozen and used like any CLIP checkpoint.

Objective per step (batch of B images, symmetric InfoNCE with a learnable logit scale, clamped at 100):

- **composition**: the batch's distinct train pairs U each get one caption (a random template, e.g.
  ``"a photo of a {state} {object}"``); image -> text is cross-entropy over the |U| captions (one positive each),
  text -> image is cross-entropy over the B images with a uniform target over the images of that pair (several
  images of one pair in a batch are not negatives of each other); the two directions are averaged.
- **primitives** (weights ``state_weight`` / ``object_weight``): image -> text cross-entropy over one caption per state
  (``"a photo of something {state}"``...) and one per object (``"a photo of a {object}"``...), all states /
  objects of the vocabulary as candidates.

Names are written into captions as CSP's zero-shot prompt writes them (:func:`unseen.compositional.clip.prompt_name`:
lower-case, ``.`` -> space, ``_`` kept), and ``"a photo of {state} {object}"`` (the zero-shot template) is one of
the templates. AdamW (no weight decay on gains, biases, embeddings and the logit scale), linear warm-up then cosine
decay, fixed number of steps, seeded batches and flips: deterministic for a given thread count.

:func:`pretrained_tiny_clip` returns the cached weights (built if missing or stale) as a safetensors file that
``create_clip('unseen-tiny-clip', weights=path)`` loads; :func:`zero_shot_accuracy` measures the frozen model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unseen.compositional.clip import create_clip, get_tokenizer, prompt_name, register_tiny_configs, tokenize
from unseen.config import to_dict
from unseen.engine import progress
from unseen.io import DataFormatError, cache_root, load_torch, read_image, save_safetensors, short_hash
from unseen.shapes.compositional_world import NA, SPLIT_NAME

log = logging.getLogger("unseen")

PRETRAIN_VERSION = "tiny-clip-pretrain/2"  # 2: hybrid (CNN-stem) ViT, average pooling
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ZERO_SHOT_TEMPLATE = "a photo of {state} {object}"

PAIR_TEMPLATES: tuple[str, ...] = (
    ZERO_SHOT_TEMPLATE,
    "a photo of a {state} {object}",
    "a picture of a {state} {object}",
    "a {state} {object}",
    "{state} {object}",
    "a photo of a {object} that is {state}",
)
STATE_TEMPLATES: tuple[str, ...] = ("a photo of something {state}", "something {state}", "a {state} thing")
OBJECT_TEMPLATES: tuple[str, ...] = ("a photo of a {object}", "a {object}", "{object}")


@dataclass
class CLIPPretrainConfig:
    """Pretraining recipe. Every field changes the weights (and the cache key).

    ``steps`` optimizer steps of ``batch_size`` images; ``lr`` peak AdamW learning rate after ``warmup`` linear
    steps, cosine decay to ``lr * min_lr_ratio``; ``weight_decay`` on matrices only; ``state_weight`` /
    ``object_weight`` scale the state / object caption losses (objects are the slow part for a ViT from scratch,
    colours are learnt almost at once); ``flip`` = random horizontal flips; ``patch_dropout`` = fraction of image
    patches dropped at random in every training forward (FLIP-style: about that much less compute per image, so
    more steps fit the budget; no effect on the saved weights or at inference); ``use_train_images`` adds the
    benchmark's train-set images (train pairs only) to the ``pretrain/`` renders; ``init_logit_scale`` = initial
    temperature (exp of it multiplies the cosines; clamped to <= 100).
    """

    arch: str = "unseen-tiny-clip"
    seed: int = 0
    steps: int = 150
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: int = 15
    weight_decay: float = 0.05
    state_weight: float = 0.25
    object_weight: float = 1.0
    flip: bool = True
    patch_dropout: float = 0.5
    use_train_images: bool = False
    init_logit_scale: float = math.log(1 / 0.07)
    pair_templates: list[str] = field(default_factory=lambda: list(PAIR_TEMPLATES))
    state_templates: list[str] = field(default_factory=lambda: list(STATE_TEMPLATES))
    object_templates: list[str] = field(default_factory=lambda: list(OBJECT_TEMPLATES))

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"CLIPPretrainConfig.{name}: {why} (got {getattr(self, name)!r})")

        for name in ("steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be >= 1")
        if self.warmup < 0 or self.warmup > self.steps:
            raise bad("warmup", "must be in [0, steps]")
        if not 0 <= self.patch_dropout < 1:
            raise bad("patch_dropout", "must be in [0, 1)")
        if (
            self.lr <= 0
            or not 0 <= self.min_lr_ratio <= 1
            or self.weight_decay < 0
            or self.state_weight < 0
            or self.object_weight < 0
        ):
            raise bad(
                "lr", "need lr > 0, 0 <= min_lr_ratio <= 1, weight_decay >= 0, state/object_weight >= 0"
            )
        for name, keys in (
            ("pair_templates", ("{state}", "{object}")),
            ("state_templates", ("{state}",)),
            ("object_templates", ("{object}",)),
        ):
            tpl = getattr(self, name)
            if not tpl or any(not all(k in t for k in keys) for t in tpl):
                raise bad(name, f"need at least one template, each containing {' and '.join(keys)}")


# --------------------------------------------------------------------------------------------- data
def _load_images(paths: Sequence[Path]) -> Tensor:
    """uint8 (N, 3, H, W) from image files (all must have one size)."""
    arrays = []
    for p in paths:
        arrays.append(np.asarray(read_image(p), dtype=np.uint8))
    if len({a.shape for a in arrays}) > 1:
        raise DataFormatError(
            f"{paths[0].parent}: images of different sizes {sorted({a.shape for a in arrays})}"
        )
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def normalise(images: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) -> float32 CLIP-normalised (the images are already at the model's resolution)."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@dataclass
class PretrainData:
    """Pretraining images (uint8 N x 3 x H x W) with their train-pair / state / object indices (0-based rows of
    ``pairs`` / ``states`` / ``objects``) and the vocabulary (states, objects sorted; ``pairs`` = train pairs)."""

    images: Tensor
    pair: np.ndarray
    state: np.ndarray
    obj: np.ndarray
    pairs: list[tuple[str, str]]
    states: list[str]
    objects: list[str]


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            toks = line.split()
            if len(toks) != 2:
                raise DataFormatError(f"{path}: line {i}: expected 'state object', got {line!r}")
            out.append((toks[0], toks[1]))
    return out


def load_pretrain_data(world_root: str | os.PathLike[str], use_train_images: bool = False) -> PretrainData:
    """The ``pretrain/`` renders of an exported compositional world (plus its train-set images if asked).

    Only train pairs (``compositional-split-natural/train_pairs.txt``) are allowed: any other pair is an error.
    """
    root = Path(world_root)
    split = root / SPLIT_NAME
    train_pairs = _read_pairs(split / "train_pairs.txt")
    listed = {p for s in ("train", "val", "test") for p in _read_pairs(split / f"{s}_pairs.txt")}
    states = sorted({s for s, _ in listed})
    objects = sorted({o for _, o in listed})
    list_path = root / "pretrain" / "pretrain_list.json"
    if not list_path.is_file():
        raise DataFormatError(f"{list_path}: file not found (not a compositional world exported by unseen?)")
    listing = json.loads(list_path.read_text(encoding="utf-8"))
    for key in ("images", "attrs", "objs"):
        if not isinstance(listing.get(key), list) or len(listing[key]) != len(listing.get("images", [])):
            raise DataFormatError(f"{list_path}: field {key!r} must be a list as long as 'images'")
    files = [root / "pretrain" / p for p in listing["images"]]
    labels = list(zip(listing["attrs"], listing["objs"]))
    if use_train_images:
        meta_path = root / f"metadata_{SPLIT_NAME}.t7"
        for e in load_torch(meta_path):
            if e["set"] == "train" and e["attr"] != NA and (e["attr"], e["obj"]) in set(train_pairs):
                files.append(root / "images" / e["image"])
                labels.append((e["attr"], e["obj"]))
    index = {p: i for i, p in enumerate(train_pairs)}
    bad = sorted({p for p in labels if p not in index})
    if bad:
        raise DataFormatError(
            f"{list_path}: {len(bad)} pretraining pairs are not train pairs (e.g. {bad[:3]}); "
            "pretraining must never see val/test pairs"
        )
    return PretrainData(
        images=_load_images(files),
        pair=np.asarray([index[p] for p in labels], np.int64),
        state=np.asarray([states.index(s) for s, _ in labels], np.int64),
        obj=np.asarray([objects.index(o) for _, o in labels], np.int64),
        pairs=train_pairs,
        states=states,
        objects=objects,
    )


# --------------------------------------------------------------------------------------------- captions
class CaptionBank:
    """Pre-tokenised captions: row ``[template, pair]`` of ``pair_ids`` (T_p, P, L), state / object captions
    ``state_ids`` (T_s, A, L) / ``object_ids`` (T_o, O, L); L = the model's context length."""

    def __init__(
        self,
        cfg: CLIPPretrainConfig,
        pairs: Sequence[tuple[str, str]],
        states: Sequence[str],
        objects: Sequence[str],
        context_length: int,
    ) -> None:
        def tok(texts: list[str]) -> Tensor:
            ids = tokenize(texts, context_length)
            too_long = [t for t in texts if len(get_tokenizer().encode(t)) + 2 > context_length]
            if too_long:
                raise ValueError(f"captions longer than the context length {context_length}: {too_long[:3]}")
            return ids

        self.pair_ids = torch.stack(
            [
                tok([t.format(state=prompt_name(s), object=prompt_name(o)) for s, o in pairs])
                for t in cfg.pair_templates
            ]
        )
        self.state_ids = torch.stack(
            [tok([t.format(state=prompt_name(s)) for s in states]) for t in cfg.state_templates]
        )
        self.object_ids = torch.stack(
            [tok([t.format(object=prompt_name(o)) for o in objects]) for t in cfg.object_templates]
        )


# --------------------------------------------------------------------------------------------- training
def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr(cfg: CLIPPretrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _encode_text(model: nn.Module, ids: Tensor) -> Tensor:
    return F.normalize(model.encode_text(ids), dim=-1)


def contrastive_loss(
    model: nn.Module,
    images: Tensor,
    pair: Tensor,
    state: Tensor,
    obj: Tensor,
    bank: CaptionBank,
    gen: torch.Generator,
    state_weight: float = 0.25,
    object_weight: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """The pretraining loss of one batch (module docstring). ``images``: normalised (B, 3, H, W); ``pair`` /
    ``state`` / ``obj``: int64 (B,) rows of the bank's pairs / states / objects; ``gen`` draws the templates."""
    scale = model.logit_scale.exp()
    img = F.normalize(model.encode_image(images), dim=-1)  # (B, D)
    uniq, target = torch.unique(pair, return_inverse=True)  # U distinct pairs; target (B,) in [0, U)
    tpl = torch.randint(bank.pair_ids.shape[0], (len(uniq),), generator=gen)
    txt = _encode_text(model, bank.pair_ids[tpl, uniq])  # (U, D)
    logits = scale * img @ txt.T  # (B, U)
    loss_i = F.cross_entropy(logits, target)
    pos = (target[None, :] == torch.arange(len(uniq))[:, None]).float()  # (U, B)
    loss_t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    loss = 0.5 * (loss_i + loss_t)
    logs = {"comp": float(loss.detach()), "scale": float(scale.detach())}
    if state_weight > 0 or object_weight > 0:
        n_s, n_o = bank.state_ids.shape[1], bank.object_ids.shape[1]
        ts = torch.randint(bank.state_ids.shape[0], (n_s,), generator=gen)
        to = torch.randint(bank.object_ids.shape[0], (n_o,), generator=gen)
        prim = _encode_text(
            model, torch.cat([bank.state_ids[ts, torch.arange(n_s)], bank.object_ids[to, torch.arange(n_o)]])
        )
        ls = F.cross_entropy(scale * img @ prim[:n_s].T, state)
        lo = F.cross_entropy(scale * img @ prim[n_s:].T, obj)
        loss = loss + state_weight * ls + object_weight * lo
        logs.update(state=float(ls.detach()), object=float(lo.detach()))
    logs["loss"] = float(loss.detach())
    return loss, logs


def pretrain_clip(
    data: PretrainData,
    cfg: CLIPPretrainConfig | None = None,
    *,
    show_progress: bool = True,
    log_every: int = 0,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``cfg.arch`` from random init on ``data``; return the model (eval mode, frozen) and per-step logs."""
    cfg = cfg or CLIPPretrainConfig()
    cfg.validate()
    register_tiny_configs()
    torch.manual_seed(cfg.seed)
    model = create_clip(cfg.arch)
    for p in model.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        model.logit_scale.fill_(cfg.init_logit_scale)
    if cfg.patch_dropout > 0:
        from open_clip.transformer import PatchDropout

        model.visual.patch_dropout = PatchDropout(cfg.patch_dropout)  # parameter-free; removed again below
    model.train()
    size = int(
        model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    )
    if tuple(data.images.shape[2:]) != (size, size):
        raise DataFormatError(
            f"pretraining images are {tuple(data.images.shape[2:])}, {cfg.arch} expects {size} px"
        )
    bank = CaptionBank(cfg, data.pairs, data.states, data.objects, int(model.positional_embedding.shape[0]))
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xC11]))
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data.pair)
    order = rng.permutation(n)
    pos = 0
    history: list[dict[str, float]] = []
    max_scale = math.log(100.0)
    for step in progress(range(cfg.steps), enabled=show_progress, desc="pretraining tiny CLIP"):
        if pos + cfg.batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = torch.from_numpy(order[pos : pos + cfg.batch_size])
        pos += cfg.batch_size
        x = data.images[idx]
        if cfg.flip:
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        loss, logs = contrastive_loss(
            model,
            normalise(x),
            torch.from_numpy(data.pair[idx.numpy()]),
            torch.from_numpy(data.state[idx.numpy()]),
            torch.from_numpy(data.obj[idx.numpy()]),
            bank,
            gen,
            cfg.state_weight,
            cfg.object_weight,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, max_scale)
        history.append(logs)
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            log.info(
                "tiny CLIP step %d/%d: %s",
                step + 1,
                cfg.steps,
                " ".join(f"{k} {v:.3f}" for k, v in logs.items()),
            )
    model.visual.patch_dropout = nn.Identity()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, history


# --------------------------------------------------------------------------------------------- cache
def pretrain_key(world_root: str | os.PathLike[str], cfg: CLIPPretrainConfig) -> str:
    """Cache key: hash of the world's recorded content fingerprint, the recipe and the code version."""
    meta_path = Path(world_root) / "world.json"
    if not meta_path.is_file():
        raise DataFormatError(f"{meta_path}: file not found (not a compositional world exported by unseen?)")
    fingerprint = json.loads(meta_path.read_text(encoding="utf-8")).get("fingerprint")
    if not isinstance(fingerprint, str):
        raise DataFormatError(f"{meta_path}: field 'fingerprint' missing")
    spec = {"version": PRETRAIN_VERSION, "world": fingerprint, "config": to_dict(cfg)}
    return short_hash(json.dumps(spec, sort_keys=True), 16)


def pretrained_path(world_root: str | os.PathLike[str], cfg: CLIPPretrainConfig | None = None) -> Path:
    """Where :func:`pretrained_tiny_clip` keeps the weights: ``$UNSEEN_CACHE/clip/<arch>-<key>.safetensors``."""
    cfg = cfg or CLIPPretrainConfig()
    return cache_root() / "clip" / f"{cfg.arch}-{pretrain_key(world_root, cfg)}.safetensors"


def _is_current(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("key") == key
    except Exception:  # unreadable / truncated file: rebuild it
        return False


def pretrained_tiny_clip(
    world_root: str | os.PathLike[str], cfg: CLIPPretrainConfig | None = None, *, show_progress: bool = True
) -> Path:
    """Path to CLIP weights pretrained on ``world_root``'s train pairs (built if missing or stale, then cached).

    The file is safetensors (written atomically) with metadata ``key`` (the cache key), ``config`` and
    ``history`` (first/last losses); load it with ``create_clip(cfg.arch, weights=path)``.
    """
    cfg = cfg or CLIPPretrainConfig()
    cfg.validate()
    key = pretrain_key(world_root, cfg)
    out = pretrained_path(world_root, cfg)
    if _is_current(out, key):
        return out
    t0 = time.time()
    data = load_pretrain_data(world_root, cfg.use_train_images)
    log.info(
        "pretraining %s on %d images of %d train pairs (cached in %s)",
        cfg.arch,
        len(data.pair),
        len(data.pairs),
        out,
    )
    model, history = pretrain_clip(data, cfg, show_progress=show_progress)
    summary = {
        "first_loss": history[0]["loss"],
        "last_loss": history[-1]["loss"],
        "last_scale": history[-1]["scale"],
        "seconds": round(time.time() - t0, 1),
        "images": len(data.pair),
    }
    save_safetensors(
        out,
        model.state_dict(),
        metadata={
            "key": key,
            "version": PRETRAIN_VERSION,
            "config": json.dumps(to_dict(cfg)),
            "world": str(Path(world_root).resolve()),
            "summary": json.dumps(summary),
        },
    )
    log.info(
        "pretrained %s in %.0f s: loss %.3f -> %.3f",
        cfg.arch,
        summary["seconds"],
        summary["first_loss"],
        summary["last_loss"],
    )
    return out


# --------------------------------------------------------------------------------------------- measurement
@torch.no_grad()
def zero_shot_accuracy(
    model: nn.Module,
    world_root: str | os.PathLike[str],
    split: str = "test",
    template: str = ZERO_SHOT_TEMPLATE,
    batch_size: int = 256,
) -> dict[str, float]:
    """Closed-world zero-shot top-1 of a frozen CLIP on ``split`` ("val" | "test") of an exported world.

    Candidates = train pairs ∪ the split's pairs (czsl CW eval-mask), scores = cos(image, prompt) with the prompt
    ``template`` (names via :func:`prompt_name`), no bias (b = 0): returns accuracy on seen-pair samples (``seen``),
    unseen-pair samples (``unseen``), on unseen-pair samples with only the unseen candidates allowed
    (``unseen_only``, czsl's "best unseen"; ``unseen_candidates`` of them), all samples, state and object accuracy of the top pair, the number of
    candidates and ``chance`` = 1 / candidates.
    """
    root = Path(world_root)
    train = _read_pairs(root / SPLIT_NAME / "train_pairs.txt")
    cands = sorted(set(train) | set(_read_pairs(root / SPLIT_NAME / f"{split}_pairs.txt")))
    index = {p: i for i, p in enumerate(cands)}
    entries = [
        e
        for e in load_torch(root / f"metadata_{SPLIT_NAME}.t7")
        if e["set"] == split and e["attr"] != NA and (e["attr"], e["obj"]) in index
    ]
    images = _load_images([root / "images" / e["image"] for e in entries])
    y = torch.tensor([index[e["attr"], e["obj"]] for e in entries])
    seen = torch.tensor([(e["attr"], e["obj"]) in set(train) for e in entries])
    length = int(model.positional_embedding.shape[0])
    ids = tokenize([template.format(state=prompt_name(s), object=prompt_name(o)) for s, o in cands], length)
    txt = _encode_text(model, ids)
    pred = torch.cat(
        [
            (F.normalize(model.encode_image(normalise(images[i : i + batch_size])), dim=-1) @ txt.T).argmax(1)
            for i in range(0, len(entries), batch_size)
        ]
    )
    correct = (pred == y).float()
    # czsl's "best unseen" view: unseen samples, only unseen candidates (the b -> +inf end of the bias sweep)
    unseen_cols = torch.tensor([p not in set(train) for p in cands])
    if (~seen).any():
        feats = F.normalize(model.encode_image(normalise(images[~seen])), dim=-1)
        sub = torch.nonzero(unseen_cols).flatten()
        pred_u = sub[(feats @ txt[sub].T).argmax(1)]
        unseen_only = float((pred_u == y[~seen]).float().mean())
    else:
        unseen_only = float("nan")
    ps = torch.tensor([cands[int(p)][0] == e["attr"] for p, e in zip(pred, entries)]).float()
    po = torch.tensor([cands[int(p)][1] == e["obj"] for p, e in zip(pred, entries)]).float()
    return {
        "seen": float(correct[seen].mean()) if seen.any() else float("nan"),
        "unseen": float(correct[~seen].mean()) if (~seen).any() else float("nan"),
        "unseen_only": unseen_only,
        "unseen_candidates": int(unseen_cols.sum()),
        "all": float(correct.mean()),
        "state": float(ps.mean()),
        "object": float(po.mean()),
        "candidates": len(cands),
        "chance": 1.0 / len(cands),
        "images": len(entries),
    }
