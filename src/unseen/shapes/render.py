"""Drawing primitives for the embedded benchmark worlds (Pillow + NumPy, deterministic given an RNG).

Every world draws on a *canvas*: a float32 array ``H x W x 3`` with values in ``[0, 1]`` (RGB), usually at a
supersampled resolution that :func:`finish_image` reduces to the final size. Coordinates are in canvas pixels,
``(x, y)`` with ``x`` to the right and ``y`` down; angles are in degrees, counter-clockwise on screen.

- :func:`shape_polygon` turns a shape name into polygon vertices (``size`` = circumradius in pixels).
- :func:`draw_object` fills one shape with a colour and a pattern (solid, stripes, dots, checker, ...).
- :func:`jitter_colour` varies a colour from image to image.
- :func:`background`, :func:`add_clutter`, :func:`finish_image` make the scene around the objects.

Nothing here knows about attributes or classes; the worlds (``attribute_world.py``, ``multilabel_world.py``,
``compositional_world.py``) decide what to draw.

Pillow draws the coverage masks (``ImageDraw.polygon`` / ``line``) and resizes (``BICUBIC`` background, ``BOX``
reduction); everything else is NumPy on a seeded ``np.random.Generator``. The pixels depend on the Pillow release:
its polygon fill changed in 9.5.0, 11.1.0 and 11.2.1 (9.3-9.4, 9.5-11.0, 11.1 and 11.2.1-13.0 draw four different
sets of images, a few edge pixels per object; 11.2.1-13.0 are identical), while NumPy 1.24-2.4 give the same
pixels. ``tests/test_fingerprints.py`` pins them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Named colours (sRGB in [0, 1]); chosen to stay distinguishable at 64 px under jitter and patterns.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.13, 0.13),
    "orange": (0.97, 0.55, 0.08),
    "yellow": (0.96, 0.88, 0.15),
    "green": (0.15, 0.66, 0.22),
    "cyan": (0.15, 0.80, 0.85),
    "blue": (0.13, 0.30, 0.88),
    "purple": (0.55, 0.22, 0.75),
    "pink": (0.98, 0.55, 0.78),
    "white": (0.97, 0.97, 0.97),
    "black": (0.10, 0.10, 0.10),
    "brown": (0.50, 0.30, 0.13),
}

SHAPES: tuple[str, ...] = (
    "circle",
    "ellipse",
    "square",
    "rectangle",
    "bar",
    "triangle",
    "diamond",
    "pentagon",
    "hexagon",
    "star",
    "cross",
    "fork",
    "crescent",
)
PATTERNS: tuple[str, ...] = ("solid", "stripes", "dots", "checker", "rings", "gradient")


def _regular(n: int, size: float, phase: float) -> list[tuple[float, float]]:
    return [
        (size * math.cos(phase + 2 * math.pi * k / n), size * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _unit_shape(shape: str, size: float) -> list[tuple[float, float]]:
    """Vertices centred on (0, 0), unrotated, upright (y down). ``size`` = circumradius."""
    s = size
    up = -math.pi / 2
    if shape == "circle":
        return _regular(40, s, 0.0)
    if shape == "ellipse":
        return [
            (s * math.cos(t), 0.62 * s * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)
        ]
    if shape == "square":
        return _regular(4, s, math.pi / 4)
    if shape == "diamond":
        return [(0, -s), (0.72 * s, 0), (0, s), (-0.72 * s, 0)]
    if shape == "rectangle":
        return [(-s, -0.6 * s), (s, -0.6 * s), (s, 0.6 * s), (-s, 0.6 * s)]
    if shape == "bar":
        return [(-s, -0.32 * s), (s, -0.32 * s), (s, 0.32 * s), (-s, 0.32 * s)]
    if shape == "triangle":
        return _regular(3, s, up)
    if shape == "pentagon":
        return _regular(5, s, up)
    if shape == "hexagon":
        return _regular(6, s, 0.0)
    if shape == "star":
        pts = []
        for k in range(10):
            r = s if k % 2 == 0 else 0.45 * s
            a = up + math.pi * k / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        return pts
    if shape == "cross":
        a, b = 0.34 * s, s
        return [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    if shape == "fork":  # a chevron / swallow tail opening to the right
        return [(-s, -0.25 * s), (s, -s), (s, -0.45 * s), (0.0, 0.0), (s, 0.45 * s), (s, s), (-s, 0.25 * s)]
    if shape == "crescent":
        outer = [(s * math.cos(t), s * math.sin(t)) for t in np.linspace(-0.5 * math.pi, 0.5 * math.pi, 20)]
        inner = [
            (0.25 * s + 0.75 * s * math.cos(t) * 0.7, s * math.sin(t))
            for t in np.linspace(0.5 * math.pi, -0.5 * math.pi, 20)
        ]
        return outer + inner
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def shape_polygon(
    shape: str, center: Sequence[float], size: float, rotation: float = 0.0
) -> list[tuple[float, float]]:
    """Polygon vertices of ``shape`` with circumradius ``size`` (pixels) at ``center``, rotated by ``rotation`` degrees."""
    cx, cy = float(center[0]), float(center[1])
    t = math.radians(rotation)
    c, s = math.cos(t), math.sin(t)
    # counter-clockwise on screen (y down): x' = x c + y s, y' = -x s + y c
    return [(cx + x * c + y * s, cy - x * s + y * c) for x, y in _unit_shape(shape, size)]


def _mask(poly: Sequence[tuple[float, float]], h: int, w: int, outline: int = 0) -> np.ndarray:
    """Float32 ``h x w`` coverage mask of the polygon (optionally only its outline of ``outline`` px)."""
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    if outline:
        draw.polygon(list(poly), outline=255, width=outline)
    else:
        draw.polygon(list(poly), fill=255)
    return np.asarray(img, dtype=np.float32) * (1.0 / 255.0)


def secondary_colour(rgb: Sequence[float]) -> np.ndarray:
    """The second colour of a pattern: a darker shade of light colours, a lighter shade of dark ones."""
    c = np.asarray(rgb, dtype=np.float32)
    lum = float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])
    return c * 0.35 if lum > 0.4 else c + (1.0 - c) * 0.6


def jitter_colour(colour: str | Sequence[float], rng: np.random.Generator, amount: float) -> np.ndarray:
    """A float32 RGB in [0, 1]: ``colour`` (a :data:`COLOURS` name or an RGB triple) with a per-channel relative
    and a shared absolute Gaussian jitter (standard deviations ``amount`` and ``amount / 2``)."""
    c = np.asarray(COLOURS[colour] if isinstance(colour, str) else colour, dtype=np.float32)
    c = c * (1.0 + rng.normal(0.0, amount, 3)) + rng.normal(0.0, amount * 0.5)
    return np.clip(c, 0.0, 1.0).astype(np.float32)


def pattern_texture(
    pattern: str,
    h: int,
    w: int,
    center: Sequence[float],
    period: float,
    rotation: float,
    colour: Sequence[float],
    second: Sequence[float] | None = None,
    x0: int = 0,
    y0: int = 0,
) -> np.ndarray:
    """RGB texture ``h x w x 3`` for the canvas window starting at ``(x0, y0)``.

    ``period`` = pattern wavelength in pixels; the pattern is anchored at ``center`` and rotated by ``rotation``.
    """
    c1 = np.asarray(colour, dtype=np.float32)
    c2 = secondary_colour(c1) if second is None else np.asarray(second, dtype=np.float32)
    if pattern == "solid":
        return np.broadcast_to(c1, (h, w, 3))
    ys, xs = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    xs -= float(center[0])
    ys -= float(center[1])
    t = math.radians(rotation)
    u = xs * math.cos(t) - ys * math.sin(t)
    v = xs * math.sin(t) + ys * math.cos(t)
    p = max(float(period), 1.0)
    if pattern == "stripes":
        m = (np.floor(u / (p / 2.0)) % 2).astype(np.float32)
    elif pattern == "checker":
        m = ((np.floor(u / (p / 2.0)) + np.floor(v / (p / 2.0))) % 2).astype(np.float32)
    elif pattern == "dots":
        du = u / p - np.round(u / p)
        dv = v / p - np.round(v / p)
        m = ((du * du + dv * dv) < 0.26**2).astype(np.float32)
    elif pattern == "rings":
        m = (np.floor(np.sqrt(xs * xs + ys * ys) / (p / 2.0)) % 2).astype(np.float32)
    elif pattern == "gradient":
        m = np.clip(0.5 + u / (2.5 * p), 0.0, 1.0)
    else:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    m = m[..., None]
    return c1 * (1.0 - m) + c2 * m


def draw_object(
    canvas: np.ndarray,
    center: Sequence[float],
    size: float,
    shape: str,
    colour: str | Sequence[float],
    pattern: str = "solid",
    rotation: float = 0.0,
    rng: np.random.Generator | None = None,
    *,
    pattern_period: float | None = None,
    pattern_rotation: float | None = None,
    outline: float = 0.0,
    outline_colour: Sequence[float] = (0.08, 0.08, 0.08),
    alpha: float = 1.0,
) -> np.ndarray:
    """Draw one filled, patterned shape onto ``canvas`` in place; return its coverage mask (``H x W`` float32).

    ``size``: circumradius in canvas pixels. ``colour``: a name from :data:`COLOURS` or an RGB triple in [0, 1].
    ``pattern_period`` defaults to ``0.55 * size``; ``pattern_rotation`` defaults to a random angle from ``rng``
    (or ``rotation`` without one). ``outline``: width in pixels of a dark contour (0 = none). ``alpha``: opacity.
    """
    h, w = canvas.shape[:2]
    rgb = np.asarray(COLOURS[colour] if isinstance(colour, str) else colour, dtype=np.float32)
    poly = shape_polygon(shape, center, size, rotation)
    xs = [p[0] for p in poly]
    ys = [p[1] for p in poly]
    x0 = max(int(math.floor(min(xs))) - 2, 0)
    y0 = max(int(math.floor(min(ys))) - 2, 0)
    x1 = min(int(math.ceil(max(xs))) + 3, w)
    y1 = min(int(math.ceil(max(ys))) + 3, h)
    mask = np.zeros((h, w), dtype=np.float32)
    if x1 <= x0 or y1 <= y0:
        return mask
    local = [(x - x0, y - y0) for x, y in poly]
    m = _mask(local, y1 - y0, x1 - x0)
    if pattern_rotation is None:
        pattern_rotation = float(rng.uniform(0, 180)) if rng is not None else rotation
    tex = pattern_texture(
        pattern, y1 - y0, x1 - x0, center, pattern_period or 0.55 * size, pattern_rotation, rgb, x0=x0, y0=y0
    )
    a = (m * alpha)[..., None]
    win = canvas[y0:y1, x0:x1]
    win *= 1.0 - a
    win += tex * a
    if outline > 0:
        e = _mask(local, y1 - y0, x1 - x0, outline=max(int(round(outline)), 1))[..., None] * alpha
        win *= 1.0 - e
        win += np.asarray(outline_colour, dtype=np.float32) * e
    mask[y0:y1, x0:x1] = m
    return mask


def background(
    size: int, rng: np.random.Generator, *, saturation: float = 0.25, blotches: int = 4
) -> np.ndarray:
    """A muted, smoothly varying background canvas ``size x size x 3`` (float32 in [0, 1])."""
    base = rng.uniform(0.42, 0.72)
    tint = rng.normal(0.0, saturation * 0.25, size=3)
    grid = rng.normal(0.0, 0.07, size=(blotches, blotches, 3))
    low = (
        np.asarray(
            Image.fromarray(((grid + 0.5).clip(0, 1) * 255).astype(np.uint8)).resize(
                (size, size), Image.BICUBIC
            ),
            dtype=np.float32,
        )
        / 255.0
        - 0.5
    )
    canvas = np.clip(base + tint + low, 0.0, 1.0).astype(np.float32)
    return canvas


def add_clutter(
    canvas: np.ndarray,
    rng: np.random.Generator,
    n: int,
    *,
    min_size: float,
    max_size: float,
    alpha: tuple[float, float] = (0.3, 0.7),
    colours: Sequence[str] | None = None,
    shapes: Sequence[str] = ("circle", "square", "triangle", "bar", "cross", "diamond"),
    avoid: np.ndarray | None = None,
) -> None:
    """Scatter ``n`` semi-transparent distractor shapes and thin lines over ``canvas`` (in place).

    ``avoid``: optional ``H x W`` mask; clutter centres falling on it are resampled a few times.
    """
    h, w = canvas.shape[:2]
    names = list(colours) if colours is not None else list(COLOURS)
    for _ in range(n):
        for _try in range(4):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            if avoid is None or avoid[min(int(cy), h - 1), min(int(cx), w - 1)] < 0.5:
                break
        a = float(rng.uniform(*alpha))
        col = np.asarray(COLOURS[names[int(rng.integers(len(names)))]], dtype=np.float32)
        col = (
            col * 0.6 + canvas[min(int(cy), h - 1), min(int(cx), w - 1)] * 0.4
        )  # muted towards the background
        if rng.random() < 0.3:  # a thin line (twig / grass)
            ang = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(max_size, 3 * max_size)
            img = Image.new("L", (w, h), 0)
            ImageDraw.Draw(img).line(
                [(cx, cy), (cx + length * math.cos(ang), cy + length * math.sin(ang))],
                fill=255,
                width=max(1, int(round(min_size * 0.4))),
            )
            m = (np.asarray(img, dtype=np.float32) / 255.0)[..., None] * a
            canvas *= 1.0 - m
            canvas += col * m
        else:
            draw_object(
                canvas,
                (cx, cy),
                float(rng.uniform(min_size, max_size)),
                shapes[int(rng.integers(len(shapes)))],
                col,
                "solid",
                float(rng.uniform(0, 360)),
                alpha=a,
            )


def finish_image(
    canvas: np.ndarray,
    out_size: int,
    rng: np.random.Generator,
    *,
    noise: float = 0.03,
    brightness: float = 0.06,
    contrast: float = 0.08,
) -> Image.Image:
    """Global brightness/contrast jitter, anti-aliased reduction to ``out_size`` and Gaussian pixel noise.

    ``noise``, ``brightness``, ``contrast``: standard deviations in [0, 1] intensity units / relative units.
    """
    c = np.clip(canvas, 0.0, 1.0)
    # no mode argument: an H x W x 3 uint8 array is RGB, and Pillow >= 11.3 deprecates passing it
    img = Image.fromarray((c * 255.0 + 0.5).astype(np.uint8))
    if img.size != (out_size, out_size):
        img = img.resize((out_size, out_size), Image.BOX)
    x = np.asarray(img, dtype=np.float32) / 255.0
    gain = 1.0 + rng.normal(0.0, contrast)
    x = (x - 0.5) * gain + 0.5 + rng.normal(0.0, brightness)
    if noise > 0:
        x = x + rng.normal(0.0, noise, size=x.shape).astype(np.float32)
    return Image.fromarray((np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def image_grid(
    images: Sequence[Image.Image], cols: int, pad: int = 2, fill: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """Tile equally sized images into a grid (row-major) with ``pad`` pixels between them."""
    if not images:
        raise ValueError("image_grid: no images")
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), fill)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
