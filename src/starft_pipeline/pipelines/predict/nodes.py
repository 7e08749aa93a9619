"""predict: a folder of images → class probabilities of one model (starft_pipeline.models.predict)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from starft_pipeline.models.clip import resolve_device
from starft_pipeline.models.predict import MODELS_DIR, load_classifier, predictions


def predict_images(
    predict: dict[str, Any], dataset_index: dict[str, Any], teacher_model: dict[str, Any]
) -> pd.DataFrame:
    """``file``, ``predicted_class`` and a probability per class for every image under ``predict.images``."""
    if not predict.get("images"):
        raise ValueError(
            "predict.images is not set: run `kedro run --pipelines=predict --params predict.images=<folder>`"
        )
    classifier = load_classifier(
        str(predict["model"]),
        teacher_model,
        dataset_index,
        predict.get("dataset"),
        predict.get("models_dir") or MODELS_DIR,
        resolve_device(predict.get("device", "auto")),
    )
    batches = predictions(classifier, predict["images"], int(predict.get("batch_size", 256)))
    return pd.concat(list(batches), ignore_index=True)
