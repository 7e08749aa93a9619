"""evaluation stage: group-robust metrics of the zero-shot model and every fine-tuned one."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.data.dataset_index import dataset_info, dataset_split, eval_task
from starft_pipeline.data.splits import check_groups_present, load_split_images
from starft_pipeline.evaluate.figures import (
    SavableFigure,
    message_figure,
    plot_frontier,
    plot_group_accuracy_comparison,
    plot_method_group_accuracy,
    plot_training_curves,
    plot_wise_ft_curves,
)
from starft_pipeline.evaluate.frontier import FRONTIER_COLUMNS, frontier_table
from starft_pipeline.evaluate.markdown import comparison_markdown
from starft_pipeline.evaluate.metrics import HEADLINE_METRIC, convention_warning
from starft_pipeline.evaluate.predictions import SplitToEvaluate, zero_shot_predictions
from starft_pipeline.evaluate.results import (
    CLASS_COLUMNS,
    GROUP_COLUMNS,
    METRIC_COLUMNS,
    REPORT_COLUMNS,
    BootstrapSettings,
    mlflow_metric_key,
    split_report,
)
from starft_pipeline.kedro_io import UNCHANGED
from starft_pipeline.models.clip import ModelSpec, create_model, load_state_dict, resolve_device
from starft_pipeline.models.heads import ZERO_SHOT, head_for_classes, split_heads
from starft_pipeline.train.methods import method_names

logger = logging.getLogger(__name__)


def model_order() -> tuple[str, ...]:
    """Every model in a fixed order, so a method has the same colour in every figure."""
    return (ZERO_SHOT, *method_names())


def evaluation_targets(
    dataset_metadata: pd.DataFrame, dataset_index: dict[str, Any], evaluation: dict[str, Any], split_names: list[str]
) -> list[SplitToEvaluate]:
    """Every configured data set's non-empty ``split_names``, in data-set then split order, checked
    to hold every group (unless ``evaluation.allow_empty_groups``)."""
    allow_empty = bool(evaluation.get("allow_empty_groups", False))
    targets = []
    for dataset in dataset_index["datasets"]:
        task = eval_task(dataset_index, dataset)
        for split_name in split_names:
            split = dataset_split(dataset_metadata, dataset_index, dataset, split_name)
            if not len(split):
                continue
            check_groups_present(split, task.group_names, f"{dataset}/{split_name}", allow_empty)
            targets.append(SplitToEvaluate(dataset, split_name, split, task))
    return targets


def report_rows(
    method: str,
    targets: list[SplitToEvaluate],
    predictions: Mapping[tuple[str, str], np.ndarray],
    dataset_index: dict[str, Any],
    evaluation: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    """Metrics rows of one model from its predictions keyed ``(dataset, split name)``; targets without
    predictions are skipped."""
    rows: dict[str, list[dict[str, Any]]] = {"results": [], "groups": [], "classes": []}
    bootstrap = BootstrapSettings(**evaluation.get("bootstrap", {}))
    allow_empty = bool(evaluation.get("allow_empty_groups", False))
    for target in targets:
        if (target.dataset, target.split_name) not in predictions:
            continue
        label = f"{target.dataset}/{target.split_name}"
        convention = dataset_info(dataset_index, target.dataset).get("convention", "generic")
        report = split_report(
            method,
            label,
            target.split.labels,
            predictions[(target.dataset, target.split_name)],
            target.split.groups,
            target.task,
            convention,
            bootstrap,
            allow_empty,
        )
        for table, part in report.items():
            rows[table].extend({**row, "dataset": target.dataset} for row in part)
        result = report["results"][0]
        logger.info(
            "%s on %s: avg %.3f, worst-group %.3f, adjusted avg %.3f",
            method,
            label,
            result["avg_acc"],
            result["worst_group_acc"],
            result["adjusted_avg_acc"],
        )
    return rows


def evaluate_weights(
    method: str,
    weights: TensorBundle | None,
    dataset_metadata: pd.DataFrame,
    dataset_index: dict[str, Any],
    teacher_model: dict[str, Any],
    evaluation: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    """Metrics rows of one model on every configured data set and evaluation split, one model at a
    time (the reference the one-pass evaluation, :mod:`.one_pass`, is tested against).

    A learned head in ``weights`` (LP, FT, LP-FT) classifies every data set whose classes it knows;
    the others are classified zero-shot from the model's text tower.
    """
    device = resolve_device(evaluation.get("device", "auto"))
    loaded = create_model(ModelSpec(**teacher_model["spec"]), device=device)
    heads: dict[str, Any] = {}
    if weights is not None:
        state_dict, heads = split_heads(weights.tensors, weights.metadata)
        load_state_dict(loaded.model, state_dict)
    targets = evaluation_targets(dataset_metadata, dataset_index, evaluation, list(evaluation["splits"]))
    predictions = {
        (target.dataset, target.split_name): zero_shot_predictions(
            loaded,
            load_split_images(target.split, loaded.image_size),
            target.task,
            device,
            head=head_for_classes(heads, target.task.class_names),
        )
        for target in targets
    }
    return report_rows(method, targets, predictions, dataset_index, evaluation)


def collect_results(
    *evaluations: dict[str, list[dict[str, Any]]] | Any,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """results.csv, group_results.csv and class_results.csv of every model evaluated in this run
    (an ``UNCHANGED`` evaluation, a model this run left out, adds no rows)."""
    evaluated = [evaluation for evaluation in evaluations if evaluation is not UNCHANGED]
    tables = {
        key: pd.DataFrame([row for evaluation in evaluated for row in evaluation.get(key, [])])
        for key in ("results", "groups", "classes")
    }
    return (
        tables["results"][list(REPORT_COLUMNS)],
        tables["groups"][list(GROUP_COLUMNS)],
        tables["classes"][list(CLASS_COLUMNS)],
    )


def check_dataset_conventions(dataset_index: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per data set: its convention, headline metric, training group counts and any warning (logged)."""
    checks = {}
    for name, entry in dataset_index["datasets"].items():
        convention = entry.get("convention", "generic")
        warning = convention_warning(convention, entry["train_group_counts"])
        if warning:
            logger.warning("data set %r: %s", name, warning)
        checks[name] = {
            "convention": convention,
            "headline_metric": HEADLINE_METRIC[convention],
            "train_group_counts": entry["train_group_counts"],
            "warning": warning,
        }
    return checks


def results_report(results: pd.DataFrame, dataset_checks: dict[str, Any], evaluation: dict[str, Any]) -> str:
    """results.md: the comparison table with bootstrap intervals, the metric legend and data-set warnings."""
    notes = [f"{name}: {check['warning']}" for name, check in dataset_checks.items() if check.get("warning")]
    confidence = BootstrapSettings(**evaluation.get("bootstrap", {})).confidence
    return comparison_markdown(results, confidence, notes)


def results_metrics(results: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``<method>.<dataset>.<split>.<metric>`` in kedro-mlflow's metric format (intervals included)."""
    metrics = [column for column in METRIC_COLUMNS if column in results.columns]
    return {
        mlflow_metric_key(row.method, row.split, metric): {"value": float(getattr(row, metric)), "step": 0}
        for row in results.itertuples()
        for metric in metrics
    }


def plot_method_groups(evaluation: dict[str, list[dict[str, Any]]] | Any) -> SavableFigure | Any:
    """One method's per-group accuracy on every data set and split; ``UNCHANGED`` (the figure file
    stays as it was) for a model this run does not evaluate."""
    if evaluation is UNCHANGED:
        return UNCHANGED
    return plot_method_group_accuracy(pd.DataFrame(evaluation["groups"]))


def plot_group_comparison(group_results: pd.DataFrame, reporting: dict[str, Any]) -> SavableFigure:
    """Every method's per-group accuracy on the comparison split."""
    split = reporting.get("comparison_split", "test")
    return plot_group_accuracy_comparison(group_results, split, method_order=model_order())


def plot_wise_ft(wise_ft_curve: pd.DataFrame | Any, reporting: dict[str, Any]) -> SavableFigure | Any:
    """Worst-group against average accuracy across the WiSE-FT mixing coefficient α, per data set and split;
    ``UNCHANGED`` when this run swept nothing."""
    if wise_ft_curve is UNCHANGED:
        return UNCHANGED
    if wise_ft_curve.empty:
        return message_figure("No WiSE-FT sweep: evaluation.wise_ft.methods lists no method.", "WiSE-FT")
    alphas = reporting.get("wise_ft_annotate_alphas")
    return plot_wise_ft_curves(wise_ft_curve, annotate_alphas=alphas, method_order=model_order())


def frontier_report(
    results: pd.DataFrame, wise_ft_curve: pd.DataFrame | Any, dataset_index: dict[str, Any], reporting: dict[str, Any]
) -> tuple[pd.DataFrame | Any, SavableFigure | Any]:
    """Every model's OOD metrics against the reference's WiSE-FT curve at equal ID accuracy (evaluate.frontier).

    ``UNCHANGED`` (both files stay as they were) when this run swept nothing; with a sweep that lacks
    the reference's curve the table is empty and the figure says what to set.
    """
    if wise_ft_curve is UNCHANGED:
        return UNCHANGED, UNCHANGED
    reference = reporting.get("frontier_reference", "flyp")
    split = reporting.get("frontier_split", "test")
    swept = set(wise_ft_curve["method"]) if "method" in wise_ft_curve else set()
    if reference not in swept:
        message = f"No frontier: the WiSE-FT sweep has no {reference!r} curve; add it to evaluation.wise_ft.methods."
        logger.warning(message)
        return pd.DataFrame(columns=list(FRONTIER_COLUMNS)), message_figure(message, "Frontier")
    table = frontier_table(results, wise_ft_curve, dataset_index["finetune_dataset"], reference, split)
    return table, plot_frontier(table, method_order=model_order())


def plot_training(reporting: dict[str, Any], *histories: pd.DataFrame) -> SavableFigure:
    """Loss terms against step for every fine-tuned method with a history (an empty one: not trained yet)."""
    present = [history for history in histories if not history.empty]
    if not present:
        return message_figure("No fine-tuned method has a loss history yet.", "training curves")
    history = pd.concat(present, ignore_index=True)
    terms = reporting.get("training_terms", ["loss"])
    smooth = reporting.get("training_smooth")
    return plot_training_curves(history, terms=terms, smooth=smooth, method_order=model_order())
