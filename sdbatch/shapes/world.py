"""The shapes world: procedural scenes, their pixels and their captions (numpy + Pillow).

Why it exists: a tiny text-to-image model can only learn what a tiny world holds, and its
pictures can only be judged automatically if the world is simple enough to read back from
pixels. One shape (circle, square, triangle) in one of six colours on a white, black or gray
background, captioned "a red circle on a white background".

Everything is a pure function of a seed: ``sample_scene(np.random.default_rng(seed))`` and
``batch(seed, index, n)`` give the same scenes and pixels on every machine (Pillow's polygon
fill is deterministic), which is what makes training resumable and evaluation repeatable.

The six colours are spread around the hue circle (red, yellow, green, cyan, blue, magenta,
60 degrees apart) rather than red/orange/yellow/...: in the prototype most colour errors were
between neighbouring hues, and every pair here is at least ~58 CIELAB units apart (the
backgrounds are greys, never a shape colour, so "white" in a caption always means the
background).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (240, 210, 0),
    "green": (20, 160, 40),
    "cyan": (0, 190, 220),
    "blue": (30, 60, 230),
    "magenta": (210, 30, 180),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Shape sizes (bounding-box side, as a fraction of the canvas) and the empty margin kept
# between the shape and the canvas edge, so the judge can read the background off the border.
SIZE_RANGE = (0.38, 0.66)
MARGIN = 0.1
SUPERSAMPLE = 8  # drawn at 8x and box-filtered down: exact-area anti-aliasing
CAPTION_STYLES = ("plain", "tags")

Combo = tuple[str, str, str]  # (colour, shape, background)


def _heldout() -> frozenset[Combo]:
    """One colour per (shape, background) pair, a Latin-square pattern: 9 of 54 combinations.

    colour index = (shape + 2 * background) mod 6 keeps every (colour, shape),
    (colour, background) and (shape, background) pair in training (tested), so a held-out
    prompt asks for a new *combination* of things the model has seen, never a new word.
    """
    colours = list(COLOURS)
    return frozenset(
        (colours[(s + 2 * b) % len(colours)], shape, bg)
        for (s, shape), (b, bg) in itertools.product(enumerate(SHAPES), enumerate(BACKGROUNDS))
    )


HELDOUT: frozenset[Combo] = _heldout()
ALL_COMBOS: tuple[Combo, ...] = tuple(itertools.product(COLOURS, SHAPES, BACKGROUNDS))
TRAIN_COMBOS: tuple[Combo, ...] = tuple(c for c in ALL_COMBOS if c not in HELDOUT)
HELDOUT_COMBOS: tuple[Combo, ...] = tuple(c for c in ALL_COMBOS if c in HELDOUT)
SPLITS = {"train": TRAIN_COMBOS, "heldout": HELDOUT_COMBOS, "all": ALL_COMBOS}


@dataclass(frozen=True)
class Scene:
    """One shape on a plain background; geometry in canvas fractions, so any resolution works.

    ``size`` is the side of the shape's bounding box; ``x``, ``y`` its centre (y down).
    """

    shape: str
    colour: str
    background: str
    size: float = 0.5
    x: float = 0.5
    y: float = 0.5

    @property
    def combo(self) -> Combo:
        return (self.colour, self.shape, self.background)


def sample_scene(rng: np.random.Generator, split: str = "train") -> Scene:
    """A random scene whose (colour, shape, background) lies in ``split``.

    Combinations are drawn uniformly (not colour, shape and background independently), so
    the held-out holes do not skew the marginals more than they must.
    """
    combos = SPLITS[split]
    colour, shape, background = combos[int(rng.integers(len(combos)))]
    size = float(rng.uniform(*SIZE_RANGE))
    lo, hi = MARGIN + size / 2, 1 - MARGIN - size / 2
    x, y = (float(v) for v in rng.uniform(lo, hi, size=2))
    return Scene(shape, colour, background, size, x, y)


def scene_for(combo: Combo, rng: np.random.Generator) -> Scene:
    """A scene with a given combination and random size/position (evaluation references)."""
    colour, shape, background = combo
    size = float(rng.uniform(*SIZE_RANGE))
    lo, hi = MARGIN + size / 2, 1 - MARGIN - size / 2
    x, y = (float(v) for v in rng.uniform(lo, hi, size=2))
    return Scene(shape, colour, background, size, x, y)


def outline(scene: Scene, side: float) -> list[tuple[float, float]] | tuple[float, ...]:
    """Pixel geometry on a ``side``-pixel canvas: a bbox (circle, square) or polygon points.

    The square's side is sqrt(pi)/2 of the circle's diameter (equal areas), so size alone
    never tells a circle from a square; the triangle is isosceles, apex up, width = height.
    """
    cx, cy, s = scene.x * side, scene.y * side, scene.size * side
    if scene.shape == "circle":
        return (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
    if scene.shape == "square":
        h = s * 0.886 / 2
        return (cx - h, cy - h, cx + h, cy + h)
    if scene.shape == "triangle":
        return [(cx, cy - s / 2), (cx + s / 2, cy + s / 2), (cx - s / 2, cy + s / 2)]
    raise ValueError(f"unknown shape {scene.shape!r}; known: {', '.join(SHAPES)}")


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """(size, size, 3) uint8 pixels, anti-aliased by drawing at 8x and box-filtering down."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    fill = COLOURS[scene.colour]
    geom = outline(scene, big)
    if scene.shape == "circle":
        draw.ellipse(geom, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(geom, fill=fill)
    else:
        draw.polygon(geom, fill=fill)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def caption(scene: Scene, style: str = "plain") -> str:
    """Plain English ("a red circle on a white background") or tags ("red circle, white
    background", how sdbatch users write prompts); training mixes both, evaluation uses plain."""
    if style == "plain":
        return f"a {scene.colour} {scene.shape} on a {scene.background} background"
    if style == "tags":
        return f"{scene.colour} {scene.shape}, {scene.background} background"
    raise ValueError(f"unknown caption style {style!r}; known: {', '.join(CAPTION_STYLES)}")


def vocabulary() -> list[str]:
    """Every word (and the comma) a caption can contain, in a stable order."""
    words = ["a", "on", "background", ","]
    return words + list(COLOURS) + list(SHAPES) + list(BACKGROUNDS)


def batch(
    seed: int, index: int, n: int, size: int = 32, split: str = "train"
) -> tuple[np.ndarray, list[Scene]]:
    """Batch ``index`` of the infinite stream for ``seed``: (n, size, size, 3) uint8 + scenes.

    Seeded by (seed, index) rather than by a running generator, so batch k is the same
    whether training ran straight through or resumed at k.
    """
    rng = np.random.default_rng([seed, index])
    scenes = [sample_scene(rng, split) for _ in range(n)]
    return np.stack([render(s, size) for s in scenes]), scenes
