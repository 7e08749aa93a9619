"""The paper's recipes as Kedro environments (imagenet, waterbirds), the ImageFolder reader, and
fail-fast weights."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from PIL import Image

from starft_pipeline.data.class_names import ClassNameError, names_from_folders
from starft_pipeline.data.metadata import SPLIT_CODES, DataError
from starft_pipeline.data.splits import read_image_folder, read_image_folder_splits
from starft_pipeline.models.clip import ModelSpec, create_model, open_clip_with_configs
from starft_pipeline.pipeline_registry import register_pipelines
from starft_pipeline.pipelines.class_names.nodes import build_dataset_index, prepare_datasets
from starft_pipeline.pipelines.class_names.pipeline import CHECKED_OUTPUTS
from starft_pipeline.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS
from tests.helpers import PROJECT_ROOT, stage_tiny

ENVS = ("imagenet", "waterbirds")


def _loader(env: str) -> OmegaConfigLoader:
    return CONFIG_LOADER_CLASS(str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env})


def _image(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def _prompt_templates() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "conf/base/templates/prompt_templates.yml").read_text())


# ----------------------------------------------------------------------------- environments


@pytest.mark.parametrize("env", ENVS)
def test_environment_parameters_and_catalog_resolve_for_every_pipeline_input(env):
    loader = _loader(env)
    params, catalog = loader["parameters"], DataCatalog.from_config(loader["catalog"])
    full = register_pipelines()["full"]
    for name in sorted(full.inputs()):
        if name.startswith("params:"):
            value = params
            for key in name.removeprefix("params:").split("."):
                assert key in value, f"{env}: parameter {name} does not resolve"
                value = value[key]
        else:
            assert _persisted(catalog, name), f"{env}: free input {name} is not in the catalog"
    # every artifact persisted or logged (stage contract), but the class_names checks' in-memory results:
    # they are written out together, and only once every check passed, by publish_checked_tables
    for name in sorted(set(full.all_outputs()) - set(CHECKED_OUTPUTS)):
        assert _persisted(catalog, name), f"{env}: {name} would only live in memory"


def _persisted(catalog: DataCatalog, name: str) -> bool:
    dataset = catalog.get(name)
    return dataset is not None and not isinstance(dataset, MemoryDataset)


def test_imagenet_environment_is_the_papers_recipe():
    params = _loader("imagenet")["parameters"]
    star = params["star"]["finetune"]
    assert (star["epochs"], star["batch_size"], star["lr"], star["weight_decay"], star["warmup_steps"]) == (
        10,
        512,
        1e-5,
        0.1,
        500,
    )
    assert (star["reg_weight"], star["diminishing"], star["confounder_types"]) == (0.5, True, ["background"])
    assert params["kl"]["finetune"] | {"method": "star"} == star
    assert params["teacher"]["model"] | {"init_seed": 0} == {
        "architecture": "ViT-B-16-quickgelu",
        "pretrained": "openai",
        "allow_download": False,
        "init_seed": 0,
    }
    assert params["class_names"]["finetune_dataset"] == "imagenet"
    assert {"imagenet", "imagenet_v2", "imagenet_r", "imagenet_a", "imagenet_sketch", "objectnet", "waterbirds"} <= set(
        params["datasets"]
    )
    assert params["class_names"]["datasets"]["imagenet"]["templates"] == "openai_imagenet"
    waterbirds = params["class_names"]["datasets"]["waterbirds"]
    assert waterbirds["templates"] == "waterbirds" and waterbirds["mapping"] == {0: "landbird", 1: "waterbird"}


def test_openai_imagenet_templates_are_the_80_prompts():
    templates = _prompt_templates()
    assert len(templates["openai_imagenet"]) == 80 and len(set(templates["openai_imagenet"])) == 80
    assert all("{c}" in template for template in templates["openai_imagenet"])
    assert templates["openai_imagenet"][0] == "a bad photo of a {c}." and templates["waterbirds"] == [
        "This is a picture of a {c}."
    ]


@pytest.mark.parametrize("env", ENVS)
def test_openai_weights_without_a_cache_fail_in_seconds_naming_the_file(env, tmp_path):
    spec = ModelSpec(**{**_loader(env)["parameters"]["teacher"]["model"], "cache_dir": str(tmp_path)})
    open_clip_with_configs()  # imported on first use; the seconds measured are the check's, not the import's
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError) as raised:
        create_model(spec)
    assert time.perf_counter() - started < 5
    message = str(raised.value)
    assert "timm/vit_base_patch16_clip_224.openai" in message and "open_clip_model.safetensors" in message
    assert "model.pretrained" in message and "ViT-B-16-quickgelu" in message


# ----------------------------------------------------------------------------- ImageFolder data


def test_image_folder_reader_labels_folders_in_order_with_paths_relative_to_the_root(tmp_path):
    for folder, count in (("n02", 2), ("n01", 1)):
        for index in range(count):
            _image(tmp_path / folder / f"img{index}.JPEG")
    (tmp_path / "n01" / "notes.txt").write_text("not an image")
    frame = read_image_folder(tmp_path, "test")
    assert list(frame["img_filename"]) == ["n01/img0.JPEG", "n02/img0.JPEG", "n02/img1.JPEG"]
    assert list(frame["y"]) == [0, 1, 1] and list(frame["class_folder"]) == ["n01", "n02", "n02"]
    assert (frame["split"] == SPLIT_CODES["test"]).all() and (frame["place"] == 0).all()
    assert list(frame["img_id"]) == [0, 1, 2]


def test_numbered_folders_go_by_number_and_splits_share_labels(tmp_path):
    for folder in ("0", "1", "2", "10"):
        _image(tmp_path / "v2" / folder / "a.png")
    _image(tmp_path / "train" / "10" / "b.png")
    frame = read_image_folder_splits({"train": tmp_path / "train", "test": tmp_path / "v2"})
    test = frame[frame["split"] == SPLIT_CODES["test"]]
    assert list(test["class_folder"]) == ["0", "1", "2", "10"] and list(test["y"]) == [0, 1, 2, 3]
    assert frame.loc[frame["split"] == SPLIT_CODES["train"], "y"].tolist() == [3]
    assert frame["img_id"].is_unique and set(frame["root"]) == {str(tmp_path / "train"), str(tmp_path / "v2")}


def test_missing_roots_are_errors_naming_the_parameter_or_skipped_when_optional(tmp_path, caplog):
    with pytest.raises(DataError, match=r"datasets.sketch.roots.test: .* is not a directory"):
        read_image_folder_splits({"test": tmp_path / "absent"}, source="datasets.sketch.roots")
    with caplog.at_level(logging.WARNING):
        assert (
            read_image_folder_splits({"test": tmp_path / "absent"}, optional=True, source="datasets.sketch.roots")
            is None
        )
    assert "skipping it" in caplog.text
    with pytest.raises(DataError, match="no images"):
        (tmp_path / "empty" / "n01").mkdir(parents=True)
        read_image_folder(tmp_path / "empty", "test")


def test_class_map_names_folders_and_numbered_folders_by_row(tmp_path):
    class_map = tmp_path / "class_map.csv"
    pd.DataFrame({"folder": ["n01440764", "n01443537"], "name": ["tench", "goldfish"]}).to_csv(class_map, index=False)
    assert names_from_folders(["n01443537", "n01440764"], class_map) == ["goldfish", "tench"]
    assert names_from_folders(["0", "1"], class_map) == ["tench", "goldfish"]
    assert names_from_folders(["great_white_shark"]) == ["great white shark"]
    with pytest.raises(ClassNameError, match="class folder 'n99' is not in the map"):
        names_from_folders(["n99"], class_map)


def test_imagenet_environment_indexes_a_tiny_imagenet_style_tree(tmp_path):
    """The imagenet env's class_names parameters on tiny trees; absent shifts are skipped."""
    wnids, names = ["n01440764", "n01443537", "n01484850"], ["tench", "goldfish", "great white shark"]
    for split in ("train", "val"):
        for wnid in wnids:
            _image(tmp_path / "imagenet" / split / wnid / "a.JPEG")
    for number in range(3):
        _image(tmp_path / "v2" / str(number) / "a.jpeg")
    _image(tmp_path / "r" / "n01443537" / "a.jpg")
    class_map = tmp_path / "class_map.csv"
    pd.DataFrame({"folder": wnids, "name": names}).to_csv(class_map, index=False)

    params = _loader("imagenet")["parameters"]
    datasets = params["datasets"]
    datasets["imagenet"]["roots"] = {"train": str(tmp_path / "imagenet/train"), "test": str(tmp_path / "imagenet/val")}
    datasets["imagenet_v2"]["roots"] = {"test": str(tmp_path / "v2")}
    datasets["imagenet_r"]["roots"] = {"test": str(tmp_path / "r")}
    for name in ("imagenet_a", "imagenet_sketch", "objectnet"):
        datasets[name]["roots"] = {"test": str(tmp_path / "absent" / name)}
    datasets["waterbirds"]["root"] = str(tmp_path / "absent" / "waterbirds")
    for name in ("imagenet", "imagenet_v2", "imagenet_r"):
        params["class_names"]["datasets"][name]["class_map"] = str(class_map)

    metadata = prepare_datasets(datasets)
    assert set(metadata["dataset"]) == {"imagenet", "imagenet_v2", "imagenet_r"}
    index = build_dataset_index(metadata, _prompt_templates(), params["class_names"])["datasets"]
    assert index["imagenet"]["class_names"] == names and index["imagenet_v2"]["class_names"] == names
    assert index["imagenet_r"]["class_names"] == ["goldfish"]  # its subset, classified over itself
    assert len(index["imagenet"]["templates"]) == 80 and index["imagenet"]["train_group_counts"] == [1, 1, 1]


def _waterbirds_tree(root: Path) -> None:
    """A tiny release-format Waterbirds: 2 images per (group, split)."""
    rows = []
    for split in range(3):
        for y in (0, 1):
            for place in (0, 1):
                for copy in range(2):
                    name = f"{y:03d}.{'Landbird' if y == 0 else 'Waterbird'}/img_{split}_{place}_{copy}.jpg"
                    _image(root / name, value=40 + 100 * y + 50 * place)
                    rows.append(
                        {
                            "img_id": len(rows) + 1,
                            "img_filename": name,
                            "y": y,
                            "split": split,
                            "place": place,
                            "place_filename": f"/x/{place}.jpg",
                        }
                    )
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)


def test_waterbirds_environment_runs_class_names_and_teacher_on_a_release_format_tree(tmp_path):
    root = tmp_path / "waterbird_complete95_forest2water2"
    _waterbirds_tree(root)
    params = _loader("waterbirds")["parameters"]
    params["datasets"]["waterbirds"]["root"] = str(root)
    params["teacher"]["model"] = {"architecture": "starft-tiny-vit", "pretrained": None}  # no ViT-B/16 offline
    params["teacher"]["device"] = "cpu"
    staged = stage_tiny(tmp_path, params)
    entry = staged["dataset_index"]["datasets"]["waterbirds"]
    assert staged["dataset_index"]["finetune_dataset"] == "waterbirds"
    assert entry["class_names"] == ["landbird", "waterbird"] and entry["place_names"] == ["land", "water"]
    assert entry["group_names"] == ["landbird on land", "landbird on water", "waterbird on land", "waterbird on water"]
    assert entry["templates"] == ["This is a picture of a {c}."] and entry["train_group_counts"] == [2, 2, 2, 2]
    tensors = staged["teacher_cache"].tensors
    assert tensors["image/waterbirds/train"].shape == (8, 128) and tensors["class/waterbirds"].shape == (2, 128)
