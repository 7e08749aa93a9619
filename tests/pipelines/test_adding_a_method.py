"""A method added as one row of ``methods.METHOD_SPECS`` (nothing else edited) is fine-tuned by the
finetune pipeline and evaluated by the evaluation pipeline (docs/adding-a-method.md)."""

from __future__ import annotations

import copy

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

from starft_pipeline.kedro_io import LazyTensorBundleDataset
from starft_pipeline.pipelines.evaluation.pipeline import one_pass_evaluation
from starft_pipeline.pipelines.finetune.pipeline import create_pipeline as finetune_pipeline
from starft_pipeline.train import methods
from starft_pipeline.train.methods import METHOD_SPECS, MethodSpec
from tests.engine_helpers import single_thread  # noqa: F401 (autouse fixture)
from tests.helpers import stage_tiny

STAGED = ("dataset_metadata", "dataset_index", "descriptions", "teacher_model", "teacher_cache")


@pytest.mark.slow
def test_a_toy_method_trains_and_is_evaluated_with_no_other_edit(monkeypatch, tmp_path):
    toy = MethodSpec("toy", "contrastive", regulariser="star", summary="a test's row")
    monkeypatch.setattr(methods, "METHOD_SPECS", (*METHOD_SPECS, toy))
    staged = stage_tiny(tmp_path / "data")
    finetune_params = {
        **copy.deepcopy(staged["params"]["star"]["finetune"]),
        "method": "toy",
        "progress": False,
        "diminishing": False,
    }
    evaluation = {
        **staged["params"]["evaluation"],
        "models": ["toy"],
        "zero_shot": False,
        "bootstrap": {"n_resamples": 10},
        "wise_ft": {"methods": []},
    }
    missing = {
        f"{spec.name}.weights": LazyTensorBundleDataset(filepath=str(tmp_path / f"{spec.name}.safetensors"))
        for spec in METHOD_SPECS
    }
    catalog = DataCatalog(
        {
            **{name: MemoryDataset(staged[name]) for name in STAGED},
            **missing,
            "params:toy.finetune": MemoryDataset(finetune_params),
            "params:evaluation": MemoryDataset(evaluation),
        }
    )
    toy_training = Pipeline([node for node in finetune_pipeline().nodes if node.namespace == "toy"])
    outputs = SequentialRunner().run(toy_training + one_pass_evaluation(), catalog)
    assert {"toy.train.contrastive", "toy.train.regulariser"} <= set(outputs["toy.loss_curve"].load())
    results = outputs["toy.evaluation"].load()["results"]
    assert {row["method"] for row in results} == {"toy"}
    assert {row["split"] for row in results} >= {"synthetic/val", "synthetic/test"}
