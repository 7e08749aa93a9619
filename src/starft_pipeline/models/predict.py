"""Classify a folder of images with any fine-tuned model (or the zero-shot teacher) and write a CSV.

``python -m starft_pipeline.models.predict --model star --images path/to/folder --out preds.csv`` in the
project root, or ``kedro run --pipelines=predict --params predict.model=star,predict.images=<folder>``.
``--model`` is a method name (its weights ``data/06_models/<method>.safetensors``), ``zero_shot``
(the teacher), or an exported open_clip checkpoint with its ``_classifier.safetensors`` beside it
(then no project data is needed). Images are decoded, classified and written in batches; the CSV
has ``file`` (relative to the folder), ``predicted_class`` and one probability column per class.
No Kedro here.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from starft_pipeline.core.io_utils import atomic_path
from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.data.dataset_index import eval_task
from starft_pipeline.data.metadata import DataError
from starft_pipeline.data.splits import load_image, normalise_images
from starft_pipeline.models.clip import (
    LoadedModel,
    ModelSpec,
    create_model,
    encode_images,
    load_state_dict,
    resolve_device,
)
from starft_pipeline.models.export import classifier_path, dataset_classifier, read_classifier
from starft_pipeline.models.heads import ZERO_SHOT, ClassifierHead, split_heads

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
FILE_COLUMN, PREDICTED_COLUMN = "file", "predicted_class"
#: Where the project's stages write what a method name needs (relative to the project root).
TEACHER_MODEL_FILE = Path("data/04_feature/teacher_model.json")
DATASET_INDEX_FILE = Path("data/02_intermediate/dataset_index.json")
MODELS_DIR = Path("data/06_models")
#: Skipped (undecodable) files named in the warning.
MAX_LISTED_SKIPPED = 5
logger = logging.getLogger(__name__)


@dataclass
class ImageClassifier:
    """A model's image tower and a linear head over its normalised image features."""

    loaded: LoadedModel
    head: ClassifierHead
    device: torch.device

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C) of uint8 images (N, 3, S, S), on the CPU."""
        pixels = normalise_images(images, self.loaded.image_mean, self.loaded.image_std)
        features = encode_images(self.loaded.model.to(self.device), pixels, device=self.device)
        return self.head.logits(features).softmax(dim=-1)


def is_checkpoint_path(model: str) -> bool:
    return model.endswith(".safetensors") or "/" in model or "\\" in model


def exported_classifier(checkpoint: str | Path, device: torch.device) -> ImageClassifier:
    """An exported open_clip checkpoint and the classifier beside it (architecture from the classifier)."""
    checkpoint, classifier_file = Path(checkpoint), classifier_path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"model checkpoint {str(checkpoint)!r} does not exist")
    if not classifier_file.is_file():
        raise FileNotFoundError(
            f"{str(checkpoint)!r} has no classifier beside it ({classifier_file.name}); give a checkpoint written by "
            "`kedro run --pipelines=export` (data/06_models/open_clip/<method>.safetensors), or a method name"
        )
    bundle = TensorBundle.load(classifier_file)
    head = read_classifier(bundle, str(classifier_file))
    spec = ModelSpec(
        bundle.metadata["architecture"],
        pretrained=str(checkpoint),
        pretrained_tag=bundle.metadata.get("pretrained_tag"),
    )
    loaded = create_model(spec, device=device)  # the tag the teacher came from: its preprocessing
    return ImageClassifier(loaded, head, device)


def project_classifier(
    model: str,
    teacher_model: dict[str, Any],
    dataset_index: dict[str, Any],
    dataset: str | None = None,
    models_dir: str | Path = MODELS_DIR,
    device: torch.device | str = "cpu",
) -> ImageClassifier:
    """A method's fine-tuned weights (or ``zero_shot``: the teacher) with the classifier evaluation uses
    for ``dataset``'s classes (default: the fine-tuning data set): its learned head if it knows them,
    else the zero-shot head from the model's own text tower."""
    device = torch.device(device)
    loaded = create_model(ModelSpec(**teacher_model["spec"]), device=device)
    heads: dict[str, ClassifierHead] = {}
    if model != ZERO_SHOT:
        weights_file = Path(models_dir) / f"{model}.safetensors"
        if not weights_file.is_file():
            raise FileNotFoundError(
                f"no weights for model {model!r} ({weights_file}): train it with "
                f"`kedro run --pipelines=finetune --namespaces={model}`, or give `zero_shot` or an exported checkpoint file"
            )
        weights = TensorBundle.load(weights_file)
        state_dict, heads = split_heads(weights.tensors, weights.metadata)
        load_state_dict(loaded.model, state_dict, source=str(weights_file))
    task = eval_task(dataset_index, dataset or dataset_index["finetune_dataset"])
    head, _ = dataset_classifier(loaded, heads, task.class_names, task.templates, device)
    return ImageClassifier(loaded, head, device)


def load_classifier(
    model: str,
    teacher_model: dict[str, Any] | None,
    dataset_index: dict[str, Any] | None,
    dataset: str | None = None,
    models_dir: str | Path = MODELS_DIR,
    device: torch.device | str = "cpu",
) -> ImageClassifier:
    """``model`` as a path (an exported checkpoint) or a name (a method, ``zero_shot``; needs the
    teacher record and the dataset index)."""
    if is_checkpoint_path(model):
        return exported_classifier(model, torch.device(device))
    if teacher_model is None or dataset_index is None:
        raise ValueError(f"model {model!r} is a name: give the teacher record and the dataset index")
    return project_classifier(model, teacher_model, dataset_index, dataset, models_dir, device)


def image_files(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (recursively, by suffix), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(
            f"images folder {str(folder)!r} does not exist or is not a folder (predict.images / --images)"
        )
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {str(folder)!r}")
    return files


def _decodable(files: Sequence[Path], loaded: LoadedModel, skipped: list[str]) -> tuple[list[Path], list[torch.Tensor]]:
    """The files of a batch that decode, with their images; the others' paths appended to ``skipped``."""
    kept, images = [], []
    for path in files:
        try:
            images.append(load_image(path, loaded.image_size, loaded.interpolation, loaded.resize_mode))
        except DataError:
            skipped.append(str(path))
            continue
        kept.append(path)
    return kept, images


def predictions(classifier: ImageClassifier, folder: str | Path, batch_size: int = 256) -> Iterator[pd.DataFrame]:
    """One table per batch of images: ``file`` (relative to ``folder``), ``predicted_class``, a probability per class.

    A file that cannot be decoded (corrupt, truncated, not an image) is skipped; the skipped files are
    counted in a warning at the end that names the first few. A folder with no decodable image is an error.
    """
    folder, names = Path(folder), list(classifier.head.class_names)
    files = image_files(folder)
    skipped: list[str] = []
    for start in range(0, len(files), batch_size):
        batch, images = _decodable(files[start : start + batch_size], classifier.loaded, skipped)
        if not batch:
            continue
        probabilities = classifier.probabilities(torch.stack(images))
        table = pd.DataFrame(probabilities.numpy().astype("float64"), columns=names)
        table.insert(0, PREDICTED_COLUMN, [names[i] for i in probabilities.argmax(dim=1).tolist()])
        table.insert(0, FILE_COLUMN, [path.relative_to(folder).as_posix() for path in batch])
        yield table
    if len(skipped) == len(files):
        raise DataError(
            f"none of the {len(files)} image files under {str(folder)!r} can be decoded (first: {skipped[0]!r}); "
            "check that predict.images / --images points at a folder of images"
        )
    if skipped:
        listed = ", ".join(repr(path) for path in skipped[:MAX_LISTED_SKIPPED])
        more = f" and {len(skipped) - MAX_LISTED_SKIPPED} more" if len(skipped) > MAX_LISTED_SKIPPED else ""
        logger.warning(
            "%d of %d image files under %s cannot be decoded and were skipped (not in the predictions): %s%s",
            len(skipped),
            len(files),
            folder,
            listed,
            more,
        )


def write_predictions(tables: Iterator[pd.DataFrame], out: str | Path) -> int:
    """Stream the tables into one CSV (written atomically); returns the number of rows."""
    rows = 0
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        for table in tables:
            table.to_csv(handle, header=rows == 0, index=False, quoting=csv.QUOTE_MINIMAL)
            rows += len(table)
    return rows


def _read_json(path: Path, stage: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; run `kedro run --pipelines={stage}` first (or give an exported checkpoint)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m starft_pipeline.models.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--model", required=True, help="a method (star, flyp, ft …), zero_shot, or an exported checkpoint file"
    )
    parser.add_argument("--images", required=True, help="a folder of images (read recursively)")
    parser.add_argument("--out", required=True, help="the CSV to write")
    parser.add_argument(
        "--dataset", default=None, help="whose class names and templates (default: the fine-tuning data set)"
    )
    parser.add_argument("--project", default=".", help="the project root, for method names (default: .)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    root = Path(args.project)
    named = not is_checkpoint_path(args.model)
    teacher_model = _read_json(root / TEACHER_MODEL_FILE, "teacher") if named else None
    dataset_index = _read_json(root / DATASET_INDEX_FILE, "class_names") if named else None
    classifier = load_classifier(
        args.model, teacher_model, dataset_index, args.dataset, root / MODELS_DIR, resolve_device(args.device)
    )
    rows = write_predictions(predictions(classifier, args.images, args.batch_size), args.out)
    print(f"{rows} images classified into {len(classifier.head.class_names)} classes: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
