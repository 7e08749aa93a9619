"""class_names stage: make the configured data sets available and index their classes and groups."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd

from starft_pipeline.core.distributed import on_main_rank
from starft_pipeline.data import class_names as names
from starft_pipeline.data.dataset_index import dataset_entry
from starft_pipeline.data.formats import read_dataset
from starft_pipeline.data.metadata import (
    DataError,
    data_quality_counts,
    require_split_rows,
    skipped_table,
)
from starft_pipeline.evaluate.metrics import convention_warning

logger = logging.getLogger(__name__)


def prepare_checked_datasets(datasets: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read and check every configured data set (generating synthetic ones) into one frame.

    Adds the columns ``dataset``, ``root`` and ``path`` (image path under the project, or absolute).
    Also returns the skipped-items report (rows left out under ``bad_data: skip``).
    """
    frames, skipped = [], {}
    for name, config in datasets.items():
        checked = read_dataset(name, config)
        if checked is None:
            continue
        frame = checked.frame
        frame.insert(0, "dataset", name)
        frame["path"] = [str(Path(root) / filename) for root, filename in zip(frame["root"], frame["img_filename"])]
        frames.append(frame)
        skipped[name] = checked.skipped
        logger.info("data set %r: %d images, %d row(s) skipped", name, len(frame), len(checked.skipped))
    if not frames:
        raise DataError(f"none of the configured data sets {sorted(datasets)} was found; check the datasets parameters")
    return pd.concat(frames, ignore_index=True), skipped_table(skipped)


def prepare_datasets(datasets: dict[str, Any]) -> pd.DataFrame:
    """:func:`prepare_checked_datasets` without the skipped-items report."""
    return prepare_checked_datasets(datasets)[0]


def publish_checked_tables(
    dataset_metadata: pd.DataFrame, skipped_items: pd.DataFrame, dataset_index: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The stage's checked results, unchanged: the one node whose outputs the catalog persists, so
    nothing is written until every check of the stage has passed."""
    return dataset_metadata, skipped_items, dataset_index


def data_quality_metrics(dataset_metadata: pd.DataFrame, skipped_items: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Images per split and skipped rows per reason of every data set (MLflow: ``data.<key>``, the catalog's prefix)."""
    counts = data_quality_counts(dataset_metadata, skipped_items)
    return {re.sub(r"[^\w.\- /]", "_", key): {"value": float(n), "step": 0} for key, n in counts.items()}


def _manifest(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not path.is_file():
        raise names.ClassNameError(
            f"{path} not found: class_names source 'manifest' needs the synthetic generator's dataset.json; "
            "use source 'mapping' with a label→name mapping for other data sets"
        )
    return json.loads(path.read_text())


def _class_and_place_names(rows: pd.DataFrame, config: dict[str, Any], dataset: str) -> tuple[list[str], list[str]]:
    source = config.get("source", "mapping")
    if source == "manifest":
        manifest = _manifest(Path(rows["root"].iloc[0]))
        return names.check_class_names(list(manifest["class_names"]), dataset), list(manifest["place_names"])
    if source == "mapping":
        parameter = f"class_names.datasets.{dataset}.mapping"
        names.check_labels_named(rows, config["mapping"], parameter)
        class_list = names.names_from_mapping(rows["y"], config["mapping"], f"data set {dataset!r}", parameter)
    elif source == "image_folder":
        class_list = names.names_from_image_folder(config["image_folder"])
    elif source == "folders":  # a data set read with format: image_folder
        folders = rows.sort_values("y").drop_duplicates("y")["class_folder"].map(names.folder_name).tolist()
        class_list = names.names_from_folders(folders, config.get("class_map"))
    elif source == "csv":
        class_list = names.names_from_csv(config["csv"], config["name_column"], config.get("label_column"))
    else:
        raise names.ClassNameError(
            f"class_names.datasets.{dataset}.source is {source!r}; use manifest, mapping, image_folder, folders or csv"
        )
    n_places = int(rows["place"].max()) + 1
    places = config.get("places") or {i: f"place {i}" for i in range(n_places)}
    return class_list, [str(places[i]) for i in range(n_places)]


def _warn_about_convention(dataset: str, rows: pd.DataFrame, entry: dict[str, Any]) -> None:
    """Where the data is read, not only at evaluation: a ``waterbirds`` data set whose training group
    counts are not the release's (its adjusted average would not match published numbers)."""
    warning = convention_warning(entry["convention"], entry["train_group_counts"])
    if warning:
        roots = sorted(set(rows["root"].astype(str)))
        logger.warning("data set %r (read from %s): %s", dataset, ", ".join(roots), warning)


@on_main_rank  # under torchrun: rank 0 builds it, the others receive it
def build_dataset_index(
    dataset_metadata: pd.DataFrame, prompt_template_sets: dict[str, list[str]], class_names: dict[str, Any]
) -> dict[str, Any]:
    """Class, place and group names, templates and train group counts of every data set."""
    entries = {}
    for dataset, rows in dataset_metadata.groupby("dataset", sort=False):
        rows = rows.dropna(axis="columns", how="all")  # columns only another data set's format has
        config = class_names["datasets"].get(dataset)
        if config is None:
            raise names.ClassNameError(f"data set {dataset!r} has no entry under class_names.datasets; add one")
        class_list, place_list = _class_and_place_names(rows, config, dataset)
        templates = config.get("templates", "simple")
        template_list = prompt_template_sets[templates] if isinstance(templates, str) else list(templates)
        convention = config.get("convention", "generic")
        entries[dataset] = dataset_entry(rows, class_list, place_list, template_list, dataset, convention)
        logger.info("data set %r: classes %s", dataset, class_list)
        _warn_about_convention(dataset, rows, entries[dataset])
    finetune_dataset = class_names["finetune_dataset"]
    if finetune_dataset not in entries:
        raise names.ClassNameError(
            f"class_names.finetune_dataset is {finetune_dataset!r}, which is not a configured data set ({sorted(entries)})"
        )
    require_split_rows(dataset_metadata, finetune_dataset, "train", "fine-tuning (class_names.finetune_dataset)")
    return {"finetune_dataset": finetune_dataset, "datasets": entries}
