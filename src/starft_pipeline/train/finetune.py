"""Fine-tuning: FLYP's contrastive loss plus the StarFT regulariser read from the teacher cache.

Setup, step and loop are separate short functions; randomness is derived from (seed, epoch, step)
so that a resumed run draws the same batches, crops and descriptions as an uninterrupted one.
A step's random draws (crops, captions, descriptions) are made for its whole batch, so they do not
depend on how the batch is split into micro-batches (``grad_accum_steps``) or over DDP ranks; the
losses are computed over the gathered batch (``distributed``). Precision, compile, DDP and meters
live in ``engine``, checkpoints in ``checkpointing``, streamed images in ``streaming``.

The step is lean on the host: every caption (template × class) and every description is tokenised
once (:class:`TextTable`, cached on the train data), a batch's draws are made in a few vectorised
calls, crops are one gather over the whole batch on the device, and nothing in the step reads a
device value back (losses are read when the history is written, :data:`LOG_EVERY`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import torch
import torch.nn.functional as F

from starft_pipeline.core.configs import bounded, check_crop_ratio, check_crop_scale, check_fields, config_from_params
from starft_pipeline.core.distributed import SINGLE_PROCESS, BatchRows, DistContext, current_context, micro_batch_rows
from starft_pipeline.core.precision import PRECISIONS, Precision
from starft_pipeline.data.descriptions import DescriptionPool
from starft_pipeline.data.splits import normalise_images
from starft_pipeline.data.streaming import DATA_LOADING, DataLoading, ImageSource, epoch_steps
from starft_pipeline.data.tasks import fill_template
from starft_pipeline.models.clip import LoadedModel, logit_scale
from starft_pipeline.models.heads import HEAD_MODULE
from starft_pipeline.train.augment import SQUARE, apply_crops, crop_boxes
from starft_pipeline.train.checkpointing import Checkpointer
from starft_pipeline.train.engine import (
    Encoders,
    EpochMeter,
    accumulate_gradients,
    compile_towers,
    configure_tf32,
    progress_bar,
    to_device,
    token_lengths,
)
from starft_pipeline.train.losses import (
    RegulariserKind,
    clip_contrastive_loss,
    diminishing_weight,
    head_cross_entropy,
    star_regulariser,
)

if TYPE_CHECKING:
    import open_clip

logger = logging.getLogger(__name__)

Method = Literal["lp", "ft", "lp_ft", "flyp", "star", "kl"]
METHODS: tuple[str, ...] = ("lp", "ft", "lp_ft", "flyp", "star", "kl")
REGULARISED_METHODS = ("star", "kl")
#: Where StarFT's teacher features come from: the cache, the frozen model every step, or K cached crops (teacher_modes).
TeacherMode = Literal["cached", "online", "cached_views"]
TEACHER_MODES: tuple[str, ...] = ("cached", "online", "cached_views")
# Methods that classify with a learned linear head, and where that head starts from.
HEAD_INIT: dict[str, str] = {"lp": "linear_probe", "ft": "zero_shot", "lp_ft": "linear_probe"}
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of τ


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides a fine-tuning run's result (its fingerprint keys resumption)."""

    method: Method = "star"
    epochs: int = bounded(3, ge=1)
    batch_size: int = bounded(128, ge=1)
    lr: float = bounded(1e-5, gt=0)
    weight_decay: float = bounded(0.1, ge=0)
    warmup_steps: int = bounded(0, ge=0)
    reg_weight: float = bounded(0.5, ge=0)  # λ
    # τ₀, the logit scale of the regulariser's softmaxes: None takes the teacher's own learnt scale
    # (CLIP's is saturated at 100); a number fixes it, e.g. for a teacher whose scale never grew.
    reg_logit_scale: float | None = bounded(None, gt=0)
    diminishing: bool = True
    confounder_types: tuple[str, ...] = ("background",)
    caption_templates: tuple[str, ...] = ("a photo of a {c}.",)
    augment: bool = True
    crop_scale: tuple[float, float] = bounded((0.9, 1.0), check=check_crop_scale)
    crop_ratio: tuple[float, float] = bounded(SQUARE, check=check_crop_ratio)  # width / height; official: 3/4–4/3
    seed: int = bounded(0, ge=0)
    teacher_mode: TeacherMode = (
        "cached"  # star/kl: the teacher's features: cached | online | cached_views (teacher_modes)
    )
    teacher_views: int = bounded(4, ge=1)  # cached_views: K recorded crops per training image
    # GPU and scale (engine, distributed, streaming). The last six leave the result unchanged.
    precision: Precision = "auto"  # bf16 on CUDA, fp32 on the CPU; bf16: autocast (losses in fp32)
    tf32: bool = True  # TF32 matmuls and convolutions on CUDA (what stays fp32 under autocast)
    grad_accum_steps: int = bounded(1, ge=1)  # micro-batches per step; the contrastive loss then sees micro-batches
    compile: bool = False  # torch.compile the towers
    data_loading: DataLoading = "auto"  # memory | stream | auto (stream above memory_limit_gb)
    memory_limit_gb: float = bounded(4.0, gt=0)
    num_workers: int = bounded(0, ge=0)
    pin_memory: bool = True
    progress: bool = True  # tqdm bars (shown only on a terminal, on rank 0)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"finetune method must be one of {', '.join(METHODS)}; got {self.method!r}")
        check_fields(self, "finetune ")
        self._check_teacher_mode()
        self._check_scale_options()

    def _check_teacher_mode(self) -> None:
        if self.teacher_mode not in TEACHER_MODES:
            raise ValueError(
                f"finetune teacher_mode must be one of {', '.join(TEACHER_MODES)}; got {self.teacher_mode!r}"
            )
        if self.teacher_mode != "cached" and self.method not in REGULARISED_METHODS:
            raise ValueError(
                f"finetune teacher_mode {self.teacher_mode!r} only applies to the StarFT methods "
                f"({', '.join(REGULARISED_METHODS)}); method {self.method!r} has no teacher: remove the key"
            )
        if self.teacher_mode == "cached_views" and not self.augment:
            raise ValueError(
                "finetune teacher_mode cached_views needs augment: true (without crops use teacher_mode: cached)"
            )

    def _check_scale_options(self) -> None:
        choices = {"precision": PRECISIONS, "data_loading": DATA_LOADING}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"finetune {name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("compile", "pin_memory", "progress", "tf32"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"finetune {name} must be true or false, got {getattr(self, name)!r}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"finetune grad_accum_steps must be >= 1 and divide batch_size ({self.batch_size}); "
                f"got {self.grad_accum_steps}"
            )

    def result_dict(self) -> dict:
        """The fields that decide the trained weights (what a checkpoint's fingerprint covers)."""
        return {key: value for key, value in asdict(self).items() if key not in RESULT_NEUTRAL_FIELDS}

    @property
    def regularised(self) -> bool:
        return self.method in REGULARISED_METHODS and self.reg_weight > 0

    @property
    def regulariser(self) -> RegulariserKind:
        """The regulariser of a method of ``REGULARISED_METHODS`` (its own name)."""
        if self.method == "star" or self.method == "kl":
            return self.method
        raise ValueError(f"finetune method {self.method!r} has no regulariser")

    @property
    def head_init(self) -> str | None:
        """Where a head method's head starts (``zero_shot`` or ``linear_probe``); None for contrastive methods."""
        return HEAD_INIT.get(self.method)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict, exclude: Sequence[str] = ()) -> FinetuneConfig:
        """Build from a parameters block; an unknown key is an error that names it."""
        return config_from_params(cls, params, "finetune", exclude)


RESULT_NEUTRAL_FIELDS = ("compile", "data_loading", "memory_limit_gb", "num_workers", "pin_memory", "progress")


@dataclass
class TrainData:
    """What the loop reads: uint8 train images, labels, and the cached teacher embeddings."""

    images: ImageSource  # (N, 3, S, S) uint8 tensor, or streamed from disk (streaming.StreamedImages)
    labels: torch.Tensor  # (N,)
    class_names: Sequence[str]
    teacher_image: torch.Tensor | None = None  # (N, d), rows aligned with images
    descriptions: DescriptionPool | None = None
    teacher_descriptions: torch.Tensor | None = None  # (P, d)
    teacher_scale: float = 100.0
    teacher: TeacherSource | None = None  # where the teacher features come from (teacher_modes); None: the cache
    text_tables: dict = field(default_factory=dict, repr=False, compare=False)  # built once (text_table)


@dataclass
class TrainState:
    """The model (its raw module: checkpoints and weights come from it) and what the loop advances.

    ``encoders`` is what the loss functions call (autocast, DDP); ``context`` this process's rank.
    """

    model: open_clip.CLIP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0
    step: int = 0
    # a step's losses stay device tensors until read_records turns them into floats (LOG_EVERY, epoch end)
    history: list[dict[str, float | torch.Tensor]] = field(default_factory=list)
    encoders: Encoders | None = None
    context: DistContext = SINGLE_PROCESS

    def __post_init__(self) -> None:
        if self.encoders is None:
            self.encoders = Encoders(self.model, self.model.logit_scale.device)


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    # Drop the last partial batch: a contrastive batch of 1 has no negatives.
    return max(1, n_samples // batch_size)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The lr factor of ``step``: linear warm-up to 1, then cosine decay to zero at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr, then cosine decay to zero (the official schedule)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps))


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; no weight decay on gains, biases, embeddings' scale and the logit scale (as open_clip)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exclude = parameter.ndim < 2 or "logit_scale" in name or "bn" in name or "ln" in name
        (no_decay if exclude else decay).append(parameter)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def build_optimizer(model: torch.nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    return adamw(model, config.lr, config.weight_decay)


def optimizer_step(
    model: open_clip.CLIP, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> float:
    """Apply the gradients, advance the schedule and clamp τ at CLIP's 100; returns the step's lr."""
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
    return float(scheduler.get_last_lr()[0])


def setup_state(
    loaded: LoadedModel,
    config: FinetuneConfig,
    n_samples: int,
    device: torch.device,
    context: DistContext = SINGLE_PROCESS,
) -> TrainState:
    """Model on ``device`` in train mode (towers compiled if asked), AdamW, the schedule, the encoders."""
    model = loaded.model.to(device).train()
    configure_tf32(device, config.tf32)
    if config.compile:
        logger.info("torch.compile: %s", ", ".join(compile_towers(model)))
    optimizer = build_optimizer(model, config)
    total = config.epochs * steps_per_epoch(n_samples, config.batch_size)
    scheduler = cosine_with_warmup(optimizer, config.warmup_steps, total)
    encoders = Encoders(model, device, config.precision, context)
    return TrainState(model, optimizer, scheduler, encoders=encoders, context=context)


def seeded_generator(*seeds: int) -> torch.Generator:
    """A CPU generator seeded from ``seeds`` (e.g. seed, epoch, step): the same draws on every run."""
    generator = torch.Generator()
    generator.manual_seed(hash(seeds) & 0x7FFF_FFFF_FFFF)
    return generator


def epoch_batches(n_samples: int, config: FinetuneConfig, epoch: int) -> list[torch.Tensor]:
    order = torch.randperm(n_samples, generator=seeded_generator(config.seed, epoch))
    per_epoch = steps_per_epoch(n_samples, config.batch_size)
    return [order[i * config.batch_size : (i + 1) * config.batch_size] for i in range(per_epoch)]


class CropSettings(Protocol):
    """What the crops read of a config (FinetuneConfig, pretraining's PretrainConfig)."""

    @property
    def augment(self) -> bool: ...

    @property
    def crop_scale(self) -> tuple[float, float]: ...

    @property
    def crop_ratio(self) -> tuple[float, float]: ...


def batch_pixels(
    loaded: LoadedModel,
    images: ImageSource,
    indices: torch.Tensor,
    config: CropSettings,
    generator: torch.Generator,
    rows: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Normalised pixels of the batch's ``rows`` (all by default), augmented and normalised on ``device``.

    Crops are drawn for the whole batch, so a row's crop does not depend on which rows are asked for.
    """
    rows = torch.arange(len(indices)) if rows is None else rows
    pixels = images[indices[rows]]
    if device is not None:
        pixels = to_device(pixels, device)
    if config.augment:
        boxes = crop_boxes(len(indices), pixels.shape[-1], config.crop_scale, generator, config.crop_ratio)
        pixels = apply_crops(pixels, boxes[rows])
    return normalise_images(pixels, loaded.image_mean, loaded.image_std)


@dataclass(frozen=True)
class TextTable:
    """Every text a step can draw, tokenised once: the captions (class × template) and the descriptions.

    ``tokens`` lives on the training device; ``lengths`` (host) are the columns each row needs, so a
    batch is trimmed to its longest text without reading the device (``Encoders.encode_rows``).
    """

    tokenizer: object  # what tokenised it (the cache key holds its id; keeping it keeps the id unique)
    tokens: torch.Tensor  # (R, context)
    lengths: torch.Tensor  # (R,)
    caption_rows: torch.Tensor  # (n_classes, n_templates): row of each caption
    description_rows: torch.Tensor  # (P,): row of each description of the pool
    descriptions_of_class: torch.Tensor  # (n_classes, most per class): pool indices, padded with 0
    descriptions_per_class: torch.Tensor  # (n_classes,)


def descriptions_by_class(by_class: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The pool indices of each class as a padded (n_classes, most) table, and each class's count."""
    counts = torch.tensor([len(members) for members in by_class], dtype=torch.int64)
    table = torch.zeros(len(by_class), max([1, *counts.tolist()]), dtype=torch.int64)
    for label, members in enumerate(by_class):
        table[label, : len(members)] = torch.tensor(members, dtype=torch.int64)
    return table, counts


def build_text_table(loaded: LoadedModel, data: TrainData, templates: Sequence[str], device: torch.device) -> TextTable:
    """Tokenise every caption and description once (a text that is both gets one row)."""
    captions = [fill_template(template, name) for name in data.class_names for template in templates]
    pool = data.descriptions.texts if data.descriptions is not None else ()
    row_of: dict[str, int] = {}
    for text in (*captions, *pool):
        row_of.setdefault(text, len(row_of))
    tokens = loaded.tokenizer(list(row_of))
    by_class = data.descriptions.indices_by_class(len(data.class_names)) if data.descriptions is not None else []
    of_class, per_class = descriptions_by_class(by_class)
    return TextTable(
        tokenizer=loaded.tokenizer,
        tokens=tokens.to(device),
        lengths=token_lengths(loaded.model, tokens),
        caption_rows=torch.tensor([row_of[text] for text in captions]).view(len(data.class_names), len(templates)),
        description_rows=torch.tensor([row_of[text] for text in pool], dtype=torch.int64),
        descriptions_of_class=of_class,
        descriptions_per_class=per_class,
    )


def text_table(loaded: LoadedModel, data: TrainData, templates: Sequence[str], device: torch.device) -> TextTable:
    """The train data's text table for this tokenizer, templates and device, built on first use."""
    key = (id(loaded.tokenizer), tuple(templates), str(device))
    if key not in data.text_tables:
        data.text_tables[key] = build_text_table(loaded, data, templates, device)
    return data.text_tables[key]


def draw_descriptions(
    labels: torch.Tensor, of_class: torch.Tensor, per_class: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """For each sample j, the pool index of a description of its class, drawn uniformly (s_j);
    ``of_class``/``per_class`` as :func:`descriptions_by_class` gives them."""
    slots = (torch.rand(len(labels), generator=generator, dtype=torch.float64) * per_class[labels]).long()
    return of_class[labels, slots]


def sample_descriptions(
    labels: torch.Tensor, by_class: Sequence[Sequence[int]], generator: torch.Generator
) -> torch.Tensor:
    """:func:`draw_descriptions` from a pool's ``indices_by_class`` (the training step's draws)."""
    return draw_descriptions(labels, *descriptions_by_class(by_class), generator)


def draw_captions(labels: torch.Tensor, table: TextTable, generator: torch.Generator) -> torch.Tensor:
    """For each sample, the text-table row of its caption: its class in a template drawn uniformly."""
    choice = torch.randint(table.caption_rows.shape[1], (len(labels),), generator=generator)
    return table.caption_rows[labels, choice]


Losses = tuple[torch.Tensor, dict[str, torch.Tensor]]  # the total, and its named parts


@dataclass(frozen=True)
class StepBatch:
    """What a loss function sees of one (micro-)batch: the rows this process encodes (``rows.local``)
    and the gathered rows the loss runs over (``rows.gathered``); ``model`` may wrap
    ``loaded.model`` (autocast, DDP)."""

    loaded: LoadedModel
    model: Encoders
    data: TrainData
    indices: torch.Tensor
    config: FinetuneConfig
    reg_weight: float
    generator: torch.Generator
    device: torch.device
    rows: BatchRows

    def local_pixels(self) -> torch.Tensor:
        """This process's rows of the batch, augmented (crops drawn for the whole batch) and normalised."""
        return batch_pixels(
            self.loaded, self.data.images, self.indices, self.config, self.generator, self.rows.local, self.device
        )

    def text_table(self) -> TextTable:
        return text_table(self.loaded, self.data, self.config.caption_templates, self.device)


# --- the regulariser's teacher features: the interface, and the cache (the default) ------------------
# The other sources (the frozen model run every step, K cached crops) are in ``teacher_modes``.


@dataclass(frozen=True)
class TeacherFeatures:
    """The teacher's normalised features for the loss's (gathered) rows: row j of ``text`` is s_j's."""

    image: torch.Tensor  # (G, d)
    text: torch.Tensor  # (G, d)


class TeacherStep(Protocol):
    """One (micro-)batch: the student's pixels (this process's rows) and the teacher's features."""

    pixels: torch.Tensor

    def features(self, picks: torch.Tensor) -> TeacherFeatures:
        """Teacher features of the gathered rows; ``picks[j]``: the description drawn for sample j (whole batch)."""
        ...


class TeacherSource(Protocol):
    def begin(self, batch: StepBatch) -> TeacherStep: ...


@dataclass
class _CachedStep:
    batch: StepBatch
    pixels: torch.Tensor

    def features(self, picks: torch.Tensor) -> TeacherFeatures:
        batch, gathered = self.batch, self.batch.rows.gathered
        image, text = batch.data.teacher_image, batch.data.teacher_descriptions
        if image is None or text is None:
            raise ValueError("the cached teacher needs the teacher cache's image and description features")
        return TeacherFeatures(
            image=to_device(image[batch.indices[gathered]], batch.device),
            text=to_device(text[picks[gathered]], batch.device),
        )


class CachedTeacher:
    """The teacher stage's cache: features of the un-augmented image (``TrainData.teacher_image``)."""

    def begin(self, batch: StepBatch) -> TeacherStep:
        return _CachedStep(batch, batch.local_pixels())


CACHED = CachedTeacher()


def contrastive_losses(batch: StepBatch) -> Losses:
    """FLYP, StarFT and kl: L = L_FLYP + λ_e · R, the teacher's features from ``data.teacher`` (teacher_modes).

    Draws cover the whole batch; this process encodes ``rows.local``, the losses run over the
    gathered ``rows.gathered``.
    """
    data, model, rows, device = batch.data, batch.model, batch.rows, batch.device
    labels = data.labels[batch.indices]
    teacher = (data.teacher or CACHED).begin(batch)  # the student's pixels, and the teacher's features of them
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


STEP_LOSSES: dict[str, Callable[[StepBatch], Losses]] = {
    "ft": classification_losses,
    "lp_ft": classification_losses,
    "flyp": contrastive_losses,
    "star": contrastive_losses,
    "kl": contrastive_losses,
}


def step_losses(method: str) -> Callable[[StepBatch], Losses]:
    if method not in STEP_LOSSES:
        raise ValueError(
            f"method {method!r} has no fine-tuning loop (LP only fits a head: linear_probe.select_linear_probe); "
            f"methods with one: {sorted(STEP_LOSSES)}"
        )
    return STEP_LOSSES[method]


def training_step(
    loaded: LoadedModel,
    state: TrainState,
    data: TrainData,
    indices: torch.Tensor,
    config: FinetuneConfig,
    reg_weight: float,
    device: torch.device,
) -> dict[str, float | torch.Tensor]:
    """One optimiser step on the method's loss (see STEP_LOSSES), over ``grad_accum_steps`` micro-batches.

    The loss functions get ``state.encoders`` as the model (autocast, DDP; engine.Encoders). The
    losses come back as detached device tensors (reading them is a sync: :func:`read_records`).
    """
    losses_of = step_losses(config.method)
    encoders = state.encoders
    assert encoders is not None  # set by TrainState.__post_init__

    def micro_batch(rows: BatchRows) -> Losses:
        generator = seeded_generator(config.seed, state.epoch, state.step)  # the step's draws, the same for each
        return losses_of(StepBatch(loaded, encoders, data, indices, config, reg_weight, generator, device, rows))

    state.optimizer.zero_grad(set_to_none=True)
    plan = micro_batch_rows(len(indices), config.grad_accum_steps, state.context)
    total, losses = accumulate_gradients(micro_batch, plan, encoders)
    lr = optimizer_step(state.model, state.optimizer, state.scheduler)
    record: dict[str, float | torch.Tensor] = {**losses, "loss": total, "reg_weight": reg_weight, "lr": lr}
    return record


def check_train_data(data: TrainData, config: FinetuneConfig) -> None:
    step_losses(config.method)
    if len(data.images) < 2:
        raise ValueError("the training split has fewer than 2 images; contrastive fine-tuning needs a batch")
    if config.regularised and (data.descriptions is None or (data.teacher is None and data.teacher_image is None)):
        raise ValueError(f"method {config.method!r} needs the teacher cache and the descriptions")
    if config.regularised:
        check_descriptions_cover(data)
    teacher_image = data.teacher_image
    if (
        config.regularised
        and data.teacher is None
        and teacher_image is not None
        and len(teacher_image) != len(data.images)
    ):
        raise ValueError(
            f"teacher cache has {len(teacher_image)} train image features but the split has "
            f"{len(data.images)} images; rerun the teacher stage"
        )


def check_descriptions_cover(data: TrainData) -> None:
    """Every class with training images needs a description: s_j is drawn from sample j's class."""
    if data.descriptions is None:
        raise ValueError("the StarFT regulariser needs the descriptions (TrainData.descriptions)")
    by_class = data.descriptions.indices_by_class(len(data.class_names))
    present = sorted({int(label) for label in data.labels.unique()})
    missing = [data.class_names[label] for label in present if not by_class[label]]
    if missing:
        raise ValueError(
            f"no descriptions for class(es) {missing} of the selected confounder_types; the regulariser draws one "
            "for every training sample: add them to the descriptions file or choose other finetune confounder_types"
        )


def regulariser_schedule(config: FinetuneConfig) -> list[float]:
    """λ_e for each epoch (0 everywhere for methods without the regulariser)."""
    if config.method not in REGULARISED_METHODS:
        return [0.0] * config.epochs
    return [diminishing_weight(config.reg_weight, e, config.epochs, config.diminishing) for e in range(config.epochs)]


def one_class_micro_batches(data: TrainData, config: FinetuneConfig, schedule: Sequence[float]) -> tuple[int, int]:
    """(micro-batches holding one class only, micro-batches) over the epochs with λ_e > 0.

    StarFT masks same-class pairs, so on a one-class (micro-)batch every pair is masked and R = 0.
    The batches come from (seed, epoch) alone, so the whole run is known before it starts.
    """
    plan = micro_batch_rows(min(config.batch_size, len(data.labels)), config.grad_accum_steps)
    single = total = 0
    for epoch in (e for e, weight in enumerate(schedule) if weight > 0):
        for indices in epoch_batches(len(data.labels), config, epoch):
            for rows in plan:
                total += 1
                single += int(data.labels[indices[rows.gathered]].unique().numel() == 1)
    return single, total


def regulariser_warnings(data: TrainData, config: FinetuneConfig) -> list[str]:
    """Why StarFT's regulariser would vanish in this run, naming the parameters; [] when it does not."""
    if config.method not in REGULARISED_METHODS:
        return []
    if config.reg_weight == 0:
        return [f"{config.method}: finetune reg_weight (λ) is 0, so the regulariser is off and it trains as FLYP"]
    schedule = regulariser_schedule(config)
    if not any(schedule):
        return [
            f"{config.method}: λ_e is 0 in every epoch: finetune epochs {config.epochs} with diminishing: true gives "
            f"λ_e = λ·(1 − (e+1)/epochs) = 0 for e = 0; the regulariser never acts. Set diminishing: false or epochs >= 2"
        ]
    single, total = one_class_micro_batches(data, config, schedule) if config.method == "star" else (0, 0)
    if single:
        return [
            f"{config.method}: {single} of {total} (micro-)batches with λ_e > 0 hold one class only; all their pairs "
            "are masked, so the regulariser is 0 on them. Raise finetune batch_size (or lower grad_accum_steps)"
        ]
    return []


LOG_EVERY = 50  # steps between reads of the losses from the device (history, progress bar)


def read_records(records: Sequence[dict]) -> None:
    """Turn the tensors of ``records`` into floats in place: one device sync for all of them."""
    tensors = [(record, key) for record in records for key, value in record.items() if isinstance(value, torch.Tensor)]
    if tensors:
        values = torch.stack([record[key].float().reshape(()) for record, key in tensors]).tolist()
        for (record, key), value in zip(tensors, values):
            record[key] = value


def run_epoch(loaded: LoadedModel, state: TrainState, data: TrainData, config: FinetuneConfig) -> None:
    """Run epoch ``state.epoch``: each step's record, and the epoch's summary on its last, go to the history.

    The losses are read from the device every ``LOG_EVERY`` steps and at the epoch's end, not every step.
    """
    device = state.model.logit_scale.device
    reg_weight = diminishing_weight(config.reg_weight, state.epoch, config.epochs, config.diminishing)
    batches = epoch_batches(len(data.images), config, state.epoch)
    plan = micro_batch_rows(len(batches[0]), config.grad_accum_steps, state.context)
    meter = EpochMeter(device)
    show = config.progress and state.context.is_main
    with progress_bar(len(batches), f"epoch {state.epoch + 1}/{config.epochs}", show, leave=False) as bar:
        for indices in epoch_steps(data.images, batches, torch.cat([rows.local for rows in plan])):
            meter.start_step()
            record = training_step(loaded, state, data, indices, config, reg_weight, device)
            state.step += 1
            record |= meter.end_step(len(indices), record["loss"])
            state.history.append({"epoch": state.epoch, "step": state.step, **record})
            if state.step % LOG_EVERY == 0:
                read_records(state.history[-LOG_EVERY:])
                bar.set_postfix(loss=f"{state.history[-1]['loss']:.4f}", refresh=False)
            bar.update()
    read_records(state.history)
    state.history[-1].update(meter.summary())
    summary = state.history[-1]
    logger.info(
        "%s epoch %d/%d: loss %.4f, λ_e %.3f, %.1f images/s, peak memory %.0f MB",
        config.method,
        state.epoch + 1,
        config.epochs,
        summary["epoch_loss"],
        reg_weight,
        summary["epoch_images_per_s"],
        summary["peak_memory_mb"],
    )


def finetune(
    loaded: LoadedModel,
    data: TrainData,
    config: FinetuneConfig,
    device: torch.device,
    on_epoch_end: Callable[[TrainState], None] | None = None,
    state: TrainState | None = None,
    *,
    checkpoints: Checkpointer | None = None,
    context: DistContext | None = None,
) -> TrainState:
    """Run (or continue) fine-tuning.

    ``checkpoints`` first resumes a checkpoint of this very run (same fingerprint), then saves one
    after every epoch (rank 0 only) and cleans up at the end; ``on_epoch_end`` runs after the save.
    ``context``: this process's place in a DDP job (default: the initialised process group, if any).
    """
    check_train_data(data, config)
    context = context or current_context()
    if context.is_main:
        for warning in regulariser_warnings(data, config):
            logger.warning(warning)
        if config.method in REGULARISED_METHODS:
            logger.info(
                "%s: λ_e per epoch %s (teacher_mode %s)",
                config.method,
                [round(w, 4) for w in regulariser_schedule(config)],
                config.teacher_mode,
            )
    torch.manual_seed(config.seed)
    state = state or setup_state(loaded, config, len(data.images), device, context)
    run_key = checkpoints.fingerprint(config.result_dict(), state.model, len(data.images)) if checkpoints else ""
    if checkpoints is not None:
        checkpoints.resume(state, run_key)
    show = config.progress and context.is_main
    with progress_bar(config.epochs, config.method, show, initial=state.epoch) as bar:
        while state.epoch < config.epochs:
            run_epoch(loaded, state, data, config)
            state.epoch += 1
            bar.update()
            if checkpoints is not None and context.is_main:
                checkpoints.save(state, run_key)
            if on_epoch_end is not None:
                on_epoch_end(state)
    if checkpoints is not None and context.is_main:
        checkpoints.finish()
    state.model.eval()
    return state


def train_data_from_cache(
    images: ImageSource,
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
        teacher_scale=teacher_scale if config.reg_logit_scale is None else config.reg_logit_scale,
    )
