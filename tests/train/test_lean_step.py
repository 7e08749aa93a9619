"""The lean training step: batched crops, the text table (tokenised once), vectorised draws, no per-step reads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from starft_pipeline.data.tasks import fill_template
from starft_pipeline.train.augment import SQUARE, apply_crops, crop_boxes
from starft_pipeline.train.batches import (
    descriptions_by_class,
    draw_captions,
    draw_descriptions,
    sample_descriptions,
    text_table,
)
from starft_pipeline.train.engine import Encoders, encode_text_trimmed, token_lengths
from tests.engine_helpers import (  # noqa: F401 (single_thread: autouse fixture)
    CLASS_NAMES,
    single_thread,
    tiny_config,
    tiny_model,
    tiny_train_data,
    train_tiny,
)

CPU = torch.device("cpu")


def per_image_crops(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The reference: each image cropped and resized with F.interpolate (the step's former code)."""
    size = images.shape[-1]
    out = [
        F.interpolate(
            image[None, :, top : top + height, left : left + width],
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        )[0]
        for image, (top, left, height, width) in zip(images.float(), boxes.tolist())
    ]
    return torch.stack(out)


@pytest.mark.parametrize(
    ("size", "scale", "ratio"),
    [(32, (0.9, 1.0), SQUARE), (224, (0.9, 1.0), SQUARE), (17, (0.05, 1.0), SQUARE), (32, (0.3, 1.0), (0.5, 2.0))],
)
def test_batched_crops_equal_per_image_interpolation(size, scale, ratio):
    generator = torch.Generator().manual_seed(size)
    images = torch.randint(0, 256, (6, 3, size, size), generator=generator, dtype=torch.uint8)
    boxes = crop_boxes(len(images), size, scale, generator, ratio)
    boxes[0] = torch.tensor([0, 0, size, size])  # the whole image: a copy
    boxes[1] = torch.tensor([size - 1, size - 1, 1, 1])  # one pixel, spread over the image
    cropped = apply_crops(images, boxes)
    assert cropped.dtype == torch.float32 and cropped.shape == images.shape
    assert torch.allclose(cropped, per_image_crops(images, boxes), atol=1e-4, rtol=0)  # a float32 ulp of 255
    assert torch.equal(cropped[0], images[0].float())


def test_crop_boxes_lie_inside_the_image_and_follow_the_area_scale():
    size, scale = 32, (0.5, 1.0)
    boxes = crop_boxes(4000, size, scale, torch.Generator().manual_seed(0))
    top, left, side, width = boxes.T
    assert torch.equal(side, width)  # square by default
    assert (top >= 0).all() and (left >= 0).all() and (top + side <= size).all() and (left + side <= size).all()
    assert side.min() == round(size * math.sqrt(0.5)) and side.max() == size
    assert set(top.tolist()) == set(left.tolist()) == set(range(size - int(side.min()) + 1))  # every position
    again = crop_boxes(4000, size, scale, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)


def test_the_square_crop_draws_as_before_the_ratio_option():
    # The default's results stay byte-identical: the square boxes are the former (top, left, side) draws.
    size, scale = 32, (0.9, 1.0)
    generator = torch.Generator().manual_seed(3)
    area = torch.empty(50).uniform_(*scale, generator=generator)
    side = (size * area.double().sqrt()).round().long().clamp(1, size)
    corners = (torch.rand(50, 2, generator=generator, dtype=torch.float64) * (size - side + 1)[:, None]).long()
    boxes = crop_boxes(50, size, scale, torch.Generator().manual_seed(3))
    assert torch.equal(boxes, torch.cat([corners, side[:, None], side[:, None]], dim=1))


def test_official_crop_boxes_follow_scale_and_aspect_ratio():
    # scale (0.9, 1.0), width / height in [3/4, 4/3]: every box fits, its area and aspect are in range
    # (up to rounding of the sides), and both orientations occur.
    size, scale, ratio = 224, (0.9, 1.0), (0.75, 4 / 3)
    boxes = crop_boxes(4000, size, scale, torch.Generator().manual_seed(0), ratio)
    top, left, height, width = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= size).all() and (left + width <= size).all()
    area, aspect = (height * width).double() / size**2, width.double() / height
    assert (area >= 0.9 - 2 / size).all() and (area <= 1.0).all()
    assert (aspect >= 0.75 - 2 / size).all() and (aspect <= 4 / 3 + 2 / size).all()
    assert (width > height).any() and (width < height).any()
    assert torch.equal(boxes, crop_boxes(4000, size, scale, torch.Generator().manual_seed(0), ratio))


def test_a_crop_ratio_that_never_fits_falls_back_to_the_whole_image():
    # Area 1 at aspect 2–4: width = size·√aspect ≥ 22.6 > 16 on every attempt, so every box is the whole image.
    boxes = crop_boxes(20, 16, (1.0, 1.0), torch.Generator().manual_seed(0), (2.0, 4.0))
    assert (boxes[:, 2:] == 16).all() and (boxes[:, :2] == 0).all()


def test_the_text_table_holds_every_caption_and_description_once_with_its_length():
    loaded, data = tiny_model(), tiny_train_data()
    templates = ("a photo of a {c}.", "a {c}, seen from afar in bright light.")
    table = text_table(loaded, data, templates, CPU)
    assert text_table(loaded, data, templates, CPU) is table  # built once per data, tokenizer and templates
    for label, name in enumerate(CLASS_NAMES):
        for t, template in enumerate(templates):
            row = int(table.caption_rows[label, t])
            assert torch.equal(table.tokens[row], loaded.tokenizer([fill_template(template, name)])[0])
    for index, text in enumerate(data.descriptions.texts):
        assert torch.equal(table.tokens[int(table.description_rows[index])], loaded.tokenizer([text])[0])
    ends = (
        (table.tokens == loaded.model.text_eos_id).int().argmax(dim=-1)
        if loaded.model.text_pool_type == "eos"
        else table.tokens.argmax(dim=-1)
    )
    assert torch.equal(table.lengths, ends + 1)
    assert len(table.tokens) == len(CLASS_NAMES) * len(templates) + len(data.descriptions.texts)


def test_encoding_table_rows_equals_encoding_the_texts():
    loaded, data = tiny_model(), tiny_train_data()
    table = text_table(loaded, data, ("a photo of a {c}.",), CPU)
    rows = torch.tensor([5, 0, 5, 3, 11, 0])
    reference = loaded.model.encode_text(table.tokens[rows])
    features = Encoders(loaded.model, CPU).encode_rows(table.tokens, table.lengths, rows)
    assert torch.allclose(features, reference, atol=1e-5)
    assert torch.equal(features[0], features[2])
    length = int(table.lengths[rows].max())
    assert length < table.tokens.shape[1]  # the rows were trimmed
    trimmed = encode_text_trimmed(loaded.model, table.tokens[rows][:, :length], length)
    assert torch.allclose(trimmed, reference, atol=1e-5)


def test_token_lengths_are_the_full_width_for_a_model_that_cannot_be_trimmed():
    tokens = torch.randint(1, 100, (3, 9))
    assert torch.equal(token_lengths(torch.nn.Linear(2, 2), tokens), torch.full((3,), 9))


def test_description_draws_belong_to_the_sample_class_and_reach_every_description():
    data = tiny_train_data()
    by_class = data.descriptions.indices_by_class(len(CLASS_NAMES))
    of_class, per_class = descriptions_by_class(by_class)
    labels = torch.arange(3000) % len(CLASS_NAMES)
    picks = draw_descriptions(labels, of_class, per_class, torch.Generator().manual_seed(0))
    assert all(data.descriptions.labels[int(p)] == int(y) for p, y in zip(picks, labels))
    assert set(picks.tolist()) == set(range(len(data.descriptions.texts)))
    assert torch.equal(picks, sample_descriptions(labels, by_class, torch.Generator().manual_seed(0)))


def test_caption_draws_name_the_sample_class():
    loaded, data = tiny_model(), tiny_train_data()
    templates = ("a photo of a {c}.", "a {c}.")
    table = text_table(loaded, data, templates, CPU)
    labels = torch.arange(300) % len(CLASS_NAMES)
    rows = draw_captions(labels, table, torch.Generator().manual_seed(0))
    assert all(int(r) in table.caption_rows[int(y)].tolist() for r, y in zip(rows, labels))
    assert len(torch.unique(rows)) == len(CLASS_NAMES) * len(templates)


def test_the_losses_stay_on_the_device_in_the_step_and_the_history_holds_floats():
    state = train_tiny(method="star", epochs=1)
    names = ("loss", "contrastive", "regulariser", "epoch_loss")
    assert all(isinstance(record[name], float) for record in state.history for name in names if name in record)
    assert {"loss", "contrastive", "regulariser"} <= set(state.history[0]) and "epoch_loss" in state.history[-1]
