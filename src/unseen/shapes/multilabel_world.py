"""The multi-label world: cluttered scenes of several objects, exported in the NUS-WIDE / BiAM layout.

A *category* (a label) is a (colour, shape) combination such as ``red_star``; its description is its two words,
"red star". A scene holds 2-4 category objects (sizes, rotations, patterns and colours jittered; objects may overlap
and hide each other) plus a few *non-vocabulary* objects (colour/shape combinations that are no category, so no
label names them) and semi-transparent background clutter.

Some categories are **unseen**: they occur in training images like any other object but are never labelled there,
exactly as NUS-WIDE's 81 concepts appear untagged in its training images. Training label vectors cover the seen
categories only. Every unseen category's colour word and shape word also occur in at least
``min_word_support`` seen categories, so an unseen label is describable by known words.

Label semantics (the "GloVe" vectors) are fixed 300-d vectors derived from the description: the sum of two
deterministic pseudo-random word vectors (colour words share a "colour" direction, shape words a "shape" one, as
related words do in GloVe) plus ``semantic_noise`` times a category-specific vector (a phrase is not exactly the sum
of its words), scaled to a GloVe-like norm of 5-7. They do not depend on the seed: word meaning is fixed.

Labels are int8 in {+1, -1, 0}. A category is +1 when one of its objects is at least ``visible_unknown`` visible
(occlusion and the image border both hide), 0 (unknown) when its best object is only ``visible_hidden`` ..
``visible_unknown`` visible, else -1. The seen labels are Flickr-like tags: a present category loses its tag with
probability ``tag_drop``, an absent one gains a tag with probability ``tag_false`` (train and test, as NUS-WIDE's
925 tags are noisy in both); the unseen labels of the test set are clean, like NUS-WIDE's human-annotated concepts.

:func:`export_multilabel_world` writes (paths relative to the world folder): ``TagList1k.txt`` (the tag list:
every seen category plus a ``taglist_unseen_fraction`` share of the unseen ones, alphabetical, like NUS-WIDE's
1,000 tags of which 75 are concepts), ``Concepts81.txt`` (the unseen categories, alphabetical),
``NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300`` (pickle: ``[tags (T, 300), concepts (U, 300)]`` float32, raw),
``images/{train,test}/NNNNNN.png``, ``img_names.pkl`` (``{"img_names": [...]}``) and ``test_img_names.pkl`` (a list)
with names relative to ``images/``, ``train_labels.npy`` (N_train x n_seen int8, name-list order),
``test_labels.npy`` (N_test x (n_seen + n_unseen) int8, ``[seen | unseen]``), ``ground_truth.npz`` (the clean labels
of every image over all categories and the visible fractions), ``world.json`` (config, seed, categories, counts,
split rule, content and pixel fingerprints, the versions that drew it) and ``README.md``. The multi-label reader
maps names to h5 keys (``train/000001.png`` -> ``train_000001.png``). The validation split is BiAM's: the last
``val_fraction`` of the training names. :func:`default_world_root` is the world's cache folder under
``$UNSEEN_CACHE``.

This module only renders and exports data; the demo's feature extractor (a small CNN trained on the seen labels,
and the BiAM h5 features extracted with it) is built by the multi-label setting's ``prepare_multilabel_world``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unseen.config import to_dict
from unseen.io import atomic_write_bytes, atomic_write_json, atomic_write_text, cache_root, short_hash
from unseen.shapes.common import (
    existing_world,
    verify_world,
    word_vector,
    world_record,
    write_folder_atomically,
)
from unseen.shapes.render import (
    add_clutter,
    background,
    draw_object,
    finish_image,
    image_grid,
    jitter_colour,
    shape_polygon,
)

WORLD_VERSION = "multilabel-world/1"
DATASET_NAME = "SHAPES-ML"
WORD_DIM = 300

#: Colour and shape words, in the order the config's ``n_colours`` / ``n_shapes`` take them.
COLOUR_WORDS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "white",
    "black",
    "pink",
    "cyan",
    "brown",
)
SHAPE_WORDS: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "hexagon",
    "crescent",
    "bar",
    "diamond",
    "pentagon",
    "ellipse",
    "fork",
)
_PATTERNED = ("stripes", "dots", "checker", "rings")

TAGS_FILE = "TagList1k.txt"
CONCEPTS_FILE = "Concepts81.txt"
GLOVE_FILE = "NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300"
TRAIN_NAMES_FILE = "img_names.pkl"
TEST_NAMES_FILE = "test_img_names.pkl"
IMAGE_DIR = "images"
_REQUIRED = (
    TAGS_FILE,
    CONCEPTS_FILE,
    GLOVE_FILE,
    TRAIN_NAMES_FILE,
    TEST_NAMES_FILE,
    "train_labels.npy",
    "test_labels.npy",
    "ground_truth.npz",
    "README.md",
)


@dataclass
class MultilabelWorldConfig:
    """Parameters of the multi-label world. Every field changes the data; record them with results.

    Vocabulary: the first ``n_colours`` of :data:`COLOUR_WORDS` x the first ``n_shapes`` of :data:`SHAPE_WORDS`
    give the possible objects; ``n_categories`` of them (seeded choice) are labels, ``n_unseen`` of those unseen.
    Images: ``n_train`` training and ``n_test`` test scenes of ``image_size`` px (rendered ``supersample`` times
    larger). ``val_fraction``: BiAM's rule, the last share of the training names validates (recorded, not a folder).

    Scenes: ``min_objects``..``max_objects`` category objects (categories drawn with replacement, weights
    ``rank ** -frequency_skew`` over a seeded ranking: a long tail) and ``0..max_distractors`` non-vocabulary
    objects; circumradius log-uniform in ``min_size``..``max_size`` (fractions of the image side); placement keeps
    centres about ``spacing`` x (sum of radii) apart when it can, so objects overlap only partly. ``pattern_prob``:
    share of patterned (not solid) objects; ``occluder_prob``: chance of 1-2 neutral occluders in front;
    ``clutter``: scales the background distractors; ``colour_jitter`` / ``pixel_noise``: intensity std in [0, 1].

    Labels: ``visible_unknown`` / ``visible_hidden`` (visible fractions, see the module docstring), ``tag_drop`` /
    ``tag_false`` (seen-tag noise), ``taglist_unseen_fraction`` (unseen categories also listed as tags: NUS-WIDE
    75/81), ``semantic_noise`` (weight of the category-specific word-vector part), ``min_word_support`` (seen
    categories that must share each word of an unseen one).
    """

    seed: int = 0
    n_colours: int = 8
    n_shapes: int = 8
    n_categories: int = 36
    n_unseen: int = 9
    n_train: int = 2400
    n_test: int = 1200
    val_fraction: float = 0.2
    image_size: int = 112
    supersample: int = 2
    min_objects: int = 2
    max_objects: int = 4
    max_distractors: int = 2
    min_size: float = 0.08
    max_size: float = 0.17
    spacing: float = 0.65
    frequency_skew: float = 0.5
    pattern_prob: float = 0.35
    occluder_prob: float = 0.35
    clutter: float = 1.0
    colour_jitter: float = 0.07
    pixel_noise: float = 0.03
    visible_unknown: float = 0.4
    visible_hidden: float = 0.1
    tag_drop: float = 0.15
    tag_false: float = 0.005
    taglist_unseen_fraction: float = 0.75
    semantic_noise: float = 0.35
    min_word_support: int = 2

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field if the configuration cannot produce a valid world."""

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"MultilabelWorldConfig.{name}: {why} (got {getattr(self, name)!r})")

        if not 2 <= self.n_colours <= len(COLOUR_WORDS):
            raise bad("n_colours", f"must be in [2, {len(COLOUR_WORDS)}]")
        if not 2 <= self.n_shapes <= len(SHAPE_WORDS):
            raise bad("n_shapes", f"must be in [2, {len(SHAPE_WORDS)}]")
        if not 3 <= self.n_categories <= self.n_colours * self.n_shapes:
            raise bad(
                "n_categories", f"must be in [3, n_colours * n_shapes = {self.n_colours * self.n_shapes}]"
            )
        if not 1 <= self.n_unseen <= self.n_categories - 2:
            raise bad("n_unseen", "must be >= 1 and leave >= 2 seen categories")
        for name in ("n_train", "n_test", "image_size", "supersample", "min_objects", "min_word_support"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be >= 1")
        if self.image_size < 32:
            raise bad("image_size", "must be >= 32 pixels")
        if self.max_objects < self.min_objects:
            raise bad("max_objects", f"must be >= min_objects ({self.min_objects})")
        if self.max_distractors < 0:
            raise bad("max_distractors", "must be >= 0")
        if not 0.0 < self.min_size <= self.max_size <= 0.5:
            raise bad("min_size", "need 0 < min_size <= max_size <= 0.5")
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val_fraction", "must be in [0, 1)")
        for name in ("pattern_prob", "occluder_prob", "tag_drop", "tag_false", "taglist_unseen_fraction"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise bad(name, "must be in [0, 1]")
        if not 0.0 <= self.visible_hidden <= self.visible_unknown <= 1.0:
            raise bad("visible_unknown", "need 0 <= visible_hidden <= visible_unknown <= 1")
        for name in (
            "spacing",
            "frequency_skew",
            "clutter",
            "colour_jitter",
            "pixel_noise",
            "semantic_noise",
        ):
            if float(getattr(self, name)) < 0:
                raise bad(name, "must be >= 0")


# ----------------------------------------------------------------------------------------------------------------
# The world specification (no pixels)


@dataclass(frozen=True)
class Category:
    """One label: a (colour, shape) object category."""

    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour}_{self.shape}"

    @property
    def words(self) -> tuple[str, str]:
        """The description's words ("red star")."""
        return (self.colour, self.shape)


@dataclass
class MultilabelWorld:
    """The specification of a world: categories in GZSL label order ``[seen | unseen]`` and what else is drawn.

    ``seen`` are in tag-list order (alphabetical) and ``unseen`` in concept-list order (alphabetical);
    ``label_categories`` is their concatenation, so a label column index is an index into it."""

    config: MultilabelWorldConfig
    seen: list[Category]
    unseen: list[Category]
    distractors: list[Category]  # colour/shape combinations that are no category (never labelled)
    weights: np.ndarray  # (n_seen + n_unseen,) sampling probability of each label's category, label order
    taglist: list[str]  # the tag-list file: seen names + the unseen names also listed as tags, alphabetical

    @property
    def label_categories(self) -> list[Category]:
        return [*self.seen, *self.unseen]

    @property
    def label_names(self) -> list[str]:
        return [c.name for c in self.label_categories]

    @property
    def n_seen(self) -> int:
        return len(self.seen)

    @property
    def n_labels(self) -> int:
        return len(self.seen) + len(self.unseen)


def word_embedding(word: str, kind: str, dim: int = WORD_DIM) -> np.ndarray:
    """A word's vector: its own direction plus a share of its kind's ("colour" or "shape"), like GloVe neighbours."""
    return 0.8 * word_vector(word, dim) + 0.6 * word_vector(f"<kind:{kind}>", dim)


def category_vector(category: Category, semantic_noise: float, dim: int = WORD_DIM) -> np.ndarray:
    """The raw (unnormalised, norm 5-7 like GloVe 300-d) float32 vector of a category's description."""
    v = (
        word_embedding(category.colour, "colour", dim)
        + word_embedding(category.shape, "shape", dim)
        + semantic_noise * word_vector(f"<phrase:{category.name}>", dim)
    )
    h = hashlib.sha256(f"unseen-norm:{category.name}".encode()).digest()
    norm = 5.0 + 2.0 * int.from_bytes(h[:4], "little") / 2**32
    return (norm * v / np.linalg.norm(v)).astype(np.float32)


def build_multilabel_world(cfg: MultilabelWorldConfig | None = None) -> MultilabelWorld:
    """The world's specification (categories, roles, frequencies), deterministic in ``cfg``; nothing rendered."""
    cfg = cfg or MultilabelWorldConfig()
    cfg.validate()
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 0x3C1]))
    combos = [Category(c, s) for c in COLOUR_WORDS[: cfg.n_colours] for s in SHAPE_WORDS[: cfg.n_shapes]]
    for _ in range(200):
        order = rng.permutation(len(combos))
        cats = [combos[i] for i in order[: cfg.n_categories]]
        unseen = _choose_unseen(cats, cfg, rng)
        if unseen is not None:
            break
    else:
        raise RuntimeError(
            "multilabel world: no unseen choice keeps every unseen word in >= min_word_support seen "
            "categories; raise n_categories or lower n_unseen / min_word_support"
        )
    seen = sorted((c for c in cats if c not in unseen), key=lambda c: c.name)
    unseen = sorted(unseen, key=lambda c: c.name)
    distractors = sorted((c for c in combos if c not in cats), key=lambda c: c.name)
    ranks = rng.permutation(cfg.n_categories) + 1.0  # label order -> popularity rank (1 = most frequent)
    w = ranks ** -float(cfg.frequency_skew)
    k = int(round(cfg.taglist_unseen_fraction * len(unseen)))
    in_tags = set(rng.choice(len(unseen), size=k, replace=False).tolist()) if k else set()
    taglist = sorted([c.name for c in seen] + [unseen[i].name for i in in_tags])
    return MultilabelWorld(cfg, seen, unseen, distractors, w / w.sum(), taglist)


def _choose_unseen(
    cats: list[Category], cfg: MultilabelWorldConfig, rng: np.random.Generator
) -> list[Category] | None:
    """Greedy random unseen choice whose words each stay in >= min_word_support seen categories."""
    support: dict[str, int] = {}
    for c in cats:
        for w in c.words:
            support[w] = support.get(w, 0) + 1
    unseen: list[Category] = []
    for i in rng.permutation(len(cats)).tolist():
        c = cats[i]
        if all(support[w] - 1 >= cfg.min_word_support for w in c.words):
            for w in c.words:
                support[w] -= 1
            unseen.append(c)
            if len(unseen) == cfg.n_unseen:
                return unseen
    return None


def word_support(world: MultilabelWorld) -> dict[str, int]:
    """For every word of an unseen category: the number of seen categories whose description contains it."""
    return {w: sum(w in s.words for s in world.seen) for u in world.unseen for w in u.words}


# ----------------------------------------------------------------------------------------------------------------
# Scenes


@dataclass
class SceneObject:
    """One drawn object. ``label`` = its label column (GZSL order) or -1 for a non-vocabulary object."""

    category: Category
    label: int
    centre: tuple[float, float]  # canvas pixels (supersampled)
    radius: float  # circumradius, canvas pixels
    rotation: float  # degrees
    pattern: str
    visible: float = 1.0  # fraction of the object's area visible in the final image (set by render_scene)


def sample_scene(world: MultilabelWorld, rng: np.random.Generator) -> list[SceneObject]:
    """The objects of one scene (category objects first, then non-vocabulary ones), in drawing order."""
    cfg = world.config
    S = cfg.image_size * cfg.supersample
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    labels = rng.choice(world.n_labels, size=n, p=world.weights).tolist()
    n_d = int(rng.integers(0, cfg.max_distractors + 1)) if world.distractors else 0
    picks = [(world.label_categories[c], int(c)) for c in labels]
    picks += [(world.distractors[int(rng.integers(len(world.distractors)))], -1) for _ in range(n_d)]
    objs: list[SceneObject] = []
    lo, hi = math.log(cfg.min_size * S), math.log(cfg.max_size * S)
    for j in rng.permutation(len(picks)).tolist():  # random depth order
        cat, lab = picks[j]
        r = float(math.exp(rng.uniform(lo, hi)))
        best, best_gap = (S / 2.0, S / 2.0), -math.inf
        for _ in range(8):  # keep centres apart when possible: partial, not total, occlusion
            c = (float(rng.uniform(0.5 * r, S - 0.5 * r)), float(rng.uniform(0.5 * r, S - 0.5 * r)))
            gap = min((math.dist(c, o.centre) - cfg.spacing * (r + o.radius) for o in objs), default=math.inf)
            if gap > best_gap:
                best, best_gap = c, gap
            if gap >= 0:
                break
        pattern = (
            _PATTERNED[int(rng.integers(len(_PATTERNED)))] if rng.random() < cfg.pattern_prob else "solid"
        )
        objs.append(SceneObject(cat, lab, best, r, float(rng.uniform(0, 360)), pattern))
    return objs


def _raster_area(poly: list[tuple[float, float]]) -> float:
    """Pixel area of the polygon rasterised as :func:`draw_object` does, ignoring the canvas border."""
    from PIL import ImageDraw

    x0 = math.floor(min(p[0] for p in poly)) - 2
    y0 = math.floor(min(p[1] for p in poly)) - 2
    w = math.ceil(max(p[0] for p in poly)) + 3 - x0
    h = math.ceil(max(p[1] for p in poly)) + 3 - y0
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).polygon([(x - x0, y - y0) for x, y in poly], fill=255)
    return float(np.asarray(img, dtype=np.float32).sum() / 255.0)


def render_scene(
    objs: list[SceneObject], cfg: MultilabelWorldConfig, rng: np.random.Generator
) -> Image.Image:
    """Draw the scene (background, clutter, the objects in order, occluders) and set every object's ``visible``."""
    ss = cfg.supersample
    S = cfg.image_size * ss
    canvas = background(S, rng, blotches=5)
    if cfg.clutter > 0:
        add_clutter(
            canvas,
            rng,
            int(rng.poisson(8 * cfg.clutter)),
            min_size=0.02 * S,
            max_size=0.06 * S,
            alpha=(0.25, 0.6),
        )
    masks = []
    for o in objs:
        outline = 0.6 * ss if rng.random() < 0.5 else 0.0
        m = draw_object(
            canvas,
            o.centre,
            o.radius,
            o.category.shape,
            jitter_colour(o.category.colour, rng, cfg.colour_jitter),
            o.pattern,
            o.rotation,
            rng,
            outline=outline,
        )
        masks.append(m)
    if objs and rng.random() < cfg.occluder_prob:  # neutral occluders in front of random objects
        for _ in range(int(rng.integers(1, 3))):
            target = objs[int(rng.integers(len(objs)))]
            ang = rng.uniform(0, 2 * math.pi)
            d = target.radius * float(rng.uniform(0.3, 1.0))
            centre = (target.centre[0] + d * math.cos(ang), target.centre[1] + d * math.sin(ang))
            grey = float(rng.uniform(0.25, 0.6))
            rgb = np.clip(np.array([grey, grey * 0.95, grey * 0.85]) + rng.normal(0, 0.03, 3), 0, 1)
            masks.append(
                draw_object(
                    canvas,
                    centre,
                    float(rng.uniform(0.06, 0.11)) * S,
                    ("bar", "circle", "square")[int(rng.integers(3))],
                    rgb,
                    "solid",
                    float(rng.uniform(0, 360)),
                    alpha=0.92,
                )
            )
    front = np.ones((S, S), dtype=np.float32)
    for i in range(len(masks) - 1, -1, -1):  # back to front: what is in front of object i
        if i < len(objs):
            o = objs[i]
            area = _raster_area(shape_polygon(o.category.shape, o.centre, o.radius, o.rotation))
            o.visible = float(min(1.0, (masks[i] * front).sum() / max(area, 1.0)))  # border and overlap hide
        front *= 1.0 - masks[i]
    return finish_image(canvas, cfg.image_size, rng, noise=cfg.pixel_noise)


def clean_labels(
    objs: list[SceneObject], cfg: MultilabelWorldConfig, n_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """(labels int8 (n_labels,) in {+1, -1, 0}, best visible fraction per label float32) from a rendered scene."""
    vis = np.zeros(n_labels, np.float32)
    for o in objs:
        if o.label >= 0:
            vis[o.label] = max(vis[o.label], o.visible)
    lab = np.full(n_labels, -1, np.int8)
    lab[vis >= cfg.visible_hidden] = 0
    lab[vis >= cfg.visible_unknown] = 1
    return lab, vis


def noisy_tags(labels: np.ndarray, cfg: MultilabelWorldConfig, rng: np.random.Generator) -> np.ndarray:
    """Flickr-like tags from clean labels: +1 -> -1 with ``tag_drop``, -1 -> +1 with ``tag_false``; 0 stays 0."""
    out = labels.copy()
    u = rng.random(labels.shape)
    out[(labels == 1) & (u < cfg.tag_drop)] = -1
    out[(labels == -1) & (u < cfg.tag_false)] = 1
    return out


def _scene_rng(cfg: MultilabelWorldConfig, split: int, i: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(cfg.seed), split, i, stream]))


_SPLITS = {"train": 1, "test": 2}


def render_image(world: MultilabelWorld, split: str, i: int) -> tuple[Image.Image, list[SceneObject]]:
    """Image ``i`` (0-based) of ``split`` ("train" | "test") and its objects (with visible fractions)."""
    rng = _scene_rng(world.config, _SPLITS[split], i)
    objs = sample_scene(world, rng)
    return render_scene(objs, world.config, rng), objs


def sample_grid(cfg: MultilabelWorldConfig | None = None, n_images: int = 12, cols: int = 6) -> Image.Image:
    """A PIL image tiling the first ``n_images`` training scenes (for a look at the world)."""
    world = build_multilabel_world(cfg)
    return image_grid([render_image(world, "train", i)[0] for i in range(n_images)], cols)


# ----------------------------------------------------------------------------------------------------------------
# Export in the NUS-WIDE / BiAM layout


def image_name(split: str, i: int) -> str:
    """Name of image ``i`` relative to ``images/`` (the name lists' entries): ``train/000001.png``."""
    return f"{split}/{i + 1:06d}.png"


def _existing_world(out_dir: Path, cfg: MultilabelWorldConfig) -> bool:
    return existing_world(
        out_dir,
        "multi-label",
        WORLD_VERSION,
        to_dict(cfg),
        _REQUIRED,
        with_listed_files=True,
        samples=lambda: _samples(cfg),
    )


def _samples(cfg: MultilabelWorldConfig, n: int = 8) -> dict[str, Image.Image]:
    """The first ``n`` training images, drawn now (to compare with a stored world)."""
    world = build_multilabel_world(cfg)
    return {
        f"{IMAGE_DIR}/{image_name('train', i)}": render_image(world, "train", i)[0]
        for i in range(min(n, cfg.n_train))
    }


def export_multilabel_world(
    out_dir: str | os.PathLike[str], cfg: MultilabelWorldConfig | None = None, *, workers: int | None = None
) -> Path:
    """Render the world and write it to ``out_dir`` in the NUS-WIDE / BiAM layout (module docstring); return it.

    ``workers``: rendering processes (default: the CPU count, at most 4; the output is the same for any count).

    Built in a temporary sibling folder and renamed into place (never half-written). If ``out_dir`` already holds
    this world (same version and config) it is returned untouched; anything else raises :class:`WorldExistsError`.
    """
    cfg = cfg or MultilabelWorldConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    if _existing_world(out_dir, cfg):
        return out_dir
    world = build_multilabel_world(cfg)
    n_workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    return write_folder_atomically(
        out_dir, lambda tmp: _write_world(tmp, world, n_workers), lambda: _existing_world(out_dir, cfg)
    )


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _render_chunk(
    args: tuple[MultilabelWorldConfig, str, str, int, int],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Render and save images ``start..stop-1`` of ``split`` under ``root``; return (clean labels, visible
    fractions, object count) for them. Top-level so that worker processes can run it."""
    cfg, root, split, start, stop = args
    world = build_multilabel_world(cfg)
    lab = np.zeros((stop - start, world.n_labels), np.int8)
    vis = np.zeros((stop - start, world.n_labels), np.float32)
    count = 0
    for i in range(start, stop):
        img, objs = render_image(world, split, i)
        img.save(Path(root) / IMAGE_DIR / image_name(split, i), format="PNG")
        lab[i - start], vis[i - start] = clean_labels(objs, cfg, world.n_labels)
        count += len(objs)
    return lab, vis, count


def _render_all(
    root: Path, cfg: MultilabelWorldConfig, split: str, n: int, workers: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Every image of a split, in ``workers`` processes (each image has its own RNG: same bytes for any count)."""
    chunk = 100
    jobs = [(cfg, str(root), split, a, min(a + chunk, n)) for a in range(0, n, chunk)]
    import multiprocessing as mp

    # fork only (POSIX): "spawn" would re-import the caller's __main__, breaking scripts without a main guard
    if workers <= 1 or len(jobs) == 1 or "fork" not in mp.get_all_start_methods():
        parts = [_render_chunk(j) for j in jobs]
    else:
        import warnings
        from concurrent.futures import ProcessPoolExecutor

        with warnings.catch_warnings():  # the children only run NumPy/Pillow code, never the parent's threads
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
                parts = list(pool.map(_render_chunk, jobs))
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        sum(p[2] for p in parts),
    )


def _write_world(root: Path, world: MultilabelWorld, workers: int = 1) -> None:
    cfg = world.config
    ns = world.n_seen
    files: list[str] = []
    clean: dict[str, np.ndarray] = {}
    visible: dict[str, np.ndarray] = {}
    tags: dict[str, np.ndarray] = {}
    n_objects: dict[str, int] = {}
    for split, n in (("train", cfg.n_train), ("test", cfg.n_test)):
        (root / IMAGE_DIR / split).mkdir(parents=True)
        clean[split], visible[split], n_objects[split] = _render_all(root, cfg, split, n, workers)
        tags[split] = np.stack(
            [
                noisy_tags(clean[split][i, :ns], cfg, _scene_rng(cfg, _SPLITS[split], i, stream=1))
                for i in range(n)
            ]
        )
        files += [f"{IMAGE_DIR}/{image_name(split, i)}" for i in range(n)]
    train_labels = tags["train"]  # the seen tags only: unseen categories are never labelled in training
    test_labels = np.concatenate([tags["test"], clean["test"][:, ns:]], axis=1)  # [noisy seen | clean unseen]

    atomic_write_text(root / TAGS_FILE, "".join(t + "\n" for t in world.taglist))
    atomic_write_text(root / CONCEPTS_FILE, "".join(c.name + "\n" for c in world.unseen))
    vec = {c.name: category_vector(c, cfg.semantic_noise) for c in world.label_categories}
    glove = [np.stack([vec[t] for t in world.taglist]), np.stack([vec[c.name] for c in world.unseen])]
    atomic_write_bytes(root / GLOVE_FILE, pickle.dumps(glove, protocol=2))
    atomic_write_bytes(
        root / TRAIN_NAMES_FILE,
        pickle.dumps({"img_names": [image_name("train", i) for i in range(cfg.n_train)]}, protocol=2),
    )
    atomic_write_bytes(
        root / TEST_NAMES_FILE, pickle.dumps([image_name("test", i) for i in range(cfg.n_test)], protocol=2)
    )
    atomic_write_bytes(root / "train_labels.npy", _npy_bytes(train_labels))
    atomic_write_bytes(root / "test_labels.npy", _npy_bytes(test_labels))
    import io

    buf = io.BytesIO()
    np.savez(
        buf,
        train_clean=clean["train"],
        test_clean=clean["test"],
        train_visible=visible["train"],
        test_visible=visible["test"],
    )
    atomic_write_bytes(root / "ground_truth.npz", buf.getvalue())

    n_val = cfg.n_train - int(round(cfg.n_train * (1.0 - cfg.val_fraction)))
    meta = {
        "version": WORLD_VERSION,
        "dataset": DATASET_NAME,
        "config": to_dict(cfg),
        "seed": cfg.seed,
        "counts": {
            "labels": world.n_labels,
            "seen": ns,
            "unseen": len(world.unseen),
            "tags": len(world.taglist),
            "unseen_in_taglist": len(world.taglist) - ns,
            "non_vocabulary_combinations": len(world.distractors),
            "train": cfg.n_train - n_val,
            "val": n_val,
            "test": cfg.n_test,
            "objects_per_image": {s: n_objects[s] / max(len(clean[s]), 1) for s in clean},
            "positives_per_image": {
                "train_seen_tags": float((train_labels == 1).sum(1).mean()),
                "test_seen_tags": float((tags["test"] == 1).sum(1).mean()),
                "test_unseen": float((clean["test"][:, ns:] == 1).sum(1).mean()),
            },
            "unknown_entries_fraction": {s: float((clean[s] == 0).mean()) for s in clean},
            "test_unseen_positives_per_label": (clean["test"][:, ns:] == 1).sum(0).tolist(),
        },
        "split": {
            "rule": f"BiAM: the first {1 - cfg.val_fraction:.0%} of {TRAIN_NAMES_FILE} train, the last "
            f"{cfg.val_fraction:.0%} validate; {TEST_NAMES_FILE} test",
            "train_names": TRAIN_NAMES_FILE,
            "test_names": TEST_NAMES_FILE,
            "image_root": IMAGE_DIR,
        },
        "label_order": "GZSL [seen (TagList1k minus Concepts81, tag order) | unseen (Concepts81 order)]",
        "labels": [
            {
                "index": i,
                "name": c.name,
                "description": " ".join(c.words),
                "role": "seen" if i < ns else "unseen",
                "in_taglist": c.name in world.taglist,
                "frequency": float(world.weights[i]),
            }
            for i, c in enumerate(world.label_categories)
        ],
        "word_support": word_support(world),
        "non_vocabulary": [c.name for c in world.distractors],
    }
    atomic_write_text(root / "README.md", _readme(meta))
    meta["files"] = sorted(files)
    meta.update(world_record(root, files + list(_REQUIRED)))  # fingerprints and versions
    atomic_write_json(root / "world.json", meta)


def _readme(meta: dict[str, Any]) -> str:
    c = meta["counts"]
    lines = [
        f"# {DATASET_NAME}: the embedded multi-label ZSL benchmark of unseen ({meta['version']})",
        "",
        "Rendered scenes exported in the NUS-WIDE / BiAM layout (see unseen/shapes/multilabel_world.py).",
        f"Labels: {c['seen']} seen categories (tags) and {c['unseen']} unseen categories (concepts); unseen categories "
        "appear in training images but are never labelled there.",
        f"Images: {c['train']} train + {c['val']} val (last names of {TRAIN_NAMES_FILE}) + {c['test']} test.",
        "",
        f"Seed: {meta['seed']}",
        "",
        "Config:",
        "",
        *[f"- {k}: {v}" for k, v in meta["config"].items()],
        "",
        "Files: TagList1k.txt, Concepts81.txt, NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300 (pickle [tags, "
        "concepts], raw 300-d), img_names.pkl, test_img_names.pkl, train_labels.npy (seen tags), test_labels.npy "
        "([seen | unseen]), ground_truth.npz, images/{train,test}/, world.json.",
        "",
    ]
    return "\n".join(lines)


def verify_multilabel_world(root: str | os.PathLike[str]) -> str:
    """Recompute the content fingerprint of an exported world; raise ``ValueError`` if it does not match."""
    return verify_world(root, _REQUIRED)


def default_world_root(cfg: MultilabelWorldConfig | None = None) -> Path:
    """``$UNSEEN_CACHE/shapes-multilabel-<hash of the version and config>``."""
    cfg = cfg or MultilabelWorldConfig()
    key = json.dumps({"version": WORLD_VERSION, **to_dict(cfg)}, sort_keys=True)
    return cache_root() / f"shapes-multilabel-{short_hash(key)}"
