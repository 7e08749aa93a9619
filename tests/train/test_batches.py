"""train.batches: seeded draws, batch order, the description table and the pixels, on hand-built inputs
(the text table and the vectorised draws against the model are in test_lean_step.py)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from starft_pipeline.train.batches import (
    batch_pixels,
    descriptions_by_class,
    draw_descriptions,
    epoch_batches,
    seeded_generator,
)


def test_the_same_seeds_give_the_same_draws_and_others_differ():
    first, again, other = (
        torch.rand(4, generator=seeded_generator(*seeds)) for seeds in [(0, 1, 2), (0, 1, 2), (0, 1, 3)]
    )
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_an_epoch_is_a_permutation_cut_into_full_batches():
    config = SimpleNamespace(seed=3, batch_size=4)
    batches = epoch_batches(10, config, epoch=0)
    assert [len(batch) for batch in batches] == [4, 4]  # the partial batch of 2 is dropped
    assert len(set(torch.cat(batches).tolist())) == 8
    assert all(torch.equal(a, b) for a, b in zip(batches, epoch_batches(10, config, epoch=0)))
    assert not all(torch.equal(a, b) for a, b in zip(batches, epoch_batches(10, config, epoch=1)))


def test_descriptions_by_class_pads_with_zero_and_counts():
    table, counts = descriptions_by_class([[2, 5], [], [1]])
    assert table.tolist() == [[2, 5], [0, 0], [1, 0]] and counts.tolist() == [2, 0, 1]


def test_each_sample_draws_a_description_of_its_own_class():
    table, counts = descriptions_by_class([[0, 1], [2], [3, 4, 5]])
    labels = torch.tensor([0, 1, 2, 2, 0, 1] * 20)
    picks = draw_descriptions(labels, table, counts, seeded_generator(0))
    members = {0: {0, 1}, 1: {2}, 2: {3, 4, 5}}
    assert all(int(pick) in members[int(label)] for label, pick in zip(labels, picks))
    assert {int(pick) for pick, label in zip(picks, labels) if label == 2} == {3, 4, 5}


def test_pixels_without_augmentation_are_the_normalised_rows():
    loaded = SimpleNamespace(image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2).contiguous()
    config = SimpleNamespace(augment=False, crop_scale=(1.0, 1.0))
    pixels = batch_pixels(loaded, images, torch.tensor([1, 0]), config, seeded_generator(0))
    assert pixels[:, 0, 0, 0].tolist() == [1.0, -1.0]  # (x / 255 − 0.5) / 0.5, rows in the batch's order
