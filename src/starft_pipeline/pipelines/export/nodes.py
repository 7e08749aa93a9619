"""export stage: each fine-tuned model as an open_clip checkpoint, its classifier, and an MLflow pyfunc model."""

from __future__ import annotations

from typing import Any

import pandas as pd

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.data.dataset_index import dataset_split, eval_task
from starft_pipeline.models.clip import ModelSpec, create_model, load_state_dict, resolve_device
from starft_pipeline.models.export import classifier_bundle, dataset_classifier, example_images, towers_checkpoint
from starft_pipeline.models.heads import split_heads

EXAMPLE_SPLITS = ("val", "test", "train")


def export_open_clip(
    weights: TensorBundle, dataset_index: dict[str, Any], teacher_model: dict[str, Any], export: dict[str, Any]
) -> tuple[TensorBundle, TensorBundle]:
    """The open_clip checkpoint (towers) and the fine-tuning data set's classifier of one model."""
    teacher = ModelSpec(**teacher_model["spec"])
    architecture = teacher.architecture  # what the model was trained as, e.g. ViT-B-16-quickgelu
    state_dict, heads = split_heads(weights.tensors, weights.metadata)
    device = resolve_device(export.get("device", "auto"))
    loaded = create_model(ModelSpec(architecture), device=device, weights_follow=True)  # replaced next
    load_state_dict(loaded.model, state_dict, source=f"the weights of {weights.metadata.get('method')!r}")
    task = eval_task(dataset_index, dataset_index["finetune_dataset"])
    head, kind = dataset_classifier(loaded, heads, task.class_names, task.templates, device)
    return towers_checkpoint(weights, architecture, teacher.tag()), classifier_bundle(
        head, kind, task.templates, architecture, task.name, teacher.tag()
    )


def mlflow_input_example(
    open_clip_classifier: TensorBundle,
    dataset_metadata: pd.DataFrame,
    dataset_index: dict[str, Any],
    export: dict[str, Any],
) -> list[bytes]:
    """A few images of the classifier's data set (encoded files): the MLflow model's input example.

    Takes the classifier as input so that the exported files exist before the model is logged.
    """
    dataset = open_clip_classifier.metadata["dataset"]
    for split_name in EXAMPLE_SPLITS:
        split = dataset_split(dataset_metadata, dataset_index, dataset, split_name)
        if len(split):
            return example_images(split.paths, int(export.get("example_images", 2)))
    raise ValueError(f"data set {dataset!r} has no images for the MLflow model's input example")
