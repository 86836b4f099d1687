"""The attribute world: procedurally rendered "species" exported in the xlsa17 layout.

A species is a composite object with three parts (body, head, tail). Each part has part-located properties
(shape, colour, pattern, size), and every (part, property, value) is one binary attribute
``"part::property::value"``, like CUB's ``has_head_color::red``. Each class owns a distribution over the values of
every property: mostly its *modal* value, for some properties a secondary value (like AwA's continuous
attributes), and ``attribute_noise`` spread over the rest. Every image samples its attributes from that
distribution and is drawn with pose, scale, position, colour and lighting jitter over a cluttered background.
``original_att`` is the class's expected attribute frequency in percent (0-100), exactly the distribution the
images were sampled from.

Classes come in *families* (a prototype plus a few mutated properties), so several classes share most of their
values. Unseen and validation classes are chosen so that every modal value they use also occurs as a modal
value of some training class: they are new combinations of known attribute values, never new values.

:func:`export_attribute_world` writes the world to disk exactly in the xlsa17 layout (``att_splits.mat`` with
1-based uint16 locs, ``image_list.json`` in the 0-based fixture layout, the class lists, ``SHAPES_attribute.npy``
word vectors, ``attributes.txt``), plus ``pretrain/`` (disjoint species for pretraining a backbone) and
``world.json`` (config, class descriptions, version, content and pixel fingerprints, the versions that drew it).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unseen.config import to_dict
from unseen.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from unseen.shapes.common import (
    existing_world,
    verify_world,
    word_vector,
    world_record,
    write_folder_atomically,
)
from unseen.shapes.render import (
    COLOURS,
    add_clutter,
    background,
    draw_object,
    finish_image,
    image_grid,
    jitter_colour,
)

WORLD_VERSION = "attribute-world/1"
DATASET_NAME = "SHAPES"
WORD_DIM = 64

_COLOUR_NAMES = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")

#: The properties of the world, in attribute order: (part, property, values).
PROPERTIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("body", "shape", ("circle", "square", "hexagon", "diamond", "triangle")),
    ("body", "colour", _COLOUR_NAMES),
    ("body", "pattern", ("solid", "stripes", "dots", "checker")),
    ("body", "size", ("small", "medium", "large")),
    ("head", "shape", ("circle", "square", "triangle", "star")),
    ("head", "colour", _COLOUR_NAMES),
    ("head", "size", ("small", "large")),
    ("tail", "shape", ("triangle", "bar", "fork")),
    ("tail", "colour", _COLOUR_NAMES),
)

#: Body circumradius as a fraction of the image side, per body size value.
_BODY_RADIUS = {"small": 0.125, "medium": 0.155, "large": 0.185}
#: Head circumradius relative to the body's.
_HEAD_RATIO = {"small": 0.5, "large": 0.72}
_TAIL_RATIO = 0.62

#: Words that stand for an attribute value in the word vectors (and in the class names).
_PATTERN_WORD = {"solid": "plain", "stripes": "striped", "dots": "spotted", "checker": "checkered"}


@dataclass
class AttributeWorldConfig:
    """Parameters of the attribute world. Every field changes the rendered data; record them with results.

    Sizes: ``n_classes`` benchmark classes, of which ``n_unseen`` are unseen (test) and ``n_val`` are seen
    classes held out as validation classes (xlsa17 ``valclasses1``); ``images_per_class`` images of
    ``image_size`` x ``image_size`` pixels each; ``test_seen_fraction`` of every seen class's images go to
    ``test_seen_loc``. ``n_pretrain_classes`` extra species (``pretrain_images_per_class`` images each) whose
    modal combinations differ from every benchmark class stand in for ImageNet pretraining.

    Difficulty: ``attribute_noise`` = per image and property, the probability of a non-modal, non-secondary
    value; a fraction ``secondary_fraction`` of each class's properties has a secondary value with probability
    ``secondary_prob``. ``family_size`` = mean classes per family (members differ from the family prototype in
    ``min_mutations``..``max_mutations`` properties); any two classes differ in at least ``min_class_distance``
    modal values. ``clutter`` scales the number of background distractors (0 = clean background);
    ``pose_jitter`` (degrees) tilts the body axis, ``scale_jitter`` / ``position_jitter`` are relative to the
    part size / image side, ``colour_jitter`` and ``pixel_noise`` are intensity standard deviations in [0, 1].
    ``supersample`` = rendering resolution factor before anti-aliased reduction.
    """

    seed: int = 0
    n_classes: int = 24
    n_unseen: int = 6
    n_val: int = 4
    images_per_class: int = 40
    image_size: int = 64
    test_seen_fraction: float = 0.2
    attribute_noise: float = 0.1
    secondary_fraction: float = 0.2
    secondary_prob: float = 0.25
    family_size: int = 4
    min_mutations: int = 2
    max_mutations: int = 4
    min_class_distance: int = 2
    clutter: float = 0.6
    pose_jitter: float = 35.0
    scale_jitter: float = 0.1
    position_jitter: float = 0.12
    colour_jitter: float = 0.06
    pixel_noise: float = 0.03
    supersample: int = 2
    n_pretrain_classes: int = 16
    pretrain_images_per_class: int = 40

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field if the configuration cannot produce a valid world."""

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"AttributeWorldConfig.{name}: {why} (got {getattr(self, name)!r})")

        for name in ("n_classes", "images_per_class", "image_size", "family_size", "supersample"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be >= 1")
        if self.n_unseen < 1:
            raise bad("n_unseen", "must be >= 1")
        if self.n_val < 0 or self.n_pretrain_classes < 0 or self.pretrain_images_per_class < 0:
            raise bad("n_val", "n_val, n_pretrain_classes and pretrain_images_per_class must be >= 0")
        if self.n_classes - self.n_unseen - self.n_val < 2:
            raise bad(
                "n_classes",
                f"must leave >= 2 training classes after {self.n_unseen} unseen and {self.n_val} val",
            )
        if self.images_per_class < 2 and self.test_seen_fraction > 0:
            raise bad("images_per_class", "must be >= 2 to split seen classes into trainval and test_seen")
        if not 0.0 <= self.test_seen_fraction < 1.0:
            raise bad("test_seen_fraction", "must be in [0, 1)")
        if self.image_size < 16:
            raise bad("image_size", "must be >= 16 pixels")
        for name in ("attribute_noise", "secondary_fraction", "secondary_prob"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise bad(name, "must be in [0, 1)")
        if self.attribute_noise + self.secondary_prob >= 0.9:
            raise bad(
                "attribute_noise", "attribute_noise + secondary_prob must stay below 0.9 (modal value first)"
            )
        if not 1 <= self.min_mutations <= self.max_mutations <= len(PROPERTIES):
            raise bad("min_mutations", f"need 1 <= min_mutations <= max_mutations <= {len(PROPERTIES)}")
        if not 1 <= self.min_class_distance <= len(PROPERTIES):
            raise bad("min_class_distance", f"must be in [1, {len(PROPERTIES)}]")
        if self.clutter < 0 or self.pose_jitter < 0 or self.scale_jitter < 0 or self.position_jitter < 0:
            raise bad("clutter", "clutter and the jitters must be >= 0")
        n_images = self.n_classes * self.images_per_class
        if n_images >= 65535:
            raise bad(
                "images_per_class", f"{n_images} images; xlsa17 locs are uint16, keep the total below 65,535"
            )


# ----------------------------------------------------------------------------------------------------------------
# The world specification (no pixels)


@dataclass
class Species:
    """One class: its name, modal values (one index per entry of :data:`PROPERTIES`) and value distributions."""

    name: str
    modal: tuple[int, ...]
    probs: list[np.ndarray] = field(repr=False)  # per property: probabilities over its values (sum 1)

    def description(self) -> dict[str, dict[str, str]]:
        """Modal values per part: ``{"body": {"shape": "circle", ...}, "head": {...}, "tail": {...}}``."""
        out: dict[str, dict[str, str]] = {}
        for (part, prop, values), v in zip(PROPERTIES, self.modal):
            out.setdefault(part, {})[prop] = values[v]
        return out

    def attribute_percent(self) -> np.ndarray:
        """Expected frequency (0-100) of every binary attribute, in :func:`attribute_names` order."""
        return np.concatenate(self.probs) * 100.0


@dataclass
class AttributeWorld:
    """The specification of a world: classes in global order, their roles, pretraining species."""

    config: AttributeWorldConfig
    classes: list[Species]
    unseen: list[int]  # global class ids, ascending
    val: list[int]  # seen classes held out for validation (xlsa17 valclasses1), ascending
    train: list[int]  # seen minus val (xlsa17 trainclasses1), ascending
    pretrain: list[Species]

    @property
    def seen(self) -> list[int]:
        return sorted(self.train + self.val)

    def role(self, c: int) -> str:
        return "unseen" if c in self.unseen else "val" if c in self.val else "train"


def attribute_names() -> list[str]:
    """The A binary attribute names ``part::property::value`` in attribute (``att`` row) order."""
    return [f"{part}::{prop}::{v}" for part, prop, values in PROPERTIES for v in values]


def attribute_word_vectors(dim: int = WORD_DIM) -> np.ndarray:
    """A x ``dim`` float32 "word2vec-like" attribute vectors: the sum of fixed pseudo-random word vectors.

    Each attribute phrase ``part::property::value`` contributes the vectors of its words (``body``, ``colour``,
    ``red``; patterns use their adjective, e.g. ``striped``), so attributes that share words are similar. A value
    word also carries a share of its property's direction (colour names resemble each other, as in word2vec).
    Independent of the world seed: word meaning is fixed, like a pretrained embedding. Row norms about 3-5.
    """
    rows = []
    for part, prop, values in PROPERTIES:
        for v in values:
            word = _PATTERN_WORD.get(v, v) if prop == "pattern" else v
            value_vec = 0.8 * word_vector(word, dim) + 0.6 * word_vector(f"<kind:{prop}>", dim)
            rows.append(2.2 * (word_vector(part, dim) + word_vector(prop, dim) + value_vec))
    return np.asarray(rows, dtype=np.float32)


def _distribution(
    n_values: int, modal: int, rng: np.random.Generator, cfg: AttributeWorldConfig
) -> np.ndarray:
    p = np.zeros(n_values, dtype=np.float64)
    p[modal] = 1.0
    others = [v for v in range(n_values) if v != modal]
    if not others:
        return p
    rest = others
    if rng.random() < cfg.secondary_fraction:
        sec = others[int(rng.integers(len(others)))]
        p[sec] += cfg.secondary_prob
        p[modal] -= cfg.secondary_prob
        rest = [v for v in others if v != sec] or [sec]
    for v in rest:
        p[v] += cfg.attribute_noise / len(rest)
    p[modal] -= cfg.attribute_noise
    # percent values with 4 decimals so that original_att and the sampling agree exactly
    p = np.round(p * 100.0, 4) / 100.0
    p[modal] += 1.0 - p.sum()
    return p


def _hamming(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return sum(x != y for x, y in zip(a, b))


def _class_name(i: int, modal: tuple[int, ...], prefix: str = "") -> str:
    d = {(part, prop): values[v] for (part, prop, values), v in zip(PROPERTIES, modal)}
    return (
        f"{prefix}{i + 1:03d}.{d['head', 'colour']}_headed_{_PATTERN_WORD[d['body', 'pattern']]}_"
        f"{d['body', 'colour']}_{d['body', 'shape']}"
    )


def _generate_modal(cfg: AttributeWorldConfig, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Modal descriptions of the benchmark classes, in families, pairwise >= min_class_distance apart."""
    sizes = [len(vals) for _, _, vals in PROPERTIES]
    n_fam = max(1, round(cfg.n_classes / cfg.family_size))
    protos = [tuple(int(rng.integers(n)) for n in sizes) for _ in range(n_fam)]
    out: list[tuple[int, ...]] = []
    tries = 0
    while len(out) < cfg.n_classes:
        tries += 1
        if tries > 200 * cfg.n_classes:
            raise RuntimeError(
                "attribute world: could not place classes min_class_distance apart; "
                "lower n_classes or min_class_distance, or raise max_mutations"
            )
        f = len(out) % n_fam
        d = list(protos[f])
        k = int(rng.integers(cfg.min_mutations, cfg.max_mutations + 1))
        for j in rng.choice(len(sizes), size=k, replace=False):
            d[j] = int((d[j] + rng.integers(1, sizes[j])) % sizes[j])  # a different value
        cand = tuple(d)
        if all(_hamming(cand, e) >= cfg.min_class_distance for e in out):
            out.append(cand)
    return out


def _choose_held_out(
    modal: list[tuple[int, ...]], n_unseen: int, n_val: int, rng: np.random.Generator
) -> tuple[list[int], list[int]] | None:
    """Greedy random choice of unseen then val classes whose modal values all remain in the training classes."""
    n_props = len(PROPERTIES)
    counts: dict[tuple[int, int], int] = {}
    for d in modal:
        for j, v in enumerate(d):
            counts[j, v] = counts.get((j, v), 0) + 1
    needed: set[tuple[int, int]] = set()
    unseen: list[int] = []
    val: list[int] = []
    for c in rng.permutation(len(modal)).tolist():
        if len(unseen) >= n_unseen and len(val) >= n_val:
            break
        keys = [(j, modal[c][j]) for j in range(n_props)]
        for k in keys:
            counts[k] -= 1
        if all(counts[k] > 0 for k in needed.union(keys)):
            needed.update(keys)
            (unseen if len(unseen) < n_unseen else val).append(c)
        else:
            for k in keys:
                counts[k] += 1
    if len(unseen) < n_unseen or len(val) < n_val:
        return None
    return sorted(unseen), sorted(val)


def _generate_pretrain(
    cfg: AttributeWorldConfig, bench: list[tuple[int, ...]], rng: np.random.Generator
) -> list[tuple[int, ...]]:
    """Pretraining species: every value used about equally often, all >= min_class_distance from any class."""
    n = cfg.n_pretrain_classes
    if n == 0:
        return []
    for _ in range(500):
        cols = []
        for _, _, vals in PROPERTIES:
            col = np.concatenate([rng.permutation(len(vals)) for _ in range(n // len(vals) + 1)])[:n]
            cols.append(rng.permutation(col))
        cands = [tuple(int(cols[j][i]) for j in range(len(PROPERTIES))) for i in range(n)]
        ok = all(_hamming(a, b) >= cfg.min_class_distance for a in cands for b in bench)
        ok = ok and all(
            _hamming(cands[i], cands[k]) >= cfg.min_class_distance for i in range(n) for k in range(i + 1, n)
        )
        if ok:
            return cands
    raise RuntimeError(
        "attribute world: could not draw pretraining species distinct from the benchmark classes"
    )


def build_attribute_world(cfg: AttributeWorldConfig | None = None) -> AttributeWorld:
    """The world's specification (classes, distributions, roles), deterministic in ``cfg``; nothing is rendered."""
    cfg = cfg or AttributeWorldConfig()
    cfg.validate()
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 0xA77]))
    for _ in range(100):
        modal = _generate_modal(cfg, rng)
        chosen = _choose_held_out(modal, cfg.n_unseen, cfg.n_val, rng)
        if chosen is not None:
            break
    else:
        raise RuntimeError(
            "attribute world: no unseen/val choice keeps every value in the training classes; "
            "raise n_classes or lower n_unseen / n_val"
        )
    unseen, val = chosen
    classes = [
        Species(
            _class_name(i, d),
            d,
            [_distribution(len(vals), v, rng, cfg) for (_, _, vals), v in zip(PROPERTIES, d)],
        )
        for i, d in enumerate(modal)
    ]
    train = [c for c in range(cfg.n_classes) if c not in unseen and c not in val]
    pre = _generate_pretrain(cfg, modal, rng)
    pretrain = [
        Species(
            _class_name(i, d, prefix="P"),
            d,
            [_distribution(len(vals), v, rng, cfg) for (_, _, vals), v in zip(PROPERTIES, d)],
        )
        for i, d in enumerate(pre)
    ]
    world = AttributeWorld(cfg, classes, unseen, val, train, pretrain)
    _check_new_combinations(world)
    return world


def _check_new_combinations(world: AttributeWorld) -> None:
    train_values = {(j, world.classes[c].modal[j]) for c in world.train for j in range(len(PROPERTIES))}
    train_modal = {world.classes[c].modal for c in world.train}
    for c in world.unseen + world.val:
        d = world.classes[c].modal
        missing = [
            attribute_names_of(j, d[j]) for j in range(len(PROPERTIES)) if (j, d[j]) not in train_values
        ]
        if missing or d in train_modal:
            raise AssertionError(
                f"attribute world: held-out class {world.classes[c].name} is not a new combination "
                f"of training values (missing {missing})"
            )


def attribute_names_of(prop_index: int, value_index: int) -> str:
    part, prop, values = PROPERTIES[prop_index]
    return f"{part}::{prop}::{values[value_index]}"


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def sample_attributes(species: Species, rng: np.random.Generator) -> tuple[int, ...]:
    """One image's value index per property, drawn from the class distributions."""
    return tuple(int(rng.choice(len(p), p=p)) for p in species.probs)


def render_species(
    values: tuple[int, ...], cfg: AttributeWorldConfig, rng: np.random.Generator
) -> Image.Image:
    """Render one image (a PIL RGB image ``image_size`` square) of a species with the given value indices."""
    v = {(part, prop): vals[i] for (part, prop, vals), i in zip(PROPERTIES, values)}
    ss = int(cfg.supersample)
    S = cfg.image_size * ss
    canvas = background(S, rng)
    n_clutter = int(rng.poisson(cfg.clutter * 7.0))
    add_clutter(canvas, rng, n_clutter, min_size=0.03 * S, max_size=0.075 * S)

    # pose: the body axis points to the head; facing left or right, tilted by up to pose_jitter degrees
    facing = 0.0 if rng.random() < 0.5 else 180.0
    axis = facing + float(rng.uniform(-cfg.pose_jitter, cfg.pose_jitter))
    a = math.radians(axis)
    d = np.array([math.cos(a), -math.sin(a)])
    rb = _BODY_RADIUS[v["body", "size"]] * S * (1.0 + float(rng.uniform(-cfg.scale_jitter, cfg.scale_jitter)))
    rh = _HEAD_RATIO[v["head", "size"]] * rb * (1.0 + float(rng.uniform(-0.05, 0.05)))
    rt = _TAIL_RATIO * rb
    head_off = rb + 0.45 * rh
    tail_off = rb + 0.25 * rt
    # place the body so the whole object fits, then jitter within what is left
    offsets = [(0.0, rb), (head_off, rh), (-tail_off, rt)]
    lo = np.min([d * o - r for o, r in offsets], axis=0)
    hi = np.max([d * o + r for o, r in offsets], axis=0)
    margin = 0.03 * S
    centre = np.full(2, S / 2.0) - (lo + hi) / 2.0
    span = np.maximum((S - 2 * margin - (hi - lo)) / 2.0, 0.0)
    lim = np.minimum(span, cfg.position_jitter * S)
    centre = centre + rng.uniform(-1.0, 1.0, 2) * lim

    outline = 0.7 * ss
    tail_rot = {"triangle": axis - 90.0, "bar": axis, "fork": axis + 180.0}[v["tail", "shape"]]
    draw_object(
        canvas,
        centre - d * tail_off,
        rt,
        v["tail", "shape"],
        jitter_colour(v["tail", "colour"], rng, cfg.colour_jitter),
        "solid",
        tail_rot + float(rng.uniform(-10, 10)),
        rng,
        outline=outline,
    )
    draw_object(
        canvas,
        centre,
        rb,
        v["body", "shape"],
        jitter_colour(v["body", "colour"], rng, cfg.colour_jitter),
        v["body", "pattern"],
        float(rng.uniform(-12, 12)),
        rng,
        pattern_period=0.62 * rb,
        outline=outline,
    )
    draw_object(
        canvas,
        centre + d * head_off,
        rh,
        v["head", "shape"],
        jitter_colour(v["head", "colour"], rng, cfg.colour_jitter),
        "solid",
        float(rng.uniform(-12, 12)),
        rng,
        outline=outline,
    )
    # an eye marks which end is the head (so head and tail of the same shape stay distinguishable)
    head_rgb = np.asarray(COLOURS[v["head", "colour"]])
    eye = (
        (0.95, 0.95, 0.95) if float(head_rgb @ np.array([0.299, 0.587, 0.114])) < 0.3 else (0.05, 0.05, 0.05)
    )
    draw_object(
        canvas, centre + d * (head_off + 0.25 * rh), max(0.2 * rh, 0.9 * ss), "circle", eye, "solid", 0.0
    )
    if cfg.clutter > 0 and rng.random() < 0.25 * min(cfg.clutter, 2.0):  # a small occluder in front
        add_clutter(canvas, rng, 1, min_size=0.03 * S, max_size=0.05 * S, alpha=(0.4, 0.8))
    return finish_image(canvas, cfg.image_size, rng, noise=cfg.pixel_noise)


def _image_rng(cfg: AttributeWorldConfig, kind: int, c: int, j: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(cfg.seed), kind, c, j]))


def sample_grid(
    cfg: AttributeWorldConfig | None = None, classes: list[int] | None = None, n_images: int = 6
) -> Image.Image:
    """A PIL image: one row per class (default: the first 4), ``n_images`` rendered samples each."""
    cfg = cfg or AttributeWorldConfig()
    world = build_attribute_world(cfg)
    classes = list(range(min(4, len(world.classes)))) if classes is None else classes
    ims = []
    for c in classes:
        for j in range(n_images):
            rng = _image_rng(cfg, 1, c, j)
            ims.append(render_species(sample_attributes(world.classes[c], rng), cfg, rng))
    return image_grid(ims, n_images)


# ----------------------------------------------------------------------------------------------------------------
# Export to the xlsa17 layout

_CLASS_LISTS = (
    "allclasses.txt",
    "trainvalclasses.txt",
    "testclasses.txt",
    "trainclasses1.txt",
    "valclasses1.txt",
)
_REQUIRED = (
    "att_splits.mat",
    "image_list.json",
    f"{DATASET_NAME}_attribute.npy",
    "attributes.txt",
    "image_attributes.npy",
    "pretrain/pretrain_list.json",
    *_CLASS_LISTS,
)


def _savemat_bytes(mdict: dict[str, Any]) -> bytes:
    """MATLAB v5 bytes with a fixed header text (scipy stamps the creation time, which breaks determinism)."""
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, mdict, format="5", do_compression=False, oned_as="column")
    data = bytearray(buf.getvalue())
    data[:116] = f"MATLAB 5.0 MAT-file, written by unseen.shapes ({WORLD_VERSION})".encode().ljust(116, b" ")
    return bytes(data)


def _loc(idx: list[int]) -> np.ndarray:
    a = np.asarray(sorted(idx), dtype=np.int64) + 1
    assert a.size == 0 or a.max() < 65535, "xlsa17 locs are uint16"
    return a.astype(np.uint16).reshape(-1, 1)


def _existing_world(out_dir: Path, cfg: AttributeWorldConfig) -> bool:
    return existing_world(
        out_dir, "attribute", WORLD_VERSION, to_dict(cfg), _REQUIRED, samples=lambda: _samples(cfg)
    )


def _samples(cfg: AttributeWorldConfig, n: int = 8) -> dict[str, Image.Image]:
    """The first image of the first ``n`` classes, drawn now (to compare with a stored world)."""
    world = build_attribute_world(cfg)
    out = {}
    for c, sp in enumerate(world.classes[:n]):
        rng = _image_rng(cfg, 1, c, 0)  # as _write_world draws image 1 of class c
        out[f"images/{sp.name}/{sp.name}_0001.png"] = render_species(sample_attributes(sp, rng), cfg, rng)
    return out


def verify_attribute_world(root: str | os.PathLike[str]) -> str:
    """Recompute the content fingerprint of an exported world; raise ``ValueError`` if it does not match."""
    return verify_world(root)


def export_attribute_world(out_dir: str | os.PathLike[str], cfg: AttributeWorldConfig | None = None) -> Path:
    """Render the world and write it to ``out_dir`` in the xlsa17 layout; return ``out_dir``.

    Files (paths relative to ``out_dir``): ``att_splits.mat`` (``allclasses_names`` C x 1 cell, ``att`` /
    ``original_att`` A x C float64, ``trainval_loc`` / ``test_seen_loc`` / ``test_unseen_loc`` / ``train_loc`` /
    ``val_loc`` N x 1 uint16 1-based rows of the image list), ``image_list.json`` (``image_files``, 0-based
    ``labels`` and locs, ``index_base`` 0), ``images/<class>/<class>_0001.png``, the xlsa17 class lists,
    ``SHAPES_attribute.npy`` (A x 64 float32 word vectors), ``attributes.txt``, ``image_attributes.npy``
    (N x A uint8: the attributes each image was actually drawn with), ``pretrain/`` (``pretrain_list.json``:
    ``image_files`` relative to ``out_dir`` and ``labels`` 0..P-1) and ``world.json``.

    The folder is built as a temporary sibling and renamed into place. If ``out_dir`` already holds this world
    (same version and config) it is returned untouched; if it holds anything else, :class:`WorldExistsError`.
    """
    cfg = cfg or AttributeWorldConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    if _existing_world(out_dir, cfg):
        return out_dir
    world = build_attribute_world(cfg)
    return write_folder_atomically(
        out_dir, lambda tmp: _write_world(tmp, world), lambda: _existing_world(out_dir, cfg)
    )


def _write_world(root: Path, world: AttributeWorld) -> None:
    cfg = world.config
    C = len(world.classes)
    names = [s.name for s in world.classes]

    # images, in class order; labels are global class ids
    image_files: list[str] = []
    labels: list[int] = []
    image_att: list[tuple[int, ...]] = []
    for c, sp in enumerate(world.classes):
        (root / "images" / sp.name).mkdir(parents=True)
        for j in range(cfg.images_per_class):
            rng = _image_rng(cfg, 1, c, j)
            values = sample_attributes(sp, rng)
            rel = f"images/{sp.name}/{sp.name}_{j + 1:04d}.png"
            render_species(values, cfg, rng).save(root / rel, format="PNG")
            image_files.append(rel)
            labels.append(c)
            image_att.append(values)
    n = len(image_files)
    assert n < 65535, "xlsa17 locs are uint16: keep the number of images below 65,535"

    # xlsa17 splits: per seen class a seeded test_seen hold-out; all unseen images to test_unseen
    split_rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 0x5B1]))
    lab = np.asarray(labels)
    trainval, test_seen, test_unseen, train_loc, val_loc = [], [], [], [], []
    for c in range(C):
        idx = np.flatnonzero(lab == c).tolist()
        if c in world.unseen:
            test_unseen += idx
            continue
        k = int(round(cfg.test_seen_fraction * len(idx)))
        if cfg.test_seen_fraction > 0:
            k = min(max(k, 1), len(idx) - 1)
        held = set(split_rng.choice(idx, size=k, replace=False).tolist()) if k else set()
        test_seen += sorted(held)
        trainval += [i for i in idx if i not in held]
        (val_loc if c in world.val else train_loc).extend(idx)

    original_att = np.stack([s.attribute_percent() for s in world.classes], axis=1)  # A x C
    att = original_att / np.linalg.norm(original_att, axis=0, keepdims=True)
    cell = np.empty((C, 1), dtype=object)
    for i, nm in enumerate(names):
        cell[i, 0] = nm
    mat = {
        "allclasses_names": cell,
        "att": att.astype(np.float64),
        "original_att": original_att.astype(np.float64),
        "trainval_loc": _loc(trainval),
        "test_seen_loc": _loc(test_seen),
        "test_unseen_loc": _loc(test_unseen),
        "train_loc": _loc(train_loc),
        "val_loc": _loc(val_loc),
    }
    atomic_write_bytes(root / "att_splits.mat", _savemat_bytes(mat))
    atomic_write_json(
        root / "image_list.json",
        {
            "image_files": image_files,
            "labels": labels,
            "trainval_loc": sorted(trainval),
            "test_seen_loc": sorted(test_seen),
            "test_unseen_loc": sorted(test_unseen),
            "index_base": 0,
        },
    )
    lists = {
        "allclasses.txt": list(range(C)),
        "trainvalclasses.txt": world.seen,
        "testclasses.txt": world.unseen,
        "trainclasses1.txt": world.train,
        "valclasses1.txt": world.val,
    }
    for fname, ids in lists.items():
        atomic_write_text(root / fname, "".join(names[c] + "\n" for c in ids))
    attrs = attribute_names()
    atomic_write_text(root / "attributes.txt", "".join(a + "\n" for a in attrs))
    onehot = np.zeros((n, len(attrs)), dtype=np.uint8)
    starts = np.cumsum([0] + [len(vals) for _, _, vals in PROPERTIES])[:-1]
    for i, values in enumerate(image_att):
        onehot[i, starts + np.asarray(values)] = 1
    for fname, arr in (
        (f"{DATASET_NAME}_attribute.npy", attribute_word_vectors()),
        ("image_attributes.npy", onehot),
    ):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        atomic_write_bytes(root / fname, buf.getvalue())

    # pretraining species
    pre_files: list[str] = []
    pre_labels: list[int] = []
    for c, sp in enumerate(world.pretrain):
        (root / "pretrain" / "images" / sp.name).mkdir(parents=True)
        for j in range(cfg.pretrain_images_per_class):
            rng = _image_rng(cfg, 2, c, j)
            rel = f"pretrain/images/{sp.name}/{sp.name}_{j + 1:04d}.png"
            render_species(sample_attributes(sp, rng), cfg, rng).save(root / rel, format="PNG")
            pre_files.append(rel)
            pre_labels.append(c)
    (root / "pretrain").mkdir(exist_ok=True)
    atomic_write_json(
        root / "pretrain" / "pretrain_list.json",
        {
            "image_files": pre_files,
            "labels": pre_labels,
            "class_names": [s.name for s in world.pretrain],
            "index_base": 0,
        },
    )

    written = sorted(image_files + pre_files + list(_REQUIRED))
    record = world_record(root, written)  # fingerprints and versions
    atomic_write_json(
        root / "world.json",
        {
            "version": WORLD_VERSION,
            "dataset": DATASET_NAME,
            "config": to_dict(cfg),
            **record,
            "counts": {
                "classes": C,
                "seen": len(world.seen),
                "unseen": len(world.unseen),
                "train_classes": len(world.train),
                "val_classes": len(world.val),
                "attributes": len(attrs),
                "images": n,
                "trainval": len(trainval),
                "test_seen": len(test_seen),
                "test_unseen": len(test_unseen),
                "train_loc": len(train_loc),
                "val_loc": len(val_loc),
                "pretrain_classes": len(world.pretrain),
                "pretrain_images": len(pre_files),
            },
            "properties": [{"part": p, "property": q, "values": list(v)} for p, q, v in PROPERTIES],
            "classes": [
                {"id": c, "name": s.name, "role": world.role(c), "modal": s.description()}
                for c, s in enumerate(world.classes)
            ],
            "pretrain_classes": [
                {"id": c, "name": s.name, "modal": s.description()} for c, s in enumerate(world.pretrain)
            ],
            "files": written,
        },
    )
