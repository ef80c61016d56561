"""A seeded procedural world of small RGB images: one coloured shape on a plain background.

Every image is described by five attributes (shape, colour, background, style, size) and a caption
built from single-CLIP-token words ("a small red star with stripes on a blue background"). The
reference model (``reference/train_reference.py``) is trained on it, the evaluator
(``reference/train_evaluator.py``) classifies it, and ``CONCEPTS`` are the personalization targets
used by the demo and the quality benchmark.

NumPy + Pillow only (no torch): the SDK demo and the benchmarks import this module.

Rendering is done at ``SUPERSAMPLE`` x the output resolution and box-downsampled, so edges are
anti-aliased; position, rotation and scale are jittered within the size class from the given rng.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RESOLUTION = 32
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "moon", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 30),
    "green": (40, 180, 60),
    "blue": (40, 90, 230),
    "purple": (140, 50, 190),
    "pink": (255, 120, 190),
    "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (235, 235, 235),
    "gray": (125, 125, 125),
    "brown": (110, 70, 35),
    "blue": (25, 45, 140),
    "green": (20, 100, 40),
}
STYLES = ("plain", "stripes", "dots", "outline")
SIZES = ("small", "large")

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "background": tuple(BACKGROUNDS),
    "style": STYLES,
    "size": SIZES,
}
ATTRIBUTE_NAMES: tuple[str, ...] = ("shape", "color", "background", "style", "size")

# Shape half-extent as a fraction of the image side, per size class (jittered uniformly within).
_SIZE_RANGE = {"small": (0.21, 0.26), "large": (0.36, 0.44)}
_MAX_ROTATION_DEG = 15.0
_COLOR_JITTER = 8  # +- per channel, for shape and background alike


@dataclass(frozen=True)
class Attributes:
    shape: str
    color: str
    background: str
    style: str
    size: str

    def __post_init__(self) -> None:
        for name in ATTRIBUTE_NAMES:
            value = getattr(self, name)
            if value not in ATTRIBUTES[name]:
                raise ValueError(f"unknown {name} {value!r}; one of {ATTRIBUTES[name]}")

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTE_NAMES}

    def replace(self, **changes: str) -> "Attributes":
        values = self.as_dict()
        values.update(changes)
        return Attributes(**values)


def compatible(attrs: Attributes) -> bool:
    """A shape never has its background's colour name (it would be invisible)."""
    return attrs.color != attrs.background


# --- geometry ------------------------------------------------------------------------------------

def _polygon(shape: str) -> list[np.ndarray]:
    """The shape as polygons in local coordinates ([-1, 1], y pointing down). The first polygon is
    filled; any further polygons are cut out of it (the moon)."""
    if shape == "circle":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        return [0.92 * np.stack([np.cos(t), np.sin(t)], 1)]
    if shape == "square":
        s = 0.8
        return [np.array([[-s, -s], [s, -s], [s, s], [-s, s]])]
    if shape == "triangle":
        return [np.array([[0.0, -1.0], [0.97, 0.72], [-0.97, 0.72]])]
    if shape == "diamond":
        return [np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]])]
    if shape == "star":
        points = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            points.append([r * math.cos(a), r * math.sin(a) + 0.08])
        return [np.array(points)]
    if shape == "cross":
        a, b = 0.3, 0.95
        return [np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b],
                          [-a, a], [-b, a], [-b, -a], [-a, -a]])]
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 80, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1)
        pts -= (pts.max(0) + pts.min(0)) / 2
        return [pts / np.abs(pts).max() * 0.98]
    if shape == "moon":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        outer = 0.95 * np.stack([np.cos(t), np.sin(t)], 1)
        inner = 0.8 * np.stack([np.cos(t), np.sin(t)], 1) + np.array([0.5, -0.2])
        return [outer, inner]
    raise ValueError(f"unknown shape {shape!r}")


def _jitter_color(rgb: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    jitter = rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, size=3)
    return np.clip(np.array(rgb, dtype=np.float64) + jitter, 0, 255)


def _pattern_color(rgb: np.ndarray) -> np.ndarray:
    """Stripes and dots: a dark shade of a light colour, a light tint of a dark one."""
    luminance = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255
    return rgb * 0.35 if luminance > 0.5 else rgb + 0.65 * (255 - rgb)


def render(attrs: Attributes, rng: np.random.Generator, resolution: int = RESOLUTION) -> Image.Image:
    """Draw ``attrs`` as a ``resolution`` x ``resolution`` RGB image; position, rotation and scale
    jitter come from ``rng``."""
    big = resolution * SUPERSAMPLE
    lo, hi = _SIZE_RANGE[attrs.size]
    radius = rng.uniform(lo, hi) * big
    angle = math.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    slack = max(0.0, big / 2 - radius - SUPERSAMPLE)
    cx = big / 2 + rng.uniform(-0.9, 0.9) * slack
    cy = big / 2 + rng.uniform(-0.9, 0.9) * slack
    color = _jitter_color(COLORS[attrs.color], rng)
    background = _jitter_color(BACKGROUNDS[attrs.background], rng)
    phase = rng.uniform(0, 1, size=2)

    cos, sin = math.cos(angle), math.sin(angle)
    rot = np.array([[cos, -sin], [sin, cos]])
    mask_img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask_img)
    for k, poly in enumerate(_polygon(attrs.shape)):
        pts = poly @ rot.T * radius + np.array([cx, cy])
        draw.polygon([tuple(p) for p in pts], fill=255 if k == 0 else 0)

    unit = big / 32.0  # pattern sizes are defined on a 32-pixel image
    if attrs.style == "outline":
        thickness = int(round(2.0 * unit))
        inner = mask_img.filter(ImageFilter.MinFilter(2 * thickness + 1))
        mask = (np.asarray(mask_img) > 127) & ~(np.asarray(inner) > 127)
    else:
        mask = np.asarray(mask_img) > 127

    out = np.empty((big, big, 3), dtype=np.float64)
    out[:] = background
    out[mask] = color
    if attrs.style in ("stripes", "dots"):
        ys, xs = np.mgrid[0:big, 0:big].astype(np.float64) + 0.5
        # pattern coordinates: centred on the shape and rotated with it
        u = (xs - cx) * cos + (ys - cy) * sin
        v = -(xs - cx) * sin + (ys - cy) * cos
        if attrs.style == "stripes":
            period = 5.0 * unit
            on = ((v / period + phase[0]) % 1.0) < 0.5
        else:
            period = 6.0 * unit
            du = ((u / period + phase[0]) % 1.0) - 0.5
            dv = ((v / period + phase[1]) % 1.0) - 0.5
            on = (du ** 2 + dv ** 2) * period ** 2 < (1.6 * unit) ** 2
        out[mask & on] = _pattern_color(color)
    small = out.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return Image.fromarray(np.clip(np.round(small), 0, 255).astype(np.uint8), "RGB")


# --- captions ------------------------------------------------------------------------------------

_STYLE_PHRASE = {"plain": "", "stripes": " with stripes", "dots": " with dots", "outline": " outline"}
_VOWEL_START = re.compile(r"^[aeiou]")


def _article(word: str) -> str:
    return "an" if _VOWEL_START.match(word) else "a"


def caption(attrs: Attributes) -> str:
    """The canonical caption, e.g. 'a small red star with stripes on a blue background'."""
    return f"a {attrs.size} {attrs.color} {attrs.shape}{_STYLE_PHRASE[attrs.style]} on a {attrs.background} background"


_PREFIXES = ("", "a photo of ", "a picture of ", "an image of ", "a rendering of ", "a drawing of ")


def random_caption(attrs: Attributes, rng: np.random.Generator, drop: float = 0.25,
                   named: tuple[str, ...] = ATTRIBUTE_NAMES) -> str:
    """A training caption: the canonical words, each attribute phrase except the shape dropped with
    probability ``drop``, with a random prefix ("a photo of ..."). Attributes not in ``named`` are never
    said (a poorer caption language over the same images); the random draws are the same either way."""
    keep = {name: rng.uniform() >= drop and name in named for name in ATTRIBUTE_NAMES}
    keep["shape"] = True
    words = []
    if keep["size"]:
        words.append(attrs.size)
    if keep["color"]:
        words.append(attrs.color)
    noun = " ".join(words + [attrs.shape])
    text = f"{_article(noun)} {noun}"
    if keep["style"]:
        text += _STYLE_PHRASE[attrs.style]
    if keep["background"]:
        text += f" on {_article(attrs.background)} {attrs.background} background"
    prefix = _PREFIXES[int(rng.integers(len(_PREFIXES)))]
    return prefix + text


def sample_attributes(rng: np.random.Generator) -> Attributes:
    """Uniform over the attribute values, redrawn until the colour differs from the background's."""
    while True:
        attrs = Attributes(**{name: ATTRIBUTES[name][int(rng.integers(len(ATTRIBUTES[name])))]
                              for name in ATTRIBUTE_NAMES})
        if compatible(attrs):
            return attrs


def dataset(n: int, seed: int, resolution: int = RESOLUTION) -> Iterator[tuple[Image.Image, str, Attributes]]:
    """``n`` deterministic (image, canonical caption, attributes) triples."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        attrs = sample_attributes(rng)
        yield render(attrs, rng, resolution), caption(attrs), attrs


# --- concepts ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Concept:
    name: str  # the placeholder token, e.g. "<striped-star>"
    attributes: Attributes
    initializer: str  # one CLIP token, close to the concept but not equal to it
    held_out_prompts: tuple[str, ...]  # "{}" stands for the token; each changes one attribute

    @property
    def token(self) -> str:
        return self.name


def _edit(attr: str, value: str) -> str:
    if attr == "background":
        return f"a photo of {{}} on {_article(value)} {value} background"
    if attr == "style":
        return {"plain": "a photo of a plain {}", "stripes": "a photo of {} with stripes",
                "dots": "a photo of {} with dots", "outline": "a photo of {} outline"}[value]
    if attr == "color":
        return f"a photo of {_article(value)} {value} {{}}"
    if attr == "size":
        return f"a photo of {_article(value)} {value} {{}}"
    raise ValueError(f"no held-out edit for attribute {attr!r}")


def _concept(name: str, initializer: str, edits: tuple[tuple[str, str], ...], **attrs: str) -> Concept:
    attributes = Attributes(**attrs)
    prompts = []
    for attr, value in edits:
        if getattr(attributes, attr) == value:
            raise ValueError(f"{name}: held-out edit {attr}={value} does not change the concept")
        if not compatible(attributes.replace(**{attr: value})):
            raise ValueError(f"{name}: held-out edit {attr}={value} gives an invisible shape")
        prompts.append(_edit(attr, value))
    return Concept(name, attributes, initializer, tuple(prompts))


CONCEPTS: tuple[Concept, ...] = (
    _concept("<striped-star>", "star",
             (("background", "black"), ("background", "green"), ("style", "dots"), ("color", "red"), ("size", "large")),
             shape="star", color="yellow", background="blue", style="stripes", size="small"),
    _concept("<dotted-heart>", "heart",
             (("background", "white"), ("background", "blue"), ("style", "plain"), ("color", "orange"), ("size", "small")),
             shape="heart", color="pink", background="black", style="dots", size="large"),
    _concept("<orange-moon>", "moon",
             (("background", "blue"), ("background", "white"), ("style", "stripes"), ("color", "white"), ("size", "large")),
             shape="moon", color="orange", background="gray", style="plain", size="small"),
    _concept("<green-cross>", "cross",
             (("background", "black"), ("background", "brown"), ("style", "plain"), ("color", "blue"), ("size", "small")),
             shape="cross", color="green", background="white", style="outline", size="large"),
    _concept("<purple-diamond>", "diamond",
             (("background", "black"), ("background", "green"), ("style", "outline"), ("color", "yellow"), ("size", "large")),
             shape="diamond", color="purple", background="white", style="stripes", size="small"),
    _concept("<blue-circle>", "circle",
             (("background", "gray"), ("background", "white"), ("style", "stripes"), ("color", "red"), ("size", "small")),
             shape="circle", color="blue", background="brown", style="dots", size="large"),
    _concept("<red-triangle>", "triangle",
             (("background", "gray"), ("background", "blue"), ("style", "dots"), ("color", "green"), ("size", "large")),
             shape="triangle", color="red", background="black", style="outline", size="small"),
    _concept("<white-square>", "square",
             (("background", "black"), ("background", "brown"), ("style", "dots"), ("color", "pink"), ("size", "small")),
             shape="square", color="white", background="green", style="stripes", size="large"),
)

_BACKGROUND_RE = re.compile(r"\bon (?:a|an) (\w+) background\b")


def prompt_target(concept: Concept, prompt: str) -> dict[str, str]:
    """The attributes an image generated from ``prompt`` (a held-out prompt with "{}" or the token)
    should have: the attribute the prompt names changed, the rest the concept's."""
    target = concept.attributes.as_dict()
    text = prompt.replace("{}", " ").replace(concept.name, " ")
    match = _BACKGROUND_RE.search(text)
    if match and match.group(1) in BACKGROUNDS:
        target["background"] = match.group(1)
        text = text[: match.start()] + text[match.end():]
    words = re.findall(r"[a-z]+", text.lower())
    for word in words:
        if word in COLORS:
            target["color"] = word
        elif word in SIZES:
            target["size"] = word
        elif word in SHAPES:
            target["shape"] = word
        elif word in ("stripes", "striped"):
            target["style"] = "stripes"
        elif word in ("dots", "dotted"):
            target["style"] = "dots"
        elif word in ("outline", "plain"):
            target["style"] = word
    return target


def concept_images(concept: Concept, n: int = 5, seed: int = 0, resolution: int = RESOLUTION) -> list[Image.Image]:
    """``n`` reference photos of the concept: same attributes, varied position/rotation/scale."""
    rng = np.random.default_rng([seed, 0xC0C0])
    return [render(concept.attributes, rng, resolution) for _ in range(n)]


def concept_by_name(name: str) -> Concept:
    for concept in CONCEPTS:
        if concept.name == name or concept.name.strip("<>") == name:
            return concept
    raise KeyError(f"no concept {name!r}; one of {[c.name for c in CONCEPTS]}")


__all__ = [
    "ATTRIBUTES", "ATTRIBUTE_NAMES", "Attributes", "BACKGROUNDS", "COLORS", "CONCEPTS", "Concept", "RESOLUTION",
    "SHAPES", "SIZES", "STYLES", "caption", "compatible", "concept_by_name", "concept_images", "dataset",
    "prompt_target", "random_caption", "render", "sample_attributes",
]
