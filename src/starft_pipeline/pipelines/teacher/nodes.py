"""teacher stage: run the frozen zero-shot model once and cache its embeddings."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from starft_pipeline.dataset_index import all_splits
from starft_pipeline.descriptions import flatten_descriptions
from starft_pipeline.models import ModelSpec, create_model, resolve_device
from starft_pipeline.dataset_index import dataset_info
from starft_pipeline.teacher import compute_teacher_cache, expected_fingerprint
from starft_pipeline.tensor_bundle import TensorBundle

logger = logging.getLogger(__name__)


def build_teacher_cache(
    dataset_metadata: pd.DataFrame,
    dataset_index: dict[str, Any],
    descriptions: dict[str, Any],
    teacher: dict[str, Any],
) -> tuple[dict[str, Any], TensorBundle]:
    """The model record later stages build from, and the teacher cache with its fingerprint."""
    spec = ModelSpec(**teacher["model"])
    class_names = dataset_info(dataset_index, dataset_index["finetune_dataset"])["class_names"]
    pool = flatten_descriptions(descriptions, class_names)
    identity = spec.identity()
    fingerprint_value = expected_fingerprint(identity, dataset_index, pool)
    device = resolve_device(teacher.get("device", "auto"))
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
    )
    logger.info("teacher cache %s: logit scale %.2f, %d descriptions", fingerprint_value, cache.logit_scale, len(pool.texts))
    record = {"spec": teacher["model"], "identity": identity, "fingerprint": fingerprint_value}
    return record, cache.to_bundle()
