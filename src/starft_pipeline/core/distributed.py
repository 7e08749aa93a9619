"""Multi-process data parallelism (DDP), torchrun-compatible, and the global-batch bookkeeping.

Every process runs the same loop on the same global batch of ``batch_size`` samples; a process
forwards only its rows, gathers the features of all rows, and computes the loss over the whole
(global) batch, so the loss is the single-process loss on that batch. No Kedro here.

Gradients. Every rank computes the *identical* loss L over the gathered features, but autograd
reaches the encoders only through the rank's own rows (the other rows arrive without a graph). The
true gradient of L with respect to the local features is therefore the sum of the W ranks'
(identical) contributions, i.e. W times the local one; :func:`all_gather_with_local_grad` returns
exactly that in its backward, DDP's averaging divides by W, and every parameter's gradient equals
the single-process gradient on the same global batch. (open_clip's default gather keeps the local
gradient unscaled, which leaves the encoders' gradients at 1/W of it; Adam barely notices, a test
of equality does.) Parameters used *after* the gather (logit scale, a classification head) get the
full gradient on every rank and are averaged to it as well.

Under torchrun (``WORLD_SIZE > 1`` in the environment) :func:`init_from_env` joins the process
group through ``env://``: NCCL on CUDA (one GPU per process, ``LOCAL_RANK``), gloo on the CPU.
Only rank 0 writes files (checkpoints) and shows progress bars.

Waiting. A collective (all-gather, broadcast, barrier) that waits longer than the process group's
timeout kills the job (NCCL's default: 10 minutes), so :class:`ProcessGroupConfig` sets it
explicitly (``distributed.timeout_s``, 2 h by default), and work done by rank 0 alone that can
take long (Claude requests) is shared by :func:`run_on_main`, where the other ranks poll the
rendezvous store instead of sitting in a collective.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from starft_pipeline.core.configs import bounded, check_fields, config_from_params

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank, world size and the local rank (GPU index on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = DistContext()


@dataclass(frozen=True)
class ProcessGroupConfig:
    """The ``distributed`` parameters block: how long ranks may wait for each other under torchrun.

    ``timeout_s``: the process group's timeout, i.e. the longest any collective may wait for the
    slowest rank before the job is killed. ``main_wait_s``: the longest the other ranks wait for
    rank 0's own work (class names, Claude's descriptions) in :func:`run_on_main`.
    """

    timeout_s: float = bounded(7200.0, gt=0)
    main_wait_s: float = bounded(86400.0, gt=0)

    def __post_init__(self) -> None:
        check_fields(self, "distributed.")

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> ProcessGroupConfig:
        return config_from_params(cls, params, "distributed")


_settings = ProcessGroupConfig()


def configure_process_group(config: ProcessGroupConfig) -> None:
    """Use ``config`` for the process group this process joins next (the Kedro hook calls it per run)."""
    global _settings
    _settings = config
    if dist.is_available() and dist.is_initialized():
        logger.info("this process already joined its process group: its timeout stays; main_wait_s is updated")


def process_group_config() -> ProcessGroupConfig:
    return _settings


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (set by torchrun)") from error


def launch_rank() -> int:
    """This process's torchrun rank, from the environment (0 without torchrun or with ``WORLD_SIZE`` 1)."""
    return _env_int("RANK", 0) if _env_int("WORLD_SIZE", 1) > 1 else 0


def init_from_env(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; returns the context and this rank's device.

    On CUDA each process takes the GPU ``LOCAL_RANK``. Without ``WORLD_SIZE`` (or with 1) this is a
    single-process run and nothing is initialised.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return SINGLE_PROCESS, device
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {name} is not set; launch with torchrun")
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=_settings.timeout_s)
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout)
        logger.info(
            "joined the %s process group: rank %d of %d on %s (collectives time out after %gs: distributed.timeout_s)",
            backend,
            rank,
            world_size,
            device,
            _settings.timeout_s,
        )
    return DistContext(rank, world_size, local_rank), device


def current_context() -> DistContext:
    """The context of an already initialised process group, else the single-process one."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()))
    return SINGLE_PROCESS


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


class _GatherKeepingLocalGrad(torch.autograd.Function):
    """All-gather along dim 0; the backward returns the local slice's gradient times the world size."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.world_size, ctx.rows = rank, world_size, local.shape[0]
        parts = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows] * ctx.world_size, None, None


def all_gather_with_local_grad(local: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Rows of every rank in rank order (equal row counts); the graph runs through this rank's rows only.

    Valid when every rank computes the same loss from the gathered tensor (see the module docstring).
    """
    if not context.enabled:
        return local
    return _GatherKeepingLocalGrad.apply(local, context.rank, context.world_size)


@dataclass(frozen=True)
class BatchRows:
    """One forward pass's share of a step's (global) batch, as positions into that batch.

    ``local``: the rows this process forwards; ``gathered``: the rows the gathered features stand
    for, in gather order (the micro-batch across all ranks). Single process, no accumulation:
    both are every row.
    """

    local: torch.Tensor
    gathered: torch.Tensor
    context: DistContext = SINGLE_PROCESS

    @classmethod
    def whole(cls, batch_size: int) -> BatchRows:
        rows = torch.arange(batch_size)
        return cls(rows, rows)

    def gather(self, local_features: torch.Tensor) -> torch.Tensor:
        """Features of ``gathered`` from this process's features of ``local``."""
        return all_gather_with_local_grad(local_features, self.context)


def micro_batch_rows(batch_size: int, accum_steps: int, context: DistContext = SINGLE_PROCESS) -> list[BatchRows]:
    """Split a step's batch into ``accum_steps`` contiguous micro-batches, each split evenly over the ranks.

    Micro-batch k is rows ``[k·m, (k+1)·m)`` with ``m = batch_size / accum_steps`` whatever the world
    size, so the result does not depend on how many processes share the work.
    """
    if accum_steps < 1:
        raise ValueError(f"finetune grad_accum_steps must be >= 1, got {accum_steps}")
    shards = accum_steps * context.world_size
    if batch_size % shards:
        raise ValueError(
            f"the step batch of {batch_size} samples does not split into grad_accum_steps={accum_steps} "
            f"micro-batches over {context.world_size} process(es) (WORLD_SIZE); choose finetune batch_size "
            f"divisible by {shards}"
        )
    micro, per_rank = batch_size // accum_steps, batch_size // shards
    plan = []
    for k in range(accum_steps):
        start = k * micro + context.rank * per_rank
        plan.append(BatchRows(torch.arange(start, start + per_rank), torch.arange(k * micro, (k + 1) * micro), context))
    return plan


# --- sharding a pass over data (teacher features, evaluation) and one-off fits ----------------------


def shard_rows(n: int, context: DistContext) -> range:
    """This rank's contiguous share of ``n`` rows; the ranks' shares, in rank order, are ``range(n)``.

    Shares differ by at most one row, so no rank waits long for another.
    """
    return range(context.rank * n // context.world_size, (context.rank + 1) * n // context.world_size)


def all_gather_rows(local: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Every rank's ``local`` rows (their counts may differ by rank), concatenated in rank order, on every rank.

    Every rank receives the whole result (not only rank 0) because every rank runs the later Kedro
    nodes too; only rank 0 writes their outputs. With NCCL the exchange goes through this rank's GPU.
    """
    if not context.enabled:
        return local
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(context.world_size)]
    dist.all_gather(counts, torch.tensor([local.shape[0]], dtype=torch.int64, device=device))
    longest = int(max(count.item() for count in counts))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(context.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(count.item())] for part, count in zip(parts, counts)]).to(local.device)


def broadcast_from_main(value: T, context: DistContext) -> T:
    """Rank 0's ``value`` (any picklable object) on every rank: work done once, on rank 0, shared."""
    if not context.enabled:
        return value
    box: list[Any] = [value if context.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # rank 0's value, of rank 0's type


# --- work done by rank 0 alone, shared without a collective ------------------------------------

_MAIN_POLL_S = 0.5
_main_calls = 0  # every rank counts its calls in the same order, so the n-th call's key matches


def run_on_main(compute: Callable[[], T], context: DistContext, what: str) -> T:
    """``compute()`` on rank 0, its result on every rank; the other ranks poll, they wait in no collective.

    Rank 0 publishes the result as JSON under a key of the rendezvous store (a node's output that is a
    JSON file anyway; JSON, not pickle, since the store listens on the network), and returns the same
    JSON round trip the others receive, so every rank holds an equal object. The others check the
    key every half second for up to ``distributed.main_wait_s``, so a long rank-0 phase (Claude
    answering for an hour) cannot hit the process group's timeout. A failure on rank 0 is published
    too, and the other ranks stop with its message instead of waiting.
    """
    if not context.enabled:
        return compute()
    global _main_calls
    _main_calls += 1
    key = f"starft/run_on_main/{_main_calls}"
    # The store the process group rendezvoused through; torch has no public accessor for it.
    store = dist.distributed_c10d._get_default_store()
    if context.is_main:
        try:
            payload = _as_json(("ok", compute()))
        except BaseException as error:
            store.set(key, _as_json(("error", f"{type(error).__name__}: {error}")))
            raise
        store.set(key, payload)
        return json.loads(payload)[1]
    waited, deadline = time.monotonic(), time.monotonic() + _settings.main_wait_s
    while not store.check([key]):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"rank {context.rank} waited {_settings.main_wait_s:g}s for rank 0's {what}; "
                "raise distributed.main_wait_s if rank 0 needs longer"
            )
        time.sleep(_MAIN_POLL_S)
    status, value = json.loads(store.get(key))
    if status == "error":
        raise RuntimeError(f"rank 0 failed in {what}: {value}")
    logger.info("rank %d: rank 0's %s received after %.1fs", context.rank, what, time.monotonic() - waited)
    return value


def _as_json(outcome: tuple[str, Any]) -> str:
    try:
        return json.dumps(outcome)
    except TypeError as error:
        raise TypeError(f"rank 0's result must be JSON data to be shared with the other ranks: {error}") from error


def on_main_rank(func: Callable[..., T]) -> Callable[..., T]:
    """A node function that runs on rank 0 only under torchrun; every rank returns rank 0's result
    (:func:`run_on_main`). Without torchrun it is ``func``; the signature is kept (Kedro reads it)."""

    @functools.wraps(func)
    def on_main(*args: Any, **kwargs: Any) -> T:
        context, _ = init_from_env(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        return run_on_main(lambda: func(*args, **kwargs), context, func.__name__)

    return on_main
