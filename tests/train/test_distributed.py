"""DDP: two gloo processes on the CPU train exactly as one process on the same global batch.

The ranks are started as torchrun would start them (env:// from MASTER_ADDR, RANK, WORLD_SIZE).
Each run is two steps (16 images, batch 8, augmentation on) with plain SGD, so that the loss, the
last step's gradients and the updated weights all compare with allclose (see ``train_tiny``).
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from starft_pipeline.core.distributed import BatchRows, DistContext, micro_batch_rows
from tests.engine_helpers import ddp_worker, last_gradients, single_thread, tiny_model, train_tiny  # noqa: F401 (autouse)

SGD_LR = 0.05
DDP_RUNS = {
    "star": {"method": "star"},  # contrastive loss and regulariser over the global batch
    "flyp_accum": {"method": "flyp", "reg_weight": 0.0, "grad_accum_steps": 2},  # micro-batches of 4 over 2 ranks
    "ft": {"method": "ft", "reg_weight": 0.0},  # head cross-entropy on the gathered features
}
COMMON = {"epochs": 1, "sgd_lr": SGD_LR}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    runs = {name: overrides | COMMON for name, overrides in DDP_RUNS.items()}
    mp.spawn(ddp_worker, args=(2, _free_port(), str(out_dir), runs), nprocs=2, join=True)
    return {name: torch.load(out_dir / f"{name}.pt", weights_only=True) for name in DDP_RUNS}


def _single_process(name: str):
    return train_tiny(**DDP_RUNS[name], **COMMON)


def _assert_close(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        scale = float(value.abs().max()) or 1.0
        assert torch.allclose(actual[key], value, rtol=1e-3, atol=1e-4 * scale), f"{what} {key}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DDP_RUNS))
def test_two_processes_match_one_on_the_global_batch(ddp_results, name):
    single = _single_process(name)
    losses = [record["loss"] for record in single.history]
    assert len(losses) == 2
    assert ddp_results[name]["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6)
    _assert_close(ddp_results[name]["gradients"], last_gradients(single), "gradient of")
    _assert_close(ddp_results[name]["weights"], single.model.state_dict(), "weight")
    # training moved the weights: the comparison is not between two untouched models
    initial = tiny_model().model.state_dict()["visual.conv1.weight"]
    assert not torch.allclose(single.model.state_dict()["visual.conv1.weight"], initial)


def test_micro_batches_split_the_batch_evenly_over_ranks():
    plans = [micro_batch_rows(8, 2, DistContext(rank, 2)) for rank in range(2)]
    # micro-batch k is rows [4k, 4k+4) whatever the world size; rank r forwards its half of it
    assert [rows.gathered.tolist() for rows in plans[0]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [rows.local.tolist() for rows in plans[0]] == [[0, 1], [4, 5]]
    assert [rows.local.tolist() for rows in plans[1]] == [[2, 3], [6, 7]]
    assert micro_batch_rows(8, 1)[0].local.tolist() == list(range(8))


def test_a_batch_that_does_not_split_names_the_parameters():
    with pytest.raises(ValueError, match="grad_accum_steps=2 .* over 2 process"):
        micro_batch_rows(6, 2, DistContext(0, 2))


def test_single_process_gather_is_the_identity():
    features = torch.randn(4, 3, requires_grad=True)
    assert BatchRows.whole(4).gather(features) is features
