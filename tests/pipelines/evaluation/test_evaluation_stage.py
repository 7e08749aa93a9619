"""Evaluation stage: metric wiring (WILDS conventions, intervals, per-class), zero-shot transfer,
report nodes and figures, and the pipeline's shape (tags, layers, the WiSE-FT figure)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from kedro.pipeline import Node, Pipeline
from matplotlib.figure import Figure

from starft_pipeline.data.dataset_index import dataset_entry
from starft_pipeline.data.metadata import DataError
from starft_pipeline.evaluate import one_pass
from starft_pipeline.evaluate.config import EvaluationConfig
from starft_pipeline.evaluate.metrics import (
    WATERBIRDS_GROUP_NAMES,
    WATERBIRDS_TRAIN_GROUP_COUNTS,
    convention_warning,
)
from starft_pipeline.evaluate.results import CI_COLUMNS, CLASS_COLUMNS, REPORT_COLUMNS, RESULTS_COLUMNS, split_report
from starft_pipeline.kedro_io import UNCHANGED
from starft_pipeline.models.heads import ZERO_SHOT
from starft_pipeline.pipeline_registry import STAGES, register_pipelines
from starft_pipeline.pipelines.evaluation import nodes
from starft_pipeline.pipelines.evaluation.pipeline import WISE_FT_CURVE, with_wise_ft_plot
from starft_pipeline.train.methods import METHODS
from tests.helpers import PROJECT_ROOT, tiny_parameters

# --------------------------------------------------------------------------- hand-built Waterbirds split


class Layout:
    class_names = ("landbird", "waterbird")
    group_names = WATERBIRDS_GROUP_NAMES
    train_group_counts = WATERBIRDS_TRAIN_GROUP_COUNTS


def waterbirds_split() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test-split sizes 20/10/5/15 per group g = 2y + place with 18/6/2/12 correct."""
    sizes, correct = [20, 10, 5, 15], [18, 6, 2, 12]
    y_true, y_pred, groups = [], [], []
    for g, (n, k) in enumerate(zip(sizes, correct, strict=True)):
        y = g // 2
        y_true += [y] * n
        y_pred += [y] * k + [1 - y] * (n - k)
        groups += [g] * n
    return np.array(y_true), np.array(y_pred), np.array(groups)


def test_split_report_reproduces_wilds_numbers() -> None:
    y_true, y_pred, groups = waterbirds_split()
    report = split_report("m", "wb/test", y_true, y_pred, groups, Layout(), "waterbirds")
    row = report["results"][0]
    assert list(row) == list(REPORT_COLUMNS)
    assert list(row)[: len(RESULTS_COLUMNS)] == list(RESULTS_COLUMNS)
    group_acc = np.array([18 / 20, 6 / 10, 2 / 5, 12 / 15])
    train = np.array(WATERBIRDS_TRAIN_GROUP_COUNTS, dtype=float)
    assert row["avg_acc"] == pytest.approx(38 / 50)
    assert row["worst_group_acc"] == pytest.approx(0.4)
    # WILDS adj_acc_avg: test group accuracies weighted by the training group proportions
    assert row["adjusted_avg_acc"] == pytest.approx(float(group_acc @ train / train.sum()))
    assert row["mean_group_acc"] == pytest.approx(group_acc.mean())
    assert row["headline_avg_acc"] == row["adjusted_avg_acc"]  # Waterbirds reports the adjusted average
    for metric in ("avg_acc", "worst_group_acc", "adjusted_avg_acc"):
        assert row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"]
        assert row[f"{metric}_ci_low"] < row[f"{metric}_ci_high"]
    classes = pd.DataFrame(report["classes"])
    assert list(classes.columns) == list(CLASS_COLUMNS)
    assert classes["n"].tolist() == [30, 20]
    assert classes["acc"].tolist() == pytest.approx([24 / 30, 14 / 20])
    assert [row["group_name"] for row in report["groups"]] == list(WATERBIRDS_GROUP_NAMES)


@pytest.mark.parametrize("convention", ["celeba", "generic"])
def test_plain_average_is_the_headline_elsewhere(convention: str) -> None:
    row = split_report("m", "s", *waterbirds_split(), Layout(), convention)["results"][0]
    assert row["headline_avg_acc"] == row["avg_acc"]


def test_intervals_are_deterministic_and_follow_the_settings() -> None:
    from starft_pipeline.evaluate.results import BootstrapSettings

    data = waterbirds_split()
    first = split_report("m", "s", *data, Layout(), bootstrap=BootstrapSettings(200, 0.9, 3))["results"][0]
    again = split_report("m", "s", *data, Layout(), bootstrap=BootstrapSettings(200, 0.9, 3))["results"][0]
    wider = split_report("m", "s", *data, Layout(), bootstrap=BootstrapSettings(200, 0.99, 3))["results"][0]
    assert {c: first[c] for c in CI_COLUMNS} == {c: again[c] for c in CI_COLUMNS}
    assert wider["avg_acc_ci_high"] - wider["avg_acc_ci_low"] >= first["avg_acc_ci_high"] - first["avg_acc_ci_low"]


def test_waterbirds_convention_checks_the_release_counts() -> None:
    assert convention_warning("waterbirds", WATERBIRDS_TRAIN_GROUP_COUNTS) is None
    assert "3498" in convention_warning("waterbirds", [190, 10, 10, 190])
    assert convention_warning("celeba", [190, 10, 10, 190]) is None
    with pytest.raises(ValueError, match="convention"):
        convention_warning("adjusted", [1, 2, 3, 4])


def _index(convention: str, counts: list[int]) -> dict:
    return {"finetune_dataset": "wb", "datasets": {"wb": {"convention": convention, "train_group_counts": counts}}}


def test_convention_check_is_logged_and_recorded(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=nodes.logger.name):
        checks = nodes.check_dataset_conventions(_index("waterbirds", [190, 10, 10, 190]))
    assert checks["wb"]["headline_metric"] == "adjusted_avg_acc"
    assert "differ from the release" in checks["wb"]["warning"]
    assert any("differ from the release" in record.getMessage() for record in caplog.records)
    results = pd.DataFrame([split_report("m", "wb/test", *waterbirds_split(), Layout(), "waterbirds")["results"][0]])
    markdown = nodes.results_report(results, checks, {"bootstrap": {"confidence": 0.9}})
    assert "## Notes" in markdown and "wb: Waterbirds training group counts" in markdown
    assert "90% CI" in markdown and "| m " in markdown


def test_release_counts_raise_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=nodes.logger.name):
        checks = nodes.check_dataset_conventions(_index("waterbirds", list(WATERBIRDS_TRAIN_GROUP_COUNTS)))
    assert checks["wb"]["warning"] is None and not caplog.records


def test_the_index_stores_the_declared_convention() -> None:
    rows = pd.DataFrame({"y": [0, 1], "place": [0, 1], "split": [0, 0], "img_id": [1, 2]})
    entry = dataset_entry(rows, ["a", "b"], ["p", "q"], ["{c}"], "d", "celeba")
    assert entry["convention"] == "celeba"
    assert dataset_entry(rows, ["a", "b"], ["p", "q"], ["{c}"], "d")["convention"] == "generic"
    with pytest.raises(DataError, match="class_names.datasets.d.convention"):
        dataset_entry(rows, ["a", "b"], ["p", "q"], ["{c}"], "d", "wilds")


def test_collect_results_orders_columns_and_metrics_include_intervals() -> None:
    evaluation = split_report("m", "wb/test", *waterbirds_split(), Layout(), "waterbirds")
    evaluation = {key: [{**row, "dataset": "wb"} for row in rows] for key, rows in evaluation.items()}
    results, groups, classes = nodes.collect_results(evaluation, UNCHANGED, evaluation)  # UNCHANGED: not this run's
    assert list(results.columns) == list(REPORT_COLUMNS)
    assert len(results) == 2 and len(groups) == 8 and len(classes) == 4
    metrics = nodes.results_metrics(results.assign(method=["m", "ft+wise"]))
    assert {"m.wb.test.worst_group_acc", "m.wb.test.worst_group_acc_ci_low", "m.wb.test.headline_avg_acc"} <= set(
        metrics
    )
    assert "ft_wise.wb.test.avg_acc" in metrics  # MLflow refuses "+" in metric names


# --------------------------------------------------------------------------- zero-shot transfer


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory: pytest.TempPathFactory):
    import yaml

    from starft_pipeline.pipelines.class_names.nodes import build_dataset_index, prepare_datasets

    params = tiny_parameters(tmp_path_factory.mktemp("data"))
    templates = yaml.safe_load((PROJECT_ROOT / "conf/base/templates/prompt_templates.yml").read_text())
    params["class_names"]["datasets"]["waterbirds_like"]["templates"] = ["a drawing of a {c}."]
    metadata = prepare_datasets(params["datasets"])
    index = build_dataset_index(metadata, templates, params["class_names"])
    teacher_model = {"spec": {**params["teacher"]["model"], "pretrained": None}}
    evaluation = {**params["evaluation"], "bootstrap": {"n_resamples": 50, "confidence": 0.95, "seed": 0}}
    return metadata, index, teacher_model, evaluation


def test_every_dataset_is_evaluated_zero_shot_with_its_own_names_and_prompts(tiny_index, monkeypatch) -> None:
    metadata, index, teacher_model, evaluation = tiny_index
    seen = []
    original = one_pass.zero_shot_predictions

    def spy(loaded, images, task, *args, **kwargs):
        seen.append((task.name, task.class_names, task.templates))
        return original(loaded, images, task, *args, **kwargs)

    monkeypatch.setattr(one_pass, "zero_shot_predictions", spy)
    config = EvaluationConfig.from_params(evaluation)
    rows = one_pass.evaluate_weights(ZERO_SHOT, None, metadata, index, teacher_model, config)
    for dataset, entry in index["datasets"].items():
        assert (dataset, tuple(entry["class_names"]), tuple(entry["templates"])) in seen
    assert seen[-1][2] == ("a drawing of a {c}.",)  # waterbirds_like keeps its own prompts
    splits = {row["split"] for row in rows["results"]}
    assert splits == {f"{d}/{s}" for d in index["datasets"] for s in evaluation["splits"]}
    classes = pd.DataFrame(rows["classes"])
    assert set(classes.loc[classes["dataset"] == "waterbirds_like", "class_name"]) == set(
        index["datasets"]["waterbirds_like"]["class_names"]
    )
    assert all(row["convention"] == "generic" for row in rows["results"])


# --------------------------------------------------------------------------- figures


def _group_rows() -> list[dict]:
    rows = []
    for method in ("zero_shot", "flyp"):
        for dataset, n_groups in (("synthetic", 9), ("waterbirds_like", 4)):
            for split in ("val", "test"):
                rows += [
                    {
                        "method": method,
                        "split": f"{dataset}/{split}",
                        "group": g,
                        "group_name": f"g{g}",
                        "n": 5,
                        "acc": (g + 1) / (n_groups + 1),
                        "dataset": dataset,
                    }
                    for g in range(n_groups)
                ]
    return rows


def test_per_model_and_comparison_charts() -> None:
    groups = pd.DataFrame(_group_rows())
    method_fig = nodes.plot_method_groups({"groups": groups[groups["method"] == "flyp"].to_dict("records")})
    assert isinstance(method_fig, Figure) and len(method_fig.axes) == 2
    assert nodes.plot_method_groups(UNCHANGED) is UNCHANGED  # a model not evaluated: no placeholder figure
    assert [ax.get_title() for ax in method_fig.axes] == ["synthetic", "waterbirds_like"]
    bars = method_fig.axes[1].patches
    assert len(bars) == 2 * 4  # val and test bars per group
    comparison = nodes.plot_group_comparison(groups.drop(columns="dataset"), {"comparison_split": "test"})
    assert [ax.get_title() for ax in comparison.axes] == ["synthetic/test", "waterbirds_like/test"]
    assert len(comparison.axes[0].patches) == 2 * 9


def test_training_curves_have_a_panel_per_loss_term() -> None:
    flyp = pd.DataFrame(
        {
            "epoch": [0, 0, 1],
            "step": [1, 2, 3],
            "loss": [3.0, 2.0, 1.5],
            "contrastive": [3.0, 2.0, 1.5],
            "method": "flyp",
        }
    )
    star = flyp.assign(regulariser=[0.1, 0.05, 0.02], method="star")
    fig = nodes.plot_training({"training_terms": ["loss", "contrastive", "regulariser"]}, flyp, star)
    assert [ax.get_ylabel() for ax in fig.axes] == ["training loss", "contrastive loss", "regulariser (KL)"]
    labels = [[line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")] for ax in fig.axes]
    assert labels == [["flyp", "star"], ["flyp", "star"], ["star"]]


def test_wise_ft_figure_follows_the_sweep_contract() -> None:
    curve = pd.DataFrame(
        [
            {"method": m, "alpha": a, "dataset": d, "split": s, "avg_acc": 0.5 + a / 4, "worst_group_acc": 0.4 - a / 8}
            for m in ("flyp", "star")
            for a in (0.0, 0.5, 1.0)
            for d in ("synthetic", "waterbirds_like")
            for s in ("val", "test")
        ]
    )
    fig = nodes.plot_wise_ft(curve, {"wise_ft_annotate_alphas": [0.0, 1.0]})
    assert [ax.get_title() for ax in fig.axes] == [
        "synthetic/val",
        "synthetic/test",
        "waterbirds_like/val",
        "waterbirds_like/test",
    ]
    assert len(fig.axes[0].get_lines()) == 2
    assert sorted({text.get_text() for text in fig.axes[0].texts}) == ["α=0", "α=1"]
    empty = nodes.plot_wise_ft(curve.iloc[:0], {})
    assert "No WiSE-FT sweep" in empty.axes[0].texts[0].get_text()
    assert nodes.plot_wise_ft(UNCHANGED, {}) is UNCHANGED  # no sweep in this run: the figure stays as it was


# --------------------------------------------------------------------------- pipeline shape


def test_every_model_gets_a_chart_and_the_reports_are_wired() -> None:
    evaluation = register_pipelines()["evaluation"]
    names = {node.name for node in evaluation.nodes}
    assert {f"evaluation.plot_group_accuracy_{model}" for model in ("zero_shot", *METHODS)} <= names
    one_pass_node = next(node for node in evaluation.nodes if node.name == "evaluation.evaluate_models")
    assert [name for name in one_pass_node.inputs if name.endswith(".weights")] == [f"{m}.weights" for m in METHODS]
    assert {f"{model}.evaluation" for model in ("zero_shot", *METHODS, "wise_ft")} | {WISE_FT_CURVE} == set(
        one_pass_node.outputs
    )
    outputs = evaluation.all_outputs()
    assert {
        "results",
        "group_results",
        "class_results",
        "results_markdown",
        "dataset_checks",
        "group_accuracy_comparison_plot",
        "training_curves_plot",
    } <= outputs
    training = next(node for node in evaluation.nodes if node.name == "plot_training_curves")
    assert [name for name in training.inputs if name.endswith(".history")] == [f"{m}.history" for m in METHODS]


def test_wise_ft_figure_appears_only_with_the_sweep() -> None:
    without = Pipeline([Node(len, "a", "b", name="other")])
    assert with_wise_ft_plot(without) is without
    with_sweep = with_wise_ft_plot(Pipeline([Node(len, "a", WISE_FT_CURVE, name="sweep")]))
    plot = next(node for node in with_sweep.nodes if node.name == "plot_wise_ft_curve")
    assert plot.inputs[0] == WISE_FT_CURVE and plot.outputs == ["wise_ft_curve_plot"]


def test_every_node_carries_exactly_one_stage_tag() -> None:
    for node in register_pipelines()["full"].nodes:
        assert len(node.tags & set(STAGES)) == 1, (node.name, node.tags)


def test_every_persisted_dataset_has_a_kedro_viz_layer() -> None:
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="base")
    catalog = DataCatalog.from_config(loader["catalog"])
    full = register_pipelines()["full"]
    missing = []
    for name in sorted(full.datasets()):
        if name.startswith("params:") or name == "parameters":
            continue
        dataset = catalog.get(name) if hasattr(catalog, "get") else catalog._get_dataset(name)
        layer = ((getattr(dataset, "metadata", None) or {}).get("kedro-viz") or {}).get("layer")
        if layer is None:
            missing.append(name)
    assert not missing, f"catalog entries without metadata.kedro-viz.layer: {missing}"
