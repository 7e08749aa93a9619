"""Loss functions: FLYP's contrastive loss and the StarFT regulariser (docs/method.md).

Pure functions over tensors. Each returns a scalar tensor; callers mix them explicitly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

MASK_VALUE = -1e8  # the official code's value: large enough to zero a softmax entry, finite in fp32
RegulariserKind = Literal["star", "kl"]


def clip_contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised image and caption features of the same batch (FLYP).

    Row i of each tensor is a positive pair; every other row in the batch is a negative.
    """
    logits_per_image = logit_scale * image_features @ text_features.T
    targets = torch.arange(image_features.shape[0], device=image_features.device)
    return 0.5 * (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets))


def multi_positive_contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, positives: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE whose targets are spread over every true pair: ``positives[i, j]`` says caption j describes image i.

    Each direction's target row is uniform over that row's positives (image i over the captions that
    describe it, caption j over the images it describes), so a caption that names one concept ("a
    circle.") is not pushed away from the other circles of its batch. With ``positives`` the
    identity it equals :func:`clip_contrastive_loss`.
    """
    if positives.shape != (image_features.shape[0], text_features.shape[0]) or not positives.diagonal().all():
        raise ValueError(
            f"positives must be a boolean (images, captions) = {(image_features.shape[0], text_features.shape[0])} "
            f"matrix with every image's own caption positive, got shape {tuple(positives.shape)}"
        )
    logits_per_image = logit_scale * image_features @ text_features.T
    targets = positives.to(logits_per_image.dtype)

    def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -(target / target.sum(dim=1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()

    return 0.5 * (soft_cross_entropy(logits_per_image, targets) + soft_cross_entropy(logits_per_image.T, targets.T))


def head_cross_entropy(
    image_features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of a linear head on L2-normalised image features (FT, LP-FT), batch mean.

    Logits are ``image_features @ weight.T + bias``; a zero-shot-initialised head has
    ``weight = τ₀ · class text features`` and ``bias = 0`` (WiSE-FT's FT baseline).
    """
    return F.cross_entropy(image_features @ weight.T + bias, labels)


def same_class_mask(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (B, B) mask, True where labels[i] == labels[j] (the diagonal included)."""
    return labels[:, None] == labels[None, :]


def spuriosity_alignment_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
) -> torch.Tensor:
    """KL(softmax(T) || softmax(S)), batch mean, with same-class pairs masked out of both when labels are given.

    With labels, image i's distribution runs over the spurious texts of the *other* classes in the
    batch. A row whose every entry is masked (a batch of one class) contributes zero: both rows then
    become uniform, so their KL vanishes.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    if labels is not None:
        mask = same_class_mask(labels)
        student_logits = student_logits.masked_fill(mask, MASK_VALUE)
        teacher_logits = teacher_logits.masked_fill(mask, MASK_VALUE)
    return F.kl_div(
        F.log_softmax(student_logits, dim=-1),
        F.softmax(teacher_logits, dim=-1),
        reduction="batchmean",
    )


def star_regulariser(
    student_image: torch.Tensor,
    student_text: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    teacher_scale: torch.Tensor | float,
    labels: torch.Tensor,
    kind: RegulariserKind = "star",
) -> torch.Tensor:
    """StarReg over a batch: image i against the spurious description s_j drawn for sample j.

    ``*_image`` are (B, d) normalised image features, ``*_text`` (B, d) normalised features of the
    descriptions s_j (row j belongs to sample j). Both variants scale the teacher's and the student's
    logits by the teacher's τ₀, as the official StarReg and SpuriousKLReg do; ``star`` masks
    same-class pairs, ``kl`` does not, so the two differ by the mask alone.

    Logits and softmaxes are computed in fp32 with autocast off (the official code trains in fp32):
    under bf16 autocast the features arrive in bf16 and the result is the fp32 loss of those values.
    """
    if kind not in ("star", "kl"):
        raise ValueError(f"regulariser kind must be 'star' or 'kl', got {kind!r}")
    with torch.autocast(device_type=student_image.device.type, enabled=False):
        student_logits = teacher_scale * student_image.float() @ student_text.float().T
        teacher_logits = teacher_scale * teacher_image.float() @ teacher_text.float().T
        return spuriosity_alignment_loss(student_logits, teacher_logits, labels if kind == "star" else None)


def diminishing_weight(base_weight: float, epoch: int, num_epochs: int, diminishing: bool = True) -> float:
    """λ_e = λ · (1 − (e+1)/E) at epoch e of E (0-based), or λ when the schedule is off.

    The last epoch therefore trains with no regulariser, as in the official schedule.
    """
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    if not 0 <= epoch < num_epochs:
        raise ValueError(f"epoch must be in [0, {num_epochs}), got {epoch}")
    if not diminishing:
        return base_weight
    return base_weight * (1.0 - (epoch + 1) / num_epochs)
