"""evaluation stage: group-robust metrics of the zero-shot model and every fine-tuned one."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from starft_pipeline.data import load_split_images
from starft_pipeline.dataset_index import dataset_split, eval_task
from starft_pipeline.evaluate import split_metrics, zero_shot_predictions
from starft_pipeline.models import ModelSpec, create_model, load_state_dict, resolve_device
from starft_pipeline.reporting import group_rows, markdown_table, results_rows
from starft_pipeline.tensor_bundle import TensorBundle

logger = logging.getLogger(__name__)
ZERO_SHOT = "zero_shot"


def evaluate_weights(
    method: str,
    weights: TensorBundle | None,
    dataset_metadata: pd.DataFrame,
    dataset_index: dict[str, Any],
    teacher_model: dict[str, Any],
    evaluation: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    """Metrics rows of one model on every configured data set and evaluation split."""
    device = resolve_device(evaluation.get("device", "auto"))
    loaded = create_model(ModelSpec(**teacher_model["spec"]), device=device)
    if weights is not None:
        load_state_dict(loaded.model, weights.tensors)
    results, groups = [], []
    for dataset in dataset_index["datasets"]:
        task = eval_task(dataset_index, dataset)
        for split_name in evaluation["splits"]:
            split = dataset_split(dataset_metadata, dataset_index, dataset, split_name)
            if not len(split):
                continue
            predictions = zero_shot_predictions(loaded, load_split_images(split, loaded.image_size), task, device)
            metrics = split_metrics(predictions, split, task)
            label = f"{dataset}/{split_name}"
            results.append({**results_rows(method, label, metrics), "dataset": dataset})
            groups.extend({**row, "dataset": dataset} for row in group_rows(method, label, metrics, task.group_names))
            logger.info("%s on %s: avg %.3f, worst-group %.3f", method, label, metrics.avg_acc, metrics.worst_group_acc)
    return {"results": results, "groups": groups}


def evaluate_zero_shot(
    dataset_metadata: pd.DataFrame, dataset_index: dict[str, Any], teacher_model: dict[str, Any], evaluation: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    return evaluate_weights(ZERO_SHOT, None, dataset_metadata, dataset_index, teacher_model, evaluation)


def evaluate_finetuned(
    weights: TensorBundle,
    dataset_metadata: pd.DataFrame,
    dataset_index: dict[str, Any],
    teacher_model: dict[str, Any],
    evaluation: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    return evaluate_weights(str(weights.metadata["method"]), weights, dataset_metadata, dataset_index, teacher_model, evaluation)


def collect_results(*evaluations: dict[str, list[dict[str, Any]]]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """results.csv, group_results.csv and a Markdown table of the results."""
    results = pd.DataFrame([row for evaluation in evaluations for row in evaluation["results"]])
    groups = pd.DataFrame([row for evaluation in evaluations for row in evaluation["groups"]])
    columns = ["method", "split", "n", "avg_acc", "worst_group_acc", "adjusted_avg_acc", "mean_group_acc"]
    group_columns = ["method", "split", "group", "group_name", "n", "acc"]
    return results[columns], groups[group_columns], markdown_table(results[columns]) + "\n"


def results_metrics(results: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``<method>.<dataset>.<split>.<metric>`` in kedro-mlflow's metric format."""
    metrics = ("avg_acc", "worst_group_acc", "adjusted_avg_acc", "mean_group_acc")
    return {
        f"{row.method}.{row.split.replace('/', '.')}.{metric}": {"value": float(getattr(row, metric)), "step": 0}
        for row in results.itertuples()
        for metric in metrics
    }
