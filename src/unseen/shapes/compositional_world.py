"""The compositional world: shapes ("objects") in colour and pattern "states", exported in the czsl layout.

Every image shows one main object (a shape from :data:`OBJECTS`) in one state (a colour or a surface pattern
from :data:`STATES`) over a cluttered background, with pose, scale, position, colour and lighting jitter, and
sometimes a smaller, faded distractor object of another pair (the context that makes real images ambiguous).

States and objects come in families (warm colours / cool colours / patterns; round / boxy / pointy shapes).
Which (state, object) pairs exist at all follows a family compatibility table (each state family goes with two
of the three object families), minus a few compatible pairs that never occur and plus a few incompatible ones
that do: the open world (every state x object) therefore has *infeasible* pairs, and a CompCos-style
feasibility computed from word vectors (similar states / objects have similar vectors) can find most of them.
The used pairs are split like czsl's natural split: train pairs (seen), val pairs (seen + unseen), test pairs
(seen + unseen); val and test unseen pairs are disjoint, and every unseen pair's state and object occur in at
least ``min_train_pairs_per_primitive`` train pairs.

:func:`export_compositional_world` writes exactly the czsl layout::

    <out_dir>/
      images/<state>_<object>/<nnnn>.png                       64 px RGB renders
      compositional-split-natural/{train,val,test}_pairs.txt   "state object" per line
      metadata_compositional-split-natural.t7                  torch.save(list of {image, attr, obj, set})
      glove.txt                                                "word v1 ... vd" word vectors (GloVe text format)
      pretrain/images/<state>_<object>/<nnnn>.png              extra renders of TRAIN pairs (CLIP pretraining)
      pretrain/pretrain_list.json                              {"images": [...], "attrs": [...], "objs": [...]}
      world.json                                               version, config (seed included), names, counts,
                                                               pair roles, fingerprints, versions, file list

Names use ``_`` and ``.`` as the real datasets do (``sky_blue``, ``polka.dotted``, ``plus.sign``), and the
metadata carries a few entries the reader must skip (``set == 'NA'``; ``attr == 'NA'``), as MIT-States does.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path

import numpy as np
from PIL import Image

from unseen.config import to_dict
from unseen.io import atomic_write_bytes, atomic_write_json, atomic_write_text, cache_root, short_hash
from unseen.shapes.common import existing_world, verify_world, world_record, write_folder_atomically
from unseen.shapes.render import (
    COLOURS,
    add_clutter,
    background,
    draw_object,
    finish_image,
    image_grid,
    jitter_colour,
)

WORLD_VERSION = "compositional-world/1"
DATASET_NAME = "shapes-czsl"
SPLIT_NAME = "compositional-split-natural"
NA = "NA"

# --------------------------------------------------------------------------------------------------------------
# Vocabulary. Order = the order in which ``n_states`` / ``n_objects`` take them (round-robin over the families,
# so every prefix stays balanced). Each entry: name, family, how it is drawn, description features.

STATE_FAMILIES = ("warm", "cool", "pattern")
OBJECT_FAMILIES = ("round", "boxy", "pointy")
#: Which state family occurs with which object family (before the random exceptions).
COMPATIBLE: frozenset[tuple[str, str]] = frozenset(
    {
        ("warm", "round"),
        ("warm", "pointy"),
        ("cool", "round"),
        ("cool", "boxy"),
        ("pattern", "boxy"),
        ("pattern", "pointy"),
    }
)

#: Description features of the states (used only for the word vectors):
#: (is colour, is pattern, warmth, hue cos, hue sin, lightness, linear, grid, spots, radial).
_STATE_TABLE: tuple[tuple[str, str, str, tuple[float, ...]], ...] = (
    # name, family, how drawn (colour name or pattern name), features
    ("red", "warm", "red", (1, 0, 1, math.cos(0.0), math.sin(0.0), 0.4, 0, 0, 0, 0)),
    ("sky_blue", "cool", "cyan", (1, 0, -1, math.cos(3.3), math.sin(3.3), 0.7, 0, 0, 0, 0)),
    ("striped", "pattern", "stripes", (0, 1, 0, 0, 0, 0.5, 1.0, 0.3, 0, 0)),
    ("orange", "warm", "orange", (1, 0, 1, math.cos(0.5), math.sin(0.5), 0.6, 0, 0, 0, 0)),
    ("blue", "cool", "blue", (1, 0, -1, math.cos(3.9), math.sin(3.9), 0.4, 0, 0, 0, 0)),
    ("polka.dotted", "pattern", "dots", (0, 1, 0, 0, 0, 0.5, 0, 0.2, 1.0, 0.3)),
    ("yellow", "warm", "yellow", (1, 0, 1, math.cos(1.0), math.sin(1.0), 0.9, 0, 0, 0, 0)),
    ("green", "cool", "green", (1, 0, -1, math.cos(2.1), math.sin(2.1), 0.5, 0, 0, 0, 0)),
    ("checkered", "pattern", "checker", (0, 1, 0, 0, 0, 0.5, 0.4, 1.0, 0.2, 0)),
    ("pink", "warm", "pink", (1, 0, 1, math.cos(5.8), math.sin(5.8), 0.8, 0, 0, 0, 0)),
    ("purple", "cool", "purple", (1, 0, -1, math.cos(4.8), math.sin(4.8), 0.35, 0, 0, 0, 0)),
    ("ringed", "pattern", "rings", (0, 1, 0, 0, 0, 0.5, 0.2, 0, 0.3, 1.0)),
)
#: Description features of the objects: (roundness, boxiness, pointiness, corners / 10, elongation, concavity).
_OBJECT_TABLE: tuple[tuple[str, str, str, tuple[float, ...]], ...] = (
    ("circle", "round", "circle", (1.0, 0, 0, 0.0, 0.0, 0)),
    ("square", "boxy", "square", (0, 1.0, 0, 0.4, 0.0, 0)),
    ("triangle", "pointy", "triangle", (0, 0.1, 1.0, 0.3, 0.1, 0)),
    ("oval", "round", "ellipse", (1.0, 0, 0, 0.0, 0.5, 0)),
    ("rectangle", "boxy", "rectangle", (0, 1.0, 0, 0.4, 0.5, 0)),
    ("star", "pointy", "star", (0, 0, 1.0, 1.0, 0.0, 1.0)),
    ("crescent_moon", "round", "crescent", (0.8, 0, 0.3, 0.2, 0.4, 1.0)),
    ("long.bar", "boxy", "bar", (0, 1.0, 0, 0.4, 1.0, 0)),
    ("plus.sign", "pointy", "cross", (0, 0.4, 0.6, 1.0, 0.0, 1.0)),
    ("hexagon", "round", "hexagon", (0.7, 0.2, 0, 0.6, 0.0, 0)),
    ("diamond", "boxy", "diamond", (0, 0.7, 0.4, 0.4, 0.3, 0)),
    ("swallow_tail", "pointy", "fork", (0, 0.1, 1.0, 0.7, 0.3, 1.0)),
)
STATES: tuple[str, ...] = tuple(s[0] for s in _STATE_TABLE)
OBJECTS: tuple[str, ...] = tuple(o[0] for o in _OBJECT_TABLE)
#: Colours a patterned object is drawn in (none of them is a colour state).
_PATTERN_COLOURS: dict[str, tuple[float, float, float]] = {
    "white": COLOURS["white"],
    "black": COLOURS["black"],
    "brown": COLOURS["brown"],
    "grey": (0.55, 0.55, 0.55),
}
#: Circumradius factor per drawn shape (so that thin or spiky shapes cover a similar area).
_SIZE_FACTOR = {
    "circle": 0.9,
    "ellipse": 1.0,
    "crescent": 1.05,
    "hexagon": 0.92,
    "square": 0.95,
    "rectangle": 1.0,
    "bar": 1.1,
    "diamond": 1.0,
    "triangle": 1.05,
    "star": 1.1,
    "cross": 1.05,
    "fork": 1.05,
}

#: How the CLIP-pretraining renders differ from the benchmark's images (``pretrain_style``): ``same`` = drawn like
#: the benchmark; ``clean`` = centred objects with no clutter, distractor or pixel noise (catalogue-like photos, while
#: the benchmark's images are cluttered scenes: the gap between web pretraining data and a dataset's photos).
PRETRAIN_STYLES: dict[str, dict[str, float]] = {
    "same": {},
    "clean": {
        "clutter": 0.0,
        "distractor_prob": 0.0,
        "position_jitter": 0.0,
        "scale_jitter": 0.1,
        "pixel_noise": 0.0,
    },
}


@dataclass
class CompositionalWorldConfig:
    """Parameters of the compositional world. Every field changes the data; record them with results.

    Vocabulary: the first ``n_states`` of :data:`STATES` and the first ``n_objects`` of :data:`OBJECTS`.
    Pairs: a compatible (by family) pair is left unused with probability ``drop_compatible``, an incompatible one
    is used with probability ``add_incompatible``. Of the used pairs, ``n_val_unseen`` / ``n_test_unseen`` become
    the unseen val / test pairs (disjoint), the rest the train pairs; every state and object keeps at least
    ``min_train_pairs_per_primitive`` train pairs. ``n_val_seen`` / ``n_test_seen`` train pairs also get val / test
    images. Images per pair: ``train_images``, ``val_images``, ``test_images``; ``pretrain_images`` more renders
    per TRAIN pair for CLIP pretraining (disjoint from every benchmark image), drawn in ``pretrain_style``
    (:data:`PRETRAIN_STYLES`; default ``clean``: catalogue-like renders, while the benchmark's images are cluttered,
    so that the frozen CLIP meets the benchmark with a domain gap, as real CLIP does); ``n_na_images`` metadata entries
    the reader must skip (half ``set='NA'``, half ``attr='NA'``).

    Difficulty: ``clutter`` scales the background distractors (0 = clean), ``distractor_prob`` = probability of a
    second, smaller, faded object of another pair; ``state_confusion`` = probability that an image is drawn in a
    different state of the same family than its label (label noise, as in MIT-States); ``pose_jitter`` (degrees),
    ``scale_jitter`` and ``position_jitter`` (relative to object size / image side), ``colour_jitter`` and
    ``pixel_noise`` (intensity standard deviations in [0, 1]). ``word_dim`` = dimension of ``glove.txt`` vectors,
    ``word_noise`` = share of a word vector that is not explained by its description.
    """

    seed: int = 0
    n_states: int = 12
    n_objects: int = 12
    drop_compatible: float = 0.1
    add_incompatible: float = 0.08
    n_val_unseen: int = 12
    n_test_unseen: int = 14
    n_val_seen: int = 12
    n_test_seen: int = 14
    min_train_pairs_per_primitive: int = 2
    train_images: int = 16
    val_images: int = 16
    test_images: int = 16
    pretrain_images: int = 24
    n_na_images: int = 4
    image_size: int = 64
    supersample: int = 2
    clutter: float = 0.6
    distractor_prob: float = 0.3
    pretrain_style: str = "clean"
    state_confusion: float = 0.05
    pose_jitter: float = 25.0
    scale_jitter: float = 0.2
    position_jitter: float = 0.15
    colour_jitter: float = 0.07
    pixel_noise: float = 0.03
    word_dim: int = 50
    word_noise: float = 0.35

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field if the configuration cannot produce a valid world."""

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"CompositionalWorldConfig.{name}: {why} (got {getattr(self, name)!r})")

        if not 3 <= self.n_states <= len(STATES):
            raise bad("n_states", f"must be in [3, {len(STATES)}]")
        if not 3 <= self.n_objects <= len(OBJECTS):
            raise bad("n_objects", f"must be in [3, {len(OBJECTS)}]")
        for name in (
            "n_val_unseen",
            "n_test_unseen",
            "min_train_pairs_per_primitive",
            "train_images",
            "val_images",
            "test_images",
            "image_size",
            "supersample",
            "word_dim",
        ):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be >= 1")
        for name in ("n_val_seen", "n_test_seen", "pretrain_images", "n_na_images"):
            if int(getattr(self, name)) < 0:
                raise bad(name, "must be >= 0")
        if self.image_size < 16:
            raise bad("image_size", "must be >= 16 pixels")
        for name in ("drop_compatible", "add_incompatible", "distractor_prob", "state_confusion"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise bad(name, "must be in [0, 1)")
        if not 0.0 <= self.word_noise <= 1.0:
            raise bad("word_noise", "must be in [0, 1]")
        for name in (
            "clutter",
            "pose_jitter",
            "scale_jitter",
            "position_jitter",
            "colour_jitter",
            "pixel_noise",
        ):
            if float(getattr(self, name)) < 0:
                raise bad(name, "must be >= 0")
        if self.pretrain_style not in PRETRAIN_STYLES:
            raise bad("pretrain_style", f"must be one of {', '.join(PRETRAIN_STYLES)}")
        if self.scale_jitter >= 0.6:
            raise bad("scale_jitter", "must be < 0.6 (objects would vanish or overflow the image)")


def world_key(cfg: CompositionalWorldConfig) -> str:
    """Short hash of (version, config): the cache folder name of this world."""
    return short_hash(json.dumps({"version": WORLD_VERSION, "config": to_dict(cfg)}, sort_keys=True))


# --------------------------------------------------------------------------------------------------------------
# The world specification (no pixels)


@dataclass
class CompositionalWorld:
    """The specification of a world. Pairs are (state, object) name tuples.

    ``used`` = every pair with images (sorted); ``train_pairs`` in the order written to ``train_pairs.txt``
    (sorted); ``val_unseen`` / ``test_unseen`` disjoint unseen pairs; ``val_seen`` / ``test_seen`` subsets of the
    train pairs that get val / test images. ``compatible`` = the pairs allowed by the family table (ground truth of
    feasibility, before the random exceptions).
    """

    config: CompositionalWorldConfig
    states: list[str]
    objects: list[str]
    used: list[tuple[str, str]]
    train_pairs: list[tuple[str, str]]
    val_seen: list[tuple[str, str]]
    val_unseen: list[tuple[str, str]]
    test_seen: list[tuple[str, str]]
    test_unseen: list[tuple[str, str]]
    compatible: list[tuple[str, str]]

    @property
    def val_pairs(self) -> list[tuple[str, str]]:
        return sorted(self.val_seen + self.val_unseen)

    @property
    def test_pairs(self) -> list[tuple[str, str]]:
        return sorted(self.test_seen + self.test_unseen)

    @property
    def unused(self) -> list[tuple[str, str]]:
        """Open-world pairs that never occur (infeasible)."""
        used = set(self.used)
        return [p for p in product(sorted(self.states), sorted(self.objects)) if p not in used]


_STATE_INFO = {s[0]: s for s in _STATE_TABLE}
_OBJECT_INFO = {o[0]: o for o in _OBJECT_TABLE}


def state_family(name: str) -> str:
    return _STATE_INFO[name][1]


def object_family(name: str) -> str:
    return _OBJECT_INFO[name][1]


def _spec_rng(cfg: CompositionalWorldConfig, salt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 0xC25, salt]))


def build_compositional_world(cfg: CompositionalWorldConfig | None = None) -> CompositionalWorld:
    """The world's specification (vocabulary, used pairs, splits), deterministic in ``cfg``; nothing is rendered."""
    cfg = cfg or CompositionalWorldConfig()
    cfg.validate()
    states = list(STATES[: cfg.n_states])
    objects = list(OBJECTS[: cfg.n_objects])
    rng = _spec_rng(cfg, 0)
    every = list(product(sorted(states), sorted(objects)))
    compatible = [p for p in every if (state_family(p[0]), object_family(p[1])) in COMPATIBLE]
    comp_set = set(compatible)
    u = rng.random(len(every))
    used = [
        p
        for p, x in zip(every, u)
        if (x >= cfg.drop_compatible if p in comp_set else x < cfg.add_incompatible)
    ]
    n_unseen = cfg.n_val_unseen + cfg.n_test_unseen
    for _attempt in range(200):
        order = rng.permutation(len(used)).tolist()
        train_count: dict[str, int] = {}
        for s, o in used:
            train_count[s] = train_count.get(s, 0) + 1
            train_count[o] = train_count.get(o, 0) + 1
        unseen: list[tuple[str, str]] = []
        for i in order:
            if len(unseen) == n_unseen:
                break
            s, o = used[i]
            if min(train_count[s], train_count[o]) > cfg.min_train_pairs_per_primitive:
                train_count[s] -= 1
                train_count[o] -= 1
                unseen.append((s, o))
        if len(unseen) == n_unseen:
            break
    else:
        raise ValueError(
            f"compositional world: cannot hold out {n_unseen} unseen pairs from {len(used)} used pairs and keep "
            f">= {cfg.min_train_pairs_per_primitive} train pairs per state and object: lower n_val_unseen / "
            "n_test_unseen or min_train_pairs_per_primitive, or raise n_states / n_objects"
        )
    val_unseen = sorted(unseen[: cfg.n_val_unseen])
    test_unseen = sorted(unseen[cfg.n_val_unseen :])
    held = set(unseen)
    train_pairs = sorted(p for p in used if p not in held)
    if cfg.n_val_seen > len(train_pairs) or cfg.n_test_seen > len(train_pairs):
        raise ValueError(
            f"compositional world: n_val_seen / n_test_seen ({cfg.n_val_seen} / {cfg.n_test_seen}) "
            f"exceed the {len(train_pairs)} train pairs"
        )
    val_seen = sorted(train_pairs[i] for i in rng.choice(len(train_pairs), cfg.n_val_seen, replace=False))
    test_seen = sorted(train_pairs[i] for i in rng.choice(len(train_pairs), cfg.n_test_seen, replace=False))
    world = CompositionalWorld(
        cfg,
        states,
        objects,
        sorted(used),
        train_pairs,
        val_seen,
        val_unseen,
        test_seen,
        test_unseen,
        compatible,
    )
    _check_world(world)
    return world


def _check_world(w: CompositionalWorld) -> None:
    train = set(w.train_pairs)
    train_states = {s for s, _ in train}
    train_objects = {o for _, o in train}
    for p in w.val_unseen + w.test_unseen:
        if p in train or p[0] not in train_states or p[1] not in train_objects:
            raise AssertionError(
                f"compositional world: unseen pair {p} is not a new combination of train primitives"
            )
    if set(w.val_unseen) & set(w.test_unseen):
        raise AssertionError("compositional world: val and test unseen pairs overlap")
    if set(train_states) != set(w.states) or set(train_objects) != set(w.objects):
        raise AssertionError("compositional world: a state or object has no train pair")


# --------------------------------------------------------------------------------------------------------------
# Word vectors


def _seeded_normal(key: str, shape: tuple[int, ...]) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(f"unseen-czsl-word:{key}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(shape)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def concept_vectors(dim: int = 50, noise: float = 0.35) -> dict[str, np.ndarray]:
    """A unit vector (float64, ``dim``) per state and object name, derived from its description features.

    vector = unit(sqrt(1 - noise^2) * unit(R f) + noise * unit(z_name)), with R a fixed Gaussian projection per
    kind (states / objects) and z_name a fixed pseudo-random vector of the name: states or objects with similar
    descriptions (red / orange, square / rectangle) get high cosine similarity. Independent of the world seed.
    """
    out: dict[str, np.ndarray] = {}
    a = math.sqrt(max(1.0 - noise * noise, 0.0))
    for kind, table in (("state", _STATE_TABLE), ("object", _OBJECT_TABLE)):
        k = len(table[0][3])
        proj = _seeded_normal(f"<projection:{kind}>", (dim, k))
        for name, _family, _draw, feats in table:
            f = np.asarray(feats, dtype=np.float64)
            out[name] = _unit(a * _unit(proj @ f) + noise * _unit(_seeded_normal(name, (dim,))))
    return out


def _name_words(name: str) -> list[str]:
    return [w for w in name.lower().replace(".", "_").split("_") if w]


def glove_vectors(names: list[str], dim: int = 50, noise: float = 0.35) -> dict[str, np.ndarray]:
    """The entries of ``glove.txt``: every lower-cased name and every word of the names (split on ``_`` and ``.``).

    A name's vector is its :func:`concept_vectors` vector; its words are chosen so that their MEAN equals the name's
    vector exactly, so a reader that averages ``_``-separated words (CSP) and one that looks up the whole name get
    the same embedding. A word shared with a single-word name (``blue`` in ``sky_blue``) keeps that name's vector.
    """
    concepts = concept_vectors(dim, noise)
    words: dict[str, np.ndarray] = {}
    for name in sorted(names, key=lambda n: (len(_name_words(n)), n)):  # single-word names first
        v = concepts[name]
        ws = _name_words(name)
        free = [w for w in ws if w not in words]
        if not free:
            raise AssertionError(f"glove_vectors: every word of {name!r} is already taken")
        for w in free[:-1]:
            words[w] = v + 0.3 * _unit(_seeded_normal(f"<word>{w}", (dim,)))
        words[free[-1]] = len(ws) * v - sum((words[w] for w in ws if w != free[-1]), np.zeros(dim))
        words[name.lower()] = v
    return words


def glove_text(vectors: dict[str, np.ndarray]) -> str:
    """GloVe text format: one ``word v1 ... vd`` line per word (sorted; 6 decimals)."""
    return "".join(w + " " + " ".join(f"{x:.6f}" for x in v) + "\n" for w, v in sorted(vectors.items()))


# --------------------------------------------------------------------------------------------------------------
# Rendering


def _draw_pair(
    canvas: np.ndarray,
    state: str,
    obj: str,
    centre: np.ndarray,
    radius: float,
    rotation: float,
    cfg: CompositionalWorldConfig,
    rng: np.random.Generator,
    alpha: float,
    outline: float,
) -> np.ndarray:
    _, _, drawn_state, _ = _STATE_INFO[state]
    shape = _OBJECT_INFO[obj][2]
    r = radius * _SIZE_FACTOR[shape]
    if state_family(state) == "pattern":
        base = list(_PATTERN_COLOURS.values())[int(rng.integers(len(_PATTERN_COLOURS)))]
        return draw_object(
            canvas,
            centre,
            r,
            shape,
            jitter_colour(base, rng, cfg.colour_jitter),
            drawn_state,
            rotation,
            rng,
            pattern_period=float(rng.uniform(0.45, 0.7)) * r,
            outline=outline,
            alpha=alpha,
        )
    return draw_object(
        canvas,
        centre,
        r,
        shape,
        jitter_colour(drawn_state, rng, cfg.colour_jitter),
        "solid",
        rotation,
        rng,
        outline=outline,
        alpha=alpha,
    )


def render_pair(
    state: str,
    obj: str,
    cfg: CompositionalWorldConfig,
    rng: np.random.Generator,
    states: list[str] | None = None,
    objects: list[str] | None = None,
) -> Image.Image:
    """One ``image_size`` square RGB image of ``obj`` in ``state``.

    ``states`` / ``objects``: the vocabulary the distractor object and the state confusion draw from (default:
    all). With probability ``state_confusion`` the object is drawn in another state of the same family.
    """
    states = list(states or STATES)
    objects = list(objects or OBJECTS)
    ss = int(cfg.supersample)
    S = cfg.image_size * ss
    canvas = background(S, rng)
    add_clutter(canvas, rng, int(rng.poisson(cfg.clutter * 6.0)), min_size=0.03 * S, max_size=0.07 * S)
    drawn = state
    if cfg.state_confusion > 0 and rng.random() < cfg.state_confusion:
        same = [s for s in states if s != state and state_family(s) == state_family(state)]
        if same:
            drawn = same[int(rng.integers(len(same)))]
    radius = 0.27 * S * (1.0 + float(rng.uniform(-cfg.scale_jitter, cfg.scale_jitter)))
    lim = max(S / 2.0 - radius * 1.1, 0.0)
    centre = np.full(2, S / 2.0) + rng.uniform(-1.0, 1.0, 2) * min(lim, cfg.position_jitter * S)
    if cfg.distractor_prob > 0 and rng.random() < cfg.distractor_prob:
        # a smaller, faded object of a random pair, pushed towards a corner behind the main object
        d_state = states[int(rng.integers(len(states)))]
        d_obj = objects[int(rng.integers(len(objects)))]
        corner = np.asarray([rng.choice([0.2, 0.8]), rng.choice([0.2, 0.8])]) * S
        _draw_pair(
            canvas,
            d_state,
            d_obj,
            corner,
            radius * float(rng.uniform(0.35, 0.5)),
            float(rng.uniform(0, 360)),
            cfg,
            rng,
            alpha=float(rng.uniform(0.45, 0.75)),
            outline=0.0,
        )
    rotation = float(rng.uniform(-cfg.pose_jitter, cfg.pose_jitter))
    if _OBJECT_INFO[obj][2] in ("crescent", "fork", "triangle") and rng.random() < 0.5:
        rotation += 180.0  # shapes with a direction face either way
    _draw_pair(canvas, drawn, obj, centre, radius, rotation, cfg, rng, alpha=1.0, outline=0.7 * ss)
    if cfg.clutter > 0 and rng.random() < 0.2 * min(cfg.clutter, 2.0):  # a small occluder in front
        add_clutter(canvas, rng, 1, min_size=0.03 * S, max_size=0.05 * S, alpha=(0.4, 0.8))
    return finish_image(canvas, cfg.image_size, rng, noise=cfg.pixel_noise)


#: Image kinds in the per-image seed (so every image has its own independent random stream).
_KIND = {"train": 1, "val": 2, "test": 3, "pretrain": 4, "na": 5}


def _image_rng(cfg: CompositionalWorldConfig, kind: str, state: str, obj: str, j: int) -> np.random.Generator:
    s, o = STATES.index(state) if state in STATES else 99, OBJECTS.index(obj)
    return np.random.default_rng(np.random.SeedSequence([int(cfg.seed), _KIND[kind], s, o, j]))


def sample_grid(
    cfg: CompositionalWorldConfig | None = None, pairs: list[tuple[str, str]] | None = None, n_images: int = 6
) -> Image.Image:
    """A PIL image: one row per pair (default: the first 6 train pairs), ``n_images`` train renders each."""
    cfg = cfg or CompositionalWorldConfig()
    world = build_compositional_world(cfg)
    pairs = pairs if pairs is not None else world.train_pairs[:6]
    ims = [
        render_pair(s, o, cfg, _image_rng(cfg, "train", s, o, j), world.states, world.objects)
        for s, o in pairs
        for j in range(n_images)
    ]
    return image_grid(ims, n_images)


# --------------------------------------------------------------------------------------------------------------
# Export to the czsl layout

_REQUIRED = (
    f"{SPLIT_NAME}/train_pairs.txt",
    f"{SPLIT_NAME}/val_pairs.txt",
    f"{SPLIT_NAME}/test_pairs.txt",
    f"metadata_{SPLIT_NAME}.t7",
    "glove.txt",
    "pretrain/pretrain_list.json",
)


def _existing_world(out_dir: Path, cfg: CompositionalWorldConfig) -> bool:
    return existing_world(
        out_dir, "compositional", WORLD_VERSION, to_dict(cfg), _REQUIRED, samples=lambda: _samples(cfg)
    )


def _samples(cfg: CompositionalWorldConfig, n: int = 8) -> dict[str, Image.Image]:
    """The first training image of the first ``n`` train pairs, drawn now (to compare with a stored world)."""
    world = build_compositional_world(cfg)
    # train images are drawn first, so image 0 of a train pair is its folder's 0001.png
    return {
        f"images/{s}_{o}/0001.png": render_pair(
            s, o, cfg, _image_rng(cfg, "train", s, o, 0), world.states, world.objects
        )
        for s, o in world.train_pairs[:n]
    }


def export_compositional_world(
    out_dir: str | os.PathLike[str], cfg: CompositionalWorldConfig | None = None
) -> Path:
    """Render the world and write it to ``out_dir`` in the czsl layout (module docstring); return ``out_dir``.

    The folder is built as a temporary sibling and renamed into place. If ``out_dir`` already holds this world
    (same version and config) it is returned untouched; if it holds anything else, :class:`WorldExistsError`.
    """
    cfg = cfg or CompositionalWorldConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    if _existing_world(out_dir, cfg):
        return out_dir
    world = build_compositional_world(cfg)
    return write_folder_atomically(
        out_dir, lambda tmp: _write_world(tmp, world), lambda: _existing_world(out_dir, cfg)
    )


def cached_compositional_world(
    cfg: CompositionalWorldConfig | None = None, root: str | os.PathLike[str] = ""
) -> Path:
    """The exported world for ``cfg``: ``root`` if given, else ``$UNSEEN_CACHE/shapes-czsl-<hash>/shapes-czsl``
    (built on first use, reused afterwards; the hash covers the config and the world version)."""
    cfg = cfg or CompositionalWorldConfig()
    out = Path(root) if root else cache_root() / f"{DATASET_NAME}-{world_key(cfg)}" / DATASET_NAME
    return export_compositional_world(out, cfg)


def _pairs_text(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"{s} {o}\n" for s, o in pairs)


def _write_world(root: Path, world: CompositionalWorld) -> None:
    cfg = world.config
    pre_cfg = replace(cfg, **PRETRAIN_STYLES[cfg.pretrain_style])
    images = root / "images"
    meta: list[dict[str, str]] = []
    counter: dict[str, int] = {}

    def render(kind: str, state: str, obj: str, j: int, folder: Path, label_state: str | None = None) -> str:
        name = f"{label_state or state}_{obj}"
        counter[str(folder / name)] = k = counter.get(str(folder / name), 0) + 1
        rel = f"{name}/{k:04d}.png"
        (folder / name).mkdir(parents=True, exist_ok=True)
        im = render_pair(
            state,
            obj,
            pre_cfg if kind == "pretrain" else cfg,
            _image_rng(cfg, kind, state, obj, j),
            world.states,
            world.objects,
        )
        im.save(folder / rel, format="PNG")
        return rel

    sets = (
        ("train", world.train_pairs, cfg.train_images),
        ("val", world.val_pairs, cfg.val_images),
        ("test", world.test_pairs, cfg.test_images),
    )
    for set_name, pairs, n in sets:
        for s, o in pairs:
            for j in range(n):
                meta.append(
                    {"image": render(set_name, s, o, j, images), "attr": s, "obj": o, "set": set_name}
                )
    # entries a czsl reader must skip: unlabelled split ('NA' set) and unlabelled state ('NA' attr)
    na_rng = _spec_rng(cfg, 1)
    for j in range(cfg.n_na_images):
        s, o = world.train_pairs[int(na_rng.integers(len(world.train_pairs)))]
        if j % 2 == 0:
            meta.append({"image": render("na", s, o, j, images), "attr": s, "obj": o, "set": NA})
        else:
            meta.append(
                {"image": render("na", s, o, j, images, label_state=NA), "attr": NA, "obj": o, "set": "train"}
            )
    order = _spec_rng(cfg, 2).permutation(len(meta))  # real metadata files are not grouped by set
    meta = [meta[i] for i in order]
    import torch  # only here: rendering needs no torch (checks of the render stack run without it)

    buf = io.BytesIO()
    torch.save(meta, buf)
    atomic_write_bytes(root / f"metadata_{SPLIT_NAME}.t7", buf.getvalue())
    split_dir = root / SPLIT_NAME
    split_dir.mkdir()
    for name, pairs in (("train", world.train_pairs), ("val", world.val_pairs), ("test", world.test_pairs)):
        atomic_write_text(split_dir / f"{name}_pairs.txt", _pairs_text(pairs))
    atomic_write_text(
        root / "glove.txt",
        glove_text(glove_vectors(world.states + world.objects, cfg.word_dim, cfg.word_noise)),
    )

    pre_images: list[str] = []
    pre_attrs: list[str] = []
    pre_objs: list[str] = []
    for s, o in world.train_pairs:
        for j in range(cfg.pretrain_images):
            pre_images.append("images/" + render("pretrain", s, o, j, root / "pretrain" / "images"))
            pre_attrs.append(s)
            pre_objs.append(o)
    (root / "pretrain").mkdir(exist_ok=True)
    atomic_write_json(
        root / "pretrain" / "pretrain_list.json",
        {
            "about": "extra renders of the TRAIN pairs for CLIP pretraining; paths relative to this folder",
            "images": pre_images,
            "attrs": pre_attrs,
            "objs": pre_objs,
        },
    )

    written = sorted(
        ["images/" + m["image"] for m in meta] + ["pretrain/" + p for p in pre_images] + list(_REQUIRED)
    )
    n_set = {s: sum(m["set"] == s and m["attr"] != NA for m in meta) for s in ("train", "val", "test")}
    atomic_write_json(
        root / "world.json",
        {
            "version": WORLD_VERSION,
            "dataset": DATASET_NAME,
            "split": SPLIT_NAME,
            "seed": cfg.seed,
            "config": to_dict(cfg),
            **world_record(root, written),  # fingerprints and versions
            "states": [{"name": s, "family": state_family(s)} for s in world.states],
            "objects": [{"name": o, "family": object_family(o)} for o in world.objects],
            "compatible_families": sorted([list(p) for p in COMPATIBLE]),
            "pairs": {
                "train": [list(p) for p in world.train_pairs],
                "val_seen": [list(p) for p in world.val_seen],
                "val_unseen": [list(p) for p in world.val_unseen],
                "test_seen": [list(p) for p in world.test_seen],
                "test_unseen": [list(p) for p in world.test_unseen],
                "unused": [list(p) for p in world.unused],
            },
            "counts": {
                "states": len(world.states),
                "objects": len(world.objects),
                "open_world_pairs": len(world.states) * len(world.objects),
                "used_pairs": len(world.used),
                "train_pairs": len(world.train_pairs),
                "val_pairs": len(world.val_pairs),
                "test_pairs": len(world.test_pairs),
                "unused_pairs": len(world.unused),
                "train_images": n_set["train"],
                "val_images": n_set["val"],
                "test_images": n_set["test"],
                "na_entries": cfg.n_na_images,
                "pretrain_images": len(pre_images),
            },
            "files": written,
        },
    )


def verify_compositional_world(root: str | os.PathLike[str]) -> str:
    """Recompute the content fingerprint of an exported world; raise ``ValueError`` if it does not match."""
    return verify_world(root)
