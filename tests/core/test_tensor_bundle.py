"""core.tensor_bundle: tensors and JSON metadata round-trip; a missing or damaged file says what to do."""

from __future__ import annotations

import pytest
import torch

from starft_pipeline.core.tensor_bundle import DamagedFileError, TensorBundle


def test_tensors_and_metadata_round_trip(tmp_path):
    path = tmp_path / "bundle.safetensors"
    TensorBundle(
        {"w": torch.arange(6.0).view(2, 3), "ids": torch.tensor([1, 2])}, {"method": "star", "n": [1, 2]}
    ).save(path)
    loaded = TensorBundle.load(path)
    assert loaded.metadata == {"method": "star", "n": [1, 2]}
    assert torch.equal(loaded.tensors["w"], torch.arange(6.0).view(2, 3)) and loaded.tensors["ids"].dtype == torch.int64


def test_a_missing_file_names_the_stage_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the stage that writes it first"):
        TensorBundle.load(tmp_path / "absent.safetensors")


def test_a_damaged_file_says_to_delete_and_rerun(tmp_path):
    path = tmp_path / "bundle.safetensors"
    TensorBundle({"w": torch.ones(100)}).save(path)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DamagedFileError, match="delete it and rerun the stage that writes it"):
        TensorBundle.load(path)
