"""The WiSE-FT sweep of the evaluation: which models it adds, the chosen α's reuse, its outputs."""

from __future__ import annotations

import pytest
import torch

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.evaluate.config import EvaluationConfig
from starft_pipeline.evaluate.wise_sweep import CURVE_COLUMNS, WiseModel, plan_sweep, wise_models, wise_outputs


def _settings(alphas, splits, alpha=0.5):
    config = EvaluationConfig.from_params(
        {
            "splits": ["val", "test"],
            "wise_ft": {"methods": ["flyp"], "alphas": alphas, "alpha": alpha, "splits": splits},
        }
    )
    return plan_sweep(config, ["flyp"])


def test_chosen_alpha_reuses_the_sweep_when_it_covers_the_evaluation_splits():
    finetuned = TensorBundle({"w": torch.ones(1)}, {"method": "flyp"})
    settings = _settings([1.0, 0.0, 0.5], ("val", "test"))
    models = wise_models("flyp", finetuned, {"w": torch.zeros(1)}, {}, settings, ("val", "test"))
    assert [(model.key, float(bundle.tensors["w"][0]), splits) for model, bundle, splits in models] == [
        ("flyp+wise@0", 0.0, ("val", "test")),
        ("flyp+wise@0.5", 0.5, ("val", "test")),
        ("flyp+wise@1", 1.0, ("val", "test")),
    ]
    narrower = _settings([0.0, 1.0], ["test"])  # a narrower sweep: the chosen α is evaluated on its own
    models = wise_models("flyp", finetuned, {"w": torch.zeros(1)}, {}, narrower, ("val", "test"))
    assert [(model, splits) for model, _, splits in models][-1] == (WiseModel("flyp"), ("val", "test"))
    assert {model.label for model, _, _ in models} == {"flyp+wise"}
    rows = {
        model.key: {
            "results": [
                {
                    "method": "flyp+wise",
                    "dataset": "d",
                    "split": f"d/{split}",
                    **dict.fromkeys(CURVE_COLUMNS[4:], float(bundle.tensors["w"][0])),
                }
                for split in splits
            ]
        }
        for model, bundle, splits in models
    }
    curve, chosen = wise_outputs(narrower, rows, ("val", "test"))
    assert list(curve["alpha"]) == [0.0, 1.0] and list(curve["split"]) == ["test", "test"]
    assert [row["avg_acc"] for row in chosen["results"]] == [0.5, 0.5]


def test_unknown_method_in_the_sweep_list_names_the_parameter():
    with pytest.raises(ValueError, match=r"evaluation.wise_ft.methods lists \['nope'\]"):
        EvaluationConfig.from_params({"splits": ["test"], "wise_ft": {"methods": ["nope"]}})


def test_methods_not_evaluated_are_not_swept():
    config = EvaluationConfig.from_params({"splits": ["test"], "wise_ft": {"methods": ["ft", "flyp"]}})
    sweep = plan_sweep(config, ["flyp"])
    assert sweep.methods == ("flyp",) and sweep.splits == ("test",)  # no wise_ft.splits: the evaluation's
