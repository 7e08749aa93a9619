"""Loop mechanics around the losses: mixed precision, torch.compile, DDP, gradient accumulation, meters.

The loss functions call ``model.encode_image`` / ``model.encode_text`` on what :class:`Encoders`
gives them; it runs the encoders under bf16 autocast when asked (features come back in fp32, so
the losses and the regulariser's masked softmax stay in fp32), and through DDP when distributed
(one DDP module dispatches to either encoder, so DDP's hooks see every forward). Any other
attribute (``logit_scale``, a classification head) is the model's own. No Kedro here.

Text is encoded cheaply and exactly: each distinct token row once (a batch's captions repeat a few
class prompts), and only up to the longest text's end-of-text token: with CLIP's causal mask and
end-of-text pooling the padding columns after it cannot change the features (77 → ~15 columns).
:meth:`Encoders.encode_rows` does both without a device sync: it takes rows of a token table
tokenised once, deduplicates their indices on the host and trims with lengths precomputed on the
host (:func:`token_lengths`).

Gradient accumulation: :func:`accumulate_gradients` runs the step's micro-batches, dividing each
loss by their number, so the accumulated gradient is the mean of the micro-batch gradients. For a
loss that is a mean over samples (FT's cross-entropy) that equals the full batch's gradient. For
the contrastive loss and the StarFT regulariser it does not: each micro-batch's loss only sees the
micro-batch's negatives (and other-class descriptions), as with a smaller batch on more devices;
accumulation saves memory, not batch semantics. DDP with the gathered loss is the way to a large
contrastive batch (see ``distributed``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from starft_pipeline.core.distributed import SINGLE_PROCESS, BatchRows, DistContext
from starft_pipeline.core.precision import Precision, autocast, resolve_precision
from starft_pipeline.core.progress import Progress

if TYPE_CHECKING:
    import open_clip

logger = logging.getLogger(__name__)

COMPILED_TOWERS = ("visual", "transformer", "text")  # open_clip's image tower and text transformer(s)


def configure_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 for fp32 matmuls and convolutions on CUDA (Ampere and later); nothing on other devices."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def compile_towers(model: nn.Module) -> list[str]:
    """``torch.compile`` the model's towers in place (state-dict keys unchanged); returns their names."""
    compiled = []
    for name in COMPILED_TOWERS:
        tower = getattr(model, name, None)
        if isinstance(tower, nn.Module):
            tower.compile()
            compiled.append(name)
    if not compiled:
        raise ValueError(f"finetune compile: the model has none of the towers {COMPILED_TOWERS} to compile")
    return compiled


def _pools_at_end_of_text(model: nn.Module) -> bool:
    """A causal CLIP text tower pooled at the end-of-text token: columns after it cannot matter."""
    import open_clip  # here, not at module level: open_clip costs seconds of start-up to every kedro command

    if not isinstance(model, open_clip.CLIP) or getattr(model, "attn_mask", None) is None:
        return False
    return model.text_pool_type == "argmax" or (
        model.text_pool_type == "eos" and getattr(model, "text_eos_id", None) is not None
    )


def _end_of_text(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor | None:
    """Where each row's text feature is pooled, for causal CLIP text towers; None when trimming does not apply."""
    if not _pools_at_end_of_text(model):
        return None
    if model.text_pool_type == "argmax":
        return tokens.argmax(dim=-1)
    return (tokens == model.text_eos_id).int().argmax(dim=-1)


def token_lengths(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """Columns each row needs (up to and including its end-of-text), on the host; the full width
    where trimming does not apply. Computed once per token table, so a batch trims without a sync."""
    ends = _end_of_text(model, tokens)
    if ends is None:
        return torch.full((len(tokens),), tokens.shape[-1], dtype=torch.int64)
    return ends.cpu() + 1


def encode_text_trimmed(model: open_clip.CLIP, tokens: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """The model's text features of ``tokens`` computed on the columns up to the longest text's end.

    Same features as ``model.encode_text`` (up to float rounding) for a causal CLIP text tower;
    other models fall back to ``model.encode_text``. ``length`` (from :func:`token_lengths`) spares
    the device sync of finding the longest text.
    """
    if not _pools_at_end_of_text(model):
        return model.encode_text(tokens)
    if length is None:
        ends = _end_of_text(model, tokens)
        assert ends is not None  # the tower pools at the end of text (checked above)
        length = int(ends.max()) + 1
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    from open_clip.transformer import text_global_pool

    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection


class _EncoderCalls(nn.Module):
    """One module whose forward runs either encoder of the model, so that DDP wraps both towers."""

    def __init__(self, model: open_clip.CLIP) -> None:
        super().__init__()
        self.model: open_clip.CLIP = model

    def forward(
        self, encoder: Literal["encode_image", "encode_text"], inputs: torch.Tensor, length: int | None = None
    ) -> torch.Tensor:
        if encoder == "encode_text":
            return encode_text_trimmed(self.model, inputs, length)
        if encoder == "encode_image":
            return self.model.encode_image(inputs)
        raise ValueError(f"unknown encoder {encoder!r}; use encode_image or encode_text")


class Encoders:
    """The model as the loss functions see it: encoders under autocast (fp32 out), through DDP if distributed."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        precision: Precision = "fp32",
        context: DistContext = SINGLE_PROCESS,
    ) -> None:
        self.model = model
        self.device = device
        self.precision = resolve_precision(precision, device)
        calls: nn.Module = _EncoderCalls(model)
        if context.enabled:
            device_ids = [device.index] if device.type == "cuda" else None
            calls = nn.parallel.DistributedDataParallel(calls, device_ids=device_ids)
        self._calls = calls

    def _run(self, encoder: str, inputs: torch.Tensor, length: int | None = None) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self._calls(encoder, inputs, length).float()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._run("encode_image", pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Features of each row of ``tokens``; a row that occurs several times is encoded once."""
        distinct, inverse = torch.unique(tokens, dim=0, return_inverse=True)
        return self._run("encode_text", distinct)[inverse]

    def encode_rows(self, tokens: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Features of rows ``rows`` (host indices) of a token table ``tokens`` held on the device.

        Each distinct row is encoded once, trimmed to the longest of them by the host ``lengths``
        (:func:`token_lengths`): no device sync.
        """
        distinct, inverse = torch.unique(rows, return_inverse=True)  # host tensors
        length = int(lengths[distinct].max())
        picked = tokens[to_device(distinct, tokens.device)]
        return self._run("encode_text", picked[:, :length], length)[to_device(inverse, tokens.device)]

    def no_sync(self, skip: bool) -> AbstractContextManager:
        """DDP's ``no_sync`` when ``skip`` (accumulating micro-batch), else nothing."""
        if skip and isinstance(self._calls, nn.parallel.DistributedDataParallel):
            return self._calls.no_sync()
        return nullcontext()

    def __getattr__(self, name: str):
        # Only reached for names not set in __init__: the model's own attributes.
        return getattr(self.__dict__["model"], name)


StepLosses = tuple[torch.Tensor, dict[str, torch.Tensor]]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; a host tensor goes to CUDA from pinned memory without blocking the host
    (a copy from pageable memory would wait for the work queued before it: a sync)."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    pinned = tensor if tensor.is_pinned() else tensor.pin_memory()
    return pinned.to(device, non_blocking=True)


def accumulate_gradients(
    compute: Callable[[BatchRows], StepLosses], plan: Sequence[BatchRows], encoders: Encoders
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Backward over each micro-batch of ``plan`` (losses divided by their number; DDP syncs on the last).

    Returns the mean over micro-batches of the total and of each named part, as detached tensors
    on the device: reading them (``float``) is a sync, left to whoever logs them.
    """
    if not plan:
        raise ValueError("accumulate_gradients needs at least one micro-batch")
    total_sum: torch.Tensor | None = None
    part_sums: dict[str, torch.Tensor] = {}
    for k, rows in enumerate(plan):
        with encoders.no_sync(skip=k < len(plan) - 1):
            total, parts = compute(rows)
            (total / len(plan)).backward()
        total_sum = total.detach() if total_sum is None else total_sum + total.detach()
        for name, value in parts.items():
            part_sums[name] = part_sums[name] + value.detach() if name in part_sums else value.detach()
    assert total_sum is not None  # the plan is not empty
    return total_sum / len(plan), {name: value / len(plan) for name, value in part_sums.items()}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since the last reset. CPU: the process's peak resident set size (never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # POSIX only; the CPU figure is informative, not essential

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class EpochMeter:
    """Wall time and images per step and per epoch, and the epoch's peak memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        reset_peak_memory(device)
        self.started = time.perf_counter()
        self.images = 0
        self.losses: list[float | torch.Tensor] = []  # device tensors are read once, in summary()
        self._step_started = self.started

    def start_step(self) -> None:
        self._step_started = time.perf_counter()

    def end_step(self, n_images: int, loss: float | torch.Tensor) -> dict[str, float]:
        """The step's figures for the history (``n_images``: the global batch). On CUDA the step time
        is the host's (the device runs behind it); the epoch's figures are exact."""
        elapsed = time.perf_counter() - self._step_started
        self.images += n_images
        self.losses.append(loss)
        return {"step_time_s": elapsed, "images_per_s": n_images / max(elapsed, 1e-9)}

    def summary(self) -> dict[str, float]:
        """Per-epoch figures, recorded on the epoch's last step (columns ``epoch_*`` and ``peak_memory_mb``)."""
        loss = float(sum(self.losses)) / max(1, len(self.losses))  # waits for the device's queued work
        elapsed = time.perf_counter() - self.started
        return {
            "epoch_loss": loss,
            "epoch_time_s": elapsed,
            "epoch_images_per_s": self.images / max(elapsed, 1e-9),
            "peak_memory_mb": peak_memory_mb(self.device),
        }


def progress_bar(
    total: int, description: str, enabled: bool, initial: int = 0, leave: bool = True, unit: str = "it"
) -> Progress:
    """A progress context manager (:class:`core.progress.Progress`): tqdm's bar on a terminal, log lines
    elsewhere; ``enabled=False`` shows nothing."""
    return Progress(total, description, enabled, unit=unit, initial=initial, leave=leave)
