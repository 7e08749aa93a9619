"""Caches: a stale or damaged teacher cache is refused with a clear message, parts are reused or
recomputed, and every write is atomic (a failed write leaves the previous file and no debris)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, DatasetError

from starft_pipeline.core import tensor_bundle
from starft_pipeline.core.io_utils import atomic_path, atomic_write_json
from starft_pipeline.core.tensor_bundle import DamagedFileError, TensorBundle
from starft_pipeline.data.dataset_index import data_identity
from starft_pipeline.data.descriptions import descriptions_document, expand_pools, flatten_descriptions
from starft_pipeline.kedro_io import TensorBundleDataset
from starft_pipeline.models.clip import ModelSpec
from starft_pipeline.models.teacher import (
    FeatureParts,
    StaleCacheError,
    TeacherCache,
    check_trained_from,
    expected_fingerprint,
)
from starft_pipeline.pipelines.finetune.nodes import finetune_method
from starft_pipeline.pipelines.teacher.nodes import build_teacher_cache, release_teacher_parts
from tests.helpers import stage_tiny


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny data → index → offline descriptions → teacher cache (random-init teacher), through the nodes."""
    return stage_tiny(tmp_path_factory.mktemp("caches") / "data")


@pytest.fixture
def recorded() -> dict[str, Any]:
    """A dataset index, descriptions, the teacher's record and a cache that fits them (no data, no model run)."""
    classes = ["cat", "dog"]
    index = {
        "finetune_dataset": "d",
        "datasets": {
            "d": {"class_names": classes, "templates": ["a photo of a {c}."], "metadata_fingerprint": "rows-1"}
        },
    }
    document = descriptions_document(
        expand_pools(classes, {"background": ["a {c} on grass."]}, ["background"]), classes, "offline", {}
    )
    spec = {"architecture": "starft-tiny-vit", "pretrained": None}
    identity = ModelSpec(**spec).identity()
    value = expected_fingerprint(identity, index, flatten_descriptions(document, classes))
    cache = TeacherCache({}, {}, torch.zeros(2, 4), torch.tensor([0, 1]), 100.0, value).to_bundle()
    record = {"spec": spec, "identity": identity, "fingerprint": value, "data": dict(data_identity(index))}
    return {"dataset_index": index, "descriptions": document, "teacher_model": record, "teacher_cache": cache}


def _bundle_file(tmp_path: Path) -> Path:
    path = tmp_path / "teacher_cache.safetensors"
    TensorBundle({"a": torch.arange(64, dtype=torch.float32).reshape(8, 8)}, {"fingerprint": "abc"}).save(path)
    return path


@pytest.mark.parametrize("keep", [0, 4, 0.1, 0.5, 0.99], ids=["empty", "4-bytes", "10%", "50%", "99%"])
def test_a_truncated_cache_is_named_with_the_fix(tmp_path: Path, keep: float) -> None:
    path = _bundle_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(keep if keep >= 1 or keep == 0 else len(data) * keep)])
    catalog = DataCatalog({"teacher_cache": TensorBundleDataset(str(path))})
    with pytest.raises(DatasetError) as error:
        catalog.load("teacher_cache")
    assert f"{path} is damaged or not a safetensors file" in str(error.value)
    assert "delete it and rerun the stage that writes it" in str(error.value)
    assert isinstance(error.value.__cause__, DamagedFileError) or "damaged" in str(error.value)


def test_a_missing_cache_says_which_stage_writes_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist; run the stage that writes it first"):
        TensorBundle.load(tmp_path / "absent.safetensors")


def test_a_stale_teacher_cache_stops_finetuning(recorded: dict[str, Any]) -> None:
    descriptions = json.loads(json.dumps(recorded["descriptions"]))
    descriptions["descriptions"]["background"]["cat"] = ["a cat on snow."]
    params = {"method": "star", "epochs": 1, "device": "cpu"}
    with pytest.raises(
        StaleCacheError,
        match=r"computed from other model weights, prompts, descriptions or data.*"
        r"Rerun `kedro run --pipelines=teacher`",
    ):
        finetune_method(
            params,
            dataset_metadata=pd.DataFrame(),
            dataset_index=recorded["dataset_index"],
            descriptions=descriptions,
            teacher_model=recorded["teacher_model"],
            teacher_cache=recorded["teacher_cache"],
        )


def test_evaluation_refuses_weights_from_another_teacher_cache(recorded: dict[str, Any]) -> None:
    weights = TensorBundle({}, {"method": "flyp", "teacher_fingerprint": "0123456789abcdef"})
    with pytest.raises(StaleCacheError) as error:
        check_trained_from(
            "flyp", weights.metadata["teacher_fingerprint"], recorded["teacher_model"], recorded["dataset_index"]
        )
    message = str(error.value)
    assert "the flyp weights were fine-tuned from the teacher cache 0123456789abcdef" in message
    assert f"the current teacher cache is {recorded['teacher_model']['fingerprint']}" in message
    assert "`--namespaces=flyp`" in message


def test_evaluation_refuses_a_teacher_computed_on_other_data(recorded: dict[str, Any]) -> None:
    teacher_model = {**recorded["teacher_model"], "data": {"d": "rows-0"}}
    weights = TensorBundle({}, {"method": "star", "teacher_fingerprint": teacher_model["fingerprint"]})
    with pytest.raises(
        StaleCacheError,
        match=r"computed from other data than the current dataset index.*"
        r"Rerun `kedro run --pipelines=teacher`, then finetune",
    ):
        check_trained_from("star", weights.metadata["teacher_fingerprint"], teacher_model, recorded["dataset_index"])


def test_feature_parts_reuse_match_or_recompute(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    parts = FeatureParts(tmp_path, "0123456789abcdef")
    features = torch.randn(5, 4)
    parts.save("tiny/train", features)
    assert torch.equal(parts.load("tiny/train", 5), features)
    with caplog.at_level(logging.WARNING, logger="starft_pipeline.models.teacher"):
        assert parts.load("tiny/train", 6) is None
        assert parts.load("tiny/val", 5) is None  # absent: silently None
        path = parts.path("tiny/train")
        path.write_bytes(path.read_bytes()[:20])
        assert parts.load("tiny/train", 5) is None
    assert "is not for tiny/train (6 rows); recomputing it" in caplog.text
    assert "is damaged or not a safetensors file" in caplog.text and "recomputing tiny/train" in caplog.text
    other = FeatureParts(tmp_path, "fedcba9876543210")
    other.save("x/test", features)
    (tmp_path / "keep-me").mkdir()
    parts.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep-me"]


@pytest.mark.slow
def test_the_teacher_stage_reuses_finished_parts(staged: dict[str, Any], tmp_path: Path) -> None:
    params = {**staged["params"]["teacher"], "work_dir": str(tmp_path / "parts")}
    inputs = (staged["dataset_metadata"], staged["dataset_index"], staged["descriptions"])
    record, first = build_teacher_cache(*inputs, params)
    files = sorted((tmp_path / "parts").rglob("*.safetensors"))
    assert len(files) == len([key for key in first.tensors if key.startswith("image/")])
    written = {path: path.stat().st_mtime_ns for path in files}
    _, second = build_teacher_cache(*inputs, params)
    # reused, not recomputed: every finished part is still the file the first run wrote
    assert {path: path.stat().st_mtime_ns for path in files} == written
    assert all(torch.equal(first.tensors[key], second.tensors[key]) for key in first.tensors)
    release_teacher_parts(record, staged["dataset_index"], params)
    assert list((tmp_path / "parts").rglob("*")) == []


def _failing_writer(path_holder: list[Path]) -> Any:
    def write(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"half a file")
        path_holder.append(Path(filename))
        raise OSError("disk full")

    return write


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _bundle_file(tmp_path)
    before = path.read_bytes()
    written: list[Path] = []
    monkeypatch.setattr(tensor_bundle, "save_file", _failing_writer(written))
    with pytest.raises(OSError, match="disk full"):
        TensorBundle({"b": torch.zeros(3)}, {}).save(path)
    assert path.read_bytes() == before
    assert written and written[0] != path and not written[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_crash_inside_an_atomic_write_leaves_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_text('{"a": 2, "trunc')
        raise RuntimeError("killed half-way")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_an_atomic_write_gets_the_mode_a_plain_write_gets(tmp_path: Path) -> None:
    plain, atomic = tmp_path / "plain.json", tmp_path / "atomic.json"
    plain.write_text("{}")
    atomic_write_json(atomic, {})
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
