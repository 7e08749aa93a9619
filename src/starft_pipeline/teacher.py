"""The frozen zero-shot teacher, run once: what the StarFT regulariser and the evaluation need.

Teacher *logits* depend on the batch (which descriptions, which labels), so the cache holds
*embeddings* (DESIGN.md §1): image features per split (of the un-augmented image), description
features, class-prompt features, and zero-shot logits. A fingerprint of model + prompts + data
makes a stale cache an error rather than a silent mistake.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .data import GroupSplit, load_split_images, normalise_images
from .dataset_index import class_prompts, data_identity
from .descriptions import DescriptionPool
from .io_utils import fingerprint
from .models import LoadedModel, encode_images, encode_texts, logit_scale, zero_shot_head
from .tensor_bundle import TensorBundle

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
) -> TeacherCache:
    """Run the frozen model once over every split, the class prompts and the descriptions.

    ``splits`` keys are ``"<dataset>/<split>"``; ``class_names`` and ``templates_by_dataset`` keys
    are data set names.
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
        features = split_features(loaded, split, batch_size, device)
        image_features[key] = features
        zero_shot_logits[key] = scale * features @ class_features[key.split("/")[0]].T
        logger.info("teacher: encoded %d images of %s", len(split), key)
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
