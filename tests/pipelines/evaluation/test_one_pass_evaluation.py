"""The one-pass evaluation: equal to evaluating each model on its own (today's per-model path), each
zero-shot head built once, a subset of the fine-tuned models (``evaluation.models``), a clear error
for missing weights, and the sharding helpers it rests on."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from starft_pipeline.core.distributed import DistContext, all_gather_rows, shard_rows
from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.data.streaming import split_batches
from starft_pipeline.evaluate import predictions as evaluate
from starft_pipeline.evaluate.config import EvaluationConfig
from starft_pipeline.evaluate.one_pass import evaluate_weights
from starft_pipeline.evaluate.wise_sweep import CURVE_COLUMNS
from starft_pipeline.kedro_io import UNCHANGED, LazyTensorBundle
from starft_pipeline.models.clip import ModelSpec, create_model, state_dict_copy
from starft_pipeline.models.heads import head_metadata, head_tensors, zero_shot_linear_head
from starft_pipeline.models.teacher import TeacherCache
from starft_pipeline.models.wise_ft import wise_ft_bundle, zero_shot_counterpart
from starft_pipeline.pipelines.evaluation.nodes import evaluate_models, evaluation_outputs
from starft_pipeline.train.methods import METHODS
from tests.helpers import stage_tiny

METRICS = ["avg_acc", "worst_group_acc", "adjusted_avg_acc", "mean_group_acc"]


def _perturbed(staged: dict, method: str, seed: int, with_head: bool) -> TensorBundle:
    """Weights unlike the zero-shot model's (noise on every float tensor), with a learned head on the
    fine-tuning data set if asked: a stand-in for fine-tuning that costs nothing."""
    generator = torch.Generator().manual_seed(seed)
    state = state_dict_copy(create_model(ModelSpec(**staged["teacher_model"]["spec"])).model)
    state = {
        key: value + 0.05 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in state.items()
    }
    metadata = {"method": method, "teacher_fingerprint": staged["teacher_model"]["fingerprint"]}
    if not with_head:
        return TensorBundle(state, metadata)
    dataset = staged["dataset_index"]["finetune_dataset"]
    cache = TeacherCache.from_bundle(staged["teacher_cache"])
    names = staged["dataset_index"]["datasets"][dataset]["class_names"]
    head = zero_shot_linear_head(cache.class_features[dataset], cache.logit_scale, names)
    head = type(head)(head.weight + torch.randn(head.weight.shape, generator=generator), head.bias, head.class_names)
    return TensorBundle(state | head_tensors({dataset: head}), metadata | head_metadata({dataset: head}))


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    staged = stage_tiny(tmp_path_factory.mktemp("data"))
    staged["weights"] = {
        "ft": _perturbed(staged, "ft", 1, with_head=True),
        "flyp": _perturbed(staged, "flyp", 2, with_head=False),
    }
    staged["evaluation"] = {
        "splits": ["val", "test"],
        "device": "cpu",
        "batch_size": 7,
        "bootstrap": {"n_resamples": 20},
        "models": ["ft", "flyp"],
        "wise_ft": {"methods": ["ft"], "alphas": [0.0, 0.5, 1.0], "alpha": 0.5},
    }
    return staged


def _weights(staged: dict, tmp_path) -> list:
    """One input per method, as the catalog gives them: present ones loaded, the others lazily missing."""
    return [staged["weights"].get(method) or LazyTensorBundle(tmp_path / f"{method}.safetensors") for method in METHODS]


def _run(staged: dict, evaluation: dict, weights: list) -> dict:
    context = [staged[name] for name in ("dataset_metadata", "dataset_index", "teacher_model", "teacher_cache")]
    return dict(zip(evaluation_outputs(), evaluate_models(*context, evaluation, *weights), strict=True))


@pytest.fixture(scope="module")
def one_pass(staged, tmp_path_factory):
    return _run(staged, staged["evaluation"], _weights(staged, tmp_path_factory.mktemp("weights")))


def _reference(staged: dict, method: str, bundle: TensorBundle | None) -> pd.DataFrame:
    context = [staged[name] for name in ("dataset_metadata", "dataset_index", "teacher_model")]
    evaluation = {key: value for key, value in staged["evaluation"].items() if key != "batch_size"}
    return pd.DataFrame(evaluate_weights(method, bundle, *context, EvaluationConfig.from_params(evaluation))["results"])


@pytest.mark.parametrize("method", ["zero_shot", "ft", "flyp"])
def test_one_pass_equals_the_per_model_evaluation(staged, one_pass, method) -> None:
    got = pd.DataFrame(one_pass[f"{method}.evaluation"]["results"])
    expected = _reference(staged, method, staged["weights"].get(method))
    assert len(got) == 4  # two data sets × val, test
    pd.testing.assert_frame_equal(got, expected)


def test_wise_ft_alphas_equal_their_interpolated_models_evaluated_alone(staged, one_pass) -> None:
    cache = TeacherCache.from_bundle(staged["teacher_cache"])
    heads = {
        name: zero_shot_linear_head(cache.class_features[name], cache.logit_scale, entry["class_names"])
        for name, entry in staged["dataset_index"]["datasets"].items()
    }
    zero_shot = state_dict_copy(create_model(ModelSpec(**staged["teacher_model"]["spec"])).model)
    theta_zs = zero_shot_counterpart(zero_shot, heads, staged["weights"]["ft"])
    curve = one_pass["wise_ft_curve"]
    assert tuple(curve.columns) == CURVE_COLUMNS and sorted(curve["alpha"].unique()) == [0.0, 0.5, 1.0]
    for alpha in (0.0, 0.5):
        expected = _reference(staged, "ft+wise", wise_ft_bundle(theta_zs, staged["weights"]["ft"], alpha))
        got = curve[curve["alpha"] == alpha].reset_index(drop=True)
        pd.testing.assert_frame_equal(got[METRICS], expected[METRICS])
    for alpha, endpoint in ((0.0, "zero_shot"), (1.0, "ft")):  # α = 0 is θ_zs, α = 1 is θ_ft
        expected = pd.DataFrame(one_pass[f"{endpoint}.evaluation"]["results"])[METRICS]
        pd.testing.assert_frame_equal(curve[curve["alpha"] == alpha].reset_index(drop=True)[METRICS], expected)
    chosen = pd.DataFrame(one_pass["wise_ft.evaluation"]["results"])
    assert set(chosen["method"]) == {"ft+wise"}
    assert chosen[METRICS].to_dict("records") == curve[curve["alpha"] == 0.5][METRICS].to_dict("records")


def test_each_zero_shot_head_is_built_once_per_model_and_task(staged, tmp_path, monkeypatch) -> None:
    calls = []
    original = evaluate.zero_shot_head

    def counting(model, tokenizer, class_names, templates, **kwargs):
        calls.append(tuple(class_names))
        return original(model, tokenizer, class_names, templates, **kwargs)

    monkeypatch.setattr(evaluate, "zero_shot_head", counting)
    evaluation = {**staged["evaluation"], "models": [], "wise_ft": {"methods": []}}
    _run(staged, evaluation, _weights({**staged, "weights": {}}, tmp_path))
    assert len(calls) == len(staged["dataset_index"]["datasets"])  # not once per split


def test_a_subset_evaluates_only_the_selected_models(staged, tmp_path) -> None:
    evaluation = {**staged["evaluation"], "models": ["flyp"]}  # ft is listed for WiSE-FT but not selected
    outputs = _run(staged, evaluation, _weights({**staged, "weights": {"flyp": staged["weights"]["flyp"]}}, tmp_path))
    evaluated = {name for name, value in outputs.items() if value is not UNCHANGED}
    assert evaluated == {"zero_shot.evaluation", "flyp.evaluation"}  # the others' files are left as they were
    assert outputs["flyp.evaluation"]["results"] and outputs["zero_shot.evaluation"]["results"]


def test_without_zero_shot_the_selected_models_results_are_unchanged(staged, one_pass, tmp_path) -> None:
    evaluation = {**staged["evaluation"], "models": ["flyp"], "zero_shot": False}
    outputs = _run(staged, evaluation, _weights({**staged, "weights": {"flyp": staged["weights"]["flyp"]}}, tmp_path))
    assert outputs["zero_shot.evaluation"] is UNCHANGED
    assert outputs["flyp.evaluation"] == one_pass["flyp.evaluation"]


def test_missing_weights_name_the_file_and_the_command(staged, tmp_path) -> None:
    evaluation = {**staged["evaluation"], "models": ["flyp", "star", "kl"]}
    with pytest.raises(FileNotFoundError) as error:
        _run(staged, evaluation, _weights(staged, tmp_path))
    message = str(error.value)
    assert str(tmp_path / "star.safetensors") in message and str(tmp_path / "kl.safetensors") in message
    assert "kedro run --pipelines=finetune --namespaces=star,kl" in message
    assert "evaluation.models=[ft,flyp]" in message


def test_unknown_model_names_the_parameter(staged, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"evaluation.models lists \['nope'\]"):
        _run(staged, {**staged["evaluation"], "models": ["nope"]}, _weights(staged, tmp_path))


# --------------------------------------------------------------------------- building blocks


def test_lazy_bundle_reads_nothing_until_used(tmp_path) -> None:
    lazy = LazyTensorBundle(tmp_path / "w.safetensors")
    assert not lazy.exists()
    with pytest.raises(FileNotFoundError, match="w.safetensors"):
        _ = lazy.tensors
    TensorBundle({"a": torch.ones(2)}, {"method": "ft"}).save(tmp_path / "w.safetensors")
    assert lazy.exists() and lazy.metadata == {"method": "ft"} and torch.equal(lazy.tensors["a"], torch.ones(2))


@pytest.mark.parametrize(("n", "world_size"), [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shards_cover_every_row_once_in_order(n: int, world_size: int) -> None:
    shards = [shard_rows(n, DistContext(rank, world_size)) for rank in range(world_size)]
    assert [row for shard in shards for row in shard] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_gather_is_the_identity_in_one_process() -> None:
    rows = torch.arange(5)
    assert all_gather_rows(rows, DistContext()) is rows


def test_split_batches_yields_rows_in_order_and_only_those_asked(staged) -> None:
    from starft_pipeline.data.dataset_index import dataset_split

    split = dataset_split(staged["dataset_metadata"], staged["dataset_index"], "synthetic", "test")
    batches = list(split_batches(split, 32, 4, rows=range(3, len(split))))
    index = torch.cat([rows for _, rows in batches])
    assert index.tolist() == list(range(3, len(split))) and index.dtype == torch.int64
    images = torch.cat([images for images, _ in batches])
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
    whole = torch.cat([images for images, _ in split_batches(split, 32, 5)])
    assert torch.equal(whole[3:], images)


def test_a_method_without_history_is_left_out_of_the_training_curves(tmp_path) -> None:
    from starft_pipeline.kedro_io import OptionalCSVDataset
    from starft_pipeline.pipelines.evaluation.nodes import plot_training

    missing = OptionalCSVDataset(str(tmp_path / "lp_history.csv")).load()
    assert missing.empty
    stored = OptionalCSVDataset(str(tmp_path / "flyp_history.csv"))
    stored.save(pd.DataFrame({"epoch": [0, 0], "step": [1, 2], "loss": [3.0, 2.0], "method": "flyp"}))
    fig = plot_training({"training_terms": ["loss"]}, missing, stored.load())
    assert [line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")] == ["flyp"]
    assert "No fine-tuned method" in plot_training({}, missing).axes[0].texts[0].get_text()
