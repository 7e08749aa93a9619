"""train.optim: the schedule's factors, AdamW's no-decay groups and τ's clamp, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from starft_pipeline.train.optim import (
    MAX_LOGIT_SCALE,
    adamw,
    cosine_with_warmup,
    optimizer_step,
    steps_per_epoch,
    warmup_cosine,
)


def test_steps_per_epoch_drops_the_partial_batch_but_keeps_one():
    assert steps_per_epoch(10, 4) == 2 and steps_per_epoch(3, 4) == 1 and steps_per_epoch(8, 4) == 2


def test_warmup_is_linear_then_cosine_reaches_zero():
    assert [warmup_cosine(step, 2, 6) for step in (0, 1)] == [0.5, 1.0]
    # after warm-up: progress (step − 2) / 4 → 0.5 · (1 + cos(π · progress))
    assert warmup_cosine(2, 2, 6) == 1.0
    assert warmup_cosine(4, 2, 6) == pytest.approx(0.5)
    assert warmup_cosine(6, 2, 6) == pytest.approx(0.0) and warmup_cosine(9, 2, 6) == pytest.approx(0.0)


def _model() -> torch.nn.Module:
    model = torch.nn.Module()
    model.proj = torch.nn.Linear(2, 2)  # weight (2-D): decayed; bias: not
    model.ln_final = torch.nn.LayerNorm(2)
    model.logit_scale = torch.nn.Parameter(torch.tensor(math.log(200.0)))
    return model


def test_adamw_decays_only_matrices():
    optimizer = adamw(_model(), lr=0.1, weight_decay=0.2)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.2 and [p.shape for p in decay["params"]] == [torch.Size([2, 2])]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 4  # bias, LN weight and bias, τ


def test_a_step_advances_the_schedule_and_clamps_tau_at_100():
    model = _model()
    optimizer = adamw(model, lr=0.1, weight_decay=0.0)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=2, total_steps=4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # step 0: half the base lr
    lr = optimizer_step(model, optimizer, scheduler)
    assert lr == pytest.approx(0.1)  # the factor of step 1
    assert float(model.logit_scale.exp()) == pytest.approx(MAX_LOGIT_SCALE)
