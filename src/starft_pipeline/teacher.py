"""The frozen zero-shot teacher, run once: what the StarFT regulariser and the evaluation need.

Teacher *logits* depend on the batch (which descriptions, which labels), so the cache holds
*embeddings* (docs/method.md): image features per split (of the un-augmented image), description
features, class-prompt features, and zero-shot logits. A fingerprint of model + prompts + data
makes a stale cache an error rather than a silent mistake.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import torch

from .data import GroupSplit, load_split_images, normalise_images
from .dataset_index import class_prompts, data_identity
from .descriptions import DescriptionPool
from .io_utils import fingerprint
from .models import LoadedModel, encode_images, encode_texts, logit_scale, zero_shot_head
from .tensor_bundle import DamagedFileError, TensorBundle

logger = logging.getLogger(__name__)


class StaleCacheError(RuntimeError):
    """The teacher cache was computed from other inputs than the current ones."""


@dataclass
class TeacherCache:
    image_features: dict[str, torch.Tensor]  # "<dataset>/<split>" -> (N, d)
    class_features: dict[str, torch.Tensor]  # "<dataset>" -> (C, d)
    description_features: torch.Tensor  # (P, d)
    description_labels: torch.Tensor  # (P,)
    zero_shot_logits: dict[str, torch.Tensor]  # "<dataset>/<split>" -> (N, C)
    logit_scale: float
    fingerprint: str

    def to_bundle(self) -> TensorBundle:
        tensors = {f"image/{key}": value for key, value in self.image_features.items()}
        tensors |= {f"class/{key}": value for key, value in self.class_features.items()}
        tensors |= {f"logits/{key}": value for key, value in self.zero_shot_logits.items()}
        tensors["descriptions/features"] = self.description_features
        tensors["descriptions/labels"] = self.description_labels
        return TensorBundle(tensors, {"logit_scale": self.logit_scale, "fingerprint": self.fingerprint})

    @classmethod
    def from_bundle(cls, bundle: TensorBundle) -> "TeacherCache":
        def under(prefix: str) -> dict[str, torch.Tensor]:
            return {key[len(prefix) :]: value for key, value in bundle.tensors.items() if key.startswith(prefix)}

        return cls(
            image_features=under("image/"),
            class_features=under("class/"),
            description_features=bundle.tensors["descriptions/features"],
            description_labels=bundle.tensors["descriptions/labels"],
            zero_shot_logits=under("logits/"),
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
    return fingerprint(dict(model_identity), {k: list(v) for k, v in class_prompts.items()},
                       list(descriptions.texts), list(descriptions.labels), dict(data_identity))


def expected_fingerprint(model_identity: Mapping[str, str], index: Mapping, pool: DescriptionPool) -> str:
    """The fingerprint a cache built now from these inputs would carry."""
    return teacher_fingerprint(model_identity, class_prompts(index), pool, data_identity(index))


#: Where finished per-split features wait until the teacher cache is saved (parameter ``teacher.work_dir``).
DEFAULT_WORK_DIR = "data/04_feature/teacher_parts"
#: Bumped when the image features of an unchanged model and data would change (e.g. decoding).
FEATURES_VERSION = 1
_KEY = re.compile(r"^[0-9a-f]{16}$")  # io_utils.fingerprint's form


def image_features_key(model_identity: Mapping[str, str], index: Mapping) -> str:
    """What a split's teacher image features depend on: the model's weights and the data (not prompts or descriptions)."""
    return fingerprint(dict(model_identity), dict(data_identity(index)), FEATURES_VERSION)


class FeatureParts:
    """Finished per-split image features of one teacher run, so that a killed run resumes.

    One safetensors file per ``<dataset>/<split>`` under ``root/<key>/`` (``key``:
    :func:`image_features_key`), each written atomically the moment the split is encoded. A rerun
    reuses every file whose key, split and row count match; a damaged one is logged and recomputed.
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


def _features_of(
    loaded: LoadedModel, key: str, split: GroupSplit, parts: FeatureParts | None, batch_size: int, device: torch.device
) -> torch.Tensor:
    """One split's image features: from a finished part when there is one, else encoded (and kept as a part)."""
    finished = parts.load(key, len(split)) if parts is not None else None
    if finished is not None:
        logger.info("teacher: reusing the finished features of %s (%d images) from %s", key, len(split), parts.folder)
        return finished
    features = split_features(loaded, split, batch_size, device)
    if parts is not None:
        parts.save(key, features)
    logger.info("teacher: encoded %d images of %s", len(split), key)
    return features


def _require_same(found: str, expected: str, message: str) -> None:
    if found != expected:
        raise StaleCacheError(message)


def check_trained_from(method: str, weights_fingerprint: str | None, teacher_model: Mapping, index: Mapping) -> None:
    """Fine-tuned weights must come from the current teacher cache, and that cache from the current data.

    ``weights_fingerprint`` is the cache fingerprint stored with the weights (None: not recorded);
    ``teacher_model`` is the teacher stage's record (``fingerprint``, ``data``).
    """
    rerun = f"Rerun `kedro run --pipeline=finetune` (or `--namespaces={method}`) before evaluating, or run `--pipeline=full`."
    if weights_fingerprint is not None:
        _require_same(
            weights_fingerprint, teacher_model["fingerprint"],
            f"the {method} weights were fine-tuned from the teacher cache {weights_fingerprint}, but the current "
            f"teacher cache is {teacher_model['fingerprint']} (other model weights, prompts, descriptions or data). {rerun}",
        )
    if "data" in teacher_model:
        _require_same(
            fingerprint(teacher_model["data"]), fingerprint(dict(data_identity(index))),
            "the teacher cache (and the models fine-tuned from it) was computed from other data than the current "
            "dataset index (the class_names stage ran since). Rerun `kedro run --pipeline=teacher`, then finetune.",
        )


def check_fresh(cache: TeacherCache, expected: str) -> None:
    if cache.fingerprint != expected:
        raise StaleCacheError(
            f"the teacher cache (fingerprint {cache.fingerprint}) was computed from other model weights, "
            f"prompts, descriptions or data than the current ones (fingerprint {expected}). "
            "Rerun `kedro run --pipeline=teacher` to refresh it."
        )


def split_features(
    loaded: LoadedModel, split: GroupSplit, batch_size: int, device: torch.device, num_workers: int = 0
) -> torch.Tensor:
    """Normalised image features of one split's un-augmented images."""
    images = load_split_images(split, loaded.image_size, num_workers=num_workers)
    pixels = normalise_images(images, loaded.image_mean, loaded.image_std)
    return encode_images(loaded.model, pixels, batch_size=batch_size, device=device)


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
) -> TeacherCache:
    """Run the frozen model once over every split, the class prompts and the descriptions.

    ``splits`` keys are ``"<dataset>/<split>"``; ``class_names`` and ``templates_by_dataset`` keys
    are data set names. With ``parts``, each split's features are kept as soon as they are
    computed and reused by a rerun (a killed run resumes; see :class:`FeatureParts`).
    """
    device = torch.device(device)
    model = loaded.model.to(device).eval()
    class_features = {
        dataset: zero_shot_head(model, loaded.tokenizer, names, templates_by_dataset[dataset], device=device).cpu()
        for dataset, names in class_names.items()
    }
    image_features, zero_shot_logits = {}, {}
    scale = float(logit_scale(model).detach())
    for key, split in splits.items():
        features = _features_of(loaded, key, split, parts, batch_size, device)
        image_features[key] = features
        zero_shot_logits[key] = scale * features @ class_features[key.split("/")[0]].T
    description_features = encode_texts(model, loaded.tokenizer, descriptions.texts, batch_size, device).cpu()
    return TeacherCache(
        image_features=image_features,
        class_features=class_features,
        description_features=description_features,
        description_labels=torch.tensor(descriptions.labels, dtype=torch.int64),
        zero_shot_logits=zero_shot_logits,
        logit_scale=scale,
        fingerprint=fingerprint_value,
    )
