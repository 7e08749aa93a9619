"""finetune stage: one node per method, fine-tuning from the cached teacher embeddings."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from starft_pipeline.data import load_split_images
from starft_pipeline.dataset_index import dataset_info, dataset_split
from starft_pipeline.descriptions import flatten_descriptions
from starft_pipeline.models import ModelSpec, create_model, resolve_device, state_dict_copy
from starft_pipeline.teacher import TeacherCache, check_fresh, expected_fingerprint
from starft_pipeline.tensor_bundle import TensorBundle
from starft_pipeline.training import FinetuneConfig, finetune, train_data_from_cache

logger = logging.getLogger(__name__)
RUNTIME_KEYS = ("device",)


def finetune_method(
    dataset_metadata: pd.DataFrame,
    dataset_index: dict[str, Any],
    descriptions: dict[str, Any],
    teacher_model: dict[str, Any],
    teacher_cache: TensorBundle,
    finetune_params: dict[str, Any],
) -> tuple[TensorBundle, pd.DataFrame]:
    """Fine-tune the teacher's model with one method; returns its weights and loss history."""
    config = FinetuneConfig.from_params(finetune_params, exclude=RUNTIME_KEYS)
    dataset = dataset_index["finetune_dataset"]
    class_names = dataset_info(dataset_index, dataset)["class_names"]
    pool = flatten_descriptions(descriptions, class_names)
    spec = ModelSpec(**teacher_model["spec"])
    cache = TeacherCache.from_bundle(teacher_cache)
    check_fresh(cache, expected_fingerprint(spec.identity(), dataset_index, pool))

    device = resolve_device(finetune_params.get("device", "auto"))
    loaded = create_model(spec, device=device)
    split = dataset_split(dataset_metadata, dataset_index, dataset, "train")
    data = train_data_from_cache(
        images=load_split_images(split, loaded.image_size),
        labels=torch.from_numpy(split.labels),
        class_names=class_names,
        pool=pool,
        teacher_image=cache.image_features[f"{dataset}/train"],
        description_features=cache.description_features,
        teacher_scale=cache.logit_scale,
        config=config,
    )
    state = finetune(loaded, data, config, device)
    weights = TensorBundle(
        state_dict_copy(state.model),
        {"method": config.method, "config": config.as_dict(), "teacher_fingerprint": cache.fingerprint},
    )
    history = pd.DataFrame(state.history).assign(method=config.method)
    return weights, history


def loss_curve_metrics(history: pd.DataFrame) -> dict[str, list[dict[str, float]]]:
    """The loss terms per step, in kedro-mlflow's metric-history format."""
    method = str(history["method"].iloc[0])
    terms = [column for column in ("loss", "contrastive", "regulariser") if column in history]
    return {
        f"{method}.train.{term}": [
            {"step": int(step), "value": float(value)}
            for step, value in zip(history["step"], history[term])
            if pd.notna(value)
        ]
        for term in terms
    }
