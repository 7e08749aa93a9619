"""The linear probe is fitted once per run (by `lp`, on rank 0 under torchrun) and shared by LP-FT."""

from __future__ import annotations

from starft_pipeline.core.distributed import DistContext, broadcast_from_main
from starft_pipeline.pipelines.finetune.pipeline import PROBE, create_pipeline


def test_one_probe_fit_feeds_lp_and_lp_ft() -> None:
    finetune = create_pipeline()
    fits = [node for node in finetune.nodes if node.name.endswith("fit_linear_probe")]
    assert [node.name for node in fits] == ["lp.fit_linear_probe"] and fits[0].outputs == [PROBE]
    consumers = sorted(node.name for node in finetune.nodes if PROBE in node.inputs)
    assert consumers == ["lp.linear_probe_weights", "lp_ft.finetune"]


def test_the_main_rank_value_is_kept_in_one_process() -> None:
    value = {"head": [1.0, 2.0]}
    assert broadcast_from_main(value, DistContext()) is value
