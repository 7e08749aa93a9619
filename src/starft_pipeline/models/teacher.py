"""The frozen zero-shot teacher, run once: what the StarFT regulariser and the evaluation need.

Teacher *logits* depend on the batch (which descriptions, which labels), so the cache holds
*embeddings* (docs/method.md): image features per split (of the un-augmented image), description
features and class-prompt features. Zero-shot logits are not stored: no stage reads them, and
:meth:`TeacherCache.zero_shot_logits` computes a split's from its features (ImageNet-train's would
be 1.28 M × 1,000 floats). A fingerprint of model + prompts + data makes a stale cache an error
rather than a silent mistake.

Images are streamed (:func:`~starft_pipeline.data.streaming.split_batches`): decoded by DataLoader
workers and normalised batch by batch, so memory does not grow with the split. Under torchrun each
rank encodes its share of every part of a split and the shares are gathered (the features equal
one process's); only rank 0 writes.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import torch
import torch.nn.functional as F

from starft_pipeline.core.distributed import (
    SINGLE_PROCESS,
    DistContext,
    all_gather_rows,
    broadcast_from_main,
    shard_rows,
)
from starft_pipeline.core.io_utils import fingerprint
from starft_pipeline.core.precision import Precision, ResolvedPrecision, autocast, resolve_precision
from starft_pipeline.core.progress import Progress
from starft_pipeline.core.tensor_bundle import DamagedFileError, TensorBundle
from starft_pipeline.data.dataset_index import DatasetIndex, class_prompts, data_identity
from starft_pipeline.data.descriptions import DescriptionPool
from starft_pipeline.data.shards import Decode, shard_batches
from starft_pipeline.data.splits import GroupSplit, normalise_images
from starft_pipeline.data.streaming import split_batches
from starft_pipeline.models.clip import LoadedModel, encode_texts, logit_scale, zero_shot_head

logger = logging.getLogger(__name__)


class StaleCacheError(RuntimeError):
    """The teacher cache was computed from other inputs than the current ones."""


@dataclass
class TeacherCache:
    image_features: dict[str, torch.Tensor]  # "<dataset>/<split>" -> (N, d)
    class_features: dict[str, torch.Tensor]  # "<dataset>" -> (C, d)
    description_features: torch.Tensor  # (P, d)
    description_labels: torch.Tensor  # (P,)
    logit_scale: float
    fingerprint: str

    def zero_shot_logits(self, split_key: str, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """Zero-shot logits (N, C) of ``rows`` of ``"<dataset>/<split>"``: scaled cosine similarities
        with the data set's class-prompt features (computed, not stored)."""
        features = self.image_features[split_key][rows]
        return self.logit_scale * features.float() @ self.class_features[split_key.split("/")[0]].float().T

    def to_bundle(self) -> TensorBundle:
        tensors = {f"image/{key}": value for key, value in self.image_features.items()}
        tensors |= {f"class/{key}": value for key, value in self.class_features.items()}
        tensors["descriptions/features"] = self.description_features
        tensors["descriptions/labels"] = self.description_labels
        return TensorBundle(tensors, {"logit_scale": self.logit_scale, "fingerprint": self.fingerprint})

    @classmethod
    def from_bundle(cls, bundle: TensorBundle) -> TeacherCache:
        def under(prefix: str) -> dict[str, torch.Tensor]:
            return {key[len(prefix) :]: value for key, value in bundle.tensors.items() if key.startswith(prefix)}

        return cls(
            image_features=under("image/"),
            class_features=under("class/"),
            description_features=bundle.tensors["descriptions/features"],
            description_labels=bundle.tensors["descriptions/labels"],
            logit_scale=float(bundle.metadata["logit_scale"]),
            fingerprint=str(bundle.metadata["fingerprint"]),
        )


def teacher_fingerprint(
    model_identity: Mapping[str, str],
    class_prompts: Mapping[str, Sequence[str]],
    descriptions: DescriptionPool,
    data_identity: Mapping[str, str],
) -> str:
    """Hash of everything the cache depends on: weights, prompts, descriptions and data."""
    return fingerprint(
        dict(model_identity),
        {k: list(v) for k, v in class_prompts.items()},
        list(descriptions.texts),
        list(descriptions.labels),
        dict(data_identity),
    )


def expected_fingerprint(model_identity: Mapping[str, str], index: DatasetIndex, pool: DescriptionPool) -> str:
    """The fingerprint a cache built now from these inputs would carry."""
    return teacher_fingerprint(model_identity, class_prompts(index), pool, data_identity(index))


#: Where finished per-split features wait until the teacher cache is saved (parameter ``teacher.work_dir``).
DEFAULT_WORK_DIR = "data/04_feature/teacher_parts"
#: Bumped when the image features of an unchanged model and data would change (e.g. decoding).
FEATURES_VERSION = 1
_KEY = re.compile(r"^[0-9a-f]{16}$")  # io_utils.fingerprint's form


#: Rows per part file (``teacher.part_rows``): a killed run loses at most one part's work.
DEFAULT_PART_ROWS = 50_000


def image_features_key(model_identity: Mapping[str, str], index: DatasetIndex, precision: str = "fp32") -> str:
    """What a split's teacher image features depend on: the model's weights, the data and the
    precision they were encoded in (not prompts or descriptions). fp32 keeps the key it always had."""
    extra = () if precision == "fp32" else (precision,)
    return fingerprint(dict(model_identity), dict(data_identity(index)), FEATURES_VERSION, *extra)


class FeatureParts:
    """Finished per-split image features of one teacher run, so that a killed run resumes.

    One safetensors file per part of a ``<dataset>/<split>`` (:func:`part_key`: the split itself, or
    ``<dataset>/<split>[start:stop]`` when it has several parts of ``teacher.part_rows`` rows) under
    ``root/<key>/`` (``key``: :func:`image_features_key`), each written atomically the moment it is
    encoded. A rerun reuses every file whose key, part and row count match; a damaged one is logged
    and recomputed.
    """

    def __init__(self, root: str | Path, key: str) -> None:
        self.root = Path(root)
        self.key = key
        self.folder = self.root / key

    def path(self, split_key: str) -> Path:
        return self.folder / f"{quote(split_key, safe='')}.safetensors"

    def load(self, split_key: str, n_rows: int) -> torch.Tensor | None:
        """The finished features of ``split_key``, or None when absent, damaged or not for these rows."""
        path = self.path(split_key)
        if not path.is_file():
            return None
        try:
            bundle = TensorBundle.load(path)
        except DamagedFileError as error:
            logger.warning("teacher: %s; recomputing %s", error, split_key)
            return None
        features = bundle.tensors.get("features")
        expected = {"key": self.key, "split": split_key, "rows": n_rows}
        if features is None or len(features) != n_rows or any(bundle.metadata.get(k) != v for k, v in expected.items()):
            logger.warning("teacher: %s is not for %s (%d rows); recomputing it", path, split_key, n_rows)
            return None
        return features

    def save(self, split_key: str, features: torch.Tensor) -> None:
        metadata = {"key": self.key, "split": split_key, "rows": len(features)}
        TensorBundle({"features": features}, metadata).save(self.path(split_key))

    def release(self) -> None:
        """Remove every run's parts under ``root`` (call once the teacher cache that holds them is saved).

        Folders of other keys are parts of earlier, interrupted runs on other models or data.
        """
        if self.root.is_dir():
            for folder in self.root.iterdir():
                if folder.is_dir() and _KEY.match(folder.name):
                    shutil.rmtree(folder, ignore_errors=True)


def part_ranges(n_rows: int, part_rows: int) -> list[tuple[int, int]]:
    """The row ranges ``[start, stop)`` of a split's parts (one empty range for an empty split)."""
    if part_rows < 1:
        raise ValueError(f"teacher part_rows must be >= 1, got {part_rows}")
    return [(start, min(start + part_rows, n_rows)) for start in range(0, n_rows, part_rows)] or [(0, 0)]


def part_key(split_key: str, start: int, stop: int, n_rows: int) -> str:
    """A part's name: the split's own when the part is the whole split (the files runs always wrote)."""
    return split_key if (start, stop) == (0, n_rows) else f"{split_key}[{start}:{stop}]"


def _features_of(
    loaded: LoadedModel,
    key: str,
    split: GroupSplit,
    parts: FeatureParts | None,
    settings: EncodeSettings,
    context: DistContext = SINGLE_PROCESS,
) -> torch.Tensor:
    """One split's image features, part by part: a finished part is reused (rank 0 reads it and shares
    it), any other is encoded (each rank its share, gathered) and kept as a part by rank 0."""
    features = torch.empty(len(split), feature_dim(loaded))
    shards = _shards_of(key, settings)
    with Progress(len(split), f"teacher {key}", context.is_main, unit="images") as bar:
        for start, stop in part_ranges(len(split), settings.part_rows):
            name = part_key(key, start, stop, len(split))
            finished = None
            if parts is not None:
                finished = broadcast_from_main(parts.load(name, stop - start) if context.is_main else None, context)
                if finished is not None:
                    logger.info(
                        "teacher: reusing the finished features of %s (%d images) from %s",
                        name,
                        stop - start,
                        parts.folder,
                    )
                    bar.update(stop - start)
            if finished is None:
                share = shard_rows(stop - start, context)
                local = split_features(
                    loaded,
                    split,
                    settings.batch_size,
                    settings.device,
                    settings.num_workers,
                    rows=range(start + share.start, start + share.stop),
                    precision=settings.precision,
                    shards=shards,
                    decode=settings.decode,
                    progress=bar,
                )
                finished = all_gather_rows(local, context)
                bar.update(len(finished) - len(local))  # the other ranks' images
                if parts is not None and context.is_main:
                    parts.save(name, finished)
                logger.info(
                    "teacher: encoded %d images of %s (rank %d of %d encoded %d)",
                    stop - start,
                    name,
                    context.rank,
                    context.world_size,
                    len(share),
                )
            features[start:stop] = finished
    return features


def _shards_of(key: str, settings: EncodeSettings) -> Path | None:
    """The split's shard folder (``<shards.folder>/<dataset>/<split>``, written by the shards stage), or None."""
    return None if settings.shards is None else Path(settings.shards) / key


def _require_same(found: str, expected: str, message: str) -> None:
    if found != expected:
        raise StaleCacheError(message)


def check_trained_from(
    method: str, weights_fingerprint: str | None, teacher_model: Mapping, index: DatasetIndex
) -> None:
    """Fine-tuned weights must come from the current teacher cache, and that cache from the current data.

    ``weights_fingerprint`` is the cache fingerprint stored with the weights (None: not recorded);
    ``teacher_model`` is the teacher stage's record (``fingerprint``, ``data``).
    """
    rerun = f"Rerun `kedro run --pipelines=finetune` (or `--namespaces={method}`) before evaluating, or run `--pipelines=full`."
    if weights_fingerprint is not None:
        _require_same(
            weights_fingerprint,
            teacher_model["fingerprint"],
            f"the {method} weights were fine-tuned from the teacher cache {weights_fingerprint}, but the current "
            f"teacher cache is {teacher_model['fingerprint']} (other model weights, prompts, descriptions or data). {rerun}",
        )
    if "data" in teacher_model:
        _require_same(
            fingerprint(teacher_model["data"]),
            fingerprint(dict(data_identity(index))),
            "the teacher cache (and the models fine-tuned from it) was computed from other data than the current "
            "dataset index (the class_names stage ran since). Rerun `kedro run --pipelines=teacher`, then finetune.",
        )


def check_fresh(cache: TeacherCache, expected: str) -> None:
    if cache.fingerprint != expected:
        raise StaleCacheError(
            f"the teacher cache (fingerprint {cache.fingerprint}) was computed from other model weights, "
            f"prompts, descriptions or data than the current ones (fingerprint {expected}). "
            "Rerun `kedro run --pipelines=teacher` to refresh it."
        )


@dataclass(frozen=True)
class EncodeSettings:
    """How the teacher encodes images: batch size, device, loader workers, precision, rows per part."""

    batch_size: int = 256
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    num_workers: int = 0
    precision: ResolvedPrecision = "fp32"
    part_rows: int = DEFAULT_PART_ROWS
    shards: str | None = None  # shards.folder: read the images from the shards stage's tar files there
    decode: Decode = "cpu"  # shards.decode: cpu (loader workers) | gpu (torchvision on CUDA)


def feature_dim(loaded: LoadedModel) -> int:
    """The image embedding's width (open_clip's towers record it as ``output_dim``)."""
    visual = loaded.model.visual
    return int(visual.output_dim) if hasattr(visual, "output_dim") else int(loaded.model.text_projection.shape[-1])


def split_features(
    loaded: LoadedModel,
    split: GroupSplit,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    rows: Sequence[int] | None = None,
    precision: Precision = "fp32",
    shards: Path | None = None,
    decode: Decode = "cpu",
    progress: Progress | None = None,
) -> torch.Tensor:
    """Normalised image features (N, d), on the CPU in fp32, of ``rows`` (default: all) of a split's
    un-augmented images, streamed: decoded by ``num_workers`` loader workers and normalised one batch
    at a time (the same batches and arithmetic as decoding the whole split first, so the same values).
    With ``shards`` (a folder of :mod:`~starft_pipeline.data.shards`) the images come from there, decoded
    per ``decode``. ``progress`` counts the images encoded."""
    device = torch.device(device)
    rows = range(len(split)) if rows is None else rows
    features = torch.empty(len(rows), feature_dim(loaded))
    model = loaded.model.eval()
    pin_memory = device.type == "cuda"
    batches = (
        split_batches(split, loaded.image_size, batch_size, num_workers=num_workers, pin_memory=pin_memory, rows=rows)
        if shards is None
        else shard_batches(
            shards,
            split,
            loaded.image_size,
            batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            rows=rows,
            decode=decode,
            device=device,
        )
    )
    done = 0
    with torch.inference_mode(), autocast(device, precision):
        for images, _ in batches:
            pixels = normalise_images(images.to(device, non_blocking=True), loaded.image_mean, loaded.image_std)
            features[done : done + len(images)] = F.normalize(model.encode_image(pixels).float(), dim=-1).cpu()
            done += len(images)
            if progress is not None:
                progress.update(len(images))
    return features


#: How the stages' decode path (data.streaming, data.shards) sizes images: OpenAI's weights' and the default's setting.
STREAMED_RESIZE = ("bicubic", "shortest")


def check_streamed_preprocessing(loaded: LoadedModel) -> None:
    """Raise when the weights' open_clip config asks for another resize than the stages' decode path makes.

    ``loaded`` carries its tag's interpolation and resize mode; the stages decode with
    :data:`STREAMED_RESIZE` (e.g. SigLIP's and DFN's tags squash instead): features would silently differ.
    """
    if (loaded.interpolation, loaded.resize_mode) != STREAMED_RESIZE:
        raise NotImplementedError(
            f"the teacher's weights expect images resized with {loaded.interpolation} interpolation and resize "
            f"mode {loaded.resize_mode!r} (open_clip's config of their tag), but the stages decode images "
            f"{STREAMED_RESIZE[0]}, shorter side first, so every feature would differ from the model's. Use weights "
            "whose open_clip config is bicubic + shortest (OpenAI's, LAION's, DataComp's tags)."
        )


def compute_teacher_cache(
    loaded: LoadedModel,
    splits: Mapping[str, GroupSplit],
    class_names: Mapping[str, Sequence[str]],
    templates_by_dataset: Mapping[str, Sequence[str]],
    descriptions: DescriptionPool,
    fingerprint_value: str,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    parts: FeatureParts | None = None,
    num_workers: int = 0,
    precision: Precision = "auto",
    part_rows: int = DEFAULT_PART_ROWS,
    context: DistContext = SINGLE_PROCESS,
    shards: str | None = None,
    decode: Decode = "cpu",
) -> TeacherCache:
    """Run the frozen model once over every split, the class prompts and the descriptions.

    ``splits`` keys are ``"<dataset>/<split>"``; ``class_names`` and ``templates_by_dataset`` keys
    are data set names. With ``parts``, every ``part_rows`` rows of a split are kept as soon as they
    are computed and reused by a rerun (a killed run resumes; see :class:`FeatureParts`). Under
    torchrun (``context``) the ranks share the images and every rank returns the whole cache. With
    ``shards`` every split is read from the tar shards under ``<shards>/<dataset>/<split>`` (written by
    the shards stage; see :mod:`~starft_pipeline.data.shards`), decoded per ``decode`` (cpu | gpu).
    """
    check_streamed_preprocessing(loaded)
    device = torch.device(device)
    settings = EncodeSettings(
        batch_size,
        device,
        num_workers,
        resolve_precision(precision, device, "teacher precision"),
        part_rows,
        shards,
        decode,
    )
    model = loaded.model.to(device).eval()
    with autocast(device, settings.precision):
        class_features = {
            dataset: zero_shot_head(model, loaded.tokenizer, names, templates_by_dataset[dataset], device=device)
            .float()
            .cpu()
            for dataset, names in class_names.items()
        }
        description_features = encode_texts(model, loaded.tokenizer, descriptions.texts, batch_size, device).cpu()
    image_features = {key: _features_of(loaded, key, split, parts, settings, context) for key, split in splits.items()}
    return TeacherCache(
        image_features=image_features,
        class_features=class_features,
        description_features=description_features,
        description_labels=torch.tensor(descriptions.labels, dtype=torch.int64),
        logit_scale=float(logit_scale(model).detach()),
        fingerprint=fingerprint_value,
    )
