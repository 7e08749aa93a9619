"""Light image augmentation, batched on the device: square random-resized crops (the official code's
RandomResizedCrop with scale 0.9–1.0 and a square aspect). Boxes are drawn for a whole batch from a
generator; :func:`apply_crops` resizes every box back with one gather per axis, matching
``F.interpolate(mode="bilinear", align_corners=False)`` image by image. Shared by fine-tuning,
pretraining and the cached-views teacher. No Kedro here.
"""

from __future__ import annotations

import torch

from starft_pipeline.train.engine import to_device


def crop_boxes(n_images: int, size: int, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """(n, 3) top, left, side of a square crop of ``scale`` (area fraction) per image, drawn for all at once."""
    area = torch.empty(n_images).uniform_(*scale, generator=generator)
    side = (size * area.double().sqrt()).round().long().clamp(1, size)
    corners = torch.rand(n_images, 2, generator=generator, dtype=torch.float64) * (size - side + 1)[:, None]
    return torch.cat([corners.long(), side[:, None]], dim=1)


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
    """Crop each image to its box (``crop_boxes``) and resize it back, bilinear: one gather per axis
    for the whole batch, on the images' device (float32)."""
    n, channels, size = len(images), images.shape[1], images.shape[-1]
    boxes = boxes.to(torch.int64)
    col0, col1, wcol0, wcol1 = (to_device(t, images.device) for t in _resize_taps(boxes[:, 1], boxes[:, 2], size))
    row0, row1, wrow0, wrow1 = (to_device(t, images.device) for t in _resize_taps(boxes[:, 0], boxes[:, 2], size))
    images = images.float()

    def columns(index: torch.Tensor) -> torch.Tensor:
        return images.gather(3, index[:, None, None, :].expand(n, channels, images.shape[2], size))

    def rows(resized: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return resized.gather(2, index[:, None, :, None].expand(n, channels, size, size))

    # F.interpolate's order: horizontal mix of each source row, then vertical mix of the two rows.
    horizontal = wcol0[:, None, None, :] * columns(col0) + wcol1[:, None, None, :] * columns(col1)
    return wrow0[:, None, :, None] * rows(horizontal, row0) + wrow1[:, None, :, None] * rows(horizontal, row1)
