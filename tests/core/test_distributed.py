"""core.distributed: the row plans on one process and on simulated ranks; process-group settings and
rank-0 work under torchrun (two gloo processes on the CPU).

The ranks are started as torchrun starts them (env:// from MASTER_ADDR, RANK, WORLD_SIZE), with a
process-group timeout of 3 s: rank 0's work of 4 s, shared by ``run_on_main``, does not kill rank 1,
while the same wait inside a collective does (the timeout is really the configured one).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from starft_pipeline.core.distributed import (
    SINGLE_PROCESS,
    DistContext,
    ProcessGroupConfig,
    broadcast_from_main,
    configure_process_group,
    init_from_env,
    micro_batch_rows,
    process_group_config,
    run_on_main,
    shard_rows,
)

TIMEOUT_S, RANK0_WORK_S = 3.0, 4.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join(rank: int, port: int, config: ProcessGroupConfig) -> None:
    """Join a 2-process gloo group as a torchrun worker would."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    configure_process_group(config)


def _slow_answer() -> dict[str, int]:
    time.sleep(RANK0_WORK_S)
    return {"answer": 42}


def _failing() -> None:
    raise ValueError("no ANTHROPIC_API_KEY")


def _worker(rank: int, port: int, out_dir: str) -> None:
    join(rank, port, ProcessGroupConfig(timeout_s=TIMEOUT_S, main_wait_s=60.0))
    context, _ = init_from_env(torch.device("cpu"))
    result: dict[str, object] = {}
    try:
        result["shared"] = run_on_main(_slow_answer, context, "slow answer")
        ones = torch.ones(1)
        dist.all_reduce(ones)  # the group survived rank 0's long phase
        result["all_reduce"] = float(ones)
        try:
            run_on_main(_failing, context, "descriptions")
        except Exception as error:  # rank 0: its own error; rank 1: rank 0's, named
            result["failure"] = f"{type(error).__name__}: {error}"
        # The control: the same long rank-0 phase followed by a collective times rank 1 out.
        if context.is_main:
            time.sleep(RANK0_WORK_S)
        start = time.monotonic()
        try:
            dist.barrier()
            result["barrier"] = "passed"
        except Exception as error:
            result["barrier"] = f"failed after {time.monotonic() - start:.1f}s: {type(error).__name__}"
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


@pytest.mark.slow
def test_rank_zero_work_longer_than_the_timeout_is_shared_without_a_collective(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["shared"] for r in ranks] == [{"answer": 42}] * 2
    assert [r["all_reduce"] for r in ranks] == [2.0, 2.0]
    assert ranks[0]["failure"] == "ValueError: no ANTHROPIC_API_KEY"
    assert ranks[1]["failure"] == "RuntimeError: rank 0 failed in descriptions: ValueError: no ANTHROPIC_API_KEY"
    assert ranks[1]["barrier"].startswith("failed after"), ranks[1]  # 3 s, not NCCL's 10 min nor gloo's 30 min


def test_without_torchrun_run_on_main_just_computes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context, _ = init_from_env(torch.device("cpu"))
    assert run_on_main(lambda: 7, context, "seven") == 7


def test_process_group_parameters_are_checked_and_default_to_two_hours():
    assert ProcessGroupConfig().timeout_s == 7200.0
    assert ProcessGroupConfig.from_params({"timeout_s": 60.0}).timeout_s == 60.0
    with pytest.raises(ValueError, match="distributed.timeout_s must be > 0"):
        ProcessGroupConfig.from_params({"timeout_s": 0.0})
    with pytest.raises(ValueError, match=r"unknown distributed parameter\(s\) \['timeout'\]"):
        ProcessGroupConfig.from_params({"timeout": 60.0})


def test_the_hook_configures_the_process_group_from_the_parameters():
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.pipeline import Pipeline

    from starft_pipeline.hooks import ProcessGroupHooks

    previous = process_group_config()
    try:
        catalog = DataCatalog({"parameters": MemoryDataset({"distributed": {"timeout_s": 90.0}})})
        ProcessGroupHooks().before_pipeline_run({}, Pipeline([]), catalog)
        assert process_group_config() == ProcessGroupConfig(timeout_s=90.0)
    finally:
        configure_process_group(previous)


def test_a_node_run_on_rank_zero_keeps_the_signature_kedro_binds_inputs_to():
    import inspect

    from kedro.pipeline import Node

    from starft_pipeline.pipelines.descriptions.nodes import generate_descriptions

    assert list(inspect.signature(generate_descriptions).parameters) == [
        "dataset_index",
        "spurious_template_pools",
        "descriptions",
    ]
    node = Node(generate_descriptions, ["a", "b", "c"], ["d", "e"], name="generate_descriptions")
    assert node.inputs == ["a", "b", "c"]


def test_shards_cover_the_rows_in_rank_order_differing_by_at_most_one():
    shares = [shard_rows(10, DistContext(rank, 3)) for rank in range(3)]
    assert [list(share) for share in shares] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_micro_batches_split_each_step_evenly_over_the_ranks():
    rank1 = micro_batch_rows(8, 2, DistContext(1, 2))
    assert [rows.local.tolist() for rows in rank1] == [[2, 3], [6, 7]]
    assert [rows.gathered.tolist() for rows in rank1] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    single = micro_batch_rows(4, 1)
    assert single[0].local.tolist() == single[0].gathered.tolist() == [0, 1, 2, 3]


def test_a_batch_that_does_not_split_names_the_parameters():
    with pytest.raises(ValueError, match="choose finetune batch_size divisible by 4"):
        micro_batch_rows(6, 2, DistContext(0, 2))


def test_one_process_gathers_and_broadcasts_its_own_values():
    rows = micro_batch_rows(3, 1)[0]
    features = torch.ones(3, 2)
    assert rows.gather(features) is features
    assert broadcast_from_main({"a": 1}, SINGLE_PROCESS) == {"a": 1} and SINGLE_PROCESS.is_main
