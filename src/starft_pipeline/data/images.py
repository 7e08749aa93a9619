"""Image decoding that accepts what users' data sets hold: any PIL mode, made RGB uint8.

- grayscale (``L``, ``1``), palette (``P``), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion;
- an alpha channel (``LA``, ``PA``, ``RGBA``, a ``P`` image with a transparent colour): composited
  on white (dropping alpha would show whatever colour the transparent pixels happen to store);
- 16-bit and 32-bit grayscale (``I;16*``, ``I``, ``F``): scaled to 8 bits (``I;16``: / 257; ``I``
  and ``F``: / 257 when values exceed 255, else as is), never clipped to white;
- animated or multi-page files: the first frame.

A file that cannot be decoded (not an image, truncated, a decompression bomb) raises an ``OSError``
or ``ValueError`` family error from PIL; :func:`image_problem` turns that into a one-line reason.
:func:`resize_and_crop` sizes a decoded image as open_clip's eval transform of the weights' pretrained
config does (interpolation, resize mode). No Kedro here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Modes with an alpha channel; a ``P`` image with ``transparency`` in its info counts too.
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
#: High-bit-depth grayscale modes, scaled to 8 bits.
HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
BACKGROUND = (255, 255, 255)
#: Errors PIL raises for files it cannot decode.
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def _high_bit_to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit grayscale → ``L``: ``I;16*`` by / 257, ``I`` and ``F`` by / 257 only above 255."""
    array = np.asarray(image, dtype=np.float64)
    array = np.nan_to_num(array, nan=0.0, posinf=65535.0, neginf=0.0)
    if image.mode.startswith("I;16") or array.max(initial=0.0) > 255.0:
        array = array / 257.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as ``RGB`` (see the module docstring for what each mode becomes)."""
    if image.mode in HIGH_BIT_MODES:
        image = _high_bit_to_8bit(image)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_rgb(path: str | Path | IO[bytes]) -> Image.Image:
    """Decode the whole file (its first frame) as ``RGB``; PIL's errors propagate (see :data:`DECODE_ERRORS`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)


def image_problem(path: str | Path, full_decode: bool = True) -> str | None:
    """Why ``path`` cannot be used as an image (one line), or None when it can.

    ``full_decode`` reads every pixel (catches truncation); otherwise only the header is read.
    """
    try:
        if full_decode:
            decode_rgb(path)
        else:
            with Image.open(path) as image:
                image.size  # noqa: B018 (the header is parsed on open)
    except DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None


#: open_clip's eval-time interpolations (its ``PreprocessCfg.interpolation``) as PIL filters.
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
#: open_clip's resize modes: shorter side to S then centre crop; both sides to S; longer side to S then pad.
RESIZE_MODES = ("shortest", "squash", "longest")


def _resized_size(width: int, height: int, size: int, mode: str) -> tuple[int, int]:
    """(width, height) before the centre crop, with torchvision's and open_clip's arithmetic."""
    if mode == "squash":
        return size, size
    if mode == "longest":  # open_clip's ResizeKeepRatio(longest=1)
        ratio = max(height / size, width / size)
        return round(width / ratio), round(height / ratio)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)  # torchvision's Resize(int): the long side truncated
    return (size, new_long) if width <= height else (new_long, size)


def _centre_crop_or_pad(image: Image.Image, size: int, fill: int) -> Image.Image:
    """torchvision's ``center_crop`` (open_clip's ``CenterCropOrPad``): pad a short side with ``fill``, then crop."""
    width, height = image.size
    if size > width or size > height:
        canvas = Image.new(image.mode, (max(width, size), max(height, size)), (fill,) * len(image.getbands()))
        canvas.paste(image, ((size - width) // 2 if size > width else 0, (size - height) // 2 if size > height else 0))
        image = canvas
        width, height = image.size
    top, left = round((height - size) / 2.0), round((width - size) / 2.0)  # torchvision rounds half to even
    return image.crop((left, top, left + size, top + size))


def resize_and_crop(
    image: Image.Image, size: int, interpolation: str = "bicubic", mode: str = "shortest", fill: int = 0
) -> Image.Image:
    """``image`` as a ``size`` × ``size`` image the way open_clip's eval transform makes it.

    ``interpolation`` (``bicubic`` | ``bilinear``) and ``mode`` (``shortest`` | ``squash`` |
    ``longest``) come from the weights' pretrained config (:class:`~starft_pipeline.models.clip.LoadedModel`
    carries them); ``fill`` pads ``longest``. An image already at ``size`` is returned unchanged.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {list(RESIZE_MODES)}, got {mode!r}")
    resized = image.resize(_resized_size(*image.size, size, mode), INTERPOLATIONS[interpolation])
    return _centre_crop_or_pad(resized, size, fill)
