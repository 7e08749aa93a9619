"""data.formats: the reader each ``datasets.<name>.format`` picks, and the error for an unknown one."""

from __future__ import annotations

import pytest

from starft_pipeline.data.formats import DATA_FORMATS, read_dataset
from starft_pipeline.data.metadata import DataError


def test_the_formats_come_from_the_literal():
    assert DATA_FORMATS == ("release", "image_folder")


def test_an_unknown_format_names_the_parameter(tmp_path):
    with pytest.raises(
        DataError, match=r"datasets.mine.format is 'parquet'; use release \(metadata.csv\) or image_folder"
    ):
        read_dataset("mine", {"format": "parquet", "root": str(tmp_path)})


def test_an_optional_release_without_metadata_is_skipped(tmp_path):
    assert read_dataset("mine", {"root": str(tmp_path / "absent"), "optional": True}) is None


def test_a_generated_release_is_read_with_its_root(tmp_path):
    spec = {
        "name": "tiny",
        "object_ids": [0, 1],
        "background_ids": [5, 1],
        "train_per_class": 4,
        "val_per_group": 1,
        "test_per_group": 1,
        "correlation": 0.75,
    }
    checked = read_dataset("tiny", {"root": str(tmp_path / "tiny"), "generate": spec})
    assert checked is not None and set(checked.frame["root"]) == {str(tmp_path / "tiny")}
    assert set(checked.frame["split"]) == {0, 1, 2} and not checked.skipped
