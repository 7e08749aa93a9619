"""Checkpoints: weights_only loading, fingerprints, clean-up, and resuming a killed run to the same end."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from starft_pipeline.train.checkpointing import (
    CHECKPOINT_FILE,
    CheckpointConfig,
    Checkpointer,
    checkpointer_from_config,
)
from tests.engine_helpers import single_thread, tiny_config, train_tiny  # noqa: F401 (single_thread: autouse fixture)

HELPER = Path(__file__).parents[1] / "engine_helpers.py"
RESUME_RUN = {"n_images": 32, "epochs": 3}  # what engine_helpers.main runs


class Interrupted(RuntimeError):
    pass


def _stop_after(epoch: int):
    def callback(state) -> None:
        if state.epoch == epoch:
            raise Interrupted(f"stopped after epoch {epoch}")

    return callback


def test_checkpoint_loads_with_weights_only_and_restores_the_state(tmp_path):
    checkpoints = Checkpointer(tmp_path, keep_last=True)
    state = train_tiny(epochs=1, checkpoints=checkpoints)
    payload = torch.load(checkpoints.path, map_location="cpu", weights_only=True)
    assert set(payload) >= {"model", "optimizer", "scheduler", "rng", "progress", "fingerprint"}
    restored = train_tiny(epochs=1, checkpoints=checkpoints)  # resumes at the end: no step runs
    assert restored.step == state.step and restored.epoch == 1
    assert restored.history == state.history  # JSON round-trips Python floats exactly
    for key, value in state.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[key], value), key
    assert restored.optimizer.state_dict()["state"].keys() == state.optimizer.state_dict()["state"].keys()


def test_a_run_stopped_after_an_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    uninterrupted = train_tiny(epochs=3)
    checkpoints = Checkpointer(tmp_path)
    with pytest.raises(Interrupted):
        train_tiny(epochs=3, checkpoints=checkpoints, on_epoch_end=_stop_after(1))
    assert torch.load(checkpoints.path, weights_only=True)["progress"].startswith('{"epoch": 1,')
    resumed = train_tiny(epochs=3, checkpoints=checkpoints)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in uninterrupted.history]
    for key, value in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert not checkpoints.path.exists()  # a finished run cleans up (keep_last is off)


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path, caplog):
    checkpoints = Checkpointer(tmp_path, keep_last=True)
    train_tiny(epochs=1, checkpoints=checkpoints)
    with caplog.at_level(logging.WARNING, logger="starft_pipeline.train.checkpointing"):
        state = train_tiny(epochs=1, lr=5e-4, checkpoints=checkpoints)
    assert "another configuration" in caplog.text
    assert state.step == 2  # trained from scratch: both steps ran


def test_result_neutral_options_keep_the_fingerprint(tmp_path):
    checkpoints = Checkpointer(tmp_path)
    model = torch.nn.Linear(2, 2)
    base = checkpoints.fingerprint(tiny_config().result_dict(), model, 16)
    assert checkpoints.fingerprint(tiny_config(num_workers=4, progress=True).result_dict(), model, 16) == base
    assert checkpoints.fingerprint(tiny_config(precision="bf16").result_dict(), model, 16) != base
    assert Checkpointer(tmp_path, identity={"teacher": "x"}).fingerprint(tiny_config().result_dict(), model, 16) != base


def test_a_damaged_checkpoint_starts_fresh(tmp_path, caplog):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="starft_pipeline.train.checkpointing"):
        state = train_tiny(epochs=1, checkpoints=Checkpointer(tmp_path))
    assert "cannot be read" in caplog.text and state.step == 2


def test_checkpoint_parameters():
    config = CheckpointConfig.from_params({"directory": "ckpt", "keep_last": True})
    checkpointer = checkpointer_from_config(config, "star", identity={"teacher": "abc"})
    assert checkpointer.path == Path("ckpt") / "star" / CHECKPOINT_FILE and checkpointer.keep_last
    assert checkpointer_from_config(CheckpointConfig(enabled=False), "star") is None
    with pytest.raises(ValueError, match="unknown finetune checkpoint parameter.*'every'"):
        CheckpointConfig.from_params({"every": 2})


def _start(checkpoint_dir: Path, out_file: Path, *pause: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(HELPER), str(checkpoint_dir), str(out_file), *pause],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_a_killed_process_resumes_from_its_last_checkpoint(tmp_path):
    """SIGKILL a real fine-tuning process after its first checkpoint; the rerun ends where an uninterrupted run ends."""
    killed_dir = tmp_path / "killed"
    victim = _start(killed_dir, tmp_path / "never.safetensors", "1")
    try:
        lines = []
        for line in victim.stdout:  # PAUSED comes after epoch 1's checkpoint is on disk
            lines.append(line)
            if line.strip() == "PAUSED":
                break
        assert (killed_dir / CHECKPOINT_FILE).is_file(), "".join(lines)[-3000:]
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert torch.load(killed_dir / CHECKPOINT_FILE, weights_only=True)["progress"].startswith('{"epoch": 1,')

    resumed = subprocess.run(
        [sys.executable, str(HELPER), str(killed_dir), str(tmp_path / "resumed.safetensors")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed" in resumed.stderr and "at epoch 1" in resumed.stderr

    expected = train_tiny(**RESUME_RUN).model.state_dict()  # uninterrupted, here (one thread, as there)
    actual = load_file(tmp_path / "resumed.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key  # bitwise: same draws, same arithmetic
    assert not (killed_dir / CHECKPOINT_FILE).exists()  # the finished run removed its checkpoint


# --- torchrun without a shared filesystem: rank 0 reads, every rank resumes its state -------------


def _toy_state(seed: int):
    """A Resumable: a linear model whose weights depend on ``seed``, SGD with momentum, a step schedule."""
    from types import SimpleNamespace

    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    return SimpleNamespace(model=model, optimizer=optimizer, scheduler=scheduler, epoch=0, step=0, history=[])


def _trained_toy_state(seed: int, epoch: int):
    state = _toy_state(seed)
    state.model(torch.ones(4, 3)).sum().backward()
    state.optimizer.step()
    state.scheduler.step()
    state.epoch, state.step, state.history = epoch, 5 * epoch, [{"loss": 1.0 / epoch}]
    return state


def _resume_worker(rank: int, port: int, root: str) -> None:
    import torch.distributed as dist

    from starft_pipeline.core.distributed import ProcessGroupConfig, init_from_env
    from tests.core.test_distributed import join

    join(rank, port, ProcessGroupConfig(timeout_s=60.0))
    context, _ = init_from_env(torch.device("cpu"))
    try:
        state = _toy_state(seed=100 + rank)  # ranks start from different weights: the resume must overwrite them
        resumed = Checkpointer(Path(root) / f"node{rank}").resume(state, "run", context)
        torch.save(
            {
                "resumed": resumed,
                "epoch": state.epoch,
                "model": state.model.state_dict(),
                "lr": state.scheduler.get_last_lr(),
            },
            Path(root) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_rank_resumes_rank_zeros_checkpoint_from_its_own_disk_only(tmp_path):
    import torch.multiprocessing as mp

    from tests.core.test_distributed import _free_port

    Checkpointer(tmp_path / "node0").save(_trained_toy_state(seed=1, epoch=2), "run")
    Checkpointer(tmp_path / "node1").save(_trained_toy_state(seed=2, epoch=1), "run")  # rank 1's disk: a stale one
    mp.spawn(_resume_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    expected = _trained_toy_state(seed=1, epoch=2)
    for rank, result in enumerate(ranks):
        assert result["resumed"] and result["epoch"] == 2, rank
        for key, value in expected.model.state_dict().items():
            assert torch.equal(result["model"][key], value), (rank, key)
        assert result["lr"] == pytest.approx(expected.scheduler.get_last_lr())
