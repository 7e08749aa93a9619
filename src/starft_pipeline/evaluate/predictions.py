"""Zero-shot predictions of a model (fine-tuned or not) on group-shift splits, and their metrics.

The zero-shot head is rebuilt from the model's *current* text encoder (docs/method.md), so a
fine-tuned model is judged exactly as the paper judges it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from starft_pipeline.core.distributed import SINGLE_PROCESS, DistContext, all_gather_rows, shard_rows
from starft_pipeline.core.progress import Progress
from starft_pipeline.data.shards import Decode, shard_batches
from starft_pipeline.data.splits import GroupSplit, normalise_images
from starft_pipeline.data.streaming import RowOptions, split_batches
from starft_pipeline.data.tasks import EvalTask
from starft_pipeline.evaluate.metrics import GroupMetrics, group_robust_metrics
from starft_pipeline.models.clip import LoadedModel, encode_images, zero_shot_head
from starft_pipeline.models.heads import ClassifierHead, head_for_classes

if TYPE_CHECKING:
    import open_clip


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


def predictions_by_split(
    loaded: LoadedModel,
    images: Mapping[str, torch.Tensor],
    task: EvalTask,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    return {split: zero_shot_predictions(loaded, pixels, task, device) for split, pixels in images.items()}


# --------------------------------------------------------------------------- one pass, every model


@dataclass(frozen=True)
class ModelUnderTest:
    """One model of a one-pass evaluation: ``key`` names its predictions, ``heads`` are its learned
    heads by data set (none: zero-shot everywhere), ``splits`` the split names it is evaluated on."""

    key: str
    model: open_clip.CLIP
    heads: Mapping[str, ClassifierHead] = field(default_factory=dict)
    splits: tuple[str, ...] = ()


@dataclass(frozen=True)
class SplitToEvaluate:
    dataset: str
    split_name: str
    split: GroupSplit
    task: EvalTask


@dataclass(frozen=True)
class PassSettings:
    """How the pass runs: batch size, DataLoader workers, device and this process's rank."""

    device: torch.device = torch.device("cpu")
    batch_size: int = 256
    num_workers: int = 0
    context: DistContext = SINGLE_PROCESS
    shards: str | None = None  # the shards stage's folder: read ``<shards>/<dataset>/<split>`` (None: the files)
    decode: Decode = "cpu"  # with shards: cpu (loader workers) | gpu (torchvision on CUDA)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 on CUDA (the GPU's fast path; argmax is robust to it), exact fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Classifiers:
    """Each model's classifier for a task: its learned head if it knows the classes, else its
    zero-shot head, built once per (model, class names, templates) and shared by every split."""

    def __init__(self, base: LoadedModel, device: torch.device) -> None:
        self.base, self.device = base, device
        self._zero_shot: dict[tuple[str, tuple[str, ...], tuple[str, ...]], torch.Tensor] = {}

    def __call__(self, entry: ModelUnderTest, task: EvalTask) -> ClassifierHead | torch.Tensor:
        learned = head_for_classes(entry.heads, task.class_names)
        if learned is not None:
            return learned
        key = (entry.key, task.class_names, task.templates)
        if key not in self._zero_shot:
            with torch.no_grad(), _autocast(self.device):
                self._zero_shot[key] = zero_shot_head(
                    entry.model, self.base.tokenizer, task.class_names, task.templates, device=self.device
                ).float()
        return self._zero_shot[key]


def _predict(features: torch.Tensor, classifier: ClassifierHead | torch.Tensor) -> torch.Tensor:
    if isinstance(classifier, ClassifierHead):
        return classifier.logits(features).argmax(dim=1)
    return (features @ classifier.T).argmax(dim=1)


def _local_predictions(
    base: LoadedModel,
    entries: Sequence[ModelUnderTest],
    target: SplitToEvaluate,
    classifiers: _Classifiers,
    settings: PassSettings,
) -> dict[str, torch.Tensor]:
    """This rank's rows of ``target``: each image decoded once, then classified by every model."""
    rows = shard_rows(len(target.split), settings.context)
    heads = {entry.key: classifiers(entry, target.task) for entry in entries}
    predictions = {entry.key: torch.empty(len(rows), dtype=torch.int64) for entry in entries}
    options: RowOptions = {
        "num_workers": settings.num_workers,
        "pin_memory": settings.device.type == "cuda",
        "rows": rows,
    }
    batches = (
        split_batches(target.split, base.image_size, settings.batch_size, **options)
        if settings.shards is None
        else shard_batches(
            Path(settings.shards) / target.dataset / target.split_name,
            target.split,
            base.image_size,
            settings.batch_size,
            decode=settings.decode,
            device=settings.device,
            **options,
        )
    )
    description = f"evaluation {target.dataset}/{target.split_name}, {len(entries)} model(s)"
    with Progress(len(rows), description, settings.context.is_main, unit="images") as bar:
        for images, index in batches:
            pixels = normalise_images(images.to(settings.device, non_blocking=True), base.image_mean, base.image_std)
            positions = index - rows.start
            for entry in entries:
                with torch.no_grad(), _autocast(settings.device):
                    features = F.normalize(entry.model.encode_image(pixels).float(), dim=-1)
                predictions[entry.key][positions] = _predict(features, heads[entry.key]).cpu()
            bar.update(len(index))
    return predictions


def one_pass_predictions(
    base: LoadedModel,
    entries: Sequence[ModelUnderTest],
    targets: Sequence[SplitToEvaluate],
    settings: PassSettings = PassSettings(),
) -> dict[tuple[str, str, str], np.ndarray]:
    """Predictions of every model on every split it lists, keyed ``(model key, dataset, split name)``.

    Each split is decoded once (batches from DataLoader workers); every model classifies each batch
    while it is in memory. Under torchrun each rank decodes its shard of rows and the predictions are
    gathered, in row order, on every rank. ``base`` supplies the tokenizer and the image pre-processing.
    """
    keys = [entry.key for entry in entries]
    if len(set(keys)) != len(keys):
        raise ValueError(f"the models to evaluate need distinct keys; got {keys}")
    for entry in entries:
        entry.model.to(settings.device).eval()
    classifiers = _Classifiers(base, settings.device)
    results = {}
    for target in targets:
        needed = [entry for entry in entries if target.split_name in entry.splits]
        if not needed or not len(target.split):
            continue
        local = _local_predictions(base, needed, target, classifiers, settings)
        for key, part in local.items():
            results[(key, target.dataset, target.split_name)] = all_gather_rows(part, settings.context).numpy()
    return results
