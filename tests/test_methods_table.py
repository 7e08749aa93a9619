"""The methods table's aggregation: seed overrides, minority groups, mean ± std and its outputs."""

from __future__ import annotations

import pandas as pd
import pytest

from starft_pipeline.methods_table import (
    aggregate,
    markdown_document,
    merged,
    minority_accuracy,
    minority_groups,
    parse_overrides,
    seed_overrides,
    seed_rows,
    table_markdown,
    table_metrics,
)

INDEX = {
    "finetune_dataset": "toy",
    "datasets": {
        # class 0 mostly on place 0, class 1 mostly on place 1
        "toy": {"class_names": ["a", "b"], "n_places": 2, "train_group_counts": [90, 10, 5, 95]},
    },
}


def _results(seed_offset: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    results = pd.DataFrame(
        [
            {
                "method": m,
                "split": "toy/test",
                "n": 40,
                "avg_acc": a + seed_offset,
                "worst_group_acc": w + seed_offset,
                "adjusted_avg_acc": a,
                "mean_group_acc": a,
            }
            for m, a, w in (("zero_shot", 0.9, 0.8), ("flyp", 0.8, 0.5))
        ]
    )
    accs = {"zero_shot": [0.9, 0.8, 0.85, 0.95], "flyp": [1.0, 0.5, 0.6, 1.0]}
    groups = pd.DataFrame(
        [
            {"method": m, "split": "toy/test", "group": g, "group_name": str(g), "n": 10, "acc": acc}
            for m, values in accs.items()
            for g, acc in enumerate(values)
        ]
    )
    return results, groups


def test_seed_overrides_touch_every_finetune_block_only():
    params = {"flyp": {"finetune": {"seed": 0, "lr": 1}}, "star": {"finetune": {"seed": 0}}, "wise_ft": {"alpha": 0.5}}
    overrides = seed_overrides(params, ["flyp", "star", "wise_ft"], 3)
    assert overrides == {"flyp": {"finetune": {"seed": 3}}, "star": {"finetune": {"seed": 3}}}
    with pytest.raises(ValueError, match="finetune"):
        seed_overrides(params, ["wise_ft"], 1)
    with pytest.raises(ValueError, match="seed"):
        seed_overrides(params, ["flyp"], -1)


def test_minority_groups_are_the_non_majority_groups_of_each_class():
    assert minority_groups(INDEX, "toy") == [1, 2]


def test_minority_accuracy_is_the_unweighted_mean_over_minority_groups():
    _, groups = _results(0.0)
    frame = minority_accuracy(groups, INDEX).set_index("method")
    assert frame.loc["flyp", "minority_group_acc"] == pytest.approx(0.55)
    assert frame.loc["zero_shot", "minority_group_acc"] == pytest.approx(0.825)


def test_aggregate_gives_mean_and_sample_std_in_percent():
    runs = pd.concat(
        [seed_rows(*_results(offset), INDEX, seed) for seed, offset in enumerate((0.0, 0.02, 0.04))], ignore_index=True
    )
    table = aggregate(runs).set_index("method")
    assert list(table.index) == ["zero_shot", "flyp"]  # run order kept
    assert table.loc["flyp", "n_seeds"] == 3
    assert table.loc["flyp", "worst_group_acc_mean"] == pytest.approx(52.0)
    assert table.loc["flyp", "worst_group_acc_std"] == pytest.approx(2.0)
    assert table.loc["flyp", "worst_group_acc"] == "52.0 ± 2.0"
    assert table.loc["flyp", "minority_group_acc"] == "55.0 ± 0.0"


def test_aggregate_refuses_unequal_seed_counts():
    runs = pd.concat([seed_rows(*_results(0.0), INDEX, 0), seed_rows(*_results(0.0), INDEX, 1)], ignore_index=True)
    runs = runs[~((runs["method"] == "flyp") & (runs["seed"] == 1))]
    with pytest.raises(ValueError, match="different numbers of seeds"):
        aggregate(runs)


def test_markdown_and_mlflow_metrics():
    runs = pd.concat([seed_rows(*_results(o), INDEX, s) for s, o in enumerate((0.0, 0.02))], ignore_index=True)
    table = aggregate(runs)
    text = table_markdown(table)
    assert text.splitlines()[0].startswith("| method") and "worst_group_acc (%)" in text
    assert "51.0 ± 1.4" in text
    document = markdown_document(table, "python -m starft_pipeline.methods_table --seeds 0 1", [0, 1], 125.0)
    assert "--seeds 0 1" in document and "2.1 min" in document
    metrics = table_metrics(table)
    assert metrics["flyp.toy.test.worst_group_acc_mean"] == pytest.approx(51.0)
    assert "flyp.toy.test.worst_group_acc_std" in metrics


def test_mlflow_metric_names_replace_characters_mlflow_refuses():
    runs = seed_rows(*_results(0.0), INDEX, 0).replace({"method": {"flyp": "ft+wise"}})
    metrics = table_metrics(aggregate(runs))
    assert "ft_wise.toy.test.avg_acc_mean" in metrics
    assert not any("+" in name for name in metrics)


def test_single_seed_leaves_std_out_of_mlflow():
    table = aggregate(seed_rows(*_results(0.0), INDEX, 0))
    metrics = table_metrics(table)
    assert "flyp.toy.test.avg_acc_mean" in metrics and "flyp.toy.test.avg_acc_std" not in metrics


def test_params_become_nested_runtime_parameters_read_as_yaml():
    assert parse_overrides(["star.finetune.reg_weight=2", "star.finetune.diminishing=false", "note=a=b"]) == {
        "star": {"finetune": {"reg_weight": 2, "diminishing": False}},
        "note": "a=b",
    }


@pytest.mark.parametrize("bad", ["star.finetune.reg_weight", "=2", "star..reg_weight=2"])
def test_malformed_params_are_named(bad):
    with pytest.raises(ValueError, match="dotted.key=value"):
        parse_overrides([bad])


def test_a_value_and_a_key_below_it_conflict():
    with pytest.raises(ValueError, match="star"):
        parse_overrides(["star=1", "star.finetune.seed=2"])


def test_params_merge_into_the_seed_overrides_key_by_key():
    seeds = {"star": {"finetune": {"seed": 1}}, "flyp": {"finetune": {"seed": 1}}}
    extra = parse_overrides(["star.finetune.reg_weight=2"])
    assert merged(seeds, extra) == {
        "star": {"finetune": {"seed": 1, "reg_weight": 2}},
        "flyp": {"finetune": {"seed": 1}},
    }
    assert seeds["star"]["finetune"] == {"seed": 1}  # inputs untouched


def test_each_session_run_leaves_no_mlflow_run_open(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from starft_pipeline.methods_table import run_pipelines

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)  # restored after the test
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")

    class NestingSession:  # what kedro-mlflow does: one run, re-entered at every node
        def run(self, pipeline_names, namespaces=None):
            run_id = mlflow.start_run().info.run_id
            for _ in pipeline_names:
                mlflow.start_run(run_id=run_id, nested=True)
            mlflow.end_run()
            self.run_id = run_id

    session = NestingSession()
    run_pipelines(session, ["finetune", "evaluation"])
    assert mlflow.active_run() is None
    assert mlflow.get_run(session.run_id).info.status == "FINISHED"

    class FailingSession:
        def run(self, pipeline_names, namespaces=None):
            self.run_id = mlflow.start_run().info.run_id
            raise RuntimeError("node failed")

    failing = FailingSession()
    with pytest.raises(RuntimeError, match="node failed"):
        run_pipelines(failing, ["finetune"])
    assert mlflow.active_run() is None
    assert mlflow.get_run(failing.run_id).info.status == "FAILED"


def test_the_frontier_over_seeds_is_written_only_with_the_reference_sweep(tmp_path):
    from starft_pipeline.methods_table import frontier_outputs, mean_frontier, write_frontier

    curves, runs = [], []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        for alpha, id_acc, wg in ((0.0, 0.6, 0.5), (1.0, 0.8, 0.3)):
            curves.append(("flyp", alpha, "synthetic", "test", id_acc, 0.6, 0.3, seed))
            curves.append(("flyp", alpha, "waterbirds_like", "test", 0.9, 0.8, wg, seed))
        for method, id_acc, wg in (("zero_shot", 0.6, 0.5), ("flyp", 0.8, 0.3), ("star", 0.7, 0.42 + shift)):
            runs.append((method, "synthetic/test", id_acc, 0.6, 0.3, seed))
            runs.append((method, "waterbirds_like/test", 0.9, 0.8, wg, seed))
    curve_columns = ["method", "alpha", "dataset", "split", "adjusted_avg_acc", "avg_acc", "worst_group_acc", "seed"]
    run_columns = ["method", "split", "adjusted_avg_acc", "avg_acc", "worst_group_acc", "seed"]
    curves, runs = pd.DataFrame(curves, columns=curve_columns), pd.DataFrame(runs, columns=run_columns)

    assert frontier_outputs(runs, curves[curves["method"] != "flyp"], "synthetic", "flyp") is None
    frontiers, intervals = frontier_outputs(runs, curves, "synthetic", "flyp")
    star = intervals.set_index(["method", "ood_split", "ood_metric"]).loc[
        ("star", "waterbirds_like/test", "worst_group_acc")
    ]
    # the curve gives 0.40 at ID 0.7 in both seeds; star 0.42 and 0.44 → gains 0.02, 0.04, mean 0.03
    assert star["n_seeds"] == 2 and star["gain_mean"] == pytest.approx(0.03)
    mean = mean_frontier(frontiers)
    assert len(mean) == len(frontiers) // 2  # one row per point and axis, the seeds averaged
    paths = write_frontier(frontiers, intervals, tmp_path, "table")
    assert [path.name for path in paths] == ["table_frontier.csv", "table_frontier_runs.csv", "table_frontier.png"]
    assert all(path.stat().st_size > 0 for path in paths)
