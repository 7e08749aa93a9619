"""Models built as their weights were trained: QuickGELU and preprocessing from open_clip's pretrained
config (issue 17), and a CUDA request that fails naming the torch build and the driver.

Offline: the pretrained tags used are open_clip's own configs (no weights are read) or a tag
registered here whose weights file already sits in a temporary cache.
"""

from __future__ import annotations

import json
import logging
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.pretrained import _PRETRAINED

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.models import clip
from starft_pipeline.models.clip import (
    ArchitectureMismatch,
    ModelSpec,
    architecture_mismatch,
    check_architecture_fits_weights,
    create_model,
    cuda_unavailable_message,
    nvidia_driver,
    resolve_device,
    save_weights,
)
from tests.helpers import PROJECT_ROOT, project_parameters

TINY = json.loads((PROJECT_ROOT / "src/starft_pipeline/assets/model_configs/starft-tiny-vit.json").read_text())
PLAIN, QUICK = "tagcheck-vit", "tagcheck-vit-quickgelu"  # a tiny pair like ViT-B-16 / ViT-B-16-quickgelu
TAG = "tinyai"  # QuickGELU weights, as open_clip's `openai` tag; bilinear + squash to see them applied
TAG_MEAN, TAG_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _environments() -> list[str]:
    return sorted(path.parent.name for path in (PROJECT_ROOT / "conf").glob("*/parameters_teacher.yml"))


# ----------------------------------------------------------------------------- the pure check


def test_an_openai_pair_without_quickgelu_names_the_parameter_and_the_fix():
    problem = architecture_mismatch(
        "ViT-B-16",
        "'openai'",
        open_clip.get_model_config("ViT-B-16"),
        open_clip.get_pretrained_cfg("ViT-B-16", "openai"),
    )
    assert problem is not None
    assert "`model.architecture` 'ViT-B-16' builds plain GELU" in problem and "trained with QuickGELU" in problem
    assert problem.endswith("Set `model.architecture: ViT-B-16-quickgelu`.")


def test_quickgelu_architecture_with_plain_gelu_weights_points_back_to_the_base_name():
    problem = architecture_mismatch("ViT-B-16-quickgelu", "'laion'", {"quick_gelu": True}, {"quick_gelu": False})
    assert problem is not None and "builds QuickGELU" in problem and "plain GELU" in problem
    assert problem.endswith("Set `model.architecture: ViT-B-16`.")
    custom = architecture_mismatch("mine", "'openai'", {"quick_gelu": True}, {})
    assert custom is not None and "no `quick_gelu: true`" in custom


def test_agreeing_pairs_pass_and_an_image_size_the_weights_state_must_match():
    assert architecture_mismatch("a", "w", {"quick_gelu": True}, {"quick_gelu": True}) is None
    assert architecture_mismatch("a", "w", {"vision_cfg": {"image_size": 224}}, {"mean": (0.5,) * 3}) is None
    assert architecture_mismatch("a", "w", {"vision_cfg": {"image_size": 224}}, {"size": [224, 224]}) is None
    problem = architecture_mismatch("a", "w", {"vision_cfg": {"image_size": 224}}, {"vision_cfg": {"image_size": 336}})
    assert problem is not None and "224 px" in problem and "336 px" in problem


@pytest.mark.parametrize("env", _environments())
def test_every_environments_teacher_agrees_with_open_clips_config_of_its_weights(env):
    model = project_parameters(env)["teacher"]["model"]
    spec = ModelSpec(**model)
    check_architecture_fits_weights(spec)  # raises on a mismatch
    if spec.tag() is not None:
        pretrained = open_clip.get_pretrained_cfg(spec.architecture, spec.tag())
        assert pretrained, f"{env}: open_clip has no config for {spec.architecture}/{spec.tag()}"
        model_config = open_clip.get_model_config(spec.architecture)
        assert bool(model_config.get("quick_gelu")) == bool(pretrained.get("quick_gelu")), env


@pytest.mark.parametrize("env", ["imagenet", "waterbirds"])
def test_the_paper_environments_build_openais_weights_with_quickgelu(env):
    model = project_parameters(env)["teacher"]["model"]
    assert (model["architecture"], model["pretrained"]) == ("ViT-B-16-quickgelu", "openai")
    broken = ModelSpec(**{**model, "architecture": "ViT-B-16"})
    with pytest.raises(ArchitectureMismatch, match="ViT-B-16-quickgelu"):
        check_architecture_fits_weights(broken)


def test_a_pretrained_tag_names_where_a_file_came_from(tmp_path):
    weights = str(tmp_path / "open_clip_model.safetensors")  # never read: the check needs configs only
    with pytest.raises(ArchitectureMismatch, match="open_clip tag 'openai'"):
        check_architecture_fits_weights(ModelSpec("ViT-B-16", weights, pretrained_tag="openai"))
    check_architecture_fits_weights(ModelSpec("ViT-B-16-quickgelu", weights, pretrained_tag="openai"))
    check_architecture_fits_weights(ModelSpec("ViT-B-16", weights))  # no tag: the name is trusted
    with pytest.raises(ValueError, match="model.pretrained_tag"):
        check_architecture_fits_weights(ModelSpec("ViT-B-16", weights, pretrained_tag="no-such-tag"))
    with pytest.raises(ValueError, match="`pretrained_tag` names where a weights file came from"):
        check_architecture_fits_weights(ModelSpec("ViT-B-16-quickgelu", "openai", pretrained_tag="laion"))


# ----------------------------------------------------------------------------- loading QuickGELU weights


@pytest.fixture(scope="module")
def tagged_tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny plain/QuickGELU architecture pair, tag ``tinyai`` (QuickGELU) whose file is in the cache."""
    folder = tmp_path_factory.mktemp("tagcheck")
    (folder / f"{PLAIN}.json").write_text(json.dumps(TINY))
    (folder / f"{QUICK}.json").write_text(json.dumps({**TINY, "quick_gelu": True}))
    open_clip.add_model_config(folder)
    cache = folder / "cache"
    cache.mkdir()
    quick = open_clip.create_model(QUICK)
    save_weights(quick, cache / "tinyai.safetensors")
    config = {
        "url": "https://example.invalid/tinyai.safetensors",  # never fetched: the file is in the cache
        "hf_hub": "",
        "mean": TAG_MEAN,
        "std": TAG_STD,
        "interpolation": "bilinear",
        "resize_mode": "squash",
        "quick_gelu": True,
    }
    added = {name: {TAG: config} for name in (PLAIN, QUICK)}
    _PRETRAINED.update(added)
    yield cache
    for name in added:
        _PRETRAINED.pop(name, None)


def _quickgelu_mismatch_reported(caplog: pytest.LogCaptureFixture, caught: list[warnings.WarningMessage]) -> bool:
    messages = [record.getMessage() for record in caplog.records] + [str(item.message) for item in caught]
    return any("QuickGELU mismatch" in message for message in messages)


def test_open_clip_alone_only_warns_about_the_trap(tagged_tiny, caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        open_clip.create_model(PLAIN, pretrained=TAG, cache_dir=str(tagged_tiny))
    assert _quickgelu_mismatch_reported(caplog, caught)


def test_quickgelu_weights_load_by_tag_with_quickgelu_and_the_tags_preprocessing(tagged_tiny, caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        loaded = create_model(ModelSpec(QUICK, TAG, cache_dir=str(tagged_tiny)))
    assert not _quickgelu_mismatch_reported(caplog, caught)
    assert isinstance(loaded.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert (loaded.image_mean, loaded.image_std) == (TAG_MEAN, TAG_STD)
    assert (loaded.interpolation, loaded.resize_mode, loaded.image_size) == ("bilinear", "squash", 32)
    with pytest.raises(ArchitectureMismatch, match=f"Set `model.architecture: {QUICK}`"):
        create_model(ModelSpec(PLAIN, TAG, cache_dir=str(tagged_tiny)))


def test_a_quickgelu_file_loads_with_its_tags_preprocessing_and_a_mismatch_raises(tagged_tiny, caplog):
    weights = str(tagged_tiny / "tinyai.safetensors")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        loaded = create_model(ModelSpec(QUICK, weights, pretrained_tag=TAG))
    assert not _quickgelu_mismatch_reported(caplog, caught)
    reference = open_clip.create_model(QUICK)
    clip.load_weights(reference, weights)
    assert all(torch.equal(loaded.model.state_dict()[key], value) for key, value in reference.state_dict().items())
    assert (loaded.image_mean, loaded.interpolation, loaded.resize_mode) == (TAG_MEAN, "bilinear", "squash")
    with pytest.raises(ArchitectureMismatch, match=f"open_clip tag '{TAG}'"):
        create_model(ModelSpec(PLAIN, weights, pretrained_tag=TAG))
    # without a tag the file gets the architecture's own defaults (open_clip's: OpenAI's, bicubic, shortest)
    untagged = create_model(ModelSpec(QUICK, weights))
    assert (untagged.image_mean, untagged.interpolation, untagged.resize_mode) == (
        open_clip.OPENAI_DATASET_MEAN,
        "bicubic",
        "shortest",
    )


def test_the_teacher_refuses_a_resize_its_decode_path_does_not_make(tagged_tiny):
    from starft_pipeline.models.teacher import compute_teacher_cache

    squashing = create_model(ModelSpec(QUICK, TAG, cache_dir=str(tagged_tiny)))  # the tag says bilinear, squash
    with pytest.raises(NotImplementedError, match="resize mode 'squash'"):
        compute_teacher_cache(squashing, {}, {}, {}, None, "fingerprint")  # type: ignore[arg-type]


def test_an_exported_file_records_its_architecture_and_a_mismatch_raises(tagged_tiny, tmp_path):
    exported = tmp_path / "star.safetensors"
    TensorBundle(open_clip.create_model(QUICK).state_dict(), {"architecture": QUICK}).save(exported)
    with pytest.raises(ArchitectureMismatch, match=f"recorded as architecture '{QUICK}'"):
        check_architecture_fits_weights(ModelSpec(PLAIN, str(exported)))
    check_architecture_fits_weights(ModelSpec(QUICK, str(exported)))


def test_the_export_names_the_architecture_and_tag_and_both_loaders_follow_them(tagged_tiny, tmp_path):
    from starft_pipeline.models.clip_pyfunc import _tag_preprocessing
    from starft_pipeline.models.export import classifier_path
    from starft_pipeline.models.predict import exported_classifier
    from starft_pipeline.pipelines.export.nodes import export_open_clip

    spec = {"architecture": QUICK, "pretrained": str(tagged_tiny / "tinyai.safetensors"), "pretrained_tag": TAG}
    index = {
        "finetune_dataset": "shapes",
        "datasets": {
            "shapes": {
                "class_names": ["circle", "square"],
                "templates": ["a {c}."],
                "n_places": 1,
                "group_names": ["circle", "square"],
                "train_group_counts": [1, 1],
            }
        },
    }
    weights = TensorBundle(clip.state_dict_copy(open_clip.create_model(QUICK)), {"method": "flyp"})
    checkpoint, classifier = export_open_clip(weights, index, {"spec": spec}, {"device": "cpu"})
    for bundle in (checkpoint, classifier):
        assert (bundle.metadata["architecture"], bundle.metadata["pretrained_tag"]) == (QUICK, TAG)
    checkpoint.save(tmp_path / "flyp.safetensors")
    classifier.save(classifier_path(tmp_path / "flyp.safetensors"))
    loaded = exported_classifier(tmp_path / "flyp.safetensors", torch.device("cpu")).loaded
    assert (loaded.image_mean, loaded.interpolation, loaded.resize_mode) == (TAG_MEAN, "bilinear", "squash")
    assert _tag_preprocessing(open_clip, QUICK, TAG) == {
        "image_mean": TAG_MEAN,
        "image_std": TAG_STD,
        "image_interpolation": "bilinear",
        "image_resize_mode": "squash",
    }
    assert _tag_preprocessing(open_clip, QUICK, None) == {}


def test_the_precondition_check_names_the_architecture_key():
    from starft_pipeline.params import precondition_errors

    params = project_parameters()
    params["teacher"]["model"] = {"architecture": "ViT-B-16", "pretrained": "openai", "allow_download": True}
    errors = precondition_errors(params, ["teacher"])
    assert len(errors) == 1 and errors[0].startswith("teacher.model.architecture: `model.architecture` 'ViT-B-16'")
    assert "ViT-B-16-quickgelu" in errors[0]


# ----------------------------------------------------------------------------- CUDA asked for, none usable


def test_cuda_without_cuda_names_the_build_the_driver_and_the_docs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(clip, "nvidia_driver", lambda: "575.57.08")
    with pytest.raises(RuntimeError) as raised:
        resolve_device("cuda")
    message = str(raised.value)
    assert f"torch {torch.__version__} built for CUDA 13.0" in message and "NVIDIA driver 575.57.08" in message
    assert "driver >= 580" in message and "docs/gpu-and-performance.md" in message
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


def test_the_message_says_what_is_missing():
    cpu_build = cuda_unavailable_message("cuda:1", "2.9.0+cpu", None, None)
    assert "'cuda:1'" in cpu_build and "torch 2.9.0+cpu (CPU-only)" in cpu_build
    assert "no NVIDIA driver found" in cpu_build and "install a CUDA build" in cpu_build
    no_driver = cuda_unavailable_message("cuda", "2.9.0+cu128", "12.8", None)
    assert "built for CUDA 12.8" in no_driver and "No GPU is visible" in no_driver
    assert all("`device: cpu` or `auto`" in message for message in (cpu_build, no_driver))


def test_the_driver_is_read_from_the_kernel_module_else_nvidia_smi(tmp_path, monkeypatch):
    version = tmp_path / "version"
    version.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 07:09:38 UTC 2025\n"
        "GCC version:  gcc version 12.2.0\n"
    )
    assert nvidia_driver(version) == "580.65.06"
    monkeypatch.setattr(clip.shutil, "which", lambda name: None)
    assert nvidia_driver(tmp_path / "absent") is None
    monkeypatch.setattr(clip.shutil, "which", lambda name: f"/usr/bin/{name}")
    asked = []

    def smi(command, **kwargs):
        asked.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="570.86.15\n", stderr="")

    monkeypatch.setattr(clip.subprocess, "run", smi)
    assert nvidia_driver(tmp_path / "absent") == "570.86.15"
    assert asked == [["/usr/bin/nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]]
