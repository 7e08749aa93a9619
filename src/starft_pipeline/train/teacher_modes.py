"""Where the StarFT regulariser's teacher features come from: ``cached``, ``online`` or ``cached_views``.

The regulariser compares the frozen zero-shot teacher's logits ``T[i,j] = τ₀ f₀(x_i)·g₀(s_j)`` with
the student's on the same batch. Three ways to get ``f₀(x_i)`` and ``g₀(s_j)``:

- ``cached`` (the default): the teacher stage's cache, i.e. the teacher's features of the
  *un-augmented* image, while the student sees a random crop. Free, inexact under augmentation.
- ``online`` (the official code's design): a frozen copy of the zero-shot model (eval mode, no
  gradient, the student's precision) runs on the *same* augmented pixels as the student and on the
  batch's descriptions every step. Exact; one more forward of both towers per step.
- ``cached_views``: K crops per training image are drawn once (recorded boxes, from the seed), the
  teacher's features of each are cached in a file, and the student trains on exactly those crops
  (each step picks one of the K per image). Exact on the views it stores, K× the cache, no teacher
  forward during training; the augmentation is limited to K crops per image.

The training step calls one interface (:class:`TeacherSource`): ``begin(batch)`` returns a :class:`TeacherStep`
holding the pixels the student encodes and, on demand, the teacher's features of the batch's rows;
:func:`source_of` gives the train data's source (none set: the cache). No Kedro here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from starft_pipeline.core.io_utils import fingerprint
from starft_pipeline.core.precision import Precision
from starft_pipeline.core.tensor_bundle import DamagedFileError, TensorBundle
from starft_pipeline.data.splits import normalise_images
from starft_pipeline.data.streaming import ImageSource, StreamedImages
from starft_pipeline.models.clip import LoadedModel
from starft_pipeline.train.augment import SQUARE, apply_crops, crop_boxes
from starft_pipeline.train.batches import StepBatch, TrainData
from starft_pipeline.train.engine import Encoders, to_device

logger = logging.getLogger(__name__)

#: Where cached_views keeps its per-view teacher features (one file per teacher, K, crop scale and seed).
DEFAULT_VIEWS_DIR = "data/04_feature/teacher_views"
#: Bumped when the stored view features of unchanged inputs would change (e.g. how crops are drawn).
VIEWS_VERSION = 2  # 2: boxes hold height and width (top, left, height, width), the crop ratio is keyed


class TeacherSettings(Protocol):
    """What the teacher modes read of the fine-tuning config (finetune.FinetuneConfig)."""

    @property
    def teacher_mode(self) -> str: ...

    @property
    def teacher_views(self) -> int: ...

    @property
    def crop_scale(self) -> tuple[float, float]: ...

    @property
    def crop_ratio(self) -> tuple[float, float]: ...

    @property
    def seed(self) -> int: ...

    @property
    def precision(self) -> Precision: ...

    @property
    def regularised(self) -> bool: ...


# --- the interface, and the cache (the default) --------------------------------------------------------


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


@runtime_checkable
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


def source_of(data: TrainData) -> TeacherSource:
    """The train data's teacher source; none set (``TrainData.teacher`` None) means the cache."""
    if data.teacher is None:
        return CACHED
    if not isinstance(data.teacher, TeacherSource):
        raise TypeError(f"TrainData.teacher must be a teacher_modes.TeacherSource, got {type(data.teacher).__name__}")
    return data.teacher


# --- online --------------------------------------------------------------------------------------------


def frozen_encoders(loaded: LoadedModel, device: torch.device, precision: Precision) -> Encoders:
    """The zero-shot model as a frozen teacher: eval mode (no dropout), no gradients, the student's precision."""
    model = loaded.model.to(device).eval().requires_grad_(False)
    return Encoders(model, device, precision)


@dataclass
class _OnlineStep:
    teacher: OnlineTeacher
    batch: StepBatch
    pixels: torch.Tensor

    @torch.no_grad()
    def features(self, picks: torch.Tensor) -> TeacherFeatures:
        batch = self.batch
        image = batch.rows.gather(F.normalize(self.teacher.encoders.encode_image(self.pixels), dim=-1))
        # Every rank encodes the gathered rows' descriptions itself (a few distinct texts), no gather needed;
        # the tokens come from the step's text table (the teacher is the same architecture as the student).
        table = batch.text_table()
        rows = table.description_rows[picks[batch.rows.gathered]]
        text = F.normalize(self.teacher.encoders.encode_rows(table.tokens, table.lengths, rows), dim=-1)
        return TeacherFeatures(image, text)


class OnlineTeacher:
    """The frozen zero-shot model run every step on the student's augmented pixels and the batch's descriptions."""

    def __init__(self, loaded: LoadedModel, device: torch.device, precision: Precision = "fp32") -> None:
        self.encoders = frozen_encoders(loaded, device, precision)

    def begin(self, batch: StepBatch) -> TeacherStep:
        return self.on_pixels(batch, batch.local_pixels())

    def on_pixels(self, batch: StepBatch, pixels: torch.Tensor) -> TeacherStep:
        """The step with given student pixels (this process's rows): the teacher runs on exactly those."""
        return _OnlineStep(self, batch, pixels)


# --- cached_views --------------------------------------------------------------------------------------


def draw_view_boxes(
    n_images: int,
    image_size: int,
    views: int,
    scale: tuple[float, float],
    seed: int,
    ratio: tuple[float, float] = SQUARE,
) -> torch.Tensor:
    """``(N, K, 4)`` crop boxes (top, left, height, width): K views per image, drawn once from ``seed``."""
    boxes = crop_boxes(n_images * views, image_size, scale, torch.Generator().manual_seed(seed), ratio)
    return boxes.reshape(n_images, views, 4)


def view_pixels(loaded: LoadedModel, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Normalised pixels of each image cropped to its box (``boxes``: (n, 4)), on the images' device."""
    crops = apply_crops(images, boxes)
    return normalise_images(crops, loaded.image_mean, loaded.image_std)


def _image_chunks(images: ImageSource, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(indices, uint8 images) of the whole split in order, ``batch_size`` at a time (streamed or in memory)."""
    chunks = list(torch.arange(len(images)).split(batch_size))
    if isinstance(images, StreamedImages):
        for chunk, _ in zip(chunks, images.steps(chunks)):
            yield chunk, images[chunk]
    else:
        for chunk in chunks:
            yield chunk, images[chunk]


@torch.no_grad()
def encode_views(
    loaded: LoadedModel, encoders: Encoders, images: ImageSource, boxes: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """``(N, K, d)`` teacher features of every recorded view (the pixels the student will see), on the CPU."""
    n_images, views = boxes.shape[:2]
    out: torch.Tensor | None = None
    for chunk, uint8 in _image_chunks(images, batch_size):
        repeated = uint8.to(encoders.device).repeat_interleave(views, dim=0)
        pixels = view_pixels(loaded, repeated, boxes[chunk].reshape(-1, 4))
        features = F.normalize(encoders.encode_image(pixels), dim=-1).cpu().reshape(len(chunk), views, -1)
        out = torch.empty(n_images, views, features.shape[-1]) if out is None else out
        out[chunk] = features
    if out is None:  # no images: the (0, K, d) of an empty set is not needed by anyone
        raise ValueError("encode_views needs at least one image")
    return out


@dataclass
class _ViewStep:
    source: CachedViews
    batch: StepBatch
    choice: torch.Tensor  # (B,): the view each sample of the whole batch trains on
    pixels: torch.Tensor

    def features(self, picks: torch.Tensor) -> TeacherFeatures:
        batch, gathered = self.batch, self.batch.rows.gathered
        image = self.source.features[batch.indices[gathered], self.choice[gathered]]
        descriptions = batch.data.teacher_descriptions
        if descriptions is None:
            raise ValueError(
                "the cached-views teacher needs the descriptions' teacher features (TrainData.teacher_descriptions)"
            )
        text = descriptions[picks[gathered]]
        return TeacherFeatures(to_device(image, batch.device), to_device(text, batch.device))


class CachedViews:
    """K recorded crops per image and the teacher's features of each; the student trains on exactly those crops."""

    def __init__(self, loaded: LoadedModel, boxes: torch.Tensor, features: torch.Tensor) -> None:
        if boxes.shape[:2] != features.shape[:2]:
            raise ValueError(f"view boxes {tuple(boxes.shape)} and features {tuple(features.shape)} disagree")
        self.loaded = loaded
        self.boxes = boxes
        self.features = features

    @property
    def views(self) -> int:
        return self.boxes.shape[1]

    def begin(self, batch: StepBatch) -> TeacherStep:
        # Drawn for the whole batch from the step's generator (seed, epoch, step): the same on every rank
        # and for every micro-batch split; it takes the place of the crop draw.
        choice = torch.randint(self.views, (len(batch.indices),), generator=batch.generator)
        local = batch.rows.local
        images = batch.data.images[batch.indices[local]].to(batch.device, non_blocking=True)
        boxes = self.boxes[batch.indices[local], choice[local]]
        return _ViewStep(self, batch, choice, view_pixels(self.loaded, images, boxes))


def views_key(teacher_fingerprint: str, config: TeacherSettings, n_images: int, image_size: int) -> str:
    """What the stored view features depend on: the teacher (weights, data), K, the crop scale and ratio, the seed, precision."""
    return fingerprint(
        teacher_fingerprint,
        config.teacher_views,
        list(config.crop_scale),
        list(config.crop_ratio),
        config.seed,
        n_images,
        image_size,
        config.precision,
        VIEWS_VERSION,
    )


def load_or_build_views(
    loaded: LoadedModel,
    images: ImageSource,
    config: TeacherSettings,
    teacher_fingerprint: str,
    device: torch.device,
    views_dir: str | Path = DEFAULT_VIEWS_DIR,
    write: bool = True,
) -> CachedViews:
    """The view cache of this (teacher, K, crop scale, seed): read from ``views_dir`` or computed and written once.

    ``loaded`` is the zero-shot teacher; ``write=False`` (DDP ranks other than 0) computes without writing.
    """
    size = loaded.image_size
    key = views_key(teacher_fingerprint, config, len(images), size)
    path = Path(views_dir) / f"{key}.safetensors"
    stored = _load_views(path, key, len(images), config.teacher_views)
    if stored is not None:
        logger.info("cached_views: reusing %s (%d images × %d views)", path, len(images), config.teacher_views)
        return CachedViews(loaded, *stored)
    boxes = draw_view_boxes(len(images), size, config.teacher_views, config.crop_scale, config.seed, config.crop_ratio)
    features = encode_views(loaded, frozen_encoders(loaded, device, config.precision), images, boxes)
    if write:
        TensorBundle({"boxes": boxes, "features": features}, {"key": key}).save(path)
    logger.info("cached_views: encoded %d images × %d views -> %s", len(images), config.teacher_views, path)
    return CachedViews(loaded, boxes, features)


def _load_views(path: Path, key: str, n_images: int, views: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        bundle = TensorBundle.load(path)
    except DamagedFileError as error:
        logger.warning("cached_views: %s; recomputing it", error)
        return None
    boxes, features = bundle.tensors.get("boxes"), bundle.tensors.get("features")
    if bundle.metadata.get("key") != key or boxes is None or features is None or boxes.shape[:2] != (n_images, views):
        logger.warning(
            "cached_views: %s is not for these inputs (%d images × %d views); recomputing it", path, n_images, views
        )
        return None
    return boxes, features


def teacher_source(
    config: TeacherSettings,
    make_teacher: Callable[[], LoadedModel],
    images: ImageSource,
    teacher_fingerprint: str,
    device: torch.device,
    views_dir: str | Path = DEFAULT_VIEWS_DIR,
    write: bool = True,
) -> TeacherSource:
    """The teacher of ``config.teacher_mode`` (the cache needs nothing built); ``make_teacher`` loads the
    frozen zero-shot model, called only when the mode needs it."""
    if not config.regularised or config.teacher_mode == "cached":
        return CACHED
    if config.teacher_mode == "online":
        return OnlineTeacher(make_teacher(), device, config.precision)
    return load_or_build_views(make_teacher(), images, config, teacher_fingerprint, device, views_dir, write)
