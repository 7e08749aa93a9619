"""Light image augmentation, batched on the device: random-resized crops, square by default, or of
an aspect ratio drawn in ``ratio`` (the official code's RandomResizedCrop: scale 0.9–1.0, aspect 3/4–4/3).
Boxes are drawn for a whole batch from a generator; :func:`apply_crops` resizes every box back with
one gather per axis, matching ``F.interpolate(mode="bilinear", align_corners=False)`` image by image.
Shared by fine-tuning, pretraining and the cached-views teacher. No Kedro here.
"""

from __future__ import annotations

import math

import torch

from starft_pipeline.train.engine import to_device

#: The square crop: aspect ratio exactly 1 (the default; its draws are those of the square-only code).
SQUARE = (1.0, 1.0)
#: torchvision's RandomResizedCrop draws up to 10 boxes per image before falling back to the whole image.
RATIO_ATTEMPTS = 10


def crop_boxes(
    n_images: int,
    size: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio: tuple[float, float] = SQUARE,
) -> torch.Tensor:
    """(n, 4) top, left, height, width of a crop per image, drawn for all at once.

    ``scale`` bounds the crop's area as a fraction of the image, ``ratio`` its width / height
    (log-uniform, as torchvision). A non-square draw that does not fit the image is drawn again, up to
    10 times, then the whole image is taken, as torchvision does; ``ratio`` must contain 1.
    """
    if tuple(ratio) == SQUARE:
        height = width = _square_sides(n_images, size, scale, generator)
    else:
        height, width = _rectangle_sides(n_images, size, scale, ratio, generator)
    sides = torch.stack([height, width], dim=1)
    corners = torch.rand(n_images, 2, generator=generator, dtype=torch.float64) * (size - sides + 1)
    return torch.cat([corners.long(), sides], dim=1)


def _square_sides(n_images: int, size: int, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    area = torch.empty(n_images).uniform_(*scale, generator=generator)
    return (size * area.double().sqrt()).round().long().clamp(1, size)


def _rectangle_sides(
    n_images: int, size: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heights and widths: the first of ``RATIO_ATTEMPTS`` draws per image that fits, else the whole image."""
    area = torch.empty(n_images, RATIO_ATTEMPTS).uniform_(*scale, generator=generator).double()
    log_ratio = torch.empty(n_images, RATIO_ATTEMPTS).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    aspect = log_ratio.double().exp()
    width = (size * (area * aspect).sqrt()).round().long()
    height = (size * (area / aspect).sqrt()).round().long()
    fits = (width >= 1) & (width <= size) & (height >= 1) & (height <= size)
    first = fits.int().argmax(dim=1)  # the first fitting attempt (0 when none fits: replaced below)
    rows = torch.arange(n_images)
    found = fits.any(dim=1)
    whole = torch.full((n_images,), size, dtype=torch.long)
    return torch.where(found, height[rows, first], whole), torch.where(found, width[rows, first], whole)


def _resize_taps(start: torch.Tensor, side: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """Per box and output pixel, the two source pixels and their weights of a bilinear resize of
    ``side`` → ``size`` pixels, as ``F.interpolate(align_corners=False)`` computes them (float32,
    edges clamped to the crop, not to the image)."""
    scale = (side.float() / size).double()  # float32 as PyTorch's kernel, which then fuses multiply and add
    source = (scale[:, None] * (torch.arange(size, dtype=torch.float64) + 0.5) - 0.5).float().clamp(min=0)
    first = source.long()  # floor: source >= 0
    second = first + (first < side[:, None] - 1).long()
    weight = source - first
    return start[:, None] + first, start[:, None] + second, 1 - weight, weight


def apply_crops(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image to its box (``crop_boxes``: top, left, height, width) and resize it back, bilinear:
    one gather per axis for the whole batch, on the images' device (float32)."""
    n, channels, size = len(images), images.shape[1], images.shape[-1]
    boxes = boxes.to(torch.int64)
    col0, col1, wcol0, wcol1 = (to_device(t, images.device) for t in _resize_taps(boxes[:, 1], boxes[:, 3], size))
    row0, row1, wrow0, wrow1 = (to_device(t, images.device) for t in _resize_taps(boxes[:, 0], boxes[:, 2], size))
    images = images.float()

    def columns(index: torch.Tensor) -> torch.Tensor:
        return images.gather(3, index[:, None, None, :].expand(n, channels, images.shape[2], size))

    def rows(resized: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return resized.gather(2, index[:, None, :, None].expand(n, channels, size, size))

    # F.interpolate's order: horizontal mix of each source row, then vertical mix of the two rows.
    horizontal = wcol0[:, None, None, :] * columns(col0) + wcol1[:, None, None, :] * columns(col1)
    return wrow0[:, None, :, None] * rows(horizontal, row0) + wrow1[:, None, :, None] * rows(horizontal, row1)
