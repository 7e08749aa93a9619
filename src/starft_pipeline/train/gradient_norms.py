"""How hard the StarFT regulariser pulls at different logit scales: ‖∇R‖ along a training run.

R = KL(softmax(τ·T) ‖ softmax(τ·S)) is scaled by the teacher's τ₀ (``TrainData.teacher_scale``). A cell
at τ₀ = 100 and one at the teacher's own τ₀ differ in the scale *and* in how strongly R pulls; the λ that
makes the own-scale cell pull as hard is λ_ref · mean‖∇R_ref‖ / mean‖∇R_s‖ (:func:`matched_reg_weight`).

:func:`measure_gradient_norms` trains the config's method for the first steps exactly as
``finetune.training_step`` does (same batches, same draws from (seed, epoch, step), same schedule) and,
before each step, on that step's batch and parameters, measures the L2 norm over every trainable
parameter of ∇R (R alone, unweighted by λ, no contrastive term) at each scale. The measurement runs
under a forked RNG and its gradients are zeroed, so the trajectory is the run's own. No Kedro here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from starft_pipeline.core.distributed import BatchRows, micro_batch_rows
from starft_pipeline.models.clip import LoadedModel
from starft_pipeline.train.batches import TrainData
from starft_pipeline.train.engine import accumulate_gradients
from starft_pipeline.train.finetune import (
    FinetuneConfig,
    TrainState,
    check_train_data,
    epoch_step_indices,
    setup_state,
    step_batch_maker,
    training_step,
)
from starft_pipeline.train.losses import diminishing_weight
from starft_pipeline.train.optim import steps_per_epoch
from starft_pipeline.train.step_losses import Losses, step_losses

logger = logging.getLogger(__name__)

#: λ handed to the loss function while measuring: any λ > 0 makes it compute R; R is read alone, unweighted.
MEASURING_WEIGHT = 1.0
STEP_COLUMNS = ("step", "epoch", "scale", "regulariser", "grad_norm")
SUMMARY_COLUMNS = ("scale", "reference", "mean_grad_norm", "ratio", "matched_reg_weight")


@dataclass(frozen=True)
class GradientNorms:
    """``per_step``: one row per step × scale (columns :data:`STEP_COLUMNS`; ``step`` counts from 1, the
    step measured is the one the run takes next). ``summary``: one row per scale (:data:`SUMMARY_COLUMNS`):
    the mean ‖∇R‖ over the steps, ``ratio`` = mean at the reference / mean at this scale, and the
    ``matched_reg_weight`` λ_s = λ_ref · ratio. The reference is the run's own scale (``TrainData.teacher_scale``)."""

    per_step: pd.DataFrame
    summary: pd.DataFrame
    reference_scale: float
    reg_weight: float


def matched_reg_weight(reg_weight: float, reference_norm: float, norm: float) -> float:
    """λ at a scale whose mean ‖∇R‖ is ``norm`` that pulls as hard as ``reg_weight`` at the reference's."""
    if norm <= 0:
        raise ValueError(f"the regulariser's gradient norm must be positive to match λ, got {norm}")
    return reg_weight * reference_norm / norm


def gradient_norm(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm over every gradient of ``parameters`` together (those without one count as 0)."""
    squares = [p.grad.detach().float().pow(2).sum() for p in parameters if p.grad is not None]
    if not squares:
        raise ValueError("no parameter has a gradient: the regulariser does not reach the trainable parameters")
    return torch.stack(squares).sum().sqrt()


def regulariser_gradient_norm(
    loaded: LoadedModel,
    state: TrainState,
    data: TrainData,
    indices: torch.Tensor,
    config: FinetuneConfig,
    device: torch.device,
    scale: float,
) -> tuple[float, float]:
    """(R, ‖∇R‖) at logit scale ``scale`` on the batch and parameters of the run's next step.

    The step's draws (captions, descriptions, crops) come from the same (seed, epoch, step) generator as
    ``training_step``'s; micro-batches accumulate as there. Gradients are zeroed before and after, and the
    global RNG (dropout) is restored, so the step that follows is untouched.
    """
    losses_of = step_losses(config.method)
    at_scale = dataclasses.replace(data, teacher_scale=scale)
    batch_of = step_batch_maker(loaded, state, at_scale, indices, config, MEASURING_WEIGHT, device)
    plan = micro_batch_rows(len(indices), config.grad_accum_steps, state.context)

    def regulariser_only(rows: BatchRows) -> Losses:
        _, parts = losses_of(batch_of(rows))
        return parts["regulariser"], {}

    trainable = [p for p in state.model.parameters() if p.requires_grad]
    state.optimizer.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        value, _ = accumulate_gradients(regulariser_only, plan, state.step_encoders)
    norm = gradient_norm(trainable)
    state.optimizer.zero_grad(set_to_none=True)
    return float(value), float(norm)


def measured_scales(reference: float, scales: Sequence[float]) -> list[float]:
    """The reference (the run's scale) first, then ``scales`` in order, each once."""
    out = [float(reference)]
    for scale in scales:
        if float(scale) <= 0:
            raise ValueError(f"logit scales must be positive, got {scale}")
        if float(scale) not in out:
            out.append(float(scale))
    return out


def summarise(per_step: pd.DataFrame, reference: float, reg_weight: float) -> pd.DataFrame:
    """One row per scale: mean ‖∇R‖, the ratio to the reference's and the matched λ (:func:`matched_reg_weight`)."""
    means = per_step.groupby("scale", sort=False)["grad_norm"].mean()
    reference_norm = float(means[reference])
    return pd.DataFrame(
        [
            {
                "scale": float(scale),
                "reference": float(scale) == reference,
                "mean_grad_norm": float(mean),
                "ratio": reference_norm / float(mean),
                "matched_reg_weight": matched_reg_weight(reg_weight, reference_norm, float(mean)),
            }
            for scale, mean in means.items()
        ],
        columns=list(SUMMARY_COLUMNS),
    )


def measure_gradient_norms(
    loaded: LoadedModel,
    data: TrainData,
    config: FinetuneConfig,
    device: torch.device,
    scales: Sequence[float],
    steps: int,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> GradientNorms:
    """Train ``config``'s method for ``steps`` steps as ``finetune`` would and measure ‖∇R‖ before each.

    ``scales``: the logit scales to compare with the run's own (``data.teacher_scale``, always measured
    and the reference of the summary). ``on_step`` gets each measured row (step, epoch, scale, R, norm).
    The model is trained in place (its first ``steps`` steps), single process.
    """
    if not config.regularised:
        raise ValueError(
            f"method {config.method!r} with reg_weight {config.reg_weight} has no regulariser to measure "
            "(use a StarFT method with reg_weight > 0)"
        )
    total = config.epochs * steps_per_epoch(len(data.images), config.batch_size)
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and the run's {total} steps, got {steps}")
    check_train_data(data, config)
    reference = float(data.teacher_scale)
    compared = measured_scales(reference, scales)
    torch.manual_seed(config.seed)  # as finetune() does before building the state
    state = setup_state(loaded, config, len(data.images), device)
    records: list[dict[str, float]] = []
    while state.step < steps:
        reg_weight = diminishing_weight(config.reg_weight, state.epoch, config.epochs, config.diminishing)
        _, step_indices = epoch_step_indices(data, config, state)
        for indices in step_indices:
            for scale in compared:
                value, norm = regulariser_gradient_norm(loaded, state, data, indices, config, device, scale)
                row = {"step": state.step + 1, "epoch": state.epoch, "scale": scale, "regulariser": value}
                records.append(row | {"grad_norm": norm})
                if on_step is not None:
                    on_step(records[-1])
            training_step(loaded, state, data, indices, config, reg_weight, device)
            state.step += 1
            if state.step >= steps:
                break
        state.epoch += 1
    state.model.eval()
    per_step = pd.DataFrame(records, columns=list(STEP_COLUMNS))
    return GradientNorms(per_step, summarise(per_step, reference, config.reg_weight), reference, config.reg_weight)
