"""The class_names stage writes nothing until all of its checks pass: a run that fails at the index
(a label its class names do not cover, in train or in test) leaves the previous tables as they were."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import CSVDataset

from starft_pipeline.data.dataset_index import dataset_split
from starft_pipeline.data.metadata import DataError
from starft_pipeline.pipelines.class_names import create_pipeline
from starft_pipeline.pipelines.class_names.nodes import build_dataset_index
from tests.helpers import PROJECT_ROOT, tiny_parameters

PUBLISHED = ("dataset_metadata.csv", "skipped_items.csv", "dataset_index.json")


def _run_class_names(params: dict[str, Any], out: Path) -> None:
    templates = yaml.safe_load((PROJECT_ROOT / "conf/base/templates/prompt_templates.yml").read_text())
    catalog = DataCatalog(
        {
            "dataset_metadata": CSVDataset(filepath=str(out / "dataset_metadata.csv")),
            "skipped_items": CSVDataset(filepath=str(out / "skipped_items.csv")),
            "dataset_index": JSONDataset(filepath=str(out / "dataset_index.json")),
            "prompt_template_sets": MemoryDataset(templates),
            "params:datasets": MemoryDataset(params["datasets"]),
            "params:class_names": MemoryDataset(params["class_names"]),
        }
    )
    SequentialRunner().run(create_pipeline(), catalog)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """A successful run's tables over tiny generated data; the data sets are then read as they are on disk."""
    root = tmp_path_factory.mktemp("class_names")
    params = tiny_parameters(root / "raw")
    _run_class_names(params, root / "out")
    for config in params["datasets"].values():
        config["generate"] = None
    return params, root / "out"


@pytest.mark.parametrize("split", [0, 2], ids=["bad row in train", "bad row in test"])
def test_a_failed_run_leaves_the_previous_tables_untouched(published: tuple[dict[str, Any], Path], split: int) -> None:
    params, out = published
    before = {name: (out / name).read_bytes() for name in PUBLISHED}
    metadata_file = Path(params["datasets"]["synthetic"]["root"]) / "metadata.csv"
    original = metadata_file.read_text()
    metadata = pd.read_csv(metadata_file)
    row = metadata.index[metadata["split"] == split][0]
    metadata.loc[row, "y"] = 7  # no class 7: the prepare node passes, the index node fails
    metadata.to_csv(metadata_file, index=False)
    try:
        with pytest.raises(DataError, match="labels span 0..7"):
            _run_class_names(params, out)
    finally:
        metadata_file.write_text(original)
    assert {name: (out / name).read_bytes() for name in PUBLISHED} == before


def test_a_successful_run_writes_the_checked_tables(published: tuple[dict[str, Any], Path]) -> None:
    _, out = published
    metadata = pd.read_csv(out / "dataset_metadata.csv")
    assert set(metadata["dataset"]) == {"synthetic", "waterbirds_like"}
    assert (out / "dataset_index.json").is_file() and (out / "skipped_items.csv").is_file()


@pytest.mark.parametrize("split", [0, 2], ids=["changed train row", "label outside the index in test"])
def test_later_stages_refuse_a_table_the_index_was_not_built_from(
    published: tuple[dict[str, Any], Path], split: int
) -> None:
    """A mixed state (a table from one run beside an index from another) is named, not used or an IndexError."""
    _, out = published
    metadata = pd.read_csv(out / "dataset_metadata.csv")
    index = json.loads((out / "dataset_index.json").read_text())
    split_name = {0: "train", 2: "test"}[split]
    dataset_split(metadata, index, "synthetic", split_name)  # the published pair agrees
    row = metadata.index[(metadata["dataset"] == "synthetic") & (metadata["split"] == split)][0]
    metadata.loc[row, "y"] = 7 if split == 2 else (metadata.loc[row, "y"] + 1) % 3
    with pytest.raises(DataError, match=r"does not match the dataset index .*pipelines=class_names"):
        dataset_split(metadata, index, "synthetic", split_name)


def test_the_waterbirds_release_counts_are_checked_where_the_data_is_read(
    published: tuple[dict[str, Any], Path], caplog: pytest.LogCaptureFixture
) -> None:
    params, out = published
    metadata = pd.read_csv(out / "dataset_metadata.csv")
    templates = yaml.safe_load((PROJECT_ROOT / "conf/base/templates/prompt_templates.yml").read_text())
    class_names = copy.deepcopy(params["class_names"])
    class_names["datasets"]["waterbirds_like"]["convention"] = "waterbirds"
    with caplog.at_level(logging.WARNING, logger="starft_pipeline.pipelines.class_names.nodes"):
        build_dataset_index(metadata, templates, class_names)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("data set 'waterbirds_like' (read from ")
    assert "differ from the release [3498, 184, 56, 1057]" in warnings[0]
