"""core.precision: the one resolution of ``auto`` and the error that names the parameter."""

from __future__ import annotations

import contextlib

import pytest
import torch

from starft_pipeline.core.precision import PRECISIONS, autocast, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_the_choices_come_from_the_literal():
    assert PRECISIONS == ("auto", "fp32", "bf16")


def test_auto_follows_the_device_and_explicit_choices_stay():
    assert [resolve_precision(choice, CPU) for choice in PRECISIONS] == ["fp32", "fp32", "bf16"]
    assert [resolve_precision(choice, CUDA) for choice in PRECISIONS] == ["bf16", "fp32", "bf16"]


@pytest.mark.parametrize("where", ["teacher precision", "finetune precision"])
def test_an_unknown_precision_names_the_parameter(where):
    with pytest.raises(ValueError, match=f"^{where} must be one of auto, fp32, bf16; got 'fp16'$"):
        resolve_precision("fp16", CPU, where)


def test_fp32_autocast_is_a_no_op_and_bf16_casts_on_the_cpu():
    assert isinstance(autocast(CPU, "fp32"), contextlib.nullcontext)
    with autocast(CPU, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
