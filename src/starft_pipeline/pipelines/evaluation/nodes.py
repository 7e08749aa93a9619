"""evaluation stage: group-robust metrics of the zero-shot model and every fine-tuned one."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.evaluate import one_pass
from starft_pipeline.evaluate.config import EvaluationConfig
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
from starft_pipeline.evaluate.results import (
    CLASS_COLUMNS,
    GROUP_COLUMNS,
    METRIC_COLUMNS,
    REPORT_COLUMNS,
    mlflow_metric_key,
)
from starft_pipeline.evaluate.wise_sweep import WISE_FT
from starft_pipeline.kedro_io import UNCHANGED
from starft_pipeline.models.heads import ZERO_SHOT
from starft_pipeline.train.methods import method_names

logger = logging.getLogger(__name__)


def model_order() -> tuple[str, ...]:
    """Every model in a fixed order, so a method has the same colour in every figure."""
    return (ZERO_SHOT, *method_names())


def evaluate_models(
    dataset_metadata: pd.DataFrame,
    dataset_index: dict[str, Any],
    teacher_model: dict[str, Any],
    teacher_cache: TensorBundle,
    evaluation: dict[str, Any],
    *weights: Any,
) -> tuple[Any, ...]:
    """Every model's evaluation in one pass over each split (:func:`starft_pipeline.evaluate.one_pass.evaluate_models`).

    Returns the evaluations of ``zero_shot`` and of each method of the table, the WiSE-FT evaluation
    at the chosen α and the WiSE-FT curve (:func:`evaluation_outputs`); ``UNCHANGED`` (the file stays
    as it was) for each one this run does not evaluate (a method not in ``evaluation.models``,
    WiSE-FT without a method to sweep).
    """
    config = EvaluationConfig.from_params(evaluation)
    outputs = one_pass.evaluate_models(dataset_metadata, dataset_index, teacher_model, teacher_cache, config, weights)
    per_model = [outputs.rows.get(model, UNCHANGED) for model in (ZERO_SHOT, *method_names())]
    swept = [UNCHANGED if output is None else output for output in (outputs.wise_ft, outputs.curve)]
    return (*per_model, *swept)


def evaluation_outputs() -> list[str]:
    """The one-pass node's outputs, in :func:`evaluate_models`' order."""
    return [f"{model}.evaluation" for model in (ZERO_SHOT, *method_names(), WISE_FT)] + ["wise_ft_curve"]


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
    confidence = EvaluationConfig.from_params(evaluation).bootstrap.confidence
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
