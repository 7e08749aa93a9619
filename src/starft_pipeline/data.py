"""Group-shift data in the Waterbirds release format, and image loading.

One reader serves the real Waterbirds release and the embedded synthetic default: a dataset root
holding ``metadata.csv`` (columns ``img_id, img_filename, y, split, place, place_filename``) with
image paths relative to the root. Group ``g = y · n_places + place`` (``2y + place`` for Waterbirds).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

METADATA_COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}


class DataError(ValueError):
    """Bad input data; the message names the file, row or column and says how to fix it."""


@dataclass(frozen=True)
class GroupSplit:
    """The samples of one split: image paths, labels, places and groups (numpy arrays)."""

    name: str
    paths: tuple[Path, ...]
    labels: np.ndarray
    places: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


def read_metadata(root: str | Path, metadata_file: str = "metadata.csv") -> pd.DataFrame:
    """Read and check a release-format ``metadata.csv``; returns it sorted by ``img_id``."""
    path = Path(root) / metadata_file
    if not path.is_file():
        raise DataError(
            f"{path} not found. Point the dataset root parameter at the folder that holds "
            f"{metadata_file} (the Waterbirds release layout), or generate the synthetic default."
        )
    frame = pd.read_csv(path)
    missing = [column for column in METADATA_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; expected {list(METADATA_COLUMNS)} "
            f"(found {list(frame.columns)})"
        )
    for column in ("y", "split", "place"):
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise DataError(f"{path}: column {column!r} must hold integers, found dtype {frame[column].dtype}")
    unknown = sorted(set(frame["split"].unique()) - set(SPLIT_CODES.values()))
    if unknown:
        row = int(frame.index[frame["split"].isin(unknown)][0])
        raise DataError(
            f"{path}: unknown split code(s) {unknown} (first at row {row + 2}); use 0=train, 1=val, 2=test"
        )
    return frame.sort_values("img_id", kind="stable").reset_index(drop=True)


def n_places_of(frame: pd.DataFrame) -> int:
    return int(frame["place"].max()) + 1


def n_classes_of(frame: pd.DataFrame) -> int:
    return int(frame["y"].max()) + 1


def split_of(frame: pd.DataFrame, root: str | Path, split: str, n_places: int) -> GroupSplit:
    """The rows of one split, with absolute image paths and group ids."""
    if split not in SPLIT_CODES:
        raise DataError(f"unknown split {split!r}; use one of {list(SPLIT_CODES)}")
    rows = frame[frame["split"] == SPLIT_CODES[split]]
    labels = rows["y"].to_numpy(dtype=np.int64)
    places = rows["place"].to_numpy(dtype=np.int64)
    return GroupSplit(
        name=split,
        paths=tuple(Path(root) / name for name in rows["img_filename"]),
        labels=labels,
        places=places,
        groups=labels * n_places + places,
    )


def group_counts(groups: np.ndarray, n_groups: int) -> np.ndarray:
    return np.bincount(groups, minlength=n_groups).astype(np.int64)


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """Decode one image as RGB uint8 (3, S, S): shorter side resized to S, centre-cropped (CLIP's preprocessing)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        scale = image_size / min(width, height)
        if scale != 1.0:
            size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC)
        width, height = image.size
        left, top = (width - image_size) // 2, (height - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
        array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class ImageFileDataset(Dataset):
    """Lazily decoded images of a split; item = (uint8 image, label, group, index)."""

    def __init__(self, split: GroupSplit, image_size: int) -> None:
        self.split = split
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        image = load_image(self.split.paths[index], self.image_size)
        return image, int(self.split.labels[index]), int(self.split.groups[index]), index


def load_split_images(split: GroupSplit, image_size: int, num_workers: int = 0, batch_size: int = 256) -> torch.Tensor:
    """Decode every image of a split into one uint8 tensor (N, 3, S, S), in the split's order."""
    if len(split) == 0:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
    loader = DataLoader(
        ImageFileDataset(split, image_size), batch_size=batch_size, num_workers=num_workers, shuffle=False
    )
    return torch.cat([images for images, *_ in loader])


def normalise_images(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float, scaled to [0, 1] and standardised with the model's mean/std."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t
