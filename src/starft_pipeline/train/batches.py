"""What one training step draws and reads: the train data, the batch order, the text table, the
caption and description draws, and the augmented pixels.

Randomness comes from (seed, epoch, step), so a resumed run draws what an uninterrupted one would.
Every caption (template × class) and every description is tokenised once (:class:`TextTable`,
cached on the train data); a batch's draws are a few vectorised calls over the whole batch, so they
do not depend on how it is split into micro-batches or over DDP ranks. No Kedro here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from starft_pipeline.core.distributed import BatchRows
from starft_pipeline.data.descriptions import DescriptionPool
from starft_pipeline.data.splits import normalise_images
from starft_pipeline.data.streaming import ImageSource
from starft_pipeline.data.tasks import fill_template
from starft_pipeline.models.clip import LoadedModel
from starft_pipeline.train.augment import apply_crops, crop_boxes
from starft_pipeline.train.engine import Encoders, to_device, token_lengths
from starft_pipeline.train.losses import RegulariserKind
from starft_pipeline.train.optim import steps_per_epoch


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
    # Where the teacher's features come from: a teacher_modes.TeacherSource (teacher_modes.source_of reads it).
    teacher: object | None = None
    text_tables: dict = field(default_factory=dict, repr=False, compare=False)  # built once (text_table)


class CropSettings(Protocol):
    """What the crops read of a config (FinetuneConfig, pretraining's PretrainConfig)."""

    @property
    def augment(self) -> bool: ...

    @property
    def crop_scale(self) -> tuple[float, float]: ...

    @property
    def crop_ratio(self) -> tuple[float, float]: ...


class StepSettings(CropSettings, Protocol):
    """What a step's draws and losses read of the fine-tuning config (finetune.FinetuneConfig)."""

    @property
    def method(self) -> str: ...

    @property
    def seed(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def caption_templates(self) -> tuple[str, ...]: ...

    @property
    def regularised(self) -> bool: ...

    @property
    def regulariser(self) -> RegulariserKind: ...


def seeded_generator(*seeds: int) -> torch.Generator:
    """A CPU generator seeded from ``seeds`` (e.g. seed, epoch, step): the same draws on every run."""
    generator = torch.Generator()
    generator.manual_seed(hash(seeds) & 0x7FFF_FFFF_FFFF)
    return generator


def epoch_batches(n_samples: int, config: StepSettings, epoch: int) -> list[torch.Tensor]:
    order = torch.randperm(n_samples, generator=seeded_generator(config.seed, epoch))
    per_epoch = steps_per_epoch(n_samples, config.batch_size)
    return [order[i * config.batch_size : (i + 1) * config.batch_size] for i in range(per_epoch)]


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


@dataclass(frozen=True)
class StepBatch:
    """What a loss function sees of one (micro-)batch: the rows this process encodes (``rows.local``)
    and the gathered rows the loss runs over (``rows.gathered``); ``model`` may wrap
    ``loaded.model`` (autocast, DDP)."""

    loaded: LoadedModel
    model: Encoders
    data: TrainData
    indices: torch.Tensor
    config: StepSettings
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
