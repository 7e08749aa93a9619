"""StarFT teacher modes: cached = online without augmentation, cached_views = online on its views; the
warnings that say when the regulariser vanishes."""

from __future__ import annotations

import dataclasses
import logging

import pydantic
import pytest
import torch

from starft_pipeline.core.distributed import BatchRows
from starft_pipeline.data.splits import normalise_images
from starft_pipeline.models.clip import encode_images, encode_texts, logit_scale
from starft_pipeline.params import FinetuneParams
from starft_pipeline.train.batches import StepBatch, TrainData
from starft_pipeline.train.engine import Encoders
from starft_pipeline.train.finetune import (
    FinetuneConfig,
    regulariser_warnings,
    train_data_from_cache,
)
from starft_pipeline.train.step_losses import contrastive_losses
from starft_pipeline.train.teacher_modes import (
    CachedViews,
    OnlineTeacher,
    draw_view_boxes,
    load_or_build_views,
    views_key,
)
from tests.engine_helpers import single_thread, tiny_config, tiny_model, tiny_pool, tiny_train_data  # noqa: F401

N_IMAGES = 12


@pytest.fixture(scope="module")
def teacher():
    """The frozen zero-shot model (init seed 0); the student starts elsewhere (seed 1) so that R is not ~0."""
    return tiny_model(0)


@pytest.fixture(scope="module")
def cached_data(teacher) -> TrainData:
    """Tiny train data whose cache is the teacher's real features of the un-augmented images and descriptions."""
    data = tiny_train_data(N_IMAGES)
    with torch.no_grad():
        image = encode_images(teacher.model, normalise_images(data.images, teacher.image_mean, teacher.image_std))
        text = encode_texts(teacher.model, teacher.tokenizer, data.descriptions.texts)
    return dataclasses.replace(
        data, teacher_image=image, teacher_descriptions=text, teacher_scale=float(logit_scale(teacher.model).detach())
    )


def regulariser_and_gradients(data: TrainData, config: FinetuneConfig) -> tuple[float, dict[str, torch.Tensor]]:
    """R on one whole batch of a fresh student (init seed 1), and R's gradient for every student parameter."""
    student = tiny_model(1)
    device = torch.device("cpu")
    batch = StepBatch(
        student,
        Encoders(student.model, device),
        data,
        torch.arange(N_IMAGES),
        config,
        reg_weight=0.5,
        generator=torch.Generator().manual_seed(3),
        device=device,
        rows=BatchRows.whole(N_IMAGES),
    )
    _, losses = contrastive_losses(batch)
    names, params = zip(*student.model.named_parameters())
    grads = torch.autograd.grad(losses["regulariser"], params, allow_unused=True)
    return float(losses["regulariser"]), {n: g for n, g in zip(names, grads) if g is not None}


def assert_same(first, second) -> None:
    (value_a, grads_a), (value_b, grads_b) = first, second
    assert value_a == pytest.approx(value_b, rel=1e-4, abs=1e-7)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10  # both towers' weights get a gradient
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-6, msg=name)


def test_cached_and_online_agree_without_augmentation(teacher, cached_data):
    config = tiny_config(batch_size=N_IMAGES, augment=False)
    online = dataclasses.replace(cached_data, teacher=OnlineTeacher(teacher, torch.device("cpu")))
    cached_result = regulariser_and_gradients(cached_data, config)
    assert cached_result[0] > 1e-3  # a real regulariser, not a vanishing one
    assert_same(cached_result, regulariser_and_gradients(online, dataclasses.replace(config, teacher_mode="online")))


def test_with_crops_the_cache_is_not_the_online_teacher(teacher, cached_data):
    """What online fixes: the cache holds the un-augmented image, the student sees a crop."""
    config = tiny_config(batch_size=N_IMAGES, augment=True, crop_scale=(0.3, 0.5))
    online = dataclasses.replace(cached_data, teacher=OnlineTeacher(teacher, torch.device("cpu")))
    cached_value, _ = regulariser_and_gradients(cached_data, config)
    online_value, _ = regulariser_and_gradients(online, dataclasses.replace(config, teacher_mode="online"))
    assert abs(cached_value - online_value) > 1e-3 * max(cached_value, online_value)


class OnlineOnViews:
    """The online teacher fed the crops that cached_views picks (the same draws, the same pixels)."""

    def __init__(self, online: OnlineTeacher, views: CachedViews) -> None:
        self.online, self.views = online, views

    def begin(self, batch):
        return self.online.on_pixels(batch, self.views.begin(batch).pixels)


def test_cached_views_equal_online_on_the_stored_views(teacher, cached_data, tmp_path):
    config = tiny_config(batch_size=N_IMAGES, teacher_mode="cached_views", teacher_views=3, crop_scale=(0.3, 0.6))
    views = load_or_build_views(teacher, cached_data.images, config, "teacher-fp", torch.device("cpu"), tmp_path)
    assert views.features.shape == (N_IMAGES, 3, cached_data.teacher_image.shape[1])
    from_views = regulariser_and_gradients(dataclasses.replace(cached_data, teacher=views), config)
    online = OnlineOnViews(OnlineTeacher(teacher, torch.device("cpu")), views)
    assert_same(from_views, regulariser_and_gradients(dataclasses.replace(cached_data, teacher=online), config))
    # ... and differs from the plain cache (the views are real crops)
    cached_value, _ = regulariser_and_gradients(cached_data, dataclasses.replace(config, teacher_mode="cached"))
    assert abs(cached_value - from_views[0]) > 1e-3 * from_views[0]


def test_view_cache_is_written_once_and_reused(teacher, cached_data, tmp_path, monkeypatch):
    config = tiny_config(teacher_mode="cached_views", teacher_views=2)
    first = load_or_build_views(teacher, cached_data.images, config, "fp", torch.device("cpu"), tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def no_encoding(*args, **kwargs):
        raise AssertionError("the stored views should have been reused")

    monkeypatch.setattr("starft_pipeline.train.teacher_modes.encode_views", no_encoding)
    again = load_or_build_views(teacher, cached_data.images, config, "fp", torch.device("cpu"), tmp_path)
    assert torch.equal(again.boxes, first.boxes) and torch.equal(again.features, first.features)
    with pytest.raises(AssertionError, match="reused"):  # another seed is another file
        load_or_build_views(
            teacher, cached_data.images, dataclasses.replace(config, seed=1), "fp", torch.device("cpu"), tmp_path
        )


def test_view_boxes_come_from_the_seed():
    boxes = draw_view_boxes(5, 32, 4, (0.5, 1.0), seed=0)
    assert boxes.shape == (5, 4, 4) and torch.equal(boxes, draw_view_boxes(5, 32, 4, (0.5, 1.0), seed=0))
    assert not torch.equal(boxes, draw_view_boxes(5, 32, 4, (0.5, 1.0), seed=1))
    top, left, height, width = boxes.unbind(-1)
    assert torch.equal(height, width)  # square by default
    assert ((top + height) <= 32).all() and ((left + width) <= 32).all() and (height >= 22).all()  # √0.5·32 ≈ 22.6
    official = draw_view_boxes(50, 32, 4, (0.9, 1.0), seed=0, ratio=(0.75, 4 / 3))
    assert (official[..., 2] != official[..., 3]).any()  # rectangles, keyed apart from the square views


def test_the_view_cache_key_holds_the_crop_ratio():
    square = FinetuneConfig(method="star", teacher_mode="cached_views")
    official = dataclasses.replace(square, crop_ratio=(0.75, 4 / 3))
    assert views_key("fp", square, 10, 32) != views_key("fp", official, 10, 32)


def test_teacher_mode_is_validated():
    assert FinetuneConfig().teacher_mode == "cached"
    with pytest.raises(ValueError, match="teacher_mode must be one of cached, online, cached_views; got 'live'"):
        FinetuneConfig(teacher_mode="live")
    with pytest.raises(ValueError, match="only applies to the StarFT methods"):
        FinetuneConfig(method="flyp", teacher_mode="online")
    with pytest.raises(ValueError, match="cached_views needs augment: true"):
        FinetuneConfig(teacher_mode="cached_views", augment=False)
    with pytest.raises(ValueError, match="teacher_views"):
        FinetuneConfig(teacher_views=0)
    assert FinetuneParams.model_validate({"method": "kl", "teacher_mode": "online", "teacher_views": 8})
    with pytest.raises(pydantic.ValidationError, match="teacher_mode"):
        FinetuneParams.model_validate({"method": "star", "teacher_mode": "live"})


# ----------------------------------------------------------------------------- warnings


def test_no_warning_for_a_working_regulariser():
    assert regulariser_warnings(tiny_train_data(16), tiny_config(epochs=2, diminishing=True)) == []
    assert regulariser_warnings(tiny_train_data(16), tiny_config(method="flyp", reg_weight=0.0)) == []


def test_warns_when_lambda_is_zero_in_every_epoch():
    (warning,) = regulariser_warnings(tiny_train_data(16), tiny_config(epochs=1, diminishing=True))
    assert "λ_e is 0 in every epoch" in warning and "epochs 1" in warning and "diminishing" in warning
    (warning,) = regulariser_warnings(tiny_train_data(16), tiny_config(reg_weight=0.0))
    assert "reg_weight (λ) is 0" in warning


def test_warns_about_one_class_batches():
    data = dataclasses.replace(tiny_train_data(16), labels=torch.tensor([0] * 8 + [1] * 8))
    config = tiny_config(batch_size=2, epochs=2)  # 8 pairs per epoch: a same-class pair has odds 7/15
    (warning,) = regulariser_warnings(data, config)
    assert "of 16 (micro-)batches" in warning and "hold one class only" in warning and "batch_size" in warning
    single = dataclasses.replace(data, labels=torch.zeros(16, dtype=torch.int64))
    assert "16 of 16" in regulariser_warnings(single, config)[0]
    assert regulariser_warnings(data, dataclasses.replace(config, batch_size=16)) == []  # both classes in each batch
    assert regulariser_warnings(single, dataclasses.replace(config, method="kl")) == []  # kl masks nothing


def test_the_loop_logs_the_warning_once_and_the_schedule(caplog):
    from tests.engine_helpers import train_tiny

    with caplog.at_level(logging.INFO, logger="starft_pipeline.train.finetune"):
        train_tiny(n_images=16, epochs=1, diminishing=True)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "starft_pipeline.train.finetune"
    ]
    assert len(warnings) == 1 and "λ_e is 0 in every epoch" in warnings[0]
    assert "star: λ_e per epoch [0.0] (teacher_mode cached)" in caplog.text


def test_a_class_without_descriptions_is_an_error():
    pool = tiny_pool()
    data = train_data_from_cache(
        torch.zeros(6, 3, 32, 32, dtype=torch.uint8),
        torch.tensor([0, 1, 2] * 2),
        ("circle", "square", "triangle"),
        dataclasses.replace(pool, labels=(0,) * len(pool.texts)),
        torch.zeros(6, 4),
        torch.zeros(len(pool.texts), 4),
        10.0,
        tiny_config(),
    )
    from starft_pipeline.train.finetune import check_train_data

    with pytest.raises(ValueError, match=r"no descriptions for class\(es\) \['square', 'triangle'\]"):
        check_train_data(data, tiny_config())


# ----------------------------------------------------------------------------- the finetune node


@pytest.mark.slow
def test_finetune_node_runs_each_teacher_mode(tmp_path, monkeypatch):
    """online builds the frozen teacher from the teacher stage's spec; cached_views writes its file under data/04_feature."""
    from starft_pipeline.pipelines.finetune.nodes import finetune_method
    from starft_pipeline.pipelines.finetune.pipeline import SHARED_INPUTS
    from tests.helpers import stage_tiny

    staged = stage_tiny(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # the views file goes to data/04_feature/teacher_views/ under the project root
    shared = {name: staged[name] for name in SHARED_INPUTS}
    base = staged["params"]["star"]["finetune"] | dict(
        epochs=1, diminishing=False, batch_size=16, device="cpu", progress=False, checkpoint={"enabled": False}
    )
    regulariser = {}
    for mode in ("cached", "online", "cached_views"):
        weights, history = finetune_method(base | {"teacher_mode": mode, "teacher_views": 2}, **shared)
        assert weights.metadata["config"]["teacher_mode"] == mode
        regulariser[mode] = history["regulariser"].tolist()
    assert all(min(values) > -1e-6 and max(values) > 1e-4 for values in regulariser.values()), regulariser
    # The student starts as the teacher, so an exact teacher gives R = 0 at the first step (up to float
    # rounding); the cache of un-augmented images does not (the student sees crops).
    assert abs(regulariser["online"][0]) < 1e-6 and abs(regulariser["cached_views"][0]) < 1e-6, regulariser
    assert regulariser["cached"][0] > 1e-5, regulariser
    assert len(list((tmp_path / "data/04_feature/teacher_views").glob("*.safetensors"))) == 1


@pytest.mark.parametrize(("reg_logit_scale", "expected"), [(None, 10.0), (100.0, 100.0)])
def test_the_regulariser_scale_is_the_teachers_unless_fixed(reg_logit_scale, expected):
    pool = tiny_pool()
    data = train_data_from_cache(
        torch.zeros(6, 3, 32, 32, dtype=torch.uint8),
        torch.tensor([0, 1, 2] * 2),
        ("circle", "square", "triangle"),
        pool,
        torch.zeros(6, 4),
        torch.zeros(len(pool.texts), 4),
        10.0,
        tiny_config(reg_logit_scale=reg_logit_scale),
    )
    assert data.teacher_scale == expected


def test_a_non_positive_regulariser_scale_is_an_error():
    with pytest.raises(ValueError, match="reg_logit_scale"):
        tiny_config(reg_logit_scale=0.0)
