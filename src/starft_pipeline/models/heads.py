"""Linear classification heads on L2-normalised image features: learned (LP, FT, LP-FT) or zero-shot.

A head maps normalised image features f (N, d) to logits ``f · Wᵀ + b``. The zero-shot head of a
data set is ``W = τ₀ · (class text features)``, ``b = 0`` (WiSE-FT's initialisation of FT); LP's
head is a logistic regression's coefficients. In a weights bundle a head is stored as the tensors
``head/<dataset>/weight`` and ``head/<dataset>/bias``, with its class names in the bundle metadata
under ``head_classes``. No Kedro here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from starft_pipeline.core.tensor_bundle import TensorBundle

#: The zero-shot model's name (results, predictions, the study) and its head's kind (exported classifiers, head_init).
ZERO_SHOT = "zero_shot"
HEAD_PREFIX = "head/"
HEAD_MODULE = "classification_head"  # the attribute a head lives under while it is trained


@dataclass(frozen=True)
class ClassifierHead:
    """``weight`` (C, d) and ``bias`` (C,) over normalised features, row c for ``class_names[c]``."""

    weight: torch.Tensor
    bias: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n_classes = len(self.class_names)
        if self.weight.ndim != 2 or self.weight.shape[0] != n_classes or self.bias.shape != (n_classes,):
            raise ValueError(
                f"a head for {n_classes} classes needs weight (C, d) and bias (C,) with C = {n_classes}; "
                f"got weight {tuple(self.weight.shape)} and bias {tuple(self.bias.shape)}"
            )

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of normalised ``features`` (N, d)."""
        weight = self.weight.to(features.device, features.dtype)
        return features @ weight.T + self.bias.to(features.device, features.dtype)

    def restrict(self, class_names: Sequence[str]) -> ClassifierHead:
        """The rows of ``class_names``, in that order (e.g. ImageNet-R's 200 of ImageNet's 1000 classes)."""
        position = {name: row for row, name in enumerate(self.class_names)}
        missing = [name for name in class_names if name not in position]
        if missing:
            raise KeyError(f"the head has no class(es) {missing[:5]}; its classes are {list(self.class_names)[:10]}")
        rows = torch.tensor([position[name] for name in class_names], dtype=torch.int64)
        return ClassifierHead(self.weight[rows], self.bias[rows], tuple(class_names))


def zero_shot_linear_head(class_features: torch.Tensor, scale: float, class_names: Sequence[str]) -> ClassifierHead:
    """The zero-shot classifier as a linear head: ``τ₀ · class features``, zero bias."""
    weight = float(scale) * class_features.float()
    return ClassifierHead(weight, torch.zeros(weight.shape[0]), tuple(class_names))


def head_for_classes(heads: Mapping[str, ClassifierHead], class_names: Sequence[str]) -> ClassifierHead | None:
    """A learned head that knows every class of an evaluation task (restricted to them), else ``None``.

    The fine-tuned data set itself and its shifts (ImageNet-V2, -Sketch, -R …) are classified with
    the learned head; a data set with other classes (Waterbirds after ImageNet) falls back to the
    zero-shot head built from the model's text tower.
    """
    for head in heads.values():
        if set(class_names) <= set(head.class_names):
            return head.restrict(class_names)
    return None


def head_tensors(heads: Mapping[str, ClassifierHead]) -> dict[str, torch.Tensor]:
    """The bundle tensors of ``heads`` keyed by data set."""
    tensors = {}
    for dataset, head in heads.items():
        tensors[f"{HEAD_PREFIX}{dataset}/weight"] = head.weight.detach().cpu().float().contiguous()
        tensors[f"{HEAD_PREFIX}{dataset}/bias"] = head.bias.detach().cpu().float().contiguous()
    return tensors


def head_metadata(heads: Mapping[str, ClassifierHead]) -> dict[str, Any]:
    return {"head_classes": {dataset: list(head.class_names) for dataset, head in heads.items()}}


def split_heads(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, ClassifierHead]]:
    """A weights bundle's model state dict (towers) and its learned heads by data set."""
    state_dict = {key: value for key, value in tensors.items() if not key.startswith(HEAD_PREFIX)}
    classes = metadata.get("head_classes", {})
    heads = {}
    for dataset, names in classes.items():
        weight, bias = (tensors.get(f"{HEAD_PREFIX}{dataset}/{part}") for part in ("weight", "bias"))
        if weight is None or bias is None:
            raise ValueError(f"weights bundle lists a head for {dataset!r} but lacks its weight or bias tensor")
        heads[dataset] = ClassifierHead(weight, bias, tuple(names))
    return state_dict, heads


def attach_head(model: nn.Module, head: ClassifierHead) -> None:
    """Give ``model`` a trainable copy of ``head`` as ``model.classification_head`` (an ``nn.Linear``)."""
    n_classes, dim = head.weight.shape
    device = next(model.parameters()).device
    linear = nn.Linear(dim, n_classes).to(device)
    with torch.no_grad():
        linear.weight.copy_(head.weight)
        linear.bias.copy_(head.bias)
    setattr(model, HEAD_MODULE, linear)


def detach_head(
    state_dict: Mapping[str, torch.Tensor], class_names: Sequence[str]
) -> tuple[dict[str, torch.Tensor], ClassifierHead]:
    """Split a trained model's state dict into the towers' state dict and the head it carried."""
    prefix = f"{HEAD_MODULE}."
    towers = {key: value for key, value in state_dict.items() if not key.startswith(prefix)}
    if f"{prefix}weight" not in state_dict:
        raise KeyError(f"the model carries no {HEAD_MODULE}; attach_head before training a head method")
    return towers, ClassifierHead(state_dict[f"{prefix}weight"], state_dict[f"{prefix}bias"], tuple(class_names))


def freeze_text_tower(model: nn.Module) -> None:
    """Freeze everything but the image tower and the head (text tower, token embedding, logit scale)."""
    for name, parameter in model.named_parameters():
        if not name.startswith(("visual.", f"{HEAD_MODULE}.")):
            parameter.requires_grad_(False)


def prepare_head_training(model: nn.Module, head: ClassifierHead) -> None:
    """FT / LP-FT set-up: the image tower and a trainable copy of ``head`` learn; the text tower is frozen."""
    attach_head(model, head)
    freeze_text_tower(model)


def weights_bundle(
    state_dict: Mapping[str, torch.Tensor], dataset: str, class_names: Sequence[str], metadata: Mapping[str, Any]
) -> TensorBundle:
    """A trained model's weights bundle; a head it carries is stored as ``head/<dataset>``."""
    if f"{HEAD_MODULE}.weight" not in state_dict:
        return TensorBundle(dict(state_dict), dict(metadata))
    towers, head = detach_head(state_dict, class_names)
    heads = {dataset: head}
    return TensorBundle(towers | head_tensors(heads), {**metadata, **head_metadata(heads)})
