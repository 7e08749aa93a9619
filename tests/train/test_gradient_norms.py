"""The regulariser's gradient norm at several logit scales: a hand check of one norm, an untouched
trajectory, and the matched λ."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from starft_pipeline.data.splits import normalise_images
from starft_pipeline.train.batches import draw_captions, draw_descriptions, seeded_generator, text_table
from starft_pipeline.train.finetune import finetune, setup_state
from starft_pipeline.train.gradient_norms import (
    matched_reg_weight,
    measure_gradient_norms,
    measured_scales,
    regulariser_gradient_norm,
    summarise,
)
from starft_pipeline.train.losses import star_regulariser
from starft_pipeline.train.teacher_modes import OnlineTeacher
from tests.engine_helpers import single_thread, tiny_config, tiny_model, tiny_train_data  # noqa: F401

CPU = torch.device("cpu")


def hand_norm(data, config, indices, scale: float) -> float:
    """‖∇R‖ of a fresh student (init seed 0) by autograd of ``star_regulariser`` alone: the step's draws
    (caption, then description) by hand, no augmentation, the cached teacher features."""
    loaded = tiny_model()
    model = loaded.model.train()
    generator = seeded_generator(config.seed, 0, 0)
    labels = data.labels[indices]
    table = text_table(loaded, data, config.caption_templates, CPU)
    draw_captions(labels, table, generator)  # consumed first, as in the step
    picks = draw_descriptions(labels, table.descriptions_of_class, table.descriptions_per_class, generator)
    pixels = normalise_images(data.images[indices], loaded.image_mean, loaded.image_std)
    texts = [data.descriptions.texts[int(i)] for i in picks]
    regulariser = star_regulariser(
        student_image=F.normalize(model.encode_image(pixels), dim=-1),
        student_text=F.normalize(model.encode_text(loaded.tokenizer(texts)), dim=-1),
        teacher_image=data.teacher_image[indices],
        teacher_text=data.teacher_descriptions[picks],
        teacher_scale=scale,
        labels=labels,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(regulariser, trainable, allow_unused=True)
    return float(torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None)))


def test_the_norm_at_a_scale_is_the_hand_checked_one():
    data, config = tiny_train_data(8), tiny_config(batch_size=8, augment=False)
    indices = torch.arange(8)
    loaded = tiny_model()
    state = setup_state(loaded, config, len(data.images), CPU)
    norms = {}
    for scale in (14.0, 100.0):
        value, norm = regulariser_gradient_norm(loaded, state, data, indices, config, CPU, scale)
        assert value > 0
        assert norm == pytest.approx(hand_norm(data, config, indices, scale), rel=1e-3)
        norms[scale] = norm
    assert norms[100.0] != pytest.approx(norms[14.0], rel=1e-2)  # the scale matters
    assert all(p.grad is None for p in state.model.parameters())  # zeroed after measuring


def test_measuring_leaves_the_trajectory_untouched():
    """The measured run's weights after all its steps equal finetune()'s bit for bit (crops, online teacher,
    diminishing λ over two epochs: 2 × 2 steps)."""
    config = tiny_config(batch_size=8, epochs=2, diminishing=True, teacher_mode="online")
    data = dataclasses.replace(tiny_train_data(16), teacher=OnlineTeacher(tiny_model(1), CPU))
    trained = finetune(tiny_model(), data, config, CPU)
    measured_model = tiny_model()
    result = measure_gradient_norms(measured_model, data, config, CPU, scales=[100.0, 50.0], steps=4)
    expected, got = trained.model.state_dict(), measured_model.model.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # the reference (the run's own τ, 50) first; 100 once; every step × scale measured
    assert result.reference_scale == 50.0 and list(result.summary["scale"]) == [50.0, 100.0]
    assert len(result.per_step) == 8 and list(result.per_step["step"].unique()) == [1, 2, 3, 4]
    assert (result.per_step["grad_norm"] > 0).all()
    # the measurement sees the training batch: R at the run's τ before a step is the step's own R (epoch 1: λ_e > 0)
    at_reference = result.per_step[result.per_step["scale"] == 50.0].set_index("step")["regulariser"]
    for record in trained.history[:2]:
        assert at_reference[record["step"]] == pytest.approx(record["regulariser"], rel=1e-5)
    reference = result.summary.iloc[0]
    assert reference["reference"] and reference["ratio"] == 1.0 and reference["matched_reg_weight"] == 0.5


def test_the_matched_weight_scales_lambda_by_the_norm_ratio():
    assert matched_reg_weight(0.5, reference_norm=3.0, norm=1.0) == pytest.approx(1.5)
    per_step = pd.DataFrame(
        {"step": [1, 1, 2, 2], "scale": [100.0, 14.0, 100.0, 14.0], "grad_norm": [2.0, 1.0, 4.0, 1.0]}
    )
    summary = summarise(per_step, reference=100.0, reg_weight=0.5).set_index("scale")
    assert summary.loc[100.0, "mean_grad_norm"] == 3.0 and summary.loc[14.0, "mean_grad_norm"] == 1.0
    assert summary.loc[14.0, "ratio"] == 3.0 and summary.loc[14.0, "matched_reg_weight"] == pytest.approx(1.5)
    assert summary.loc[100.0, "matched_reg_weight"] == 0.5 and bool(summary.loc[100.0, "reference"])
    with pytest.raises(ValueError, match="positive"):
        matched_reg_weight(0.5, 1.0, 0.0)


def test_scales_and_steps_are_checked():
    assert measured_scales(100.0, [14.2, 100, 14.2]) == [100.0, 14.2]
    with pytest.raises(ValueError, match="positive"):
        measured_scales(100.0, [0.0])
    data = tiny_train_data(16)
    with pytest.raises(ValueError, match="between 1 and the run's 4 steps"):
        measure_gradient_norms(tiny_model(), data, tiny_config(batch_size=8), CPU, [100.0], steps=5)
    with pytest.raises(ValueError, match="no regulariser to measure"):
        measure_gradient_norms(tiny_model(), data, tiny_config(method="flyp", reg_weight=0.0), CPU, [100.0], steps=1)
