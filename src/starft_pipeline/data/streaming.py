"""Where the training loop's images come from: decoded into memory up front, or streamed from disk.

Small splits (the synthetic default, Waterbirds) are decoded once into a uint8 tensor (N, 3, S, S).
Large ones (ImageNet: 1.28 M images, ~190 GB at 224 px) are decoded per step by DataLoader workers,
a few steps ahead of the loop: :class:`StreamedImages` stands in for the tensor and answers
``images[indices]`` for the indices of the current step. The loop knows an epoch's batches in
advance (they come from (seed, epoch)), so the loader's batch sampler is just that list.

:func:`split_batches` is the one streaming path of every other stage (teacher, evaluation): a
split's rows in order, batch by batch, through DataLoader workers; its memory does not grow with
the split. No Kedro.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict, get_args

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from starft_pipeline.data.splits import GroupSplit, ImageFileDataset, load_split_images

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)

DataLoading = Literal["auto", "memory", "stream"]
DATA_LOADING: tuple[str, ...] = get_args(DataLoading)


#: Batches each worker decodes ahead of the consumer.
PREFETCH_FACTOR = 4


class RowBatches:
    """Consecutive batches of ``rows`` (positions into a split), built lazily: a batch sampler whose
    memory is one int64 per row, not one Python list per batch."""

    def __init__(self, rows: Sequence[int] | None, n_rows: int, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.rows = np.arange(n_rows, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        bad = self.rows[(self.rows < 0) | (self.rows >= n_rows)]
        if bad.size:
            raise IndexError(f"rows {bad[:5].tolist()} are outside the split of {n_rows} images")
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.rows), self.batch_size):
            yield self.rows[start : start + self.batch_size].tolist()


class RowOptions(TypedDict, total=False):
    """How a split's rows are streamed: ``rows`` (positions into the split; default: every row, in
    order), ``num_workers`` DataLoader worker processes that prefetch a few batches ahead (default 0:
    in this process), ``pin_memory`` (pinned batches for asynchronous copies to CUDA; ignored without
    CUDA; default off)."""

    rows: Sequence[int] | None
    num_workers: int
    pin_memory: bool


def split_batches(
    split: GroupSplit, image_size: int, batch_size: int, **options: Unpack[RowOptions]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A split's images in order, ``batch_size`` at a time: (uint8 images (B, 3, S, S), int64 rows (B,)).

    The images are decoded exactly as :func:`~starft_pipeline.data.splits.load_split_images` decodes
    them; ``options`` pick the rows and the loader (:class:`RowOptions`).
    """
    loader = row_loader(ImageFileDataset(split, image_size), len(split), batch_size, options)
    for images, _labels, _groups, index in loader or ():
        yield images, index.to(torch.int64)


def row_loader(
    dataset: Dataset,
    n_rows: int,
    batch_size: int,
    options: RowOptions,
    *,
    pin_memory: bool = True,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader | None:
    """A DataLoader of ``dataset``'s rows (``options``) in order, ``batch_size`` at a time; None when
    no row is asked for. ``pin_memory=False`` overrides the option (batches that stay on the CPU)."""
    num_workers = options.get("num_workers", 0)
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    batches = RowBatches(options.get("rows"), n_rows, batch_size)
    if len(batches.rows) == 0:
        return None
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        pin_memory=pin_memory and options.get("pin_memory", False) and torch.cuda.is_available(),
        prefetch_factor=PREFETCH_FACTOR if num_workers else None,
        collate_fn=collate_fn,
    )


class _EpochBatches:
    """The batch sampler of a :class:`StreamedImages` loader: the current pass's batches, replaced before
    each pass (the sampler runs in the main process, so persistent workers see each pass's batches)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


def pins_batches(pin_memory: bool, decodes_on_device: bool = False) -> bool:
    """Whether the loader pins its batches: asked for, decoded on the host (a batch decoded on the device
    is not copied) and CUDA present (pinning is for asynchronous copies to it)."""
    return pin_memory and not decodes_on_device and torch.cuda.is_available()


class StreamedImages:
    """A split's uint8 images, decoded one step batch at a time by DataLoader workers: the original files
    by default, or any ``dataset`` of (image, …, row) items (the pre-resized shards:
    :func:`~starft_pipeline.data.shards.streamed_shards`), whose batches ``decode_batch`` may finish
    (the GPU decode of the workers' JPEG bytes).

    The loader is built once and its workers persist across passes (epochs). A step's rows are handed
    over as the loader's (pinned) batch itself, or a view of it: no copy before the one to the device.
    """

    def __init__(
        self,
        split: GroupSplit,
        image_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        *,
        dataset: Dataset | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        decode_batch: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        self.dataset = ImageFileDataset(split, image_size) if dataset is None else dataset
        self.image_size = image_size
        self.n_images = len(split)
        self.num_workers = num_workers
        self.pin_memory = pins_batches(pin_memory, decodes_on_device=decode_batch is not None)
        self._collate, self._decode_batch = collate_fn, decode_batch
        self._sampler = _EpochBatches()
        self._loader: DataLoader | None = None
        self._images: torch.Tensor | None = None
        self._rows: dict[int, int] = {}
        self._pass: object = None

    def __len__(self) -> int:
        return self.n_images

    def loader(self) -> DataLoader:
        """The one DataLoader of every pass (built on first use; workers persistent when there are any)."""
        if self._loader is None:
            self._loader = DataLoader(
                self.dataset,
                batch_sampler=self._sampler,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                collate_fn=self._collate,
                persistent_workers=self.num_workers > 0,
                prefetch_factor=PREFETCH_FACTOR if self.num_workers else None,
            )
        return self._loader

    def steps(self, batches: Sequence[torch.Tensor]) -> Iterator[None]:
        """Load each batch (dataset indices) in turn; yields once it is available through ``self[...]``."""
        self._pass = this_pass = object()
        self._sampler.batches = [batch.tolist() for batch in batches]
        try:
            for loaded in self.loader():
                images, index = loaded[0], loaded[-1]  # (images, labels, groups, index) or (images, index)
                if self._decode_batch is not None:
                    images = self._decode_batch(images)
                self._images, self._rows = images, {int(i): row for row, i in enumerate(index)}
                yield
        finally:
            if self._pass is this_pass:  # an abandoned earlier pass must not clear a later one's batch
                self._images, self._rows = None, {}

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        if self._images is None:
            raise RuntimeError("streamed images are only available inside StreamedImages.steps()")
        missing = [int(i) for i in indices if int(i) not in self._rows]
        if missing:
            raise KeyError(f"images {missing[:5]} were not loaded for this step (the loop asked for other rows)")
        positions = [self._rows[int(i)] for i in indices]
        first = positions[0] if positions else 0
        if positions == list(range(first, first + len(positions))):
            return self._images[first : first + len(positions)]  # a view: still pinned, nothing copied
        return self._images[torch.tensor(positions, dtype=torch.int64)]


ImageSource = torch.Tensor | StreamedImages


def decoded_size_gb(n_images: int, image_size: int) -> float:
    return n_images * 3 * image_size * image_size / 1e9


def choose_loading(mode: DataLoading, n_images: int, image_size: int, memory_limit_gb: float) -> str:
    """``memory`` or ``stream``; ``auto`` streams when the decoded split would exceed ``memory_limit_gb``."""
    if mode not in DATA_LOADING:
        raise ValueError(f"finetune data_loading must be one of {', '.join(DATA_LOADING)}; got {mode!r}")
    if mode != "auto":
        return mode
    return "stream" if decoded_size_gb(n_images, image_size) > memory_limit_gb else "memory"


def announce_loading(mode: DataLoading, n_images: int, image_size: int, memory_limit_gb: float, source: str) -> str:
    """:func:`choose_loading`, logged with where the train images come from and their decoded size."""
    chosen = choose_loading(mode, n_images, image_size, memory_limit_gb)
    size_mb = 1000 * decoded_size_gb(n_images, image_size)
    logger.info("train images: %s from %s (%d images, %.1f MB decoded)", chosen, source, n_images, size_mb)
    return chosen


def train_images(
    split: GroupSplit,
    image_size: int,
    mode: DataLoading = "auto",
    memory_limit_gb: float = 4.0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> ImageSource:
    """The train split's images as the loop reads them: a decoded uint8 tensor, or a streamed source
    (from the original files; :func:`~starft_pipeline.data.shards.train_images_from_shards` from shards)."""
    chosen = announce_loading(mode, len(split), image_size, memory_limit_gb, "the original files")
    if chosen == "memory":
        return load_split_images(split, image_size, num_workers=num_workers)
    return StreamedImages(split, image_size, num_workers=num_workers, pin_memory=pin_memory)


def epoch_steps(images: ImageSource, batches: Sequence[torch.Tensor], needed: torch.Tensor) -> Iterator[torch.Tensor]:
    """Yield the epoch's batches; a streamed source first loads the positions ``needed`` of each (this rank's rows)."""
    if not isinstance(images, StreamedImages):
        yield from batches
        return
    for batch, _ in zip(batches, images.steps([batch[needed] for batch in batches])):
        yield batch
