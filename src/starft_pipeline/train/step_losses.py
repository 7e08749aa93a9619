"""Each method's step loss: what one (micro-)batch of a method's training step minimises.

A method's row names its kind of loss (``methods.MethodSpec.loss``); :data:`LOSS_FUNCTIONS` maps the
kind to its function, which gets the :class:`~starft_pipeline.train.batches.StepBatch` and returns the
total and its named parts. The pure losses are in ``losses``; the teacher's features in ``teacher_modes``.
No Kedro here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from starft_pipeline.models.clip import logit_scale
from starft_pipeline.models.heads import HEAD_MODULE
from starft_pipeline.train.batches import StepBatch, draw_captions, draw_descriptions
from starft_pipeline.train.engine import to_device
from starft_pipeline.train.losses import clip_contrastive_loss, head_cross_entropy, star_regulariser
from starft_pipeline.train.methods import StepLoss, method_spec
from starft_pipeline.train.teacher_modes import source_of

Losses = tuple[torch.Tensor, dict[str, torch.Tensor]]  # the total, and its named parts


def contrastive_losses(batch: StepBatch) -> Losses:
    """FLYP, StarFT and kl: L = L_FLYP + λ_e · R, the teacher's features from ``data.teacher`` (teacher_modes).

    Draws cover the whole batch; this process encodes ``rows.local``, the losses run over the
    gathered ``rows.gathered``.
    """
    data, model, rows, device = batch.data, batch.model, batch.rows, batch.device
    labels = data.labels[batch.indices]
    teacher = source_of(data).begin(batch)  # the student's pixels, and the teacher's features of them
    pixels = teacher.pixels
    table = batch.text_table()
    text_rows = [draw_captions(labels, table, batch.generator)[rows.local]]
    regularise = batch.config.regularised and batch.reg_weight > 0
    if regularise:
        picks = draw_descriptions(labels, table.descriptions_of_class, table.descriptions_per_class, batch.generator)
        text_rows.append(table.description_rows[picks[rows.local]])
    # One text forward for each distinct caption and description of the batch (rows of the table).
    text_features = F.normalize(model.encode_rows(table.tokens, table.lengths, torch.cat(text_rows)), dim=-1)
    image_features = rows.gather(F.normalize(model.encode_image(pixels), dim=-1))
    n_local = len(rows.local)
    caption_features = rows.gather(text_features[:n_local])
    losses = {"contrastive": clip_contrastive_loss(image_features, caption_features, logit_scale(model))}
    total = losses["contrastive"]
    if regularise:
        student_descriptions = rows.gather(text_features[n_local:])
        gathered = rows.gathered
        teacher_features = teacher.features(picks)
        losses["regulariser"] = star_regulariser(
            student_image=image_features,
            student_text=student_descriptions,
            teacher_image=teacher_features.image,
            teacher_text=teacher_features.text,
            teacher_scale=data.teacher_scale,
            labels=to_device(labels[gathered], device),
            kind=batch.config.regulariser,
        )
        total = total + batch.reg_weight * losses["regulariser"]
    return total, losses


def classification_losses(batch: StepBatch) -> Losses:
    """FT and LP-FT: cross-entropy of the learned head on normalised image features (text tower frozen)."""
    head = getattr(batch.model, HEAD_MODULE, None)
    if head is None:
        raise ValueError(f"method {batch.config.method!r} trains a head: call heads.attach_head on the model first")
    rows = batch.rows
    image_features = rows.gather(F.normalize(batch.model.encode_image(batch.local_pixels()), dim=-1))
    labels = to_device(batch.data.labels[batch.indices[rows.gathered]], batch.device)
    loss = head_cross_entropy(image_features, head.weight, head.bias, labels)
    return loss, {"cross_entropy": loss}


#: The function of each kind of step loss (a method's row names its kind: methods.MethodSpec.loss).
LOSS_FUNCTIONS: dict[StepLoss, Callable[[StepBatch], Losses]] = {
    "contrastive": contrastive_losses,
    "cross_entropy": classification_losses,
}


def step_losses(method: str) -> Callable[[StepBatch], Losses]:
    loss = method_spec(method).loss
    if loss is None:
        raise ValueError(
            f"method {method!r} has no fine-tuning loop (LP only fits a head: linear_probe.select_linear_probe)"
        )
    return LOSS_FUNCTIONS[loss]
