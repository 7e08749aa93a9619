"""pretrain stage: thin adapters around starft_pipeline.train.pretraining."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.train.pretraining import PretrainConfig, pretrain, stored_weights

logger = logging.getLogger(__name__)


def pretrain_world_model(pretrain_params: dict[str, Any]) -> tuple[TensorBundle, pd.DataFrame, dict[str, Any]]:
    """Pretrain, store the weights in fp16 (≈16 MB), and report zero-shot accuracy of the stored weights."""
    config = PretrainConfig.from_params(pretrain_params)
    result = pretrain(config)
    state, report = stored_weights(result, config)
    accuracy = {concept: report[concept]["accuracy"] for concept in config.concepts}
    logger.info("pretrain: zero-shot accuracy of the stored weights %s after %.0f s", accuracy, result.wall_s)
    metadata = {
        "architecture": config.architecture,
        "made_by": "kedro run --pipelines=pretrain",
        "pretrain": config.as_dict(),
        "zero_shot_accuracy": accuracy,
        "worst_class_accuracy": {concept: report[concept]["worst_class_accuracy"] for concept in config.concepts},
    }
    return TensorBundle(state, metadata), pd.DataFrame(result.history), report


def pretrain_metrics(history: pd.DataFrame, report: dict[str, Any]) -> dict[str, Any]:
    """Loss, logit-scale and zero-shot accuracy curves plus the final accuracies, for kedro-mlflow."""
    curves = {
        f"pretrain.{column}": [
            {"step": int(step), "value": float(value)}
            for step, value in zip(history["step"], history[column])
            if pd.notna(value)
        ]
        for column in history.columns
        if column != "step"
    }
    final = {
        f"pretrain.final.{concept}_{key}": {"value": float(report[concept][key]), "step": 0}
        for concept in report["chance"]
        for key in ("accuracy", "worst_class_accuracy")
    }
    return curves | final | {"pretrain.wall_s": {"value": float(report["train_wall_s"]), "step": 0}}
