"""core.distributed on one process and on simulated ranks (no process group): the row plans."""

from __future__ import annotations

import pytest
import torch

from starft_pipeline.core.distributed import (
    SINGLE_PROCESS,
    DistContext,
    broadcast_from_main,
    micro_batch_rows,
    shard_rows,
)


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
