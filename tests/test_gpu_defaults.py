"""GPU defaults (bf16 and TF32 on CUDA, fp32 on the CPU) and environments merged key by key into base."""

from __future__ import annotations

import pytest
import torch

from starft_pipeline.core.precision import resolve_precision
from starft_pipeline.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS
from starft_pipeline.train.engine import Encoders, configure_tf32
from starft_pipeline.train.finetune import FinetuneConfig
from tests.helpers import PROJECT_ROOT

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
FINETUNE_METHODS = ("ft", "lp_ft", "flyp", "star", "kl")
RUNTIME_KEYS = ("device", "linear_probe", "checkpoint")


def _parameters(env: str) -> dict:
    loader = CONFIG_LOADER_CLASS(str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env})
    return loader["parameters"]


def _config(block: dict) -> FinetuneConfig:
    return FinetuneConfig.from_params(block, exclude=RUNTIME_KEYS)


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_the_cpu():
    assert resolve_precision("auto", CUDA) == "bf16" and resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CUDA) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16; got 'fp16'"):
        resolve_precision("fp16", CPU)
    assert Encoders(torch.nn.Linear(2, 2), CPU, "auto").precision == "fp32"


def test_tf32_is_left_alone_off_cuda():
    before = torch.backends.cuda.matmul.allow_tf32
    configure_tf32(CPU, not before)
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_base_defaults_are_fp32_on_the_cpu_and_bf16_with_tf32_on_cuda():
    config = _config(_parameters("base")["star"]["finetune"])
    assert config.precision == "auto" and config.tf32 and config.pin_memory
    assert resolve_precision(config.precision, CPU) == "fp32" and resolve_precision(config.precision, CUDA) == "bf16"


def test_imagenet_resolves_to_the_recipe_bf16_tf32_and_workers_keeping_base_keys():
    params, base = _parameters("imagenet"), _parameters("base")
    for method in FINETUNE_METHODS:
        block = params[method]["finetune"]
        config = _config(block)
        assert resolve_precision(config.precision, CUDA) == "bf16" and config.tf32, method
        assert config.num_workers > 0 and config.pin_memory, method
        assert (config.epochs, config.batch_size, config.lr, config.warmup_steps) == (10, 512, 1e-5, 500), method
        assert config.method == method and config.weight_decay == 0.1, method
        # keys conf/imagenet does not restate survive from base
        assert block["checkpoint"] == base[method]["finetune"]["checkpoint"], method
        assert config.crop_scale == (0.9, 1.0) and config.caption_templates == ("a photo of a {c}.",), method
    for method in ("star", "kl"):
        config = _config(params[method]["finetune"])
        assert config.confounder_types == ("background",) and config.reg_weight == 0.5 and config.diminishing
        assert config.teacher_mode == "online" and config.crop_ratio == (1.0, 1.0)  # the official teacher, square crop
    assert params["lp"]["finetune"]["linear_probe"] == {"c_grid": [0.316], "max_iter": 1000}
    assert params["teacher"]["model"]["architecture"] == "ViT-B-16-quickgelu"  # OpenAI's weights: QuickGELU


@pytest.mark.parametrize("env", ["imagenet", "waterbirds"])
def test_an_environment_replaces_the_data_sets_whole(env):
    # (the merged parameters' validation: tests/test_params_validation.py, the shipped configurations)
    params = _parameters(env)
    assert not {"synthetic", "waterbirds_like"} & set(params["datasets"])  # no base data set leaks in
    assert not {"synthetic", "waterbirds_like"} & set(params["class_names"]["datasets"])
    assert params["class_names"]["finetune_dataset"] == env


@pytest.mark.parametrize("env", ["imagenet", "waterbirds"])
def test_the_gpu_recipes_ask_for_cuda_in_every_stage_and_base_stays_auto(env):
    # no usable GPU is then an error naming torch's build and the driver (models.clip.resolve_device), raised
    # when a stage resolves its device: these parameters still validate on the CPU (test_params_validation)
    params, base = _parameters(env), _parameters("base")
    stages = {"teacher": params["teacher"], "evaluation": params["evaluation"], "export": params["export"]}
    stages |= {f"{method}.finetune": params[method]["finetune"] for method in ("lp", *FINETUNE_METHODS)}
    assert {name: block.get("device") for name, block in stages.items()} == dict.fromkeys(stages, "cuda")
    assert {base[name]["device"] for name in ("teacher", "evaluation", "export")} == {"auto"}
