"""Under torchrun every rank runs the Kedro pipeline; only rank 0 writes outputs and logs to MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro_datasets.json import JSONDataset

from starft_pipeline.core.distributed import launch_rank
from starft_pipeline.hooks import RankZeroOutputsHooks, untracked_pipelines


def _identity(value):
    return value


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"WORLD_SIZE": "1", "RANK": "0"}, 0),
        ({"WORLD_SIZE": "2", "RANK": "1"}, 1),
        ({"WORLD_SIZE": "4", "RANK": "0"}, 0),
    ],
)
def test_launch_rank_reads_torchrun_variables(monkeypatch, env, rank):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launch_rank() == rank


def test_a_bad_rank_variable_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one'"):
        launch_rank()


def _catalog_and_pipeline(tmp_path: Path) -> tuple[DataCatalog, Pipeline]:
    catalog = DataCatalog({"raw": MemoryDataset({"a": 1}), "out": JSONDataset(filepath=str(tmp_path / "out.json"))})
    return catalog, Pipeline([Node(_identity, "raw", "out", name="copy")])


@pytest.mark.parametrize(("rank", "persisted"), [("0", True), ("1", False)])
def test_only_rank_zero_persists_the_outputs(monkeypatch, tmp_path, rank, persisted):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    catalog, pipeline = _catalog_and_pipeline(tmp_path)
    RankZeroOutputsHooks().before_pipeline_run({}, pipeline, catalog)
    catalog.save("out", {"a": 1})
    assert catalog.load("out") == {"a": 1}  # later nodes of the rank still get it
    assert (tmp_path / "out.json").exists() is persisted
    assert isinstance(catalog.get("raw"), MemoryDataset) and catalog.load("raw") == {"a": 1}  # inputs untouched


def test_other_ranks_hold_tensor_bundles_by_reference_and_copy_the_rest(monkeypatch, tmp_path):
    """The teacher cache is not deep-copied into a rank's RAM on every load; a JSON output still is."""
    import torch

    from starft_pipeline.core.tensor_bundle import TensorBundle
    from starft_pipeline.kedro_io import TensorBundleDataset

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    catalog = DataCatalog(
        {
            "cache": TensorBundleDataset(filepath=str(tmp_path / "cache.safetensors")),
            "out": JSONDataset(filepath=str(tmp_path / "out.json")),
        }
    )
    pipeline = Pipeline([Node(_identity, "raw", "cache", name="cache"), Node(_identity, "raw2", "out", name="out")])
    RankZeroOutputsHooks().before_pipeline_run({}, pipeline, catalog)
    bundle, report = TensorBundle({"image/x": torch.zeros(3, 2)}, {}), {"a": [1]}
    catalog.save("cache", bundle)
    catalog.save("out", report)
    assert catalog.load("cache") is bundle and catalog.load("cache") is catalog.load("cache")
    assert catalog.load("out") == report and catalog.load("out") is not report
    assert not (tmp_path / "cache.safetensors").exists()


def test_mlflow_tracking_is_off_on_other_ranks_only(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert untracked_pipelines() == []
    monkeypatch.setenv("RANK", "1")
    assert {"__default__", "full", "finetune", "pretrain"} <= set(untracked_pipelines())
