"""predict on a folder holding files that cannot be decoded: they are skipped and counted, the rest classified."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from starft_pipeline.data.metadata import DataError
from starft_pipeline.models.predict import ImageClassifier, predictions, project_classifier
from tests.models.test_export import DATASET_INDEX, TEACHER_MODEL


@pytest.fixture(scope="module")
def classifier() -> ImageClassifier:
    return project_classifier("zero_shot", TEACHER_MODEL, DATASET_INDEX)


def _good_image(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)


def test_a_corrupt_jpg_is_skipped_and_named(
    classifier: ImageClassifier, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("a.png", "c.png", "d.png"):
        _good_image(tmp_path / name)
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with caplog.at_level(logging.WARNING, logger="starft_pipeline.models.predict"):
        table = pd.concat(list(predictions(classifier, tmp_path, batch_size=2)), ignore_index=True)
    assert table["file"].tolist() == ["a.png", "c.png", "d.png"]
    warning = caplog.text
    assert "1 of 4 image files" in warning and "skipped" in warning and str(tmp_path / "b.jpg") in warning


def test_a_folder_with_no_decodable_image_is_an_error_about_predict(
    classifier: ImageClassifier, tmp_path: Path
) -> None:
    (tmp_path / "x.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"none of the 1 image files .*predict.images"):
        list(predictions(classifier, tmp_path))
