"""Zero-shot predictions of a model (fine-tuned or not) on group-shift splits, and their metrics.

The zero-shot head is rebuilt from the model's *current* text encoder (docs/method.md), so a
fine-tuned model is judged exactly as the paper judges it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data import GroupSplit
from .heads import ClassifierHead
from .metrics import GroupMetrics, group_robust_metrics
from .models import LoadedModel, encode_images, zero_shot_head
from .data import normalise_images


@dataclass(frozen=True)
class EvalTask:
    """One evaluation data set: its class names, prompt templates and group layout."""

    name: str
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    n_places: int
    group_names: tuple[str, ...]
    train_group_counts: tuple[int, ...]

    @property
    def n_groups(self) -> int:
        return len(self.class_names) * self.n_places


def zero_shot_predictions(
    loaded: LoadedModel,
    images: torch.Tensor,
    task: EvalTask,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    head: ClassifierHead | None = None,
) -> np.ndarray:
    """Argmax class of each uint8 image under the model's zero-shot head for ``task``.

    A learned ``head`` (LP, FT, LP-FT; rows in ``task.class_names`` order) replaces the zero-shot head.
    """
    model = loaded.model.to(device).eval()
    pixels = normalise_images(images, loaded.image_mean, loaded.image_std)
    features = encode_images(model, pixels, batch_size=batch_size, device=device)
    if head is not None:
        return head.logits(features).argmax(dim=1).numpy()
    classes = zero_shot_head(model, loaded.tokenizer, task.class_names, task.templates, device=device).cpu()
    return (features @ classes.T).argmax(dim=1).numpy()


def split_metrics(predictions: np.ndarray, split: GroupSplit, task: EvalTask) -> GroupMetrics:
    return group_robust_metrics(
        split.labels,
        predictions,
        split.groups,
        n_groups=task.n_groups,
        train_group_counts=np.asarray(task.train_group_counts),
        n_classes=len(task.class_names),
    )


def default_group_names(class_names: Sequence[str], place_names: Sequence[str]) -> tuple[str, ...]:
    """"<class> on <place>" for g = y · n_places + place."""
    return tuple(f"{name} on {place}" for name in class_names for place in place_names)


def predictions_by_split(
    loaded: LoadedModel,
    images: Mapping[str, torch.Tensor],
    task: EvalTask,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    return {split: zero_shot_predictions(loaded, pixels, task, device) for split, pixels in images.items()}
