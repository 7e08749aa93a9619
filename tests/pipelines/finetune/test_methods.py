"""Fine-tuning methods: the CE and LP pieces against hand-computed values, and a CPU smoke run of each."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from starft_pipeline.evaluate.config import EvaluationConfig
from starft_pipeline.evaluate.one_pass import evaluate_weights
from starft_pipeline.models.clip import ModelSpec, create_model
from starft_pipeline.models.heads import (
    ClassifierHead,
    freeze_text_tower,
    head_for_classes,
    prepare_head_training,
    split_heads,
    weights_bundle,
    zero_shot_linear_head,
)
from starft_pipeline.pipelines.finetune.nodes import finetune_method, fit_linear_probe, linear_probe_weights
from starft_pipeline.pipelines.finetune.pipeline import SHARED_INPUTS, create_pipeline
from starft_pipeline.train.finetune import FinetuneConfig
from starft_pipeline.train.linear_probe import LinearProbeConfig, select_linear_probe
from starft_pipeline.train.losses import head_cross_entropy
from starft_pipeline.train.methods import METHODS
from starft_pipeline.train.step_losses import step_losses
from tests.helpers import stage_tiny

# ----------------------------------------------------------------------------- pure pieces


def test_head_cross_entropy_matches_hand_computation():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    bias = torch.tensor([0.0, 1.0])
    labels = torch.tensor([0, 1])
    # logits: row 0 = [2, 1] (label 0), row 1 = [0, 2] (label 1)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 2  # 0.2200943
    assert head_cross_entropy(features, weight, bias, labels).item() == pytest.approx(expected, abs=1e-6)


def test_zero_shot_linear_head_is_scaled_class_features_with_zero_bias():
    head = zero_shot_linear_head(torch.tensor([[0.6, 0.8], [1.0, 0.0]]), 10.0, ["a", "b"])
    assert torch.equal(head.weight, torch.tensor([[6.0, 8.0], [10.0, 0.0]]))
    assert torch.equal(head.bias, torch.zeros(2))
    # logits of feature [1, 0]: [6, 10]
    assert torch.equal(head.logits(torch.tensor([[1.0, 0.0]])), torch.tensor([[6.0, 10.0]]))


def test_linear_probe_chooses_c_on_val_and_prefers_the_smaller_c_on_ties():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(20)
    centres = torch.eye(3)
    features = torch.nn.functional.normalize(centres[labels] + 0.05 * torch.randn(60, 3, generator=generator), dim=1)
    head, sweep = select_linear_probe(
        features, labels, features, labels, ["a", "b", "c"], LinearProbeConfig(c_grid=(10.0, 1.0))
    )
    assert list(sweep["C"]) == [1.0, 10.0] and (sweep["val_acc"] == 1.0).all()
    assert head.class_names == ("a", "b", "c") and head.weight.shape == (3, 3)
    assert (head.logits(features).argmax(1) == labels).all()
    # both C separate the data: the tie goes to the smaller C (stronger regularisation, smaller weights)
    smaller, _ = select_linear_probe(features, labels, None, None, ["a", "b", "c"], LinearProbeConfig(c_grid=(1.0,)))
    assert torch.allclose(head.weight, smaller.weight)


def test_linear_probe_parameters_are_validated():
    with pytest.raises(ValueError, match="linear_probe.c_grid"):
        LinearProbeConfig.from_params({"c_grid": [0.0]})
    with pytest.raises(ValueError, match=r"unknown linear_probe parameter\(s\) \['C'\]"):
        LinearProbeConfig.from_params({"C": 1.0})
    with pytest.raises(ValueError, match="chooses C on the val split"):
        select_linear_probe(torch.eye(2), torch.tensor([0, 1]), None, None, ["a", "b"], LinearProbeConfig())


def test_head_restriction_and_lookup_by_class_names():
    head = ClassifierHead(torch.arange(6.0).reshape(3, 2), torch.tensor([0.0, 1.0, 2.0]), ("a", "b", "c"))
    sub = head_for_classes({"imagenet": head}, ["c", "a"])
    assert torch.equal(sub.weight, torch.tensor([[4.0, 5.0], [0.0, 1.0]])) and torch.equal(
        sub.bias, torch.tensor([2.0, 0.0])
    )
    assert head_for_classes({"imagenet": head}, ["landbird", "waterbird"]) is None


def test_weights_bundle_round_trip_separates_towers_and_head():
    state = {
        "visual.w": torch.ones(2),
        "classification_head.weight": torch.eye(2),
        "classification_head.bias": torch.zeros(2),
    }
    bundle = weights_bundle(state, "synthetic", ["a", "b"], {"method": "ft"})
    assert set(bundle.tensors) == {"visual.w", "head/synthetic/weight", "head/synthetic/bias"}
    towers, heads = split_heads(bundle.tensors, bundle.metadata)
    assert set(towers) == {"visual.w"} and heads["synthetic"].class_names == ("a", "b")
    assert torch.equal(heads["synthetic"].weight, torch.eye(2))


def test_config_accepts_every_method_and_names_the_choices():
    for method in METHODS:
        assert FinetuneConfig(method=method).method == method
    with pytest.raises(ValueError, match="one of lp, ft, lp_ft, flyp, star, kl; got 'wise'"):
        FinetuneConfig(method="wise")
    assert FinetuneConfig(method="ft").head_init == "zero_shot"
    assert FinetuneConfig(method="lp_ft").head_init == "linear_probe"
    assert FinetuneConfig(method="star").head_init is None
    with pytest.raises(ValueError, match="'lp' has no fine-tuning loop"):
        step_losses("lp")


def test_every_method_is_a_namespaced_pipeline():
    names = {node.name for node in create_pipeline().nodes}
    for method in METHODS:
        assert any(name.startswith(f"{method}.") for name in names)
    assert {"lp.fit_linear_probe", "lp.linear_probe_weights", "lp_ft.finetune"} <= names


def test_text_tower_freezes_and_head_trains():
    loaded = create_model(ModelSpec("starft-tiny-vit"))
    prepare_head_training(loaded.model, zero_shot_linear_head(torch.eye(2, 128), 100.0, ["a", "b"]))
    trainable = {name for name, parameter in loaded.model.named_parameters() if parameter.requires_grad}
    assert trainable and all(name.startswith(("visual.", "classification_head.")) for name in trainable)
    assert {"classification_head.weight", "classification_head.bias"} <= trainable
    freeze_text_tower(loaded.model)  # idempotent
    assert not loaded.model.logit_scale.requires_grad and not loaded.model.token_embedding.weight.requires_grad


# ----------------------------------------------------------------------------- CPU smoke runs


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    artifacts = stage_tiny(tmp_path_factory.mktemp("data"))
    for block in artifacts["params"].values():  # a few steps each
        if isinstance(block, dict) and isinstance(block.get("finetune"), dict):
            block["finetune"].update(epochs=1, batch_size=32, warmup_steps=0, lr=1e-3, device="cpu", progress=False)
    return artifacts


def _shared(staged):
    return {name: staged[name] for name in SHARED_INPUTS}


def _run_method(staged, method):
    params = staged["params"][method]["finetune"]
    if method == "lp":
        return linear_probe_weights(fit_linear_probe(params, **_shared(staged)), staged["teacher_model"], params)
    probe = fit_linear_probe(params, **_shared(staged)) if method == "lp_ft" else None
    return finetune_method(params, probe, **_shared(staged))


def _evaluate(staged, method, weights):
    evaluation = EvaluationConfig.from_params({"splits": ["test"], "device": "cpu", "bootstrap": {"n_resamples": 10}})
    return evaluate_weights(
        method, weights, staged["dataset_metadata"], staged["dataset_index"], staged["teacher_model"], evaluation
    )


@pytest.mark.parametrize("method", METHODS)
def test_each_method_fine_tunes_and_evaluates(staged, method):
    weights, history = _run_method(staged, method)
    assert weights.metadata["method"] == method and history["method"].eq(method).all()
    assert history["loss"].map(math.isfinite).all()
    teacher = create_model(ModelSpec(**staged["teacher_model"]["spec"])).model.state_dict()
    towers, heads = split_heads(weights.tensors, weights.metadata)
    assert set(towers) == set(teacher)
    moved = {key for key in teacher if not torch.equal(teacher[key], towers[key])}
    if method == "lp":
        assert not moved  # the towers are the teacher's
    elif method in ("ft", "lp_ft"):
        assert moved and all(key.startswith("visual.") for key in moved)  # text tower frozen
    else:
        assert any(key.startswith("visual.") for key in moved) and "token_embedding.weight" in moved
    if method in ("lp", "ft", "lp_ft"):
        assert set(heads) == {"synthetic"} and heads["synthetic"].weight.shape == (3, 128)
        assert heads["synthetic"].class_names == tuple(staged["dataset_index"]["datasets"]["synthetic"]["class_names"])
    else:
        assert heads == {}
    results = pd.DataFrame(_evaluate(staged, method, weights)["results"])
    assert set(results["split"]) == {"synthetic/test", "waterbirds_like/test"} and results["method"].eq(method).all()


def test_ft_starts_from_the_zero_shot_head_and_lp_ft_from_the_probe(staged):
    # lr > 0 is a parameter rule (FinetuneConfig checks it too); 1e-12 leaves the head at its start
    ft_params = dict(staged["params"]["ft"]["finetune"], lr=1e-12)
    weights, _ = finetune_method(ft_params, **_shared(staged))
    _, heads = split_heads(weights.tensors, weights.metadata)
    cache = staged["teacher_cache"]
    expected = float(cache.metadata["logit_scale"]) * cache.tensors["class/synthetic"]
    assert torch.allclose(heads["synthetic"].weight, expected, atol=1e-5)
    assert torch.allclose(heads["synthetic"].bias, torch.zeros(3), atol=1e-8)

    lp_ft_params = dict(staged["params"]["lp_ft"]["finetune"], lr=1e-12)
    probe = fit_linear_probe(lp_ft_params, **_shared(staged))
    weights, _ = finetune_method(lp_ft_params, probe, **_shared(staged))
    _, heads = split_heads(weights.tensors, weights.metadata)
    assert torch.allclose(heads["synthetic"].weight, probe.tensors["head/synthetic/weight"], atol=1e-6)


def test_lp_ft_without_its_probe_is_an_error(staged):
    with pytest.raises(ValueError, match="starts from the linear probe's head"):
        finetune_method(staged["params"]["lp_ft"]["finetune"], **_shared(staged))


def test_learned_head_classifies_the_finetuning_set_and_zero_shot_the_others(staged, monkeypatch):
    """An LP whose head always answers class 0 is 'right' exactly on class 0 of the fine-tuning set."""
    weights, _ = _run_method(staged, "lp")
    weights.tensors["head/synthetic/weight"] = torch.zeros(3, 128)
    weights.tensors["head/synthetic/bias"] = torch.tensor([1.0, 0.0, 0.0])
    rows = {row["split"]: row for row in _evaluate(staged, "lp", weights)["results"]}
    test = staged["dataset_metadata"].query("dataset == 'synthetic' and split == 2")
    assert rows["synthetic/test"]["avg_acc"] == pytest.approx((test["y"] == 0).mean())
    zero_shot = {row["split"]: row for row in _evaluate(staged, "zero_shot", None)["results"]}
    assert rows["waterbirds_like/test"]["avg_acc"] == zero_shot["waterbirds_like/test"]["avg_acc"]
