"""models.heads: linear heads on hand-built tensors (logits, restriction, storage in a bundle, training set-up)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from starft_pipeline.models.heads import (
    HEAD_MODULE,
    ClassifierHead,
    attach_head,
    detach_head,
    freeze_text_tower,
    head_for_classes,
    head_metadata,
    head_tensors,
    split_heads,
    zero_shot_linear_head,
)


def _head() -> ClassifierHead:
    return ClassifierHead(
        torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), torch.tensor([0.5, 0.0, -1.0]), ("a", "b", "c")
    )


def test_logits_are_features_times_weight_plus_bias():
    logits = _head().logits(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert logits.tolist() == [[1.5, 0.0, 0.0], [0.5, 2.0, 0.0]]


def test_a_head_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="a head for 2 classes needs weight"):
        ClassifierHead(torch.zeros(3, 2), torch.zeros(3), ("a", "b"))


def test_the_zero_shot_head_is_the_scaled_class_features_without_bias():
    head = zero_shot_linear_head(torch.tensor([[0.6, 0.8]]), 10.0, ["a"])
    assert head.weight.tolist() == [[6.0, 8.0]] and head.bias.tolist() == [0.0]


def test_a_learned_head_serves_a_task_whose_classes_it_knows():
    restricted = head_for_classes({"d": _head()}, ["c", "a"])
    assert restricted is not None and restricted.class_names == ("c", "a")
    assert restricted.weight.tolist() == [[1.0, 1.0], [1.0, 0.0]] and restricted.bias.tolist() == [-1.0, 0.5]
    assert head_for_classes({"d": _head()}, ["a", "z"]) is None


def test_heads_round_trip_through_bundle_tensors():
    tensors = {"visual.w": torch.ones(1), **head_tensors({"d": _head()})}
    towers, heads = split_heads(tensors, head_metadata({"d": _head()}))
    assert list(towers) == ["visual.w"] and heads["d"].class_names == ("a", "b", "c")
    assert torch.equal(heads["d"].weight, _head().weight)
    with pytest.raises(ValueError, match="lacks its weight or bias"):
        split_heads({}, head_metadata({"d": _head()}))


def test_an_attached_head_trains_with_the_image_tower_only():
    model = nn.Module()
    model.visual = nn.Linear(2, 2)
    model.transformer = nn.Linear(2, 2)
    attach_head(model, _head())
    freeze_text_tower(model)
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable == [f"{HEAD_MODULE}.bias", f"{HEAD_MODULE}.weight", "visual.bias", "visual.weight"]
    towers, head = detach_head(model.state_dict(), ["a", "b", "c"])
    assert torch.equal(head.weight, _head().weight) and not any(key.startswith(HEAD_MODULE) for key in towers)
