"""The loop's mechanics: bf16, gradient accumulation, streamed images, options, meters and progress."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from starft_pipeline.data.splits import GroupSplit, load_split_images
from starft_pipeline.data.streaming import StreamedImages, choose_loading, train_images
from starft_pipeline.pipelines.finetune.nodes import loss_curve_metrics
from starft_pipeline.train.engine import Encoders, compile_towers, progress_bar
from starft_pipeline.train.finetune import FinetuneConfig, finetune
from tests.engine_helpers import (  # noqa: F401 (single_thread: autouse fixture)
    CLASS_NAMES,
    single_thread,
    tiny_config,
    tiny_model,
    tiny_train_data,
    train_tiny,
)


def _weights_close(first, second, **tolerance) -> bool:
    return all(torch.allclose(value, second[key], **tolerance) for key, value in first.items())


def test_a_bf16_step_runs_on_the_cpu():
    state = train_tiny(method="star", epochs=1, precision="bf16")
    assert all(math.isfinite(record["loss"]) and record["regulariser"] >= 0 for record in state.history)
    assert all(value.dtype == torch.float32 for value in state.model.state_dict().values() if value.is_floating_point())
    initial = tiny_model().model.state_dict()
    assert not torch.equal(state.model.state_dict()["visual.conv1.weight"], initial["visual.conv1.weight"])


def test_bf16_encoders_return_fp32_features():
    loaded = tiny_model()
    encoders = Encoders(loaded.model, torch.device("cpu"), "bf16")
    features = encoders.encode_image(torch.randn(2, 3, 32, 32))
    assert features.dtype == torch.float32 and features.shape == (2, 128)
    assert encoders.logit_scale is loaded.model.logit_scale  # other attributes are the model's


def test_text_is_encoded_once_per_distinct_text_and_without_trailing_padding():
    loaded = tiny_model()
    texts = ["a photo of a circle.", "a photo of a square on grass in the bright morning sun.", "a photo of a circle."]
    tokens = loaded.tokenizer(texts)
    reference = loaded.model.encode_text(tokens)
    features = Encoders(loaded.model, torch.device("cpu")).encode_text(tokens)
    assert torch.allclose(features, reference, atol=1e-5)
    assert torch.equal(features[0], features[2])
    features.sum().backward()  # gradients reach the text tower through the shared rows
    assert loaded.model.token_embedding.weight.grad.abs().sum() > 0


def test_gradient_accumulation_equals_the_full_batch_for_a_mean_over_samples():
    """FT's cross-entropy is a mean over samples: two micro-batches of 4 give the batch of 8's gradient."""
    full = train_tiny(method="ft", reg_weight=0.0, epochs=1, sgd_lr=0.05)
    accumulated = train_tiny(method="ft", reg_weight=0.0, epochs=1, sgd_lr=0.05, grad_accum_steps=2)
    assert [h["loss"] for h in accumulated.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-5)
    assert _weights_close(accumulated.model.state_dict(), full.model.state_dict(), rtol=1e-4, atol=1e-6)


def test_contrastive_accumulation_sees_only_the_micro_batch():
    """Documented limit: a micro-batch's contrastive loss has its own negatives only (≈ log 4, not log 8)."""
    full = train_tiny(method="flyp", reg_weight=0.0, epochs=1)
    accumulated = train_tiny(method="flyp", reg_weight=0.0, epochs=1, grad_accum_steps=2)
    assert accumulated.history[0]["loss"] < full.history[0]["loss"]
    assert full.history[0]["loss"] == pytest.approx(math.log(8), abs=0.5)
    assert accumulated.history[0]["loss"] == pytest.approx(math.log(4), abs=0.5)


def _image_files(tmp_path, images: torch.Tensor) -> GroupSplit:
    paths = []
    for index, image in enumerate(images):
        path = tmp_path / f"{index:03d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    labels = np.arange(len(images)) % len(CLASS_NAMES)
    return GroupSplit("train", tuple(paths), labels, np.zeros_like(labels), labels)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_streamed_images_train_exactly_as_images_in_memory(tmp_path, num_workers):
    data = tiny_train_data(16)
    split = _image_files(tmp_path, data.images)
    assert torch.equal(load_split_images(split, 32), data.images)  # PNG round trip is lossless
    config = tiny_config(method="star", epochs=1, num_workers=num_workers, data_loading="stream")
    streamed = train_images(split, 32, config.data_loading, num_workers=config.num_workers)
    assert isinstance(streamed, StreamedImages) and len(streamed) == 16
    in_memory = finetune(tiny_model(), data, config, torch.device("cpu")).model.state_dict()
    data.images = streamed
    from_disk = finetune(tiny_model(), data, config, torch.device("cpu")).model.state_dict()
    assert all(torch.equal(value, from_disk[key]) for key, value in in_memory.items())


def test_data_loading_is_chosen_by_size_or_by_parameter():
    assert choose_loading("auto", 1000, 32, memory_limit_gb=4.0) == "memory"
    assert choose_loading("auto", 1_281_167, 224, memory_limit_gb=4.0) == "stream"  # ImageNet
    assert choose_loading("memory", 1_281_167, 224, memory_limit_gb=4.0) == "memory"
    with pytest.raises(ValueError, match="finetune data_loading"):
        choose_loading("disk", 10, 32, 4.0)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("precision", "fp16", "finetune precision must be one of auto, fp32, bf16"),
        ("grad_accum_steps", 3, "finetune grad_accum_steps must be >= 1 and divide batch_size"),
        ("grad_accum_steps", 0, "finetune grad_accum_steps"),
        ("data_loading", "disk", "finetune data_loading"),
        ("num_workers", -1, "finetune num_workers"),
        ("compile", "yes", "finetune compile must be true or false"),
    ],
)
def test_scale_options_are_validated(option, value, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(batch_size=8, **{option: value})


def test_scale_options_come_from_parameters():
    params = {"precision": "bf16", "grad_accum_steps": 2, "compile": False, "num_workers": 2}
    config = FinetuneConfig.from_params(params)
    assert config.precision == "bf16" and config.grad_accum_steps == 2
    assert "num_workers" not in config.result_dict() and "precision" in config.result_dict()


def test_history_records_speed_memory_and_epoch_summaries():
    state = train_tiny(method="star", epochs=2)
    history = pd.DataFrame(state.history).assign(method="star")
    assert (history["images_per_s"] > 0).all() and (history["step_time_s"] > 0).all()
    last_steps = history.dropna(subset=["epoch_loss"])
    assert list(last_steps["epoch"]) == [0, 1] and (last_steps["peak_memory_mb"] > 0).all()
    assert last_steps["epoch_loss"].iloc[0] == pytest.approx(history[history["epoch"] == 0]["loss"].mean())
    metrics = loss_curve_metrics(history)
    assert [point["step"] for point in metrics["star.train.epoch_loss"]] == [0, 1]
    assert len(metrics["star.train.images_per_s"]) == len(history)
    assert {"star.train.epoch_images_per_s", "star.train.peak_memory_mb", "star.train.loss"} <= set(metrics)


def test_progress_bars_can_be_turned_off():
    with progress_bar(3, "epochs", enabled=False) as bar:
        assert bar.disable


def test_compile_wraps_the_towers_in_place():
    """Compiling runs lazily at the first forward (minutes on a CPU); here only the set-up is checked."""
    model = tiny_model().model
    keys = list(model.state_dict())
    assert compile_towers(model) == ["visual", "transformer"]
    assert list(model.state_dict()) == keys  # checkpoints and weights keep their names
