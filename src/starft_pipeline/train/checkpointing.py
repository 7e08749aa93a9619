"""Per-epoch training checkpoints: resume a killed fine-tuning run where it stopped.

One file per run directory, ``last.pt``, written by rank 0 only under torchrun and read back by it
alone (it broadcasts the state: see :meth:`Checkpointer.resume`), rewritten atomically (temp file + rename) after every
epoch: model, optimiser and scheduler state, the torch RNG states, epoch, step, history, and the
run's fingerprint. Everything that is not a tensor is stored as plain types (the history and the
counters as one JSON string), so the file loads with ``torch.load(..., weights_only=True)``: a
checkpoint cannot run code.

A checkpoint resumes a run only if its fingerprint matches: the configuration fields that decide the
result (``FinetuneConfig.result_dict``), a digest of the initial weights (so another teacher, or LP-FT
from another probe head, starts fresh), the number of training images, and the caller's identity
(the teacher cache's fingerprint). Otherwise it is logged and ignored, and the first epoch of the
new run overwrites it. Because the loop derives every random draw from (seed, epoch, step), a
resumed run ends where an uninterrupted run ends.

After a finished run the checkpoint is deleted (the weights are the stage's output), unless
``keep_last``: then it stays, and rerunning the same configuration returns at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from starft_pipeline.core.configs import config_from_params
from starft_pipeline.core.distributed import SINGLE_PROCESS, DistContext, broadcast_from_main
from starft_pipeline.core.io_utils import atomic_path, fingerprint

logger = logging.getLogger(__name__)


class Resumable(Protocol):
    """What a checkpoint saves and restores of a training run (``training.TrainState`` is one)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int
    step: int
    history: list[dict[str, float | torch.Tensor]]  # all floats once read (checkpoints follow an epoch's end)


CHECKPOINT_FILE = "last.pt"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointConfig:
    """The ``checkpoint`` block of a method's finetune parameters."""

    enabled: bool = True
    directory: str = "data/06_models/checkpoints"  # a sub-folder per method namespace
    keep_last: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> CheckpointConfig:
        return config_from_params(cls, params, "finetune checkpoint")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of the model's state dict: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def run_fingerprint(
    result_config: Mapping[str, Any], model: torch.nn.Module, n_samples: int, identity: Mapping[str, Any]
) -> str:
    """What a checkpoint must have been written by to be resumed (see the module docstring)."""
    return fingerprint(FORMAT_VERSION, dict(result_config), weights_digest(model), n_samples, dict(identity))


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def checkpoint_payload(state: Resumable, run_key: str) -> dict[str, Any]:
    """The checkpoint as tensors and plain types (``weights_only``-loadable)."""
    progress = {"epoch": state.epoch, "step": state.step, "history": state.history}
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": run_key,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": _rng_states(),
        "progress": json.dumps(progress),
    }


def apply_payload(state: Resumable, payload: Mapping[str, Any]) -> None:
    """Restore ``state`` in place from a loaded checkpoint."""
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    _set_rng_states(payload["rng"])
    progress = json.loads(payload["progress"])
    state.epoch, state.step, state.history = int(progress["epoch"]), int(progress["step"]), list(progress["history"])


class Checkpointer:
    """Saves ``<directory>/last.pt`` after each epoch and resumes from it (see the module docstring)."""

    def __init__(
        self, directory: str | os.PathLike[str], keep_last: bool = False, identity: Mapping[str, Any] | None = None
    ) -> None:
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.identity = dict(identity or {})

    @property
    def path(self) -> Path:
        return self.directory / CHECKPOINT_FILE

    def fingerprint(self, result_config: Mapping[str, Any], model: torch.nn.Module, n_samples: int) -> str:
        return run_fingerprint(result_config, model, n_samples, self.identity)

    def save(self, state: Resumable, run_key: str) -> None:
        with atomic_path(self.path) as tmp:
            torch.save(checkpoint_payload(state, run_key), tmp)
        logger.info("checkpoint: epoch %d (step %d) saved to %s", state.epoch, state.step, self.path)

    def load(self) -> dict[str, Any] | None:
        """The checkpoint's content, or None when there is none or it cannot be read (logged)."""
        if not self.path.is_file():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a foreign or damaged file must not stop training: start fresh
            logger.warning("checkpoint %s cannot be read (%s); starting fresh", self.path, error)
            return None

    def resume(self, state: Resumable, run_key: str, context: DistContext = SINGLE_PROCESS) -> bool:
        """Restore ``state`` from the checkpoint if it belongs to this run; True when it did.

        Under torchrun only rank 0 reads (it alone writes checkpoints) and broadcasts what it read,
        so the nodes need no shared filesystem and every rank resumes from the same state.
        """
        payload = broadcast_from_main(self.load() if context.is_main else None, context)
        if payload is None:
            return False
        if payload.get("format_version") != FORMAT_VERSION or payload.get("fingerprint") != run_key:
            logger.warning(
                "checkpoint %s was written by another configuration (fingerprint %s, this run %s); "
                "not resuming it, starting fresh",
                self.path,
                payload.get("fingerprint"),
                run_key,
            )
            return False
        apply_payload(state, payload)
        logger.info("checkpoint: resumed %s at epoch %d (step %d)", self.path, state.epoch, state.step)
        return True

    def finish(self) -> None:
        """After a finished run: delete the checkpoint unless ``keep_last``."""
        if self.keep_last or not self.path.is_file():
            return
        self.path.unlink(missing_ok=True)  # the folder stays: another run may be writing into it
        logger.info("checkpoint: run finished, removed %s (set checkpoint.keep_last to keep it)", self.path)


def checkpointer_from_config(
    config: CheckpointConfig, run_name: str, identity: Mapping[str, Any] | None = None
) -> Checkpointer | None:
    """The run's checkpointer under ``<directory>/<run_name>``, or None when checkpoints are off."""
    if not config.enabled:
        return None
    return Checkpointer(Path(config.directory) / run_name, keep_last=config.keep_last, identity=identity)
