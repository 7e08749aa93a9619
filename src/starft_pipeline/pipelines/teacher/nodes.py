"""teacher stage: run the frozen zero-shot model once and cache its embeddings."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from starft_pipeline.core.distributed import init_from_env
from starft_pipeline.core.precision import resolve_precision
from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.data.dataset_index import all_splits, data_identity, dataset_info
from starft_pipeline.data.descriptions import flatten_descriptions
from starft_pipeline.models.clip import ModelSpec, create_model, resolve_device
from starft_pipeline.models.teacher import (
    DEFAULT_PART_ROWS,
    DEFAULT_WORK_DIR,
    FeatureParts,
    compute_teacher_cache,
    expected_fingerprint,
    image_features_key,
)

logger = logging.getLogger(__name__)


def _feature_parts(
    teacher: dict[str, Any], identity: dict[str, str], dataset_index: dict[str, Any], precision: str = "fp32"
) -> FeatureParts | None:
    """Where finished parts are kept until the cache is saved (``teacher.work_dir``; null: not kept)."""
    work_dir = teacher.get("work_dir", DEFAULT_WORK_DIR)
    return FeatureParts(work_dir, image_features_key(identity, dataset_index, precision)) if work_dir else None


def build_teacher_cache(
    dataset_metadata: pd.DataFrame,
    dataset_index: dict[str, Any],
    descriptions: dict[str, Any],
    teacher: dict[str, Any],
    image_shards: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], TensorBundle]:
    """The model record later stages build from, and the teacher cache with its fingerprint.

    With the shards stage's ``image_shards`` (a folder) the images are read from its shards, and the
    record passes them on (``shards``) to fine-tuning and evaluation."""
    shards = image_shards if image_shards and image_shards.get("folder") else None
    spec = ModelSpec(**teacher["model"])
    class_names = dataset_info(dataset_index, dataset_index["finetune_dataset"])["class_names"]
    pool = flatten_descriptions(descriptions, class_names)
    identity = spec.identity()
    fingerprint_value = expected_fingerprint(identity, dataset_index, pool)
    context, device = init_from_env(resolve_device(teacher.get("device", "auto")))
    precision = resolve_precision(teacher.get("precision", "auto"), device, "teacher precision")
    loaded = create_model(spec, device=device)
    cache = compute_teacher_cache(
        loaded,
        splits=all_splits(dataset_metadata, dataset_index),
        class_names={name: entry["class_names"] for name, entry in dataset_index["datasets"].items()},
        templates_by_dataset={name: entry["templates"] for name, entry in dataset_index["datasets"].items()},
        descriptions=pool,
        fingerprint_value=fingerprint_value,
        batch_size=int(teacher.get("batch_size", 256)),
        device=device,
        parts=_feature_parts(teacher, identity, dataset_index, precision),
        num_workers=int(teacher.get("num_workers", 0)),
        precision=precision,
        part_rows=int(teacher.get("part_rows", DEFAULT_PART_ROWS)),
        context=context,
        shards=shards["folder"] if shards else None,
        decode=shards["decode"] if shards else "cpu",
    )
    logger.info(
        "teacher cache %s: logit scale %.2f, %d descriptions", fingerprint_value, cache.logit_scale, len(pool.texts)
    )
    record = {
        "spec": teacher["model"],
        "identity": identity,
        "fingerprint": fingerprint_value,
        "data": dict(data_identity(dataset_index)),
    } | ({"shards": {"folder": shards["folder"], "decode": shards["decode"]}} if shards else {})
    return record, cache.to_bundle()


def release_teacher_parts(
    teacher_model: dict[str, Any], dataset_index: dict[str, Any], teacher: dict[str, Any]
) -> None:
    """Remove the per-split parts once the teacher cache holding them is saved (runs after that node)."""
    parts = _feature_parts(teacher, teacher_model["identity"], dataset_index)  # every precision's key is released
    if parts is not None:
        parts.release()


def teacher_fingerprint(teacher_model: dict[str, Any]) -> dict[str, Any]:
    """The teacher cache's fingerprint and the model identity it was computed from (an MLflow artifact)."""
    return {"fingerprint": teacher_model["fingerprint"], "identity": teacher_model["identity"]}
