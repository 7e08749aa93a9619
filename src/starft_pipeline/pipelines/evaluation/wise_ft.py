"""WiSE-FT fragment of the evaluation stage: interpolate fine-tuned and zero-shot weights, sweep α.

For every method in ``evaluation.wise_ft.methods`` and every α in ``evaluation.wise_ft.alphas`` the
interpolated model is evaluated exactly as the others (``evaluate_weights``) on
``evaluation.wise_ft.splits``; the rows go to ``wise_ft_curve.csv``. The model at the chosen
``evaluation.wise_ft.alpha`` is evaluated on the evaluation splits and joins results.csv as
``"<method>+wise"``. ``kedro run --namespaces=wise_ft`` runs the sweep alone.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch
from kedro.pipeline import Node, Pipeline

from starft_pipeline.heads import zero_shot_linear_head
from starft_pipeline.models import ModelSpec, create_model, state_dict_copy
from starft_pipeline.teacher import TeacherCache
from starft_pipeline.tensor_bundle import TensorBundle
from starft_pipeline.wise_ft import alpha_grid, wise_ft_bundle, zero_shot_counterpart

from ..finetune.pipeline import METHODS
from .nodes import evaluate_weights

logger = logging.getLogger(__name__)
WISE_FT = "wise_ft"
CURVE_COLUMNS = ("method", "alpha", "dataset", "split", "avg_acc", "worst_group_acc", "adjusted_avg_acc", "mean_group_acc")
DEFAULT_ALPHAS = tuple(round(0.1 * step, 1) for step in range(11))


def _zero_shot_parts(
    teacher_model: dict[str, Any], teacher_cache: TensorBundle, dataset_index: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict]:
    """θ_zs: the teacher's state dict and each data set's zero-shot head (τ₀ · cached class features)."""
    state = state_dict_copy(create_model(ModelSpec(**teacher_model["spec"])).model)
    cache = TeacherCache.from_bundle(teacher_cache)
    heads = {
        dataset: zero_shot_linear_head(cache.class_features[dataset], cache.logit_scale, entry["class_names"])
        for dataset, entry in dataset_index["datasets"].items()
    }
    return state, heads


def _curve_rows(method: str, alpha: float, evaluation: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [
        {**{key: row[key] for key in CURVE_COLUMNS[4:]}, "method": method, "alpha": alpha,
         "dataset": row["dataset"], "split": row["split"].split("/")[-1]}
        for row in evaluation["results"]
    ]


def _settings(evaluation: dict[str, Any], available: list[str]) -> dict[str, Any]:
    wise = evaluation.get("wise_ft") or {}
    methods = list(wise.get("methods", []))
    unknown = [method for method in methods if method not in available]
    if unknown:
        raise ValueError(f"evaluation.wise_ft.methods lists {unknown}, which are not fine-tuned methods ({available})")
    return {"methods": methods, "alphas": alpha_grid(wise.get("alphas", DEFAULT_ALPHAS)),
            "alpha": alpha_grid([wise.get("alpha", 0.5)])[0], "splits": list(wise.get("splits", evaluation["splits"]))}


def _sweep_method(
    method: str,
    finetuned: TensorBundle,
    zero_shot: dict[str, torch.Tensor],
    settings: dict[str, Any],
    evaluation: dict[str, Any],
    context: tuple[pd.DataFrame, dict[str, Any], dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """One method's curve rows and its evaluation at the chosen α (the sweep's own when it covers
    the evaluation splits)."""
    label = f"{method}+wise"
    sweep_evaluation = {**evaluation, "splits": settings["splits"]}
    by_alpha = {
        alpha: evaluate_weights(label, wise_ft_bundle(zero_shot, finetuned, alpha), *context, sweep_evaluation)
        for alpha in settings["alphas"]
    }
    curve = [row for alpha, rows in by_alpha.items() for row in _curve_rows(method, alpha, rows)]
    alpha = settings["alpha"]
    if alpha in by_alpha and settings["splits"] == list(evaluation["splits"]):
        return curve, by_alpha[alpha]
    return curve, evaluate_weights(label, wise_ft_bundle(zero_shot, finetuned, alpha), *context, evaluation)


def wise_ft_sweep(
    dataset_metadata: pd.DataFrame,
    dataset_index: dict[str, Any],
    teacher_model: dict[str, Any],
    teacher_cache: TensorBundle,
    evaluation: dict[str, Any],
    *weights: TensorBundle,
) -> tuple[pd.DataFrame, dict[str, list[dict[str, Any]]]]:
    """The WiSE-FT curve of each listed method, and the evaluation of each at the chosen α."""
    by_method = {str(bundle.metadata["method"]): bundle for bundle in weights}
    settings = _settings(evaluation, list(by_method))
    zero_shot_state, zero_shot_heads = _zero_shot_parts(teacher_model, teacher_cache, dataset_index)
    context = (dataset_metadata, dataset_index, teacher_model)
    curve, chosen = [], {}
    for method in settings["methods"]:
        zero_shot = zero_shot_counterpart(zero_shot_state, zero_shot_heads, by_method[method])
        rows, result = _sweep_method(method, by_method[method], zero_shot, settings, evaluation, context)
        curve.extend(rows)
        for table, part in result.items():
            chosen.setdefault(table, []).extend(part)
        logger.info("WiSE-FT %s: %d α evaluated, α = %g reported as %s+wise", method, len(settings["alphas"]), settings["alpha"], method)
    return pd.DataFrame(curve, columns=list(CURVE_COLUMNS)), chosen


def create_wise_ft_pipeline() -> Pipeline:
    """The sweep node, namespaced ``wise_ft``; it reads every method's weights and sweeps the listed ones."""
    shared = ["dataset_metadata", "dataset_index", "teacher_model", "teacher_cache"]
    template = Pipeline(
        [
            Node(
                wise_ft_sweep,
                [*shared, "params:evaluation", *(f"{method}_weights" for method in METHODS)],
                ["wise_ft_curve", "evaluation"],
                name="sweep",
            )
        ]
    )
    return Pipeline(
        template,
        namespace=WISE_FT,
        inputs={name: name for name in shared} | {f"{method}_weights": f"{method}.weights" for method in METHODS},
        outputs={"wise_ft_curve"},
        parameters={"params:evaluation"},
        tags=["evaluation", WISE_FT],
    )
