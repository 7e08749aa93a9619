"""class_names stage: make the configured data sets available and index their classes and groups."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from starft_pipeline import class_names as names
from starft_pipeline import synthetic
from starft_pipeline.data import read_metadata
from starft_pipeline.dataset_index import dataset_entry

logger = logging.getLogger(__name__)


def _ensure_generated(name: str, root: Path, generate: Any) -> None:
    """Write the synthetic data set when the parameters ask for one (idempotent)."""
    if generate is None:
        return
    spec = synthetic.DEFAULT_SPECS[generate] if isinstance(generate, str) else synthetic.GroupShiftSpec.from_dict(generate)
    synthetic.write_group_shift_dataset(spec, root)
    logger.info("data set %r: synthetic images in %s", name, root)


def prepare_datasets(datasets: dict[str, Any]) -> pd.DataFrame:
    """Read every configured data set's metadata.csv (generating synthetic ones) into one frame.

    Adds the columns ``dataset``, ``root`` and ``path`` (image path under the project, or absolute).
    """
    frames = []
    for name, config in datasets.items():
        root = Path(config["root"])
        _ensure_generated(name, root, config.get("generate"))
        frame = read_metadata(root)
        frame.insert(0, "dataset", name)
        frame["root"] = str(root)
        frame["path"] = [str(root / filename) for filename in frame["img_filename"]]
        frames.append(frame)
        logger.info("data set %r: %d images", name, len(frame))
    return pd.concat(frames, ignore_index=True)


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
        class_list = names.names_from_mapping(rows["y"], config["mapping"], f"data set {dataset!r}")
    elif source == "image_folder":
        class_list = names.names_from_image_folder(config["image_folder"])
    elif source == "csv":
        class_list = names.names_from_csv(config["csv"], config["name_column"], config.get("label_column"))
    else:
        raise names.ClassNameError(
            f"class_names.datasets.{dataset}.source is {source!r}; use manifest, mapping, image_folder or csv"
        )
    n_places = int(rows["place"].max()) + 1
    places = config.get("places") or {i: f"place {i}" for i in range(n_places)}
    return class_list, [str(places[i]) for i in range(n_places)]


def build_dataset_index(
    dataset_metadata: pd.DataFrame, prompt_template_sets: dict[str, list[str]], class_names: dict[str, Any]
) -> dict[str, Any]:
    """Class, place and group names, templates and train group counts of every data set."""
    entries = {}
    for dataset, rows in dataset_metadata.groupby("dataset", sort=False):
        config = class_names["datasets"].get(dataset)
        if config is None:
            raise names.ClassNameError(f"data set {dataset!r} has no entry under class_names.datasets; add one")
        class_list, place_list = _class_and_place_names(rows, config, dataset)
        templates = config.get("templates", "simple")
        template_list = prompt_template_sets[templates] if isinstance(templates, str) else list(templates)
        entries[dataset] = dataset_entry(rows, class_list, place_list, template_list, dataset)
        logger.info("data set %r: classes %s", dataset, class_list)
    finetune_dataset = class_names["finetune_dataset"]
    if finetune_dataset not in entries:
        raise names.ClassNameError(
            f"class_names.finetune_dataset is {finetune_dataset!r}, which is not a configured data set ({sorted(entries)})"
        )
    return {"finetune_dataset": finetune_dataset, "datasets": entries}
