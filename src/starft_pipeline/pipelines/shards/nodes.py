"""shards stage: write every split as S×S JPEG shards once, for the teacher, fine-tuning and evaluation.

A separate stage (not an option of class_names) because it needs the teacher model's input size S
and can take hours on ImageNet: class_names stays a quick index of the files, and
`kedro run --pipelines=shards` can be run, resumed or skipped on its own.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pandas as pd

from starft_pipeline.core.distributed import SINGLE_PROCESS, DistContext, launch_rank
from starft_pipeline.data.dataset_index import all_splits
from starft_pipeline.data.shards import DEFAULT_ROWS_PER_SHARD, write_shards
from starft_pipeline.models.clip import open_clip_with_configs

logger = logging.getLogger(__name__)


def model_image_size(architecture: str) -> int:
    """The input size S of an open_clip architecture (its config's ``vision_cfg.image_size``), no weights loaded."""
    config = open_clip_with_configs().get_model_config(architecture)
    if config is None:
        raise ValueError(f"teacher.model.architecture {architecture!r} is not an open_clip model config")
    size = config["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, list | tuple) else size)


def _launch_context() -> DistContext:
    """This process's rank under torchrun, read from the environment: the stage joins no process group
    (nothing here waits in a collective, so no collective timeout can cut a long write short)."""
    world_size = int(os.environ.get("WORLD_SIZE") or 1)
    return DistContext(launch_rank(), world_size) if world_size > 1 else SINGLE_PROCESS


def write_image_shards(
    dataset_metadata: pd.DataFrame, dataset_index: dict[str, Any], shards: dict[str, Any], teacher: dict[str, Any]
) -> dict[str, Any]:
    """Write every non-empty split under ``<shards.folder>/<dataset>/<split>`` at the size of ``teacher.model``
    (a split whose shards are current is skipped); returns the record the teacher stage passes on
    (``folder`` null: nothing written, every stage decodes the original files)."""
    folder = shards.get("folder")
    record = {"folder": folder, "decode": shards.get("decode", "cpu")}
    if folder is None:
        return record
    image_size = model_image_size(teacher["model"]["architecture"])
    context = _launch_context()
    splits = all_splits(dataset_metadata, dataset_index)
    for key, split in splits.items():
        write_shards(
            split,
            image_size,
            os.path.join(folder, key),
            rows_per_shard=int(shards.get("rows_per_shard", DEFAULT_ROWS_PER_SHARD)),
            num_workers=int(shards.get("num_workers", 0)),
            context=context,
        )
    logger.info("shards: %d splits at %d px under %s", len(splits), image_size, folder)
    return record | {"image_size": image_size, "splits": sorted(splits)}
