"""WiSE-FT: the interpolation against hand-computed values, and the sweep node on tiny data."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from helpers import stage_tiny
from starft_pipeline.heads import ClassifierHead, head_metadata, head_tensors, split_heads
from starft_pipeline.pipelines.evaluation import wise_ft as wise_ft_nodes
from starft_pipeline.pipelines.evaluation.nodes import evaluate_weights
from starft_pipeline.pipelines.evaluation.wise_ft import CURVE_COLUMNS, wise_ft_sweep
from starft_pipeline.pipelines.finetune.nodes import finetune_method
from starft_pipeline.tensor_bundle import TensorBundle
from starft_pipeline.wise_ft import alpha_grid, interpolate_weights, wise_ft_bundle, zero_shot_counterpart

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
    mixed = interpolate_weights({"w": torch.zeros(2, dtype=torch.float16)}, {"w": torch.ones(2, dtype=torch.float16)}, 0.5)
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
    finetuned = TensorBundle({"visual.w": torch.ones(2)} | head_tensors({"d": learned}), {"method": "ft"} | head_metadata({"d": learned}))
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


# ----------------------------------------------------------------------------- the sweep node


def test_chosen_alpha_reuses_the_sweep_when_it_covers_the_evaluation_splits(monkeypatch):
    calls = []

    def fake_evaluate(method, bundle, *context_and_evaluation):
        splits, alpha = context_and_evaluation[-1]["splits"], bundle.metadata["wise_ft_alpha"]
        calls.append((alpha, tuple(splits), float(bundle.tensors["w"][0])))
        metrics = dict.fromkeys(CURVE_COLUMNS[4:], alpha)
        return {"results": [{"method": method, "dataset": "d", "split": f"d/{split}", **metrics} for split in splits]}

    monkeypatch.setattr(wise_ft_nodes, "evaluate_weights", fake_evaluate)
    monkeypatch.setattr(wise_ft_nodes, "_zero_shot_parts", lambda *_: ({"w": torch.zeros(1)}, {}))
    finetuned = TensorBundle({"w": torch.ones(1)}, {"method": "flyp"})
    evaluation = {"splits": ["val", "test"], "wise_ft": {"methods": ["flyp"], "alphas": [1.0, 0.0, 0.5], "alpha": 0.5}}
    curve, chosen = wise_ft_sweep(None, {}, {}, None, evaluation, finetuned)
    assert calls == [(0.0, ("val", "test"), 0.0), (0.5, ("val", "test"), 0.5), (1.0, ("val", "test"), 1.0)]
    assert list(curve["alpha"]) == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0] and list(curve["split"][:2]) == ["val", "test"]
    assert [row["avg_acc"] for row in chosen["results"]] == [0.5, 0.5]

    calls.clear()
    evaluation["wise_ft"]["splits"] = ["test"]  # a narrower sweep: the chosen α is evaluated on its own
    wise_ft_sweep(None, {}, {}, None, evaluation, finetuned)
    assert [call[:2] for call in calls] == [(0.0, ("test",)), (0.5, ("test",)), (1.0, ("test",)), (0.5, ("val", "test"))]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    staged = stage_tiny(tmp_path_factory.mktemp("data"))
    shared = [staged[name] for name in ("dataset_metadata", "dataset_index", "descriptions", "teacher_model", "teacher_cache")]
    params = dict(staged["params"]["ft"]["finetune"], epochs=1, batch_size=32, lr=1e-3, warmup_steps=0, device="cpu", progress=False)
    ft_weights, _ = finetune_method(*shared, params)
    evaluation = {"splits": ["test"], "device": "cpu", "bootstrap": {"n_resamples": 10},
                  "wise_ft": {"methods": ["ft"], "alphas": [0.0, 1.0], "alpha": 0.5}}
    context = [staged[name] for name in ("dataset_metadata", "dataset_index", "teacher_model")]
    curve, chosen = wise_ft_sweep(*context, staged["teacher_cache"], evaluation, ft_weights)
    reference = {
        "zero_shot": evaluate_weights("zero_shot", None, *context, evaluation)["results"],
        "ft": evaluate_weights("ft", ft_weights, *context, evaluation)["results"],
    }
    return curve, chosen, reference


def test_sweep_writes_the_curve_columns_for_every_alpha(swept):
    curve, _, _ = swept
    assert tuple(curve.columns) == CURVE_COLUMNS
    assert sorted(curve["alpha"].unique()) == [0.0, 1.0] and set(curve["method"]) == {"ft"}
    assert set(curve["split"]) == {"test"} and set(curve["dataset"]) == {"synthetic", "waterbirds_like"}


def test_sweep_endpoints_are_the_zero_shot_and_the_finetuned_model(swept):
    curve, _, reference = swept
    metrics = ["avg_acc", "worst_group_acc", "adjusted_avg_acc", "mean_group_acc"]
    for alpha, name in ((0.0, "zero_shot"), (1.0, "ft")):
        got = curve[curve["alpha"] == alpha].set_index("dataset")[metrics]
        expected = pd.DataFrame(reference[name]).set_index("dataset")[metrics]
        pd.testing.assert_frame_equal(got.sort_index(), expected.sort_index(), check_names=False)


def test_chosen_alpha_joins_the_results_as_method_plus_wise(swept):
    _, chosen, _ = swept
    assert {row["method"] for row in chosen["results"]} == {"ft+wise"}
    assert {row["split"] for row in chosen["results"]} == {"synthetic/test", "waterbirds_like/test"}


def test_unknown_method_in_the_sweep_list_names_the_parameter(swept):
    with pytest.raises(ValueError, match=r"evaluation.wise_ft.methods lists \['nope'\]"):
        wise_ft_sweep(pd.DataFrame(), {}, {}, None, {"splits": ["test"], "wise_ft": {"methods": ["nope"]}})
