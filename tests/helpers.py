"""Shared test helpers: the project's own parameters, shrunk to run in seconds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from starft_pipeline.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS

PROJECT_ROOT = Path(__file__).resolve().parents[1]

TINY_SPECS = {
    "synthetic": {
        "name": "tiny_finetune",
        "object_ids": [0, 1, 2],
        "background_ids": [5, 1, 2],
        "train_per_class": 24,
        "val_per_group": 2,
        "test_per_group": 3,
        "correlation": 0.9,
    },
    "waterbirds_like": {
        "name": "tiny_wb",
        "object_ids": [4, 5],
        "background_ids": [5, 1],
        "train_per_class": 8,
        "val_per_group": 2,
        "test_per_group": 3,
        "correlation": 0.75,
    },
}


def project_parameters(env: str | None = None) -> dict[str, Any]:
    loader = CONFIG_LOADER_CLASS(str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env or "base"})
    return copy.deepcopy(loader["parameters"])


def tiny_parameters(data_root: Path) -> dict[str, Any]:
    """The base parameters with tiny synthetic data sets under ``data_root`` and 1-epoch fine-tuning."""
    params = project_parameters()
    for name, spec in TINY_SPECS.items():
        params["datasets"][name] = {"root": str(data_root / name), "generate": spec}
    for block in params.values():
        if isinstance(block, dict) and isinstance(block.get("finetune"), dict):
            block["finetune"].update(epochs=1, batch_size=16, device="cpu")
    params["teacher"]["device"] = "cpu"
    params["teacher"]["work_dir"] = str(data_root / "teacher_parts")  # not the project's data/
    params["evaluation"]["device"] = "cpu"
    return params


def copy_project(destination: Path) -> Path:
    """A runnable copy of the project (configuration only; the package is installed editable)."""
    import shutil

    destination.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy2(PROJECT_ROOT / name, destination / name)
    shutil.copytree(PROJECT_ROOT / "conf", destination / "conf", ignore=shutil.ignore_patterns("credentials*"))
    # Kedro wants src/ inside the project; the package link also serves the committed weights' path.
    (destination / "src").mkdir()
    (destination / "src" / "starft_pipeline").symlink_to(PROJECT_ROOT / "src" / "starft_pipeline")
    (destination / "conf" / "local").mkdir(exist_ok=True)
    (destination / "data").mkdir(exist_ok=True)
    return destination


def kedro_env() -> dict[str, str]:
    import os

    env = {key: value for key, value in os.environ.items() if not key.startswith("ANTHROPIC")}
    env.update(KEDRO_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1", PYTHONUNBUFFERED="1")
    return env


def stage_tiny(data_root: Path, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """class_names → descriptions → teacher through the node functions on tiny data (random-init teacher).

    Returns the parameters and every artifact by catalog name.
    """
    import yaml

    from starft_pipeline.pipelines.class_names.nodes import build_dataset_index, prepare_datasets
    from starft_pipeline.pipelines.descriptions.nodes import generate_descriptions
    from starft_pipeline.pipelines.teacher.nodes import build_teacher_cache

    templates = {
        name: yaml.safe_load((PROJECT_ROOT / "conf/base/templates" / f"{name}.yml").read_text())
        for name in ("prompt_templates", "spurious_templates")
    }
    params = params or tiny_parameters(data_root)
    params["teacher"]["model"]["pretrained"] = None  # random init: independent of the committed weights
    metadata = prepare_datasets(params["datasets"])
    index = build_dataset_index(metadata, templates["prompt_templates"], params["class_names"])
    document, _ = generate_descriptions(index, templates["spurious_templates"], params["descriptions"])
    record, cache = build_teacher_cache(metadata, index, document, params["teacher"])
    return {
        "params": params,
        "dataset_metadata": metadata,
        "dataset_index": index,
        "descriptions": document,
        "teacher_model": record,
        "teacher_cache": cache,
    }


def tiny_upstream(data_root: Path) -> dict[str, Any]:
    """The tiny default's first stages run in this process (random-init tiny teacher): its parameters,
    the checked metadata, the dataset index and the offline descriptions document."""
    import yaml

    from starft_pipeline.pipelines.class_names.nodes import build_dataset_index, prepare_datasets
    from starft_pipeline.pipelines.descriptions.nodes import generate_descriptions

    params = tiny_parameters(data_root)
    params["teacher"]["model"]["pretrained"] = None
    templates = {
        name: yaml.safe_load((PROJECT_ROOT / "conf/base/templates" / f"{name}.yml").read_text())
        for name in ("prompt_templates", "spurious_templates")
    }
    metadata = prepare_datasets(params["datasets"])
    index = build_dataset_index(metadata, templates["prompt_templates"], params["class_names"])
    document, _ = generate_descriptions(index, templates["spurious_templates"], params["descriptions"])
    return {"params": params, "metadata": metadata, "index": index, "descriptions": document}
