"""finetune stage: one node per method, fine-tuning from the cached teacher embeddings."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import pandas as pd
import torch

from starft_pipeline.core.distributed import DistContext, broadcast_from_main, init_from_env
from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.data.dataset_index import dataset_info, dataset_split
from starft_pipeline.data.descriptions import DescriptionPool, flatten_descriptions
from starft_pipeline.data.shards import train_images_from_shards
from starft_pipeline.data.splits import GroupSplit
from starft_pipeline.data.streaming import ImageSource, train_images
from starft_pipeline.models.clip import LoadedModel, ModelSpec, create_model, resolve_device, state_dict_copy
from starft_pipeline.models.heads import (
    ZERO_SHOT,
    ClassifierHead,
    head_metadata,
    head_tensors,
    prepare_head_training,
    split_heads,
    weights_bundle,
    zero_shot_linear_head,
)
from starft_pipeline.models.teacher import TeacherCache, check_fresh, expected_fingerprint
from starft_pipeline.train.batches import TrainData
from starft_pipeline.train.checkpointing import CheckpointConfig, checkpointer_from_config
from starft_pipeline.train.finetune import FinetuneConfig, finetune, train_data_from_cache
from starft_pipeline.train.linear_probe import LinearProbeConfig, select_linear_probe
from starft_pipeline.train.teacher_modes import teacher_source

# Imported at runtime, not only for the type checker: Kedro reads node functions' type hints.
if sys.version_info >= (3, 11):
    from typing import Unpack
else:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)
RUNTIME_KEYS = ("device", "linear_probe", "checkpoint")
# Logged per step, and per epoch (at step = epoch: the summaries on each epoch's last history row).
STEP_TERMS = ("loss", "contrastive", "regulariser", "reg_weight", "cross_entropy", "images_per_s")
EPOCH_TERMS = ("epoch_loss", "epoch_time_s", "epoch_images_per_s", "peak_memory_mb")


class StageInputs(TypedDict):
    """The stage's inputs that every method's fitting node reads (keyword arguments of the nodes,
    named as the catalog's datasets; the pipeline wires them by these names)."""

    dataset_metadata: pd.DataFrame
    dataset_index: dict[str, Any]
    descriptions: dict[str, Any]
    teacher_model: dict[str, Any]
    teacher_cache: TensorBundle


def _finetune_task(inputs: StageInputs) -> tuple[str, list[str], DescriptionPool, TeacherCache]:
    """The fine-tuning data set, its class names, its description pool and the teacher cache,
    checked against the current model, prompts, descriptions and data."""
    dataset_index = inputs["dataset_index"]
    dataset = dataset_index["finetune_dataset"]
    class_names = dataset_info(dataset_index, dataset)["class_names"]
    pool = flatten_descriptions(inputs["descriptions"], class_names)
    cache = TeacherCache.from_bundle(inputs["teacher_cache"])
    spec = ModelSpec(**inputs["teacher_model"]["spec"])
    check_fresh(cache, expected_fingerprint(spec.identity(), dataset_index, pool))
    return dataset, class_names, pool, cache


def _initial_head(
    config: FinetuneConfig, cache: TeacherCache, dataset: str, class_names: list[str], linear_probe: TensorBundle | None
) -> ClassifierHead | None:
    """FT starts from the zero-shot head (τ₀ · cached class features), LP-FT from the LP head."""
    if config.head_init == ZERO_SHOT:
        return zero_shot_linear_head(cache.class_features[dataset], cache.logit_scale, class_names)
    if config.head_init == "linear_probe":
        if linear_probe is None:
            raise ValueError(
                f"method {config.method!r} starts from the linear probe's head; give the node its linear_probe"
            )
        return split_heads(linear_probe.tensors, linear_probe.metadata)[1][dataset]
    return None


def fit_linear_probe(finetune_params: dict[str, Any], **inputs: Unpack[StageInputs]) -> TensorBundle:
    """LP: logistic regression on the cached teacher image features of the train split, C chosen on val.

    Under torchrun every rank fits the same probe on its own device from the same cached features,
    so no rank waits for another in a collective meanwhile; rank 0's head is then broadcast, so the
    ranks agree to the bit even where their GPUs round differently.
    """
    config = LinearProbeConfig.from_params(finetune_params.get("linear_probe"))
    context, device = init_from_env(resolve_device(finetune_params.get("device", "auto")))
    probe = _fit_probe(inputs, config, device)
    return cast(TensorBundle, broadcast_from_main(probe, context))


def _fit_probe(inputs: StageInputs, config: LinearProbeConfig, device: torch.device) -> TensorBundle:
    dataset, class_names, _, cache = _finetune_task(inputs)
    train, val = (
        dataset_split(inputs["dataset_metadata"], inputs["dataset_index"], dataset, split) for split in ("train", "val")
    )
    head, sweep = select_linear_probe(
        cache.image_features[f"{dataset}/train"],
        torch.tensor(train.labels),
        cache.image_features.get(f"{dataset}/val"),
        torch.tensor(val.labels),
        class_names,
        config,
        device,
    )
    metadata = {"config": config.as_dict(), "sweep": sweep.to_dict("records"), "teacher_fingerprint": cache.fingerprint}
    return TensorBundle(head_tensors({dataset: head}), metadata | head_metadata({dataset: head}))


def linear_probe_weights(
    linear_probe: TensorBundle, teacher_model: dict[str, Any], finetune_params: dict[str, Any]
) -> tuple[TensorBundle, pd.DataFrame]:
    """LP's model: the teacher's towers unchanged plus the probe's head; history = the C sweep."""
    config = FinetuneConfig.from_params(finetune_params, exclude=RUNTIME_KEYS)
    loaded = create_model(ModelSpec(**teacher_model["spec"]))
    metadata = {key: value for key, value in linear_probe.metadata.items() if key != "sweep"}
    weights = TensorBundle(
        state_dict_copy(loaded.model) | linear_probe.tensors,
        metadata | {"method": config.method, "config": config.as_dict(), "linear_probe": metadata["config"]},
    )
    history = pd.DataFrame(linear_probe.metadata["sweep"]).assign(method=config.method)
    return weights, history


def _train_images(
    split: GroupSplit,
    image_size: int,
    config: FinetuneConfig,
    teacher_model: dict[str, Any],
    dataset: str,
    device: torch.device,
) -> ImageSource:
    """The train split's images: from the shards stage's folder when the teacher passed one on, else the files."""
    options = (config.data_loading, config.memory_limit_gb, config.num_workers, config.pin_memory)
    shards = teacher_model.get("shards")
    if shards is None:
        return train_images(split, image_size, *options)
    folder = Path(shards["folder"]) / dataset / "train"
    return train_images_from_shards(folder, split, image_size, *options, decode=shards["decode"], device=device)


@dataclass
class FinetuneInputs:
    """What a method's fine-tuning starts from: its config, the model on its device, the train data with its
    teacher source, and where they came from (the data set, its class names, the checked teacher cache)."""

    config: FinetuneConfig
    loaded: LoadedModel
    data: TrainData
    device: torch.device
    context: DistContext
    dataset: str
    class_names: list[str]
    cache: TeacherCache


def prepare_finetune(
    finetune_params: dict[str, Any], linear_probe: TensorBundle | None, inputs: StageInputs
) -> FinetuneInputs:
    """The config, the model (with its initial head for FT / LP-FT), the train data and the teacher source,
    on this process's device: what :func:`finetune_method` trains (and ``starft_pipeline.gradient_norms`` measures)."""
    config = FinetuneConfig.from_params(finetune_params, exclude=RUNTIME_KEYS)
    dataset, class_names, pool, cache = _finetune_task(inputs)
    spec = ModelSpec(**inputs["teacher_model"]["spec"])

    context, device = init_from_env(resolve_device(finetune_params.get("device", "auto")))
    loaded = create_model(spec, device=device)
    head = _initial_head(config, cache, dataset, class_names, linear_probe)
    if head is not None:
        prepare_head_training(loaded.model, head)
    split = dataset_split(inputs["dataset_metadata"], inputs["dataset_index"], dataset, "train")
    data = train_data_from_cache(
        images=_train_images(split, loaded.image_size, config, inputs["teacher_model"], dataset, device),
        labels=torch.from_numpy(split.labels),
        class_names=class_names,
        pool=pool,
        teacher_image=cache.image_features[f"{dataset}/train"],
        description_features=cache.description_features,
        teacher_scale=cache.logit_scale,
        config=config,
    )
    # online / cached_views: the frozen zero-shot model, created from the teacher stage's spec.
    data.teacher = teacher_source(
        config, lambda: create_model(spec, device=device), data.images, cache.fingerprint, device, write=context.is_main
    )
    return FinetuneInputs(config, loaded, data, device, context, dataset, class_names, cache)


def finetune_method(
    finetune_params: dict[str, Any],
    linear_probe: TensorBundle | None = None,
    **inputs: Unpack[StageInputs],
) -> tuple[TensorBundle, pd.DataFrame]:
    """Fine-tune the teacher's model with one method; returns its weights and loss history.

    FT and LP-FT train the image tower and a head (from the zero-shot or the LP head), text tower frozen.
    """
    run = prepare_finetune(finetune_params, linear_probe, inputs)
    config = run.config
    checkpoints = checkpointer_from_config(
        CheckpointConfig.from_params(finetune_params.get("checkpoint")),
        config.method,
        identity={"teacher_cache": run.cache.fingerprint, "dataset": run.dataset},
    )
    state = finetune(run.loaded, run.data, config, run.device, checkpoints=checkpoints, context=run.context)
    weights = weights_bundle(
        state_dict_copy(state.model),
        run.dataset,
        run.class_names,
        {"method": config.method, "config": config.as_dict(), "teacher_fingerprint": run.cache.fingerprint},
    )
    history = pd.DataFrame(state.history).assign(method=config.method)
    return weights, history


def loss_curve_metrics(history: pd.DataFrame) -> dict[str, list[dict[str, float]]]:
    """Loss terms and images/s per step, and the per-epoch summaries (step = epoch), in kedro-mlflow's
    metric-history format."""
    method = str(history["method"].iloc[0])
    series = [(term, "step") for term in STEP_TERMS if term in history]
    series += [(term, "epoch") for term in EPOCH_TERMS if term in history]
    return {
        f"{method}.train.{term}": [
            {"step": int(index), "value": float(value)}
            for index, value in zip(history[index_column], history[term])
            if pd.notna(value)
        ]
        for term, index_column in series
    }
