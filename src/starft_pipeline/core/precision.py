"""Mixed precision: which dtype a run computes in, and the autocast context for it.

Shared by training (engine), the teacher stage and evaluation, so it lives in core. No Kedro here.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal, get_args

import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
#: What ``auto`` resolves to on a device.
ResolvedPrecision = Literal["fp32", "bf16"]


def resolve_precision(precision: str, device: torch.device, where: str = "precision") -> ResolvedPrecision:
    """``auto``: bf16 on CUDA (what a GPU user expects), fp32 elsewhere (the CPU default's results stay put).

    ``where`` names the parameter in the error (``teacher precision``, ``finetune precision``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"{where} must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return "bf16" if precision == "bf16" else "fp32"


def autocast(device: torch.device, precision: Precision) -> AbstractContextManager:
    """bf16 autocast on CUDA or the CPU; fp32 is a no-op (``auto`` as :func:`resolve_precision`)."""
    if resolve_precision(precision, device) == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
