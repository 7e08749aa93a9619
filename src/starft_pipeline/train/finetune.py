"""Fine-tuning: the config and the loop.

The methods are the rows of ``methods.METHOD_SPECS``, each step's loss is in ``step_losses``, a step's draws and pixels are in ``batches``,
the StarFT regulariser's teacher features in ``teacher_modes``, AdamW and the schedule in ``optim``,
precision, compile, DDP and meters in ``engine``, checkpoints in ``checkpointing``. Randomness is
derived from (seed, epoch, step), so a resumed run draws what an uninterrupted one would. The losses
run over the gathered batch (``distributed``), and nothing in the step reads a device value back
(losses are read when the history is written, :data:`LOG_EVERY`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import torch

from starft_pipeline.core.configs import bounded, check_crop_ratio, check_crop_scale, check_fields, config_from_params
from starft_pipeline.core.distributed import SINGLE_PROCESS, BatchRows, DistContext, current_context, micro_batch_rows
from starft_pipeline.core.precision import PRECISIONS, Precision
from starft_pipeline.data.descriptions import DescriptionPool
from starft_pipeline.data.streaming import DATA_LOADING, DataLoading, ImageSource, epoch_steps
from starft_pipeline.models.clip import LoadedModel
from starft_pipeline.train.augment import SQUARE
from starft_pipeline.train.batches import (
    StepBatch,
    TrainData,
    epoch_batches,
    seeded_generator,
)
from starft_pipeline.train.checkpointing import Checkpointer
from starft_pipeline.train.engine import (
    Encoders,
    EpochMeter,
    accumulate_gradients,
    compile_towers,
    configure_tf32,
    progress_bar,
)
from starft_pipeline.train.losses import (
    RegulariserKind,
    diminishing_weight,
)
from starft_pipeline.train.methods import (
    HeadInit,
    MethodSpec,
    check_method,
    method_spec,
    teacher_method_names,
)
from starft_pipeline.train.optim import adamw, cosine_with_warmup, optimizer_step, steps_per_epoch
from starft_pipeline.train.step_losses import Losses, step_losses
from starft_pipeline.train.teacher_modes import CachedTeacher, source_of

if TYPE_CHECKING:
    import open_clip

logger = logging.getLogger(__name__)

#: Where StarFT's teacher features come from: the cache, the frozen model every step, or K cached crops (teacher_modes).
TeacherMode = Literal["cached", "online", "cached_views"]
TEACHER_MODES: tuple[str, ...] = get_args(TeacherMode)


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides a fine-tuning run's result (its fingerprint keys resumption)."""

    method: str = bounded("star", check=check_method)  # a row of methods.METHOD_SPECS
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
        check_fields(self, "finetune ")
        self._check_teacher_mode()
        self._check_scale_options()

    def _check_teacher_mode(self) -> None:
        if self.teacher_mode not in TEACHER_MODES:
            raise ValueError(
                f"finetune teacher_mode must be one of {', '.join(TEACHER_MODES)}; got {self.teacher_mode!r}"
            )
        if self.teacher_mode != "cached" and not self.spec.needs_teacher:
            raise ValueError(
                f"finetune teacher_mode {self.teacher_mode!r} only applies to the StarFT methods "
                f"({', '.join(teacher_method_names())}); method {self.method!r} has no teacher: remove the key"
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
    def spec(self) -> MethodSpec:
        """The method's row of the table (methods.METHOD_SPECS)."""
        return method_spec(self.method)

    @property
    def regularised(self) -> bool:
        return self.spec.needs_teacher and self.reg_weight > 0

    @property
    def regulariser(self) -> RegulariserKind:
        """The method's regulariser (its row's ``regulariser``)."""
        kind = self.spec.regulariser
        if kind is None:
            raise ValueError(f"finetune method {self.method!r} has no regulariser")
        return kind

    @property
    def head_init(self) -> HeadInit | None:
        """Where a head method's head starts (``zero_shot`` or ``linear_probe``); None for contrastive methods."""
        return self.spec.head_init

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict, exclude: Sequence[str] = ()) -> FinetuneConfig:
        """Build from a parameters block; an unknown key is an error that names it."""
        return config_from_params(cls, params, "finetune", exclude)


RESULT_NEUTRAL_FIELDS = ("compile", "data_loading", "memory_limit_gb", "num_workers", "pin_memory", "progress")


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

    @property
    def step_encoders(self) -> Encoders:
        """What the loss functions call (set by ``__post_init__``, so never None)."""
        assert self.encoders is not None
        return self.encoders


def build_optimizer(model: torch.nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    return adamw(model, config.lr, config.weight_decay)


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


def step_batch_maker(
    loaded: LoadedModel,
    state: TrainState,
    data: TrainData,
    indices: torch.Tensor,
    config: FinetuneConfig,
    reg_weight: float,
    device: torch.device,
) -> Callable[[BatchRows], StepBatch]:
    """The :class:`StepBatch` of each micro-batch of the step ``state.step`` over ``indices``.

    Every micro-batch draws from the step's own generator (seed, epoch, step), so the draws are the same
    for each and a step can be recomputed (``gradient_norms``) exactly as it is trained.
    """

    def batch_of(rows: BatchRows) -> StepBatch:
        generator = seeded_generator(config.seed, state.epoch, state.step)
        return StepBatch(loaded, state.step_encoders, data, indices, config, reg_weight, generator, device, rows)

    return batch_of


def epoch_step_indices(
    data: TrainData, config: FinetuneConfig, state: TrainState
) -> tuple[int, Iterator[torch.Tensor]]:
    """Epoch ``state.epoch``'s number of steps and each step's sample indices (the loader's order)."""
    batches = epoch_batches(len(data.images), config, state.epoch)
    plan = micro_batch_rows(len(batches[0]), config.grad_accum_steps, state.context)
    return len(batches), epoch_steps(data.images, batches, torch.cat([rows.local for rows in plan]))


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
    batch_of = step_batch_maker(loaded, state, data, indices, config, reg_weight, device)

    def micro_batch(rows: BatchRows) -> Losses:
        return losses_of(batch_of(rows))

    state.optimizer.zero_grad(set_to_none=True)
    plan = micro_batch_rows(len(indices), config.grad_accum_steps, state.context)
    total, losses = accumulate_gradients(micro_batch, plan, state.step_encoders)
    lr = optimizer_step(state.model, state.optimizer, state.scheduler)
    record: dict[str, float | torch.Tensor] = {**losses, "loss": total, "reg_weight": reg_weight, "lr": lr}
    return record


def check_train_data(data: TrainData, config: FinetuneConfig) -> None:
    step_losses(config.method)
    if len(data.images) < 2:
        raise ValueError("the training split has fewer than 2 images; contrastive fine-tuning needs a batch")
    if not config.regularised:
        return
    cached = isinstance(source_of(data), CachedTeacher)
    if data.descriptions is None or (cached and data.teacher_image is None):
        raise ValueError(f"method {config.method!r} needs the teacher cache and the descriptions")
    check_descriptions_cover(data)
    teacher_image = data.teacher_image
    if cached and teacher_image is not None and len(teacher_image) != len(data.images):
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
    if not config.spec.needs_teacher:
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
    if not config.spec.needs_teacher:
        return []
    if config.reg_weight == 0:
        return [f"{config.method}: finetune reg_weight (λ) is 0, so the regulariser is off and it trains as FLYP"]
    schedule = regulariser_schedule(config)
    if not any(schedule):
        return [
            f"{config.method}: λ_e is 0 in every epoch: finetune epochs {config.epochs} with diminishing: true gives "
            f"λ_e = λ·(1 − (e+1)/epochs) = 0 for e = 0; the regulariser never acts. Set diminishing: false or epochs >= 2"
        ]
    single, total = one_class_micro_batches(data, config, schedule) if config.regulariser == "star" else (0, 0)
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
    n_steps, step_indices = epoch_step_indices(data, config, state)
    meter = EpochMeter(device)
    show = config.progress and state.context.is_main
    with progress_bar(
        n_steps, f"{config.method} epoch {state.epoch + 1}/{config.epochs}", show, leave=False, unit="steps"
    ) as bar:
        for indices in step_indices:
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
        if config.spec.needs_teacher:
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
        checkpoints.resume(state, run_key, context)
    show = config.progress and context.is_main
    with progress_bar(config.epochs, config.method, show, initial=state.epoch, unit="epochs") as bar:
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
