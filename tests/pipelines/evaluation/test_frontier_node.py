"""The evaluation stage's frontier node: wiring, its table and figure, and the message without the reference's sweep."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.pipeline import Node, Pipeline

from starft_pipeline.evaluate.frontier import FRONTIER_COLUMNS
from starft_pipeline.pipeline_registry import register_pipelines
from starft_pipeline.pipelines.evaluation import nodes
from starft_pipeline.pipelines.evaluation.pipeline import WISE_FT_CURVE, with_frontier

INDEX = {"finetune_dataset": "synthetic"}


def _curve(methods=("ft", "flyp")) -> pd.DataFrame:
    # flyp's curve: ID 0.6 → 0.8 as α goes 0 → 1, the transfer worst group 0.5 → 0.3 (linear).
    return pd.DataFrame(
        [
            {
                "method": method,
                "alpha": alpha,
                "dataset": dataset,
                "split": "test",
                "adjusted_avg_acc": 0.6 + 0.2 * alpha if dataset == "synthetic" else 0.9,
                "avg_acc": 0.55 + 0.1 * alpha,
                "worst_group_acc": 0.5 - 0.2 * alpha,
            }
            for method in methods
            for alpha in (0.0, 0.5, 1.0)
            for dataset in ("synthetic", "waterbirds_like")
        ]
    )


def _results() -> pd.DataFrame:
    rows = []
    for method, id_acc, wg in [("zero_shot", 0.6, 0.5), ("flyp", 0.8, 0.3), ("star", 0.7, 0.45)]:
        rows.append(
            {
                "method": method,
                "split": "synthetic/test",
                "adjusted_avg_acc": id_acc,
                "avg_acc": 0.6,
                "worst_group_acc": 0.3,
            }
        )
        rows.append(
            {
                "method": method,
                "split": "waterbirds_like/test",
                "adjusted_avg_acc": 0.9,
                "avg_acc": 0.8,
                "worst_group_acc": wg,
            }
        )
    return pd.DataFrame(rows)


def test_the_frontier_node_compares_every_model_with_the_reference_curve() -> None:
    table, figure = nodes.frontier_report(_results(), _curve(), INDEX, {"frontier_reference": "flyp"})
    star = table[(table["method"] == "star") & (table["ood_split"] == "waterbirds_like/test")]
    # star's ID 0.7 is α = 0.5 on the curve: worst group 0.40 there; star's 0.45 is 0.05 above.
    assert star.set_index("ood_metric").loc["worst_group_acc", "gain_over_curve"] == pytest.approx(0.05)
    assert len(figure.axes) == 4


def test_without_the_reference_sweep_the_frontier_is_empty_and_says_why(caplog) -> None:
    table, figure = nodes.frontier_report(_results(), _curve(("ft",)), INDEX, {})
    assert table.empty and list(table.columns) == list(FRONTIER_COLUMNS)
    assert "no 'flyp' curve; add it to evaluation.wise_ft.methods" in figure.axes[0].texts[0].get_text().replace(
        "\n", " "
    )
    assert "No frontier" in caplog.text


def test_the_frontier_node_needs_the_results_and_the_sweep() -> None:
    only_sweep = Pipeline([Node(len, "a", WISE_FT_CURVE, name="sweep")])
    assert with_frontier(only_sweep) is only_sweep
    both = with_frontier(only_sweep + Pipeline([Node(len, "b", "results", name="collect")]))
    node = next(node for node in both.nodes if node.name == "write_frontier")
    assert node.inputs == ["results", WISE_FT_CURVE, "dataset_index", "params:reporting"]
    assert node.outputs == ["frontier", "frontier_plot"]
    assert "write_frontier" in {node.name for node in register_pipelines()["full"].nodes}
