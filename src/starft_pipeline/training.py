"""Fine-tuning: FLYP's contrastive loss plus the StarFT regulariser read from the teacher cache.

Setup, step and loop are separate short functions; randomness is derived from (seed, epoch, step)
so that a resumed run draws the same batches, crops and descriptions as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

import torch
import torch.nn.functional as F

from .data import normalise_images
from .descriptions import DescriptionPool
from .losses import clip_contrastive_loss, diminishing_weight, star_regulariser
from .models import LoadedModel, fill_template, logit_scale

logger = logging.getLogger(__name__)

Method = Literal["flyp", "star", "kl"]
REGULARISED_METHODS = ("star", "kl")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides a fine-tuning run's result (its fingerprint keys resumption)."""

    method: Method = "star"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 0
    reg_weight: float = 0.5
    diminishing: bool = True
    confounder_types: tuple[str, ...] = ("background",)
    caption_templates: tuple[str, ...] = ("a photo of a {c}.",)
    augment: bool = True
    crop_scale: tuple[float, float] = (0.9, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("flyp", "star", "kl"):
            raise ValueError(f"finetune method must be one of flyp, star, kl; got {self.method!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"finetune {name} must be >= 1, got {getattr(self, name)}")
        if self.reg_weight < 0:
            raise ValueError(f"finetune reg_weight (λ) must be >= 0, got {self.reg_weight}")

    @property
    def regularised(self) -> bool:
        return self.method in REGULARISED_METHODS and self.reg_weight > 0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict, exclude: Sequence[str] = ()) -> "FinetuneConfig":
        """Build from a parameters block; an unknown key is an error that names it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known - set(exclude))
        if unknown:
            raise ValueError(f"unknown finetune parameter(s) {unknown}; known: {sorted(known)}")
        values = {key: value for key, value in params.items() if key in known}
        for key in ("confounder_types", "caption_templates", "crop_scale"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass
class TrainData:
    """What the loop reads: uint8 train images, labels, and the cached teacher embeddings."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,)
    class_names: Sequence[str]
    teacher_image: torch.Tensor | None = None  # (N, d), rows aligned with images
    descriptions: DescriptionPool | None = None
    teacher_descriptions: torch.Tensor | None = None  # (P, d)
    teacher_scale: float = 100.0


@dataclass
class TrainState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    # Drop the last partial batch: a contrastive batch of 1 has no negatives.
    return max(1, n_samples // batch_size)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to the base lr, then cosine decay to zero (the official schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(model: torch.nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on gains, biases, embeddings' scale and the logit scale (as open_clip)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exclude = parameter.ndim < 2 or "logit_scale" in name or "bn" in name or "ln" in name
        (no_decay if exclude else decay).append(parameter)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )


def setup_state(loaded: LoadedModel, config: FinetuneConfig, n_samples: int, device: torch.device) -> TrainState:
    model = loaded.model.to(device).train()
    optimizer = build_optimizer(model, config)
    total = config.epochs * steps_per_epoch(n_samples, config.batch_size)
    return TrainState(model, optimizer, cosine_with_warmup(optimizer, config.warmup_steps, total))


def _generator(*seeds: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(hash(seeds) & 0x7FFF_FFFF_FFFF)
    return generator


def epoch_batches(n_samples: int, config: FinetuneConfig, epoch: int) -> list[torch.Tensor]:
    order = torch.randperm(n_samples, generator=_generator(config.seed, epoch))
    per_epoch = steps_per_epoch(n_samples, config.batch_size)
    return [order[i * config.batch_size : (i + 1) * config.batch_size] for i in range(per_epoch)]


def random_resized_crop(
    images: torch.Tensor, scale: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """Light augmentation as in the official code: a square crop of 90–100% area, resized back."""
    size = images.shape[-1]
    out = torch.empty_like(images, dtype=torch.float32)
    for index, image in enumerate(images.float()):
        area = torch.empty(1).uniform_(*scale, generator=generator).item()
        side = max(1, round(size * math.sqrt(area)))
        top = int(torch.randint(0, size - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, size - side + 1, (1,), generator=generator))
        crop = image[:, top : top + side, left : left + side]
        out[index] = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return out


def batch_pixels(
    loaded: LoadedModel, data: TrainData, indices: torch.Tensor, config: FinetuneConfig, generator: torch.Generator
) -> torch.Tensor:
    images = data.images[indices]
    if config.augment:
        images = random_resized_crop(images, config.crop_scale, generator)
    return normalise_images(images, loaded.image_mean, loaded.image_std)


def sample_descriptions(
    labels: torch.Tensor, by_class: Sequence[Sequence[int]], generator: torch.Generator
) -> torch.Tensor:
    """For each sample j, the index of a description of its class, drawn uniformly (s_j)."""
    picks = [by_class[int(label)][int(torch.randint(len(by_class[int(label)]), (1,), generator=generator))] for label in labels]
    return torch.tensor(picks, dtype=torch.int64)


def captions_for(labels: torch.Tensor, data: TrainData, config: FinetuneConfig, generator: torch.Generator) -> list[str]:
    templates = config.caption_templates
    choice = torch.randint(len(templates), (len(labels),), generator=generator)
    return [fill_template(templates[int(t)], data.class_names[int(y)]) for y, t in zip(labels, choice)]


def training_step(
    loaded: LoadedModel,
    state: TrainState,
    data: TrainData,
    indices: torch.Tensor,
    config: FinetuneConfig,
    reg_weight: float,
    device: torch.device,
) -> dict[str, float]:
    """One optimiser step: L = L_FLYP + λ_e · R, with R from cached teacher embeddings."""
    model = state.model
    generator = _generator(config.seed, state.epoch, state.step)
    labels = data.labels[indices]
    pixels = batch_pixels(loaded, data, indices, config, generator).to(device)
    captions = captions_for(labels, data, config, generator)
    regularise = config.regularised and reg_weight > 0
    if regularise:
        picks = sample_descriptions(labels, data.descriptions.indices_by_class(len(data.class_names)), generator)
        unique, inverse = torch.unique(picks, return_inverse=True)
        texts = captions + [data.descriptions.texts[int(i)] for i in unique]
    else:
        texts = captions
    # One text forward for captions and each unique description of the batch.
    text_features = F.normalize(model.encode_text(loaded.tokenizer(texts).to(device)), dim=-1)
    image_features = F.normalize(model.encode_image(pixels), dim=-1)
    caption_features = text_features[: len(captions)]
    losses = {"contrastive": clip_contrastive_loss(image_features, caption_features, logit_scale(model))}
    total = losses["contrastive"]
    if regularise:
        student_descriptions = text_features[len(captions) :][inverse]
        losses["regulariser"] = star_regulariser(
            student_image=image_features,
            student_text=student_descriptions,
            teacher_image=data.teacher_image[indices].to(device),
            teacher_text=data.teacher_descriptions[picks].to(device),
            teacher_scale=data.teacher_scale,
            labels=labels.to(device),
            kind=config.method,
            student_scale=logit_scale(model),
        )
        total = total + reg_weight * losses["regulariser"]
    state.optimizer.zero_grad(set_to_none=True)
    total.backward()
    state.optimizer.step()
    state.scheduler.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))  # CLIP's clamp of τ at 100
    record = {name: float(value.detach()) for name, value in losses.items()}
    record |= {"loss": float(total.detach()), "reg_weight": reg_weight, "lr": state.scheduler.get_last_lr()[0]}
    return record


def check_train_data(data: TrainData, config: FinetuneConfig) -> None:
    if len(data.images) < 2:
        raise ValueError("the training split has fewer than 2 images; contrastive fine-tuning needs a batch")
    if config.regularised and (data.teacher_image is None or data.descriptions is None):
        raise ValueError(f"method {config.method!r} needs the teacher cache and the descriptions")
    if config.regularised and len(data.teacher_image) != len(data.images):
        raise ValueError(
            f"teacher cache has {len(data.teacher_image)} train image features but the split has "
            f"{len(data.images)} images; rerun the teacher stage"
        )


def finetune(
    loaded: LoadedModel,
    data: TrainData,
    config: FinetuneConfig,
    device: torch.device,
    on_epoch_end: Callable[[TrainState], None] | None = None,
    state: TrainState | None = None,
) -> TrainState:
    """Run (or continue) fine-tuning; ``on_epoch_end`` is where callers checkpoint."""
    check_train_data(data, config)
    torch.manual_seed(config.seed)
    state = state or setup_state(loaded, config, len(data.images), device)
    while state.epoch < config.epochs:
        reg_weight = diminishing_weight(config.reg_weight, state.epoch, config.epochs, config.diminishing)
        started, seen = time.perf_counter(), 0
        for indices in epoch_batches(len(data.images), config, state.epoch):
            record = training_step(loaded, state, data, indices, config, reg_weight, state.model.logit_scale.device)
            state.step += 1
            seen += len(indices)
            state.history.append({"epoch": state.epoch, "step": state.step, **record})
        elapsed = time.perf_counter() - started
        logger.info(
            "%s epoch %d/%d: loss %.4f, λ_e %.3f, %.1f images/s",
            config.method, state.epoch + 1, config.epochs, state.history[-1]["loss"], reg_weight, seen / elapsed,
        )
        state.epoch += 1
        if on_epoch_end is not None:
            on_epoch_end(state)
    state.model.eval()
    return state


def train_data_from_cache(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    pool: DescriptionPool,
    teacher_image: torch.Tensor,
    description_features: torch.Tensor,
    teacher_scale: float,
    config: FinetuneConfig,
) -> TrainData:
    """Train data with the descriptions (and their cached features) of the config's confounder types."""
    positions = pool.positions_of(config.confounder_types)
    return TrainData(
        images=images,
        labels=labels,
        class_names=class_names,
        teacher_image=teacher_image,
        descriptions=pool.select(config.confounder_types),
        teacher_descriptions=description_features[positions],
        teacher_scale=teacher_scale,
    )
