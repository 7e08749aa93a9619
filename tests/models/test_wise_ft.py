"""WiSE-FT: the interpolation against hand-computed values (the sweep's models and outputs are tested in
tests/evaluate/test_wise_sweep.py, the one-pass evaluation of every α in test_one_pass_evaluation.py)."""

from __future__ import annotations

import pytest
import torch

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.models.heads import ClassifierHead, head_metadata, head_tensors, split_heads
from starft_pipeline.models.wise_ft import alpha_grid, interpolate_weights, wise_ft_bundle, zero_shot_counterpart

ZERO_SHOT = {"w": torch.tensor([[0.0, 2.0], [4.0, -2.0]]), "b": torch.tensor([1.0, 3.0]), "n": torch.tensor([7])}
FINETUNED = {"w": torch.tensor([[2.0, 2.0], [0.0, 2.0]]), "b": torch.tensor([3.0, -1.0]), "n": torch.tensor([7])}


def test_alpha_zero_gives_the_zero_shot_weights_exactly():
    mixed = interpolate_weights(ZERO_SHOT, FINETUNED, 0.0)
    assert all(torch.equal(mixed[key], ZERO_SHOT[key]) for key in ZERO_SHOT)


def test_alpha_one_gives_the_finetuned_weights_exactly():
    generator = torch.Generator().manual_seed(0)
    zero_shot = {"w": torch.randn(5, 3, generator=generator)}
    finetuned = {"w": torch.randn(5, 3, generator=generator)}
    assert torch.equal(interpolate_weights(zero_shot, finetuned, 1.0)["w"], finetuned["w"])
    assert torch.equal(interpolate_weights(zero_shot, finetuned, 0.0)["w"], zero_shot["w"])


def test_alpha_half_is_the_midpoint():
    mixed = interpolate_weights(ZERO_SHOT, FINETUNED, 0.5)
    assert torch.equal(mixed["w"], torch.tensor([[1.0, 2.0], [2.0, 0.0]]))
    assert torch.equal(mixed["b"], torch.tensor([2.0, 1.0]))
    assert torch.equal(mixed["n"], torch.tensor([7]))  # integer buffers are copied


def test_alpha_quarter_weights_the_zero_shot_side_three_to_one():
    # (1 − 0.25)·[0, 2; 4, −2] + 0.25·[2, 2; 0, 2] = [0.5, 2; 3, −1]
    assert torch.equal(interpolate_weights(ZERO_SHOT, FINETUNED, 0.25)["w"], torch.tensor([[0.5, 2.0], [3.0, -1.0]]))


def test_dtype_of_the_finetuned_weights_is_kept():
    mixed = interpolate_weights(
        {"w": torch.zeros(2, dtype=torch.float16)}, {"w": torch.ones(2, dtype=torch.float16)}, 0.5
    )
    assert mixed["w"].dtype == torch.float16 and torch.equal(mixed["w"], torch.full((2,), 0.5, dtype=torch.float16))


@pytest.mark.parametrize(
    ("zero_shot", "finetuned", "alpha", "message"),
    [
        (ZERO_SHOT, FINETUNED, 1.5, r"alpha must be a number in \[0, 1\]"),
        (ZERO_SHOT, {"w": FINETUNED["w"]}, 0.5, "differ in keys"),
        ({"w": torch.zeros(3)}, {"w": torch.zeros(2)}, 0.5, "shape"),
        ({"n": torch.tensor([1])}, {"n": torch.tensor([2])}, 0.5, "non-floating tensors differ"),
    ],
)
def test_bad_inputs_are_errors(zero_shot, finetuned, alpha, message):
    with pytest.raises(ValueError, match=message):
        interpolate_weights(zero_shot, finetuned, alpha)


def test_alpha_grid_is_sorted_and_checked():
    assert alpha_grid([1, 0.5, 0, 0.5]) == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="evaluation.wise_ft.alphas"):
        alpha_grid([0.0, 1.2])


def test_learned_heads_are_interpolated_with_the_zero_shot_head():
    learned = ClassifierHead(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([1.0, -1.0]), ("b", "a"))
    finetuned = TensorBundle(
        {"visual.w": torch.ones(2)} | head_tensors({"d": learned}), {"method": "ft"} | head_metadata({"d": learned})
    )
    zero_shot_head = ClassifierHead(torch.tensor([[10.0, 0.0], [0.0, 10.0]]), torch.zeros(2), ("a", "b"))
    zero_shot = zero_shot_counterpart({"visual.w": torch.zeros(2)}, {"d": zero_shot_head}, finetuned)
    # the zero-shot rows follow the learned head's class order (b, a)
    assert torch.equal(zero_shot["head/d/weight"], torch.tensor([[0.0, 10.0], [10.0, 0.0]]))
    mixed = wise_ft_bundle(zero_shot, finetuned, 0.5)
    towers, heads = split_heads(mixed.tensors, mixed.metadata)
    assert torch.equal(towers["visual.w"], torch.full((2,), 0.5))
    assert torch.equal(heads["d"].weight, torch.tensor([[1.0, 5.0], [5.0, 1.0]]))
    assert torch.equal(heads["d"].bias, torch.tensor([0.5, -0.5]))
    assert mixed.metadata["wise_ft_alpha"] == 0.5 and mixed.metadata["method"] == "ft"
