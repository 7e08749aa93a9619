"""WiSE-FT in the evaluation: interpolate fine-tuned and zero-shot weights, sweep α.

For every method in ``evaluation.wise_ft.methods`` that is evaluated (``evaluation.models``) and
every α in ``evaluation.wise_ft.alphas``, the interpolated model joins the one-pass evaluation
(:mod:`starft_pipeline.evaluate.one_pass`) on ``evaluation.wise_ft.splits``; its rows go to ``wise_ft_curve.csv``.
The model at the chosen ``evaluation.wise_ft.alpha`` is evaluated on the evaluation splits and joins
results.csv as ``"<method>+wise"`` (the sweep's own model when the sweep covers those splits). No Kedro here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.evaluate.config import EvaluationConfig
from starft_pipeline.models.heads import ClassifierHead, zero_shot_linear_head
from starft_pipeline.models.teacher import TeacherCache
from starft_pipeline.models.wise_ft import alpha_grid, wise_ft_bundle, zero_shot_counterpart

logger = logging.getLogger(__name__)
WISE_FT = "wise_ft"
CURVE_COLUMNS = (
    "method",
    "alpha",
    "dataset",
    "split",
    "avg_acc",
    "worst_group_acc",
    "adjusted_avg_acc",
    "mean_group_acc",
)


def zero_shot_heads(teacher_cache: TensorBundle, dataset_index: dict[str, Any]) -> dict[str, ClassifierHead]:
    """Each data set's zero-shot head (τ₀ · cached class features): θ_zs's side of a learned head."""
    cache = TeacherCache.from_bundle(teacher_cache)
    return {
        dataset: zero_shot_linear_head(cache.class_features[dataset], cache.logit_scale, entry["class_names"])
        for dataset, entry in dataset_index["datasets"].items()
    }


def curve_rows(method: str, alpha: float, evaluation: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [
        {
            **{key: row[key] for key in CURVE_COLUMNS[4:]},
            "method": method,
            "alpha": alpha,
            "dataset": row["dataset"],
            "split": row["split"].split("/")[-1],
        }
        for row in evaluation["results"]
    ]


@dataclass(frozen=True)
class WiseSweep:
    """What this run sweeps: the listed methods that it evaluates, the α grid (sorted, de-duplicated),
    the chosen α and the sweep's splits."""

    methods: tuple[str, ...]
    alphas: tuple[float, ...]
    alpha: float
    splits: tuple[str, ...]


def plan_sweep(config: EvaluationConfig, evaluated: list[str]) -> WiseSweep:
    """The sweep of ``config.wise_ft`` over the methods evaluated in this run."""
    listed = config.wise_ft.methods
    skipped = [method for method in listed if method not in evaluated]
    if skipped:
        logger.info("WiSE-FT: %s not swept (not in evaluation.models)", skipped)
    return WiseSweep(
        methods=tuple(method for method in listed if method in evaluated),
        alphas=tuple(alpha_grid(config.wise_ft.alphas)),
        alpha=alpha_grid([config.wise_ft.alpha])[0],
        splits=tuple(config.sweep_splits),
    )


@dataclass(frozen=True)
class WiseModel:
    """One interpolated model: ``method`` at ``alpha`` of the sweep, or (``alpha`` None) the chosen α
    evaluated apart from the sweep. Every one is reported as ``<method>+wise`` (:attr:`label`)."""

    method: str
    alpha: float | None = None

    @property
    def key(self) -> str:
        """The model's key in the one pass (unique per model)."""
        return self.label if self.alpha is None else f"{self.label}@{self.alpha:g}"

    @property
    def label(self) -> str:
        """Its name in results.csv and the curve."""
        return f"{self.method}+wise"


def sweep_key(method: str, alpha: float) -> str:
    return WiseModel(method, alpha).key


def chosen_model(method: str, sweep: WiseSweep, evaluation_splits: tuple[str, ...]) -> WiseModel:
    """The model whose rows are ``<method>+wise`` in results.csv: the sweep's, when it covers the splits."""
    if sweep.alpha in sweep.alphas and sweep.splits == evaluation_splits:
        return WiseModel(method, sweep.alpha)
    return WiseModel(method)


def wise_models(
    method: str,
    finetuned: TensorBundle,
    zero_shot_state: dict[str, torch.Tensor],
    heads: dict[str, ClassifierHead],
    sweep: WiseSweep,
    evaluation_splits: tuple[str, ...],
) -> list[tuple[WiseModel, TensorBundle, tuple[str, ...]]]:
    """(model, interpolated weights, splits) of one method's sweep, plus the chosen α when the sweep does not cover it."""
    zero_shot = zero_shot_counterpart(zero_shot_state, heads, finetuned)
    models = [
        (WiseModel(method, alpha), wise_ft_bundle(zero_shot, finetuned, alpha), sweep.splits) for alpha in sweep.alphas
    ]
    chosen = chosen_model(method, sweep, evaluation_splits)
    if chosen.alpha is None:
        models.append((chosen, wise_ft_bundle(zero_shot, finetuned, sweep.alpha), evaluation_splits))
    return models


def wise_outputs(
    sweep: WiseSweep, rows_by_key: dict[str, dict[str, list[dict[str, Any]]]], evaluation_splits: tuple[str, ...]
) -> tuple[pd.DataFrame, dict[str, list[dict[str, Any]]]]:
    """The curve (every method × α) and the chosen α's evaluation of every swept method."""
    curve = []
    chosen: dict[str, list[dict[str, Any]]] = {}
    for method in sweep.methods:
        for alpha in sweep.alphas:
            curve.extend(curve_rows(method, alpha, rows_by_key[sweep_key(method, alpha)]))
        for table, part in rows_by_key[chosen_model(method, sweep, evaluation_splits).key].items():
            chosen.setdefault(table, []).extend(part)
        logger.info(
            "WiSE-FT %s: %d α evaluated, α = %g reported as %s+wise",
            method,
            len(sweep.alphas),
            sweep.alpha,
            method,
        )
    return pd.DataFrame(curve, columns=list(CURVE_COLUMNS)), chosen
