"""The dataset index: what every later stage needs to know about the configured data sets.

Written by the class_names stage as JSON: for each data set its class names, place names, group
names, zero-shot templates and training group counts, plus which data set is fine-tuned on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from starft_pipeline.core.io_utils import fingerprint
from starft_pipeline.data.metadata import SPLIT_CODES, DataError
from starft_pipeline.data.splits import GroupSplit, group_counts
from starft_pipeline.data.tasks import CONVENTIONS, EvalTask, default_group_names, fill_template

DatasetIndex = dict[str, Any]


def dataset_entry(
    rows: pd.DataFrame,
    class_names: Sequence[str],
    place_names: Sequence[str],
    templates: Sequence[str],
    name: str,
    convention: str = "generic",
) -> dict[str, Any]:
    """Index entry of one data set; checks labels and places fit the names given.

    ``convention`` (waterbirds, celeba or generic) says which benchmark's metric conventions
    the data set is reported under (docs/evaluation-conventions.md).
    """
    if convention not in CONVENTIONS:
        raise DataError(
            f"data set {name!r}: convention {convention!r} is not one of {list(CONVENTIONS)} "
            f"(class_names.datasets.{name}.convention)"
        )
    n_classes, n_places = len(class_names), len(place_names)
    if rows["y"].max() >= n_classes or rows["y"].min() < 0:
        raise DataError(
            f"data set {name!r}: labels span {rows['y'].min()}..{rows['y'].max()} but {n_classes} class "
            f"names are configured ({list(class_names)}); labels must be 0..{n_classes - 1}"
        )
    if rows["place"].max() >= n_places or rows["place"].min() < 0:
        raise DataError(
            f"data set {name!r}: places span {rows['place'].min()}..{rows['place'].max()} but {n_places} "
            f"place names are configured ({list(place_names)}); places must be 0..{n_places - 1}"
        )
    train = rows[rows["split"] == SPLIT_CODES["train"]]
    groups = train["y"].to_numpy() * n_places + train["place"].to_numpy()
    return {
        "class_names": list(class_names),
        "place_names": list(place_names),
        "n_places": n_places,
        "group_names": list(default_group_names(class_names, place_names)),
        "templates": list(templates),
        "convention": convention,
        "train_group_counts": group_counts(groups, n_classes * n_places).tolist(),
        "metadata_fingerprint": fingerprint(rows.drop(columns=["path", "root"], errors="ignore").to_dict("list")),
    }


def eval_task(index: DatasetIndex, dataset: str) -> EvalTask:
    entry = dataset_info(index, dataset)
    return EvalTask(
        name=dataset,
        class_names=tuple(entry["class_names"]),
        templates=tuple(entry["templates"]),
        n_places=int(entry["n_places"]),
        group_names=tuple(entry["group_names"]),
        train_group_counts=tuple(entry["train_group_counts"]),
    )


def dataset_info(index: DatasetIndex, dataset: str) -> dict[str, Any]:
    if dataset not in index["datasets"]:
        raise KeyError(f"data set {dataset!r} is not in the dataset index (have {sorted(index['datasets'])})")
    return index["datasets"][dataset]


def dataset_split(metadata: pd.DataFrame, index: DatasetIndex, dataset: str, split: str) -> GroupSplit:
    """One split of one data set, rows in metadata order (the teacher cache's row order)."""
    n_places = int(dataset_info(index, dataset)["n_places"])
    rows = metadata[(metadata["dataset"] == dataset) & (metadata["split"] == SPLIT_CODES[split])]
    labels = rows["y"].to_numpy(dtype=np.int64, copy=True)
    places = rows["place"].to_numpy(dtype=np.int64, copy=True)
    _check_rows_match_index(labels, places, dataset_info(index, dataset), f"{dataset}/{split}")
    return GroupSplit(
        name=split,
        paths=tuple(Path(path) for path in rows["path"]),
        labels=labels,
        places=places,
        groups=labels * n_places + places,
    )


def _check_rows_match_index(labels: np.ndarray, places: np.ndarray, entry: Mapping[str, Any], label: str) -> None:
    """Refuse a metadata table the index was not built from (e.g. one written by another run): labels
    or places outside the index's names, or (for ``train``) group counts other than the index's."""
    n_classes, n_places = len(entry["class_names"]), int(entry["n_places"])
    groups = labels * n_places + places
    outside = bool(len(labels)) and bool(
        (labels < 0).any() or (labels >= n_classes).any() or (places < 0).any() or (places >= n_places).any()
    )
    recounted = label.endswith("/train") and not outside
    if not outside and not (
        recounted and group_counts(groups, n_classes * n_places).tolist() != list(entry["train_group_counts"])
    ):
        return
    raise DataError(
        f"{label}: the dataset metadata (data/02_intermediate/dataset_metadata.csv) does not match the dataset "
        f"index (dataset_index.json: {n_classes} classes, {n_places} places, training group counts "
        f"{list(entry['train_group_counts'])}); they come from different runs. "
        "Rerun `kedro run --pipelines=class_names` to rebuild both."
    )


def all_splits(
    metadata: pd.DataFrame, index: DatasetIndex, splits: Sequence[str] = ("train", "val", "test")
) -> dict[str, GroupSplit]:
    """Every non-empty ``<dataset>/<split>`` of the index."""
    result = {}
    for dataset in index["datasets"]:
        for split in splits:
            part = dataset_split(metadata, index, dataset, split)
            if len(part):
                result[f"{dataset}/{split}"] = part
    return result


def class_prompts(index: DatasetIndex) -> dict[str, list[str]]:
    """Per data set, the filled zero-shot prompts (what the teacher's class features depend on)."""
    return {
        name: [fill_template(t, c) for c in entry["class_names"] for t in entry["templates"]]
        for name, entry in index["datasets"].items()
    }


def data_identity(index: DatasetIndex) -> Mapping[str, str]:
    return {name: entry["metadata_fingerprint"] for name, entry in index["datasets"].items()}
