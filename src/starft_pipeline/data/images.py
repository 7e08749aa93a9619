"""Image decoding that accepts what users' data sets hold: any PIL mode, made RGB uint8.

- grayscale (``L``, ``1``), palette (``P``), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion;
- an alpha channel (``LA``, ``PA``, ``RGBA``, a ``P`` image with a transparent colour): composited
  on white (dropping alpha would show whatever colour the transparent pixels happen to store);
- 16-bit and 32-bit grayscale (``I;16*``, ``I``, ``F``): scaled to 8 bits (``I;16``: / 257; ``I``
  and ``F``: / 257 when values exceed 255, else as is), never clipped to white;
- animated or multi-page files: the first frame.

A file that cannot be decoded (not an image, truncated, a decompression bomb) raises an ``OSError``
or ``ValueError`` family error from PIL; :func:`image_problem` turns that into a one-line reason.
No Kedro here.
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
