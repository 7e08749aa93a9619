"""The optimiser and its schedule, shared by fine-tuning and pretraining: AdamW with open_clip's
no-decay groups, linear warm-up then cosine decay, and the step that clamps CLIP's logit scale.
No Kedro here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import open_clip

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of τ


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    # Drop the last partial batch: a contrastive batch of 1 has no negatives.
    return max(1, n_samples // batch_size)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The lr factor of ``step``: linear warm-up to 1, then cosine decay to zero at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr, then cosine decay to zero (the official schedule)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps))


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; no weight decay on gains, biases, embeddings' scale and the logit scale (as open_clip)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exclude = parameter.ndim < 2 or "logit_scale" in name or "bn" in name or "ln" in name
        (no_decay if exclude else decay).append(parameter)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def optimizer_step(
    model: open_clip.CLIP, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> float:
    """Apply the gradients, advance the schedule and clamp τ at CLIP's 100; returns the step's lr."""
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
    return float(scheduler.get_last_lr()[0])
