"""Fine-tuned models in formats other tools load: an open_clip checkpoint, its classifier, an MLflow pyfunc.

Per model, in ``data/06_models/open_clip/`` (docs/using-models.md):

- ``<method>.safetensors``: the open_clip state dict, towers only, fp32 — what
  ``open_clip.create_model_and_transforms(<architecture>, pretrained=<file>)`` loads as is (it loads
  strictly, so a learned head cannot live in the same file). ``<architecture>`` is the one the model
  was trained as, recorded in the header (``ViT-B-16-quickgelu`` for OpenAI's weights: plain
  ``ViT-B-16`` would load them into the wrong activation), with the open_clip ``pretrained_tag`` the
  teacher came from when known (its preprocessing: mean, std, resize);
- ``<method>_classifier.safetensors``: the linear classifier over L2-normalised image features for
  the fine-tuning data set's classes, tensors ``weight`` (C, d) and ``bias`` (C,), with its class
  names, prompt templates, architecture and kind in the header. ``kind: learned`` is the method's
  own head (LP, FT, LP-FT); ``kind: zero_shot`` is ``τ · class text features`` from the model's own
  text tower (what evaluation uses for the contrastive methods), bias 0.

No Kedro here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.models.clip import LoadedModel, logit_scale, open_clip_with_configs, zero_shot_head
from starft_pipeline.models.heads import ZERO_SHOT, ClassifierHead, head_for_classes, split_heads, zero_shot_linear_head

LEARNED = "learned"
CLASSIFIER_SUFFIX = "_classifier.safetensors"
#: The standalone script MLflow copies into the pyfunc model ("models from code").
PYFUNC_SCRIPT = Path(__file__).with_name("clip_pyfunc.py")
#: What the pyfunc model needs where it is loaded (it imports nothing from this project).
PYFUNC_REQUIREMENTS = ("mlflow", "open_clip_torch", "torch", "safetensors", "pillow", "pandas")


def model_names(architecture: str, pretrained_tag: str | None) -> dict[str, str]:
    """What an exported file's header says the model is: the architecture it was trained as and, when
    known, the open_clip tag of the weights it started from (whose preprocessing it expects)."""
    return {"architecture": architecture} | ({"pretrained_tag": pretrained_tag} if pretrained_tag else {})


def towers_checkpoint(weights: TensorBundle, architecture: str, pretrained_tag: str | None = None) -> TensorBundle:
    """The open_clip state dict of a weights bundle (a learned head left out), as fp32 tensors."""
    state_dict, _ = split_heads(weights.tensors, weights.metadata)
    tensors = {key: value.float() if value.is_floating_point() else value for key, value in state_dict.items()}
    metadata = model_names(architecture, pretrained_tag) | {"method": weights.metadata.get("method")}
    return TensorBundle(tensors, metadata)


def dataset_classifier(
    loaded: LoadedModel,
    heads: Mapping[str, ClassifierHead],
    class_names: Sequence[str],
    templates: Sequence[str],
    device: torch.device | str = "cpu",
) -> tuple[ClassifierHead, str]:
    """The classifier evaluation uses for these classes: a learned head that knows them, else zero-shot.

    The zero-shot head is scaled by the model's logit scale τ, so a softmax over its logits gives
    CLIP's class probabilities.
    """
    head = head_for_classes(heads, class_names)
    if head is not None:
        return head, LEARNED
    features = zero_shot_head(loaded.model.to(device), loaded.tokenizer, class_names, templates, device=device).cpu()
    scale = float(logit_scale(loaded.model).detach().cpu())
    return zero_shot_linear_head(features, scale, class_names), ZERO_SHOT


def classifier_bundle(
    head: ClassifierHead,
    kind: str,
    templates: Sequence[str],
    architecture: str,
    dataset: str,
    pretrained_tag: str | None = None,
) -> TensorBundle:
    tensors = {"weight": head.weight.detach().cpu().float(), "bias": head.bias.detach().cpu().float()}
    metadata = {
        "class_names": list(head.class_names),
        "templates": list(templates),
        "kind": kind,
        **model_names(architecture, pretrained_tag),
        "dataset": dataset,
    }
    return TensorBundle(tensors, metadata)


def read_classifier(bundle: TensorBundle, source: str = "classifier") -> ClassifierHead:
    """The head stored by :func:`classifier_bundle`."""
    missing = [key for key in ("weight", "bias") if key not in bundle.tensors]
    if missing or "class_names" not in bundle.metadata:
        raise ValueError(
            f"{source} is not a classifier file of this project (needs tensors weight, bias and class_names "
            f"in its header; lacks {missing or ['class_names']}); rerun `kedro run --pipelines=export`"
        )
    return ClassifierHead(bundle.tensors["weight"], bundle.tensors["bias"], tuple(bundle.metadata["class_names"]))


def classifier_path(checkpoint: str | os.PathLike[str]) -> Path:
    """Where the classifier of an exported checkpoint lives: ``<stem>_classifier.safetensors`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + CLASSIFIER_SUFFIX)


# --- the MLflow pyfunc model --------------------------------------------------------------------------


def _model_config_file(architecture: str, folder: Path) -> Path:
    """``<folder>/<architecture>.json``: the open_clip config, named so ``add_model_config`` registers it."""
    open_clip = open_clip_with_configs()  # the project's own architectures too
    config = open_clip.get_model_config(architecture)
    if config is None:
        raise ValueError(
            f"open_clip knows no architecture {architecture!r}; register its config with open_clip.add_model_config"
        )
    path = folder / f"{architecture}.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def _signature(class_names: Sequence[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    outputs: list[Any] = [ColSpec("string", "predicted_class"), *(ColSpec("double", name) for name in class_names)]
    # `class_names` classifies zero-shot among other classes (the outputs then name those)
    params = ParamSchema([ParamSpec("class_names", "string", [], shape=(-1,))])
    return ModelSignature(inputs=Schema([ColSpec("binary", "image")]), outputs=Schema(outputs), params=params)


def pyfunc_arguments(
    checkpoint: str | os.PathLike[str],
    classifier: str | os.PathLike[str],
    example_images: Sequence[bytes],
    config_folder: Path,
) -> dict[str, Any]:
    """Arguments of ``mlflow.pyfunc.save_model`` / ``log_model`` for an exported checkpoint and its classifier.

    Class names and architecture come from the classifier file; ``config_folder`` receives the
    architecture's JSON config (an artifact of the model, so a custom architecture loads anywhere).
    """
    import pandas as pd

    if not example_images:
        raise ValueError("the MLflow model needs at least one example image for its input example")
    bundle = TensorBundle.load(classifier)
    head = read_classifier(bundle, str(classifier))
    artifacts = {
        "checkpoint": str(checkpoint),
        "classifier": str(classifier),
        "model_config": str(_model_config_file(bundle.metadata["architecture"], config_folder)),
    }
    return {
        "python_model": str(PYFUNC_SCRIPT),
        "artifacts": artifacts,
        "signature": _signature(head.class_names),
        "input_example": pd.DataFrame({"image": list(example_images)}),
        "pip_requirements": list(PYFUNC_REQUIREMENTS),
    }


def save_pyfunc_classifier(
    path: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    classifier: str | os.PathLike[str],
    example_images: Sequence[bytes],
) -> None:
    """Write the MLflow pyfunc model of an exported checkpoint and its classifier to the folder ``path``."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        mlflow.pyfunc.save_model(
            path=str(path), **pyfunc_arguments(checkpoint, classifier, example_images, Path(folder))
        )


def example_images(paths: Sequence[str | os.PathLike[str]], count: int) -> list[bytes]:
    """The encoded bytes of the first ``count`` image files (the MLflow model's input example)."""
    return [Path(path).read_bytes() for path in list(paths)[:count]]
