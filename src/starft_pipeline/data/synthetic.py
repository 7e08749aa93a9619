"""A procedural synthetic world: foreground shapes on confounding textured backgrounds.

It is the project's embedded default data set, a miniature of the Waterbirds / ImageNet setting
(docs/miniature-world.md): every object can appear on every background, captions name both concepts, and
group-shift data sets tie each class to a background with a chosen correlation, written in the
Waterbirds release layout (docs/evaluation-conventions.md) so the same loaders read the real and the synthetic data.

Plain numpy + Pillow; no Kedro, no torch.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from starft_pipeline.core.io_utils import atomic_write_json, atomic_write_text, fingerprint

# Bump when the pixels or the layout change, so cached data sets are regenerated.
RENDER_VERSION = 1

OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")
BACKGROUNDS: tuple[str, ...] = ("grass", "water", "sand", "snow", "brick", "forest")
# Waterbirds' binary "place": everything but water counts as land.
WATER_BACKGROUNDS: frozenset[str] = frozenset({"water"})
LAND_BACKGROUNDS: frozenset[str] = frozenset(b for b in BACKGROUNDS if b not in WATER_BACKGROUNDS)

# Saturated colours that no background texture comes near (greens, blues, tans, whites, brick red
# and browns are all taken), so every object stays visible on every background (docs/miniature-world.md).
# By default the colour is drawn independently of class and background and carries no label
# information; a GroupShiftSpec's ``colour_ids`` can fix it per class (compound classes, "magenta circle").
FOREGROUND_PALETTE: tuple[tuple[int, int, int], ...] = (
    (235, 40, 200),  # magenta
    (250, 225, 30),  # yellow
    (40, 225, 235),  # cyan
    (255, 130, 20),  # orange
    (150, 60, 245),  # violet
)
COLOURS: tuple[str, ...] = ("magenta", "yellow", "cyan", "orange", "violet")  # the palette's names, in order
assert len(COLOURS) == len(FOREGROUND_PALETTE)

SUPERSAMPLE = 4  # shapes are drawn at 4x and box-downsampled: cheap anti-aliasing
SCALE_RANGE = (0.38, 0.65)  # object extent as a fraction of the image side

SPLITS: tuple[str, ...] = ("train", "val", "test")  # split code = position (Waterbirds: 0/1/2)
METADATA_COLUMNS: tuple[str, ...] = ("img_id", "img_filename", "y", "split", "place", "place_filename")

# --------------------------------------------------------------------------------------------
# Backgrounds: each texture is a few vectorised numpy operations on the image grid, in relative
# coordinates so the pattern looks the same at any image size.
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1) as (y, x) arrays of shape (size, size)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-ish noise: a coarse random grid upsampled bicubically (blotches, streaks)."""
    coarse = rng.standard_normal((cells[0], cells[1])).astype(np.float32)
    img = Image.fromarray(coarse).resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _tint(base: Sequence[float], shading: np.ndarray) -> np.ndarray:
    """Broadcast an RGB base colour over a (H, W) shading offset -> (H, W, 3)."""
    return np.asarray(base, dtype=np.float32)[None, None, :] + shading[:, :, None]


def _grass(rng: np.random.Generator, size: int) -> np.ndarray:
    # Blades: noise stretched vertically; patches: coarse blotches mixing in a yellower green.
    blades = _smooth_noise(rng, (size, size), (max(2, size // 8), size))
    patches = _smooth_noise(rng, (size, size), (4, 4))
    img = _tint((70, 145, 45), 22 * blades)
    img += patches[:, :, None] * np.array([10, 8, -4], dtype=np.float32)
    return img


def _water(rng: np.random.Generator, size: int) -> np.ndarray:
    # Horizontal waves whose crests wobble sideways; crests lighter and slightly greener.
    yy, xx = _grid(size)
    waves = rng.uniform(3.5, 6.0)
    wobble = rng.uniform(0.04, 0.1) * np.sin(2 * np.pi * (rng.uniform(1, 2.5) * xx + rng.uniform()))
    phase = 2 * np.pi * (waves * (yy + wobble) + rng.uniform())
    crest = np.sin(phase)
    img = _tint((35, 90, 170), 14 * crest)
    img += (np.clip(crest - 0.6, 0, None) / 0.4)[:, :, None] * np.array([30, 40, 35], dtype=np.float32)
    return img


def _sand(rng: np.random.Generator, size: int) -> np.ndarray:
    # Faint diagonal ripples plus fine grain.
    yy, xx = _grid(size)
    angle = rng.uniform(-0.6, 0.6)
    along = np.cos(angle) * yy + np.sin(angle) * xx
    ripples = np.sin(2 * np.pi * (rng.uniform(5, 8) * along + rng.uniform()))
    grain = rng.standard_normal((size, size)).astype(np.float32)
    return _tint((212, 186, 130), 10 * ripples + 9 * grain)


def _snow(rng: np.random.Generator, size: int) -> np.ndarray:
    # Soft bluish drifts and sparse sparkles on near-white.
    drifts = np.clip(_smooth_noise(rng, (size, size), (3, 3)), -1.5, 1.5)
    img = _tint((236, 239, 247), np.zeros((size, size), np.float32))
    img -= np.clip(drifts, 0, None)[:, :, None] * np.array([22, 16, 4], dtype=np.float32)
    sparkle = rng.random((size, size)) < 0.03
    img[sparkle] = 252
    return img


def _brick(rng: np.random.Generator, size: int) -> np.ndarray:
    # Running-bond brickwork: rows offset by half a brick, per-brick colour, light mortar lines.
    yy, xx = _grid(size)
    rows = rng.uniform(4, 6)
    row_pos = yy * rows + rng.uniform()
    row = np.floor(row_pos).astype(np.int64)
    col_pos = xx * rows / 2 + 0.5 * (row % 2) + rng.uniform()
    col = np.floor(col_pos).astype(np.int64)
    mortar = (row_pos - row < 0.16) | (col_pos - col < 0.08)
    shade = rng.normal(0, 12, size=(int(rows) + 3, int(rows / 2) + 4)).astype(np.float32)
    img = _tint((160, 62, 42), shade[row, col] + 6 * rng.standard_normal((size, size)).astype(np.float32))
    img[mortar] = np.array([190, 182, 170], dtype=np.float32) + 6 * rng.standard_normal((int(mortar.sum()), 1))
    return img


def _forest(rng: np.random.Generator, size: int) -> np.ndarray:
    # Dark blotchy canopy with a few vertical brown trunks.
    _, xx = _grid(size)
    canopy = _smooth_noise(rng, (size, size), (6, 6))
    img = _tint((32, 72, 38), np.zeros((size, size), np.float32))
    img += canopy[:, :, None] * np.array([10, 18, 8], dtype=np.float32)
    for _ in range(int(rng.integers(2, 5))):
        centre, half_width = rng.uniform(0, 1), rng.uniform(0.025, 0.05)
        trunk = np.clip(1.5 - np.abs(xx - centre) / half_width, 0, 1)[:, :, None]
        img = img * (1 - trunk) + trunk * np.array([80, 56, 36], dtype=np.float32)
    return img


_BACKGROUND_RENDERERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "grass": _grass,
    "water": _water,
    "sand": _sand,
    "snow": _snow,
    "brick": _brick,
    "forest": _forest,
}
assert tuple(_BACKGROUND_RENDERERS) == BACKGROUNDS  # internal invariant, not a user error


def _check_id(value: int, names: Sequence[str], what: str) -> int:
    if not 0 <= int(value) < len(names):
        raise ValueError(f"{what} must be in [0, {len(names)}), got {value}")
    return int(value)


def _background_float(background_id: int, rng: np.random.Generator, image_size: int) -> np.ndarray:
    name = BACKGROUNDS[_check_id(background_id, BACKGROUNDS, "background_id")]
    return _BACKGROUND_RENDERERS[name](rng, image_size)


def render_background(background_id: int, rng: np.random.Generator, image_size: int = 32) -> np.ndarray:
    """Background only, (H, W, 3) uint8; consumes ``rng`` exactly as ``render_image`` does first."""
    return _to_uint8(_background_float(background_id, rng, image_size))


# --------------------------------------------------------------------------------------------
# Foregrounds: a shape mask drawn at SUPERSAMPLE x the image size, box-downsampled into an
# anti-aliased alpha, then a flat palette colour with mild shading is composited through it.
# Every shape fits inside the unit circle, so any rotation keeps it inside the image.
# --------------------------------------------------------------------------------------------


def _regular_star(points: int, inner: float) -> np.ndarray:
    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), -radii * np.sin(angles)], axis=1)


_SQUARE = np.array([[-0.7, -0.7], [0.7, -0.7], [0.7, 0.7], [-0.7, 0.7]])
_TRIANGLE = _regular_star(3, 0.5)[::2]  # an equilateral triangle inscribed in the unit circle
_CROSS_ARM, _CROSS_LEN = 0.3, 0.95
_CROSS = np.array(
    [
        [-_CROSS_ARM, -_CROSS_LEN], [_CROSS_ARM, -_CROSS_LEN], [_CROSS_ARM, -_CROSS_ARM],
        [_CROSS_LEN, -_CROSS_ARM], [_CROSS_LEN, _CROSS_ARM], [_CROSS_ARM, _CROSS_ARM],
        [_CROSS_ARM, _CROSS_LEN], [-_CROSS_ARM, _CROSS_LEN], [-_CROSS_ARM, _CROSS_ARM],
        [-_CROSS_LEN, _CROSS_ARM], [-_CROSS_LEN, -_CROSS_ARM], [-_CROSS_ARM, -_CROSS_ARM],
    ]
)  # fmt: skip
_STAR = _regular_star(5, 0.45)

# Polygon outline (None for round shapes) and the rotation range in degrees. Square and cross
# only tilt a little, so a square never turns into a diamond nor a plus into an "x".
_SHAPES: dict[str, tuple[np.ndarray | None, float]] = {
    "circle": (None, 0.0),
    "square": (_SQUARE, 20.0),
    "triangle": (_TRIANGLE, 180.0),
    "cross": (_CROSS, 20.0),
    "ring": (None, 0.0),
    "star": (_STAR, 180.0),
}
assert tuple(_SHAPES) == OBJECTS


def _shape_alpha(object_id: int, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], shape (H, W), at a random position, scale and rotation."""
    name = OBJECTS[_check_id(object_id, OBJECTS, "object_id")]
    outline, max_degrees = _SHAPES[name]
    big = image_size * SUPERSAMPLE
    radius = 0.5 * big * rng.uniform(*SCALE_RANGE)
    cx, cy = rng.uniform(radius, big - radius, size=2)
    theta = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    if name == "circle":
        r = 0.9 * radius
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif name == "ring":
        outer, inner = 0.95 * radius, 0.5 * radius
        draw.ellipse((cx - outer, cy - outer, cx + outer, cy + outer), fill=255)
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        assert outline is not None
        rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        points = outline @ rotation.T * radius + np.array([cx, cy])
        draw.polygon([tuple(p) for p in points.tolist()], fill=255)
    small = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _foreground_colour(
    rng: np.random.Generator, image_size: int, colour_id: int | None = None
) -> tuple[np.ndarray, int]:
    """Palette colour with a little jitter and a linear light gradient, (H, W, 3) float, and its palette id.

    A random palette entry unless ``colour_id`` fixes it; the draw happens either way, so a fixed
    colour consumes ``rng`` exactly as a random one (same size, position, jitter and light).
    """
    drawn = int(rng.integers(len(FOREGROUND_PALETTE)))
    colour_id = drawn if colour_id is None else _check_id(colour_id, COLOURS, "colour_id")
    base = np.asarray(FOREGROUND_PALETTE[colour_id], dtype=np.float32)
    base = base + rng.uniform(-12, 12, size=3).astype(np.float32)
    yy, xx = _grid(image_size)
    direction = rng.uniform(0, 2 * np.pi)
    light = 1.0 + 0.12 * ((xx - 0.5) * np.cos(direction) + (yy - 0.5) * np.sin(direction))
    return base[None, None, :] * light[:, :, None], colour_id


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _render(
    object_id: int, background_id: int, rng: np.random.Generator, image_size: int, colour_id: int | None
) -> tuple[np.ndarray, int]:
    """One image and the palette id of its object's colour."""
    background = _background_float(background_id, rng, image_size)
    alpha = _shape_alpha(object_id, rng, image_size)[:, :, None]
    colour, colour_id = _foreground_colour(rng, image_size, colour_id)
    return _to_uint8(background * (1.0 - alpha) + colour * alpha), colour_id


def render_image(
    object_id: int,
    background_id: int,
    rng: np.random.Generator,
    image_size: int = 32,
    colour_id: int | None = None,
) -> np.ndarray:
    """One object on one background, (image_size, image_size, 3) uint8; a random colour unless ``colour_id``.

    The background is drawn from ``rng`` first, so ``render_background`` with a same-seeded
    generator returns exactly this image's background.
    """
    return _render(object_id, background_id, rng, image_size, colour_id)[0]


def render_images(
    object_ids: Sequence[int] | np.ndarray,
    background_ids: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    image_size: int = 32,
) -> np.ndarray:
    """Render pairs in order from one generator, (N, H, W, 3) uint8."""
    return _render_with_colours(object_ids, background_ids, rng, image_size)[0]


def _render_with_colours(
    object_ids: Sequence[int] | np.ndarray,
    background_ids: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    image_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render_images` plus the (random) colour each object got, (N,) int64 palette ids."""
    if len(object_ids) != len(background_ids):
        raise ValueError(f"object_ids and background_ids differ in length: {len(object_ids)} vs {len(background_ids)}")
    out = np.empty((len(object_ids), image_size, image_size, 3), dtype=np.uint8)
    colours = np.empty(len(object_ids), dtype=np.int64)
    for i, (obj, bg) in enumerate(zip(object_ids, background_ids, strict=True)):
        out[i], colours[i] = _render(int(obj), int(bg), rng, image_size, None)
    return out, colours


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

# Every object and background name starts with a consonant, so "a {object}" always reads right.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {object} on {background}.",
    "a {object} in front of a {background} background.",
    "{object}, {background} behind it.",
    "a {object} on a {background} background.",
    "a picture of a {object} over {background}.",
    "a {object} shape against {background}.",
    "an image of a {object} with {background} in the background.",
    "a {background} scene with a {object}.",
    "{background} texture with a {object} on top.",
    "a rendering of a {object} surrounded by {background}.",
)
OBJECT_CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {object}.",
    "a {object}.",
    "a picture of a {object} shape.",
    "an image of a {object}.",
)
BACKGROUND_CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {background}.",
    "{background} texture.",
    "a {background} background.",
    "a picture of {background}.",
)
# Colour words (the colour world's teacher, pretrain.colour_prob > 0): the colour alone, or the
# colour in front of the object in any object phrasing ("a magenta circle on grass.").
COLOUR_CAPTION_TEMPLATES: tuple[str, ...] = (
    "{colour}.",
    "a {colour} shape.",
    "something {colour}.",
    "the colour {colour}.",
)


class Caption(NamedTuple):
    """A caption and the concepts it names (None: not named), so a batch knows which images it describes."""

    text: str
    object_id: int | None
    background_id: int | None
    colour_id: int | None

    def describes(self, object_id: int, background_id: int, colour_id: int) -> bool:
        """True when every concept the caption names is the image's (an image it is a true caption of)."""
        named = ((self.object_id, object_id), (self.background_id, background_id), (self.colour_id, colour_id))
        return all(mine is None or mine == theirs for mine, theirs in named)


def describe(
    object_id: int,
    background_id: int,
    rng: np.random.Generator,
    single_concept_prob: float = 0.2,
    colour_id: int | None = None,
    colour_prob: float = 0.0,
) -> Caption:
    """A caption for the pair and what it names; with ``single_concept_prob`` only one concept (either, 50/50).

    With a ``colour_id`` and ``colour_prob > 0`` the object is named with its colour ("magenta
    circle") with probability ``colour_prob``, and a single-concept caption names the object, the
    background or the colour (1/3 each). Without them ``rng`` is consumed as it always was.
    """
    obj = OBJECTS[_check_id(object_id, OBJECTS, "object_id")]
    bg = BACKGROUNDS[_check_id(background_id, BACKGROUNDS, "background_id")]
    if colour_id is None or colour_prob <= 0.0:
        if rng.random() < single_concept_prob:
            pool = OBJECT_CAPTION_TEMPLATES if rng.random() < 0.5 else BACKGROUND_CAPTION_TEMPLATES
        else:
            pool = CAPTION_TEMPLATES
        return _fill(pool[int(rng.integers(len(pool)))], obj, bg, (object_id, background_id, None))
    colour = COLOURS[_check_id(colour_id, COLOURS, "colour_id")]
    coloured_object = rng.random() < colour_prob
    if coloured_object:
        obj = f"{colour} {obj}"
    if rng.random() < single_concept_prob:
        pools = (OBJECT_CAPTION_TEMPLATES, BACKGROUND_CAPTION_TEMPLATES, COLOUR_CAPTION_TEMPLATES)
        pool = pools[int(rng.integers(len(pools)))]
    else:
        pool = CAPTION_TEMPLATES
    ids = (object_id, background_id, colour_id)
    return _fill(pool[int(rng.integers(len(pool)))], obj, bg, ids, colour, coloured_object)


def _fill(
    template: str,
    obj: str,
    bg: str,
    ids: tuple[int, int, int | None],
    colour: str | None = None,
    coloured_object: bool = False,
) -> Caption:
    """The template filled in, keeping the ids of the concepts it names: its slots, and the colour when it
    has a ``{colour}`` slot or an ``{object}`` slot holding the coloured object ("a magenta circle.")."""
    object_id, background_id, colour_id = ids
    names_object = "{object}" in template
    names_colour = "{colour}" in template or (names_object and coloured_object)
    return Caption(
        template.format(object=obj, background=bg, colour=colour),
        object_id if names_object else None,
        background_id if "{background}" in template else None,
        colour_id if names_colour else None,
    )


# --------------------------------------------------------------------------------------------
# Pretraining corpus
# --------------------------------------------------------------------------------------------


@dataclass
class PretrainingCorpus:
    """Images with captions for contrastive pretraining, balanced over object x background pairs."""

    images: np.ndarray  # (N, H, W, 3) uint8
    captions: list[str]
    object_ids: np.ndarray  # (N,) int64
    background_ids: np.ndarray  # (N,) int64
    colour_ids: np.ndarray  # (N,) int64, the palette entry each object was drawn in (index into COLOURS)

    def __len__(self) -> int:
        return len(self.captions)


def pretraining_corpus(n: int, seed: int, image_size: int = 32, single_concept_prob: float = 0.2) -> PretrainingCorpus:
    """``n`` rendered, captioned pairs; every object x background pair appears n // 36 or n // 36 + 1 times.

    Layout, pixels and captions come from independent child streams of ``seed``, so e.g. a new
    caption phrasing does not change the images.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    layout_ss, pixel_ss, caption_ss = np.random.SeedSequence([int(seed), RENDER_VERSION]).spawn(3)
    n_pairs = len(OBJECTS) * len(BACKGROUNDS)
    pair = np.random.default_rng(layout_ss).permutation(np.arange(n) % n_pairs)
    object_ids, background_ids = np.divmod(pair, len(BACKGROUNDS))
    images, colour_ids = _render_with_colours(object_ids, background_ids, np.random.default_rng(pixel_ss), image_size)
    caption_rng = np.random.default_rng(caption_ss)
    captions = [
        describe(int(o), int(b), caption_rng, single_concept_prob).text for o, b in zip(object_ids, background_ids)
    ]
    return PretrainingCorpus(images, captions, object_ids.astype(np.int64), background_ids.astype(np.int64), colour_ids)


# --------------------------------------------------------------------------------------------
# Group-shift data sets (Waterbirds release layout)
# --------------------------------------------------------------------------------------------


def _ids_tuple(field: str, value: Any, names: Sequence[str], kind: str, distinct: bool = True) -> tuple[int, ...]:
    """Coerce ids or names (e.g. from YAML) to a tuple of valid ids (``distinct``: no repeats), naming the field on error."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"GroupShiftSpec.{field} must be a sequence of {kind} ids or names, got {value!r}")
    if len(value) == 0:
        raise ValueError(f"GroupShiftSpec.{field} must not be empty")
    ids: list[int] = []
    for item in value:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"GroupShiftSpec.{field}: unknown {kind} {item!r}; choose from {list(names)}")
            ids.append(names.index(item))
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) and 0 <= int(item) < len(names):
            ids.append(int(item))
        else:
            raise ValueError(f"GroupShiftSpec.{field}: {item!r} is not a {kind} id in [0, {len(names)})")
    if distinct and len(set(ids)) != len(ids):
        raise ValueError(f"GroupShiftSpec.{field} has duplicates: {list(value)}")
    return tuple(ids)


def _colour_ids_tuple(value: Any, n_classes: int) -> tuple[int | None, ...] | None:
    """``colour_ids``: None, or one colour (name or id) or None (random) per class."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n_classes:
        raise ValueError(
            f"GroupShiftSpec.colour_ids must be null or a list of {n_classes} entries (one per class in "
            f"object_ids: a colour of {list(COLOURS)}, its id, or null for a random colour), got {value!r}"
        )
    fixed = [(k, item) for k, item in enumerate(value) if item is not None]
    ids = _ids_tuple("colour_ids", [item for _, item in fixed], COLOURS, "colour", distinct=False) if fixed else ()
    colours: list[int | None] = [None] * n_classes
    for (k, _), colour_id in zip(fixed, ids, strict=True):
        colours[k] = colour_id
    return tuple(colours)


@dataclass(frozen=True)
class GroupShiftSpec:
    """A classification task whose classes co-occur with backgrounds ("places") at a set correlation.

    Class ``y`` is the position in ``object_ids``, place the position in ``background_ids``. In
    train, class ``y`` sits on place ``y % n_places`` for a ``correlation`` share of its images and
    on the other places evenly otherwise; val and test are balanced over all (y, place) groups.
    Ids may be given as names (``"circle"``); they are stored as ids.

    ``colour_ids`` (optional, one entry per class) fixes a class's colour: compound classes such as
    "magenta circle", where a shape may repeat in ``object_ids`` with different colours. None (the
    default, or a None entry) keeps the random colour, and a spec without colours fingerprints and
    renders exactly as before the field existed.
    """

    name: str
    object_ids: tuple[int, ...]
    background_ids: tuple[int, ...]
    train_per_class: int
    val_per_group: int
    test_per_group: int
    correlation: float = 0.95
    seed: int = 0
    image_size: int = 32
    colour_ids: tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"GroupShiftSpec.name must be a non-empty string, got {self.name!r}")
        # frozen: normalise through object.__setattr__ (YAML gives lists and may give names)
        object_ids = _ids_tuple("object_ids", self.object_ids, OBJECTS, "object", distinct=False)
        object.__setattr__(self, "object_ids", object_ids)
        object.__setattr__(self, "colour_ids", _colour_ids_tuple(self.colour_ids, len(object_ids)))
        classes = list(zip(object_ids, self.colour_ids or [None] * len(object_ids), strict=True))
        if len(set(classes)) != len(classes):
            raise ValueError(
                f"GroupShiftSpec.object_ids has duplicate classes {self.class_names}: a shape may repeat "
                "only with a different colour in colour_ids"
            )
        object.__setattr__(
            self, "background_ids", _ids_tuple("background_ids", self.background_ids, BACKGROUNDS, "background")
        )
        for field in ("train_per_class", "val_per_group", "test_per_group"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"GroupShiftSpec.{field} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, field, int(value))
        if not isinstance(self.correlation, (int, float)) or not 0.0 <= float(self.correlation) <= 1.0:
            raise ValueError(f"GroupShiftSpec.correlation must be in [0, 1], got {self.correlation!r}")
        object.__setattr__(self, "correlation", float(self.correlation))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"GroupShiftSpec.seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
            raise ValueError(f"GroupShiftSpec.image_size must be an integer >= 8, got {self.image_size!r}")
        object.__setattr__(self, "image_size", int(self.image_size))

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> GroupShiftSpec:
        """Build from a parameters mapping; unknown keys are an error naming them."""
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"GroupShiftSpec: unknown fields {sorted(unknown)}")
        return cls(**params)

    def class_colour(self, y: int) -> int | None:
        """Class ``y``'s fixed palette id, or None for a random colour."""
        return None if self.colour_ids is None else self.colour_ids[y]

    @property
    def class_names(self) -> list[str]:
        """The shape name, or "<colour> <shape>" for a class with a fixed colour."""
        colours = [self.class_colour(y) for y in range(self.n_classes)]
        return [
            OBJECTS[obj] if colour is None else f"{COLOURS[colour]} {OBJECTS[obj]}"
            for obj, colour in zip(self.object_ids, colours, strict=True)
        ]

    @property
    def place_names(self) -> list[str]:
        return [BACKGROUNDS[i] for i in self.background_ids]

    @property
    def n_classes(self) -> int:
        return len(self.object_ids)

    @property
    def n_places(self) -> int:
        return len(self.background_ids)

    def as_dict(self) -> dict[str, Any]:
        """The fields; ``colour_ids`` only when set, so specs without colours keep their fingerprints."""
        fields = asdict(self)
        if fields["colour_ids"] is None:
            del fields["colour_ids"]
        return fields

    def fingerprint(self) -> str:
        """Changes whenever the spec or the renderer does: the cache key of the written data set."""
        return fingerprint("group_shift", RENDER_VERSION, self.as_dict())


def train_place_counts(spec: GroupShiftSpec) -> np.ndarray:
    """Train images per (class, place), shape (n_classes, n_places).

    round(correlation * train_per_class) on the majority place ``y % n_places``, the rest spread
    evenly over the other places. When 0 < correlation < 1 every group gets at least one image
    (when train_per_class allows), so no group is empty; correlation 1 (or 0) leaves the minority
    (or majority) groups empty, as asked.
    """
    counts = np.zeros((spec.n_classes, spec.n_places), dtype=np.int64)
    others = spec.n_places - 1
    for y in range(spec.n_classes):
        major = y % spec.n_places
        if others == 0:
            counts[y, major] = spec.train_per_class
            continue
        # 0 < correlation < 1 promises every group: keep >= 1 on the majority and on each minority.
        low = 1 if spec.correlation > 0.0 else 0
        high = spec.train_per_class - (others if spec.correlation < 1.0 else 0)
        majority = max(0, min(max(round(spec.correlation * spec.train_per_class), low), high))
        minority = spec.train_per_class - majority
        share, extra = divmod(minority, others)
        minor_places = [p for p in range(spec.n_places) if p != major]
        for k, place in enumerate(minor_places):
            counts[y, place] = share + (1 if k < extra else 0)
        counts[y, major] = spec.train_per_class - counts[y].sum()
    return counts


def split_group_counts(spec: GroupShiftSpec) -> dict[str, np.ndarray]:
    """Images per (class, place) for every split, each (n_classes, n_places)."""
    shape = (spec.n_classes, spec.n_places)
    return {
        "train": train_place_counts(spec),
        "val": np.full(shape, spec.val_per_group, dtype=np.int64),
        "test": np.full(shape, spec.test_per_group, dtype=np.int64),
    }


def _metadata_rows(spec: GroupShiftSpec) -> list[dict[str, Any]]:
    """All rows in img_id order: train, val, test; shuffled within a split so ids carry no label."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, RENDER_VERSION, 1]))
    rows: list[dict[str, Any]] = []
    next_id = 1  # the Waterbirds release numbers images from 1
    folders = [name.replace(" ", "_") for name in spec.class_names]  # "magenta circle" -> magenta_circle/
    for split_code, (split, counts) in enumerate(split_group_counts(spec).items()):
        labels = [(y, p) for y in range(spec.n_classes) for p in range(spec.n_places) for _ in range(counts[y, p])]
        for index in rng.permutation(len(labels)):
            y, place = labels[index]
            folder, bg = folders[y], BACKGROUNDS[spec.background_ids[place]]
            rows.append(
                {
                    "img_id": next_id,
                    "img_filename": f"images/{split}/{folder}/{next_id:06d}.png",
                    "y": y,
                    "split": split_code,
                    "place": place,
                    "place_filename": f"/{bg}/{next_id:06d}.png",
                }
            )
            next_id += 1
    return rows


def _metadata_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(METADATA_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _image_rng(spec: GroupShiftSpec, img_id: int) -> np.random.Generator:
    # One stream per image: pixels depend only on (seed, img_id), not on generation order.
    return np.random.default_rng(np.random.SeedSequence([spec.seed, RENDER_VERSION, 2, img_id]))


def _is_current(spec: GroupShiftSpec, root: Path) -> bool:
    manifest, metadata = root / "dataset.json", root / "metadata.csv"
    if not (manifest.is_file() and metadata.is_file()):
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint") == spec.fingerprint()
    except (json.JSONDecodeError, OSError, AttributeError):
        return False


def _remove_stale_images(root: Path, keep: set[str]) -> None:
    """Delete PNGs a previous, different spec left in our layout (only ``images/<split>/*/*.png``)."""
    for split in SPLITS:
        for path in (root / "images" / split).glob("*/*.png"):
            if path.relative_to(root).as_posix() not in keep:
                path.unlink()


def write_group_shift_dataset(spec: GroupShiftSpec, root: Path | str) -> Path:
    """Write the data set in the Waterbirds release layout under ``root`` and return ``root``.

    Writes ``images/<split>/<object>/<img_id:06d>.png``, then ``metadata.csv`` and ``dataset.json``
    last and atomically: an interrupted run leaves no manifest and is regenerated, never half-used.
    Does nothing when ``dataset.json`` already records this spec's fingerprint.
    """
    root = Path(root)
    if _is_current(spec, root):
        return root
    root.mkdir(parents=True, exist_ok=True)
    # Invalidate first: while images are being overwritten no manifest may vouch for them.
    for name in ("dataset.json", "metadata.csv"):
        (root / name).unlink(missing_ok=True)
    rows = _metadata_rows(spec)
    for row in rows:
        obj_id = spec.object_ids[row["y"]]
        bg_id = spec.background_ids[row["place"]]
        colour_id = spec.class_colour(row["y"])
        pixels = render_image(obj_id, bg_id, _image_rng(spec, row["img_id"]), spec.image_size, colour_id)
        path = root / row["img_filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, format="PNG")
    _remove_stale_images(root, {row["img_filename"] for row in rows})
    atomic_write_text(root / "metadata.csv", _metadata_csv(rows))
    atomic_write_json(root / "dataset.json", _manifest(spec))
    return root


def _manifest(spec: GroupShiftSpec) -> dict[str, Any]:
    counts = split_group_counts(spec)
    return {
        "format": "waterbirds-release",
        "render_version": RENDER_VERSION,
        "fingerprint": spec.fingerprint(),
        "spec": spec.as_dict(),
        "class_names": spec.class_names,
        "place_names": spec.place_names,
        "group_definition": "g = y * n_places + place",
        "group_counts": {split: c.tolist() for split, c in counts.items()},
    }


def _named_spec(
    name: str, objects: Sequence[str], places: Sequence[str], sizes: tuple[int, int, int], **rest: Any
) -> GroupShiftSpec:
    """A spec from object and place names; ``sizes`` = (train per class, val per group, test per group)."""
    train, val, test = sizes
    return GroupShiftSpec(
        name=name,
        object_ids=tuple(OBJECTS.index(o) for o in objects),
        background_ids=tuple(BACKGROUNDS.index(p) for p in places),
        train_per_class=train,
        val_per_group=val,
        test_per_group=test,
        **rest,
    )


def finetune_spec(seed: int = 0, image_size: int = 32) -> GroupShiftSpec:
    """The default fine-tuning task: 4 shapes on 4 backgrounds, class y mostly on background y."""
    places = ("forest", "water", "sand", "snow")
    return _named_spec("finetune", OBJECTS[:4], places, (400, 25, 50), seed=seed, image_size=image_size)


def waterbirds_like_spec(seed: int = 0, image_size: int = 32) -> GroupShiftSpec:
    """The zero-shot transfer task, binary like Waterbirds: held-out shapes on land (forest) vs water.

    y = 0 "ring" (the landbird role) mostly on place 0 = forest, y = 1 "star" (the waterbird role)
    mostly on place 1 = water; group g = 2 * y + place as in the release. Ring and star are not in
    the fine-tuning task.
    """
    return _named_spec(
        "waterbirds_like", ("ring", "star"), ("forest", "water"), (200, 25, 60), seed=seed, image_size=image_size
    )


MINIATURE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")


def miniature_spec(seed: int = 0, image_size: int = 32) -> GroupShiftSpec:
    """The miniature's fine-tuning task (conf/miniature): 4 shapes x 5 colours = 20 compound classes.

    Class y = shape · 5 + colour ("magenta circle", "yellow circle", …, "violet cross"), mostly on
    background y % 4 of forest / water / sand / snow, so every background holds five classes of
    mixed shapes and colours. Sizes: docs/miniature-world.md.
    """
    return _named_spec(
        "miniature",
        [shape for shape in MINIATURE_SHAPES for _ in COLOURS],
        ("forest", "water", "sand", "snow"),
        (120, 50, 100),
        colour_ids=tuple(colour for _ in MINIATURE_SHAPES for colour in range(len(COLOURS))),
        seed=seed,
        image_size=image_size,
    )


def waterbirds_like_miniature_spec(seed: int = 0, image_size: int = 32) -> GroupShiftSpec:
    """:func:`waterbirds_like_spec` with groups large enough for a worst-group interval of about ±4 points."""
    return replace(
        waterbirds_like_spec(seed, image_size),
        name="waterbirds_like_miniature",
        val_per_group=200,
        test_per_group=400,
    )


DEFAULT_SPECS: dict[str, GroupShiftSpec] = {
    "finetune": finetune_spec(),
    "waterbirds_like": waterbirds_like_spec(),
    "miniature": miniature_spec(),
    "waterbirds_like_miniature": waterbirds_like_miniature_spec(),
}
