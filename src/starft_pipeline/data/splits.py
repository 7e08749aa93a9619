"""Data sets as splits of images: the ImageFolder reader, splits with group ids, image loading.

A data set's rows are release-format metadata (:mod:`starft_pipeline.data.metadata` reads and checks
``metadata.csv``; :func:`read_image_folder` makes the same rows from a tree of class folders);
:func:`split_of` turns one split into image paths, labels, places and groups, and
:func:`load_split_images` / :func:`load_image` decode them. No Kedro here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from starft_pipeline.data.images import DECODE_ERRORS, decode_rgb, resize_and_crop
from starft_pipeline.data.metadata import SPLIT_CODES, DataError

logger = logging.getLogger(__name__)


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


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def _folder_order(name: str) -> tuple[int, int, str]:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def class_folders_of(root: str | Path) -> list[str]:
    """Class sub-folders of an ImageFolder tree in label order: sorted as torchvision sorts them,
    except that numbered folders (ImageNet-V2's 0 … 999) go by number."""
    folders = [entry.name for entry in Path(root).iterdir() if entry.is_dir() and not entry.name.startswith(".")]
    return sorted(folders, key=_folder_order)


def read_image_folder(root: str | Path, split: str, class_folders: Sequence[str] | None = None) -> pd.DataFrame:
    """An ImageFolder tree (one sub-folder per class) as release-format metadata.

    ``y`` is the folder's index in ``class_folders`` (default: this tree's own folders), ``place``
    is 0, ``split`` the given split, ``img_filename`` relative to ``root``; the extra column
    ``class_folder`` keeps the folder name (e.g. a WordNet id) for naming the classes.
    """
    root = Path(root)
    if split not in SPLIT_CODES:
        raise DataError(f"unknown split {split!r} for image folder {root}; use one of {list(SPLIT_CODES)}")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; point the image-folder root at the tree of class folders")
    folders = list(class_folders) if class_folders is not None else class_folders_of(root)
    unknown = sorted(set(class_folders_of(root)) - set(folders))
    if unknown:
        raise DataError(f"{root}: class folder(s) {unknown[:5]} are not among the data set's classes")
    rows = [
        (path.relative_to(root).as_posix(), label, folder)
        for label, folder in enumerate(folders)
        if (root / folder).is_dir()
        for path in sorted((root / folder).rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not rows:
        raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class sub-folders")
    filenames, labels, names = zip(*rows)
    return pd.DataFrame(
        {
            "img_id": range(len(rows)),
            "img_filename": filenames,
            "y": labels,
            "split": SPLIT_CODES[split],
            "place": 0,
            "place_filename": "",
            "class_folder": names,
        }
    )


def read_image_folder_splits(
    roots: dict[str, str | Path], optional: bool = False, source: str = "roots"
) -> pd.DataFrame | None:
    """One data set made of an ImageFolder tree per split (``{split: root}``), labelled consistently
    (the union of the trees' class folders), with a ``root`` column. A missing root is an error
    naming the parameter ``source.<split>``, or, for an ``optional`` data set, skipped with a
    warning; None when no root of an optional data set exists."""
    present = {}
    for split, root in roots.items():
        if Path(root).is_dir():
            present[split] = Path(root)
        elif optional:
            logger.warning("%s.%s: %s not found; skipping it (the data set is optional)", source, split, root)
        else:
            raise DataError(
                f"{source}.{split}: {root} is not a directory. Point it at the tree of class folders, "
                "or mark the data set `optional: true` to skip it when absent."
            )
    if not present:
        return None
    folders = sorted(set().union(*(class_folders_of(root) for root in present.values())), key=_folder_order)
    frame = pd.concat(
        [read_image_folder(root, split, folders).assign(root=str(root)) for split, root in present.items()],
        ignore_index=True,
    )
    return frame.assign(img_id=range(len(frame)))


def n_places_of(frame: pd.DataFrame) -> int:
    return int(frame["place"].max()) + 1


def n_classes_of(frame: pd.DataFrame) -> int:
    return int(frame["y"].max()) + 1


def split_of(frame: pd.DataFrame, root: str | Path, split: str, n_places: int) -> GroupSplit:
    """The rows of one split, with absolute image paths and group ids."""
    if split not in SPLIT_CODES:
        raise DataError(f"unknown split {split!r}; use one of {list(SPLIT_CODES)}")
    rows = frame[frame["split"] == SPLIT_CODES[split]]
    labels = rows["y"].to_numpy(dtype=np.int64, copy=True)
    places = rows["place"].to_numpy(dtype=np.int64, copy=True)
    return GroupSplit(
        name=split,
        paths=tuple(Path(root) / name for name in rows["img_filename"]),
        labels=labels,
        places=places,
        groups=labels * n_places + places,
    )


def group_counts(groups: np.ndarray, n_groups: int) -> np.ndarray:
    return np.bincount(groups, minlength=n_groups).astype(np.int64)


def check_groups_present(split: GroupSplit, group_names: Sequence[str], label: str, allow_empty: bool) -> list[str]:
    """The names of the groups with no sample in ``split`` (``label``: ``<dataset>/<split>``).

    Worst-group and adjusted averages are undefined over an empty group, so one is an error unless
    ``allow_empty`` (parameter ``evaluation.allow_empty_groups``); then it is logged, reported with
    n = 0 and left out of the worst-group and mean-over-groups figures.
    """
    counts = group_counts(split.groups, len(group_names))
    empty = [str(group_names[group]) for group in np.flatnonzero(counts == 0).tolist()]
    if empty and not allow_empty:
        raise DataError(
            f"{label}: group(s) {empty} have no samples, so worst-group and adjusted averages are undefined. "
            "Add samples of those groups, evaluate other splits (evaluation.splits), or set "
            "`evaluation.allow_empty_groups: true` to report them with n = 0 and leave them out of worst-group "
            "and mean-over-groups accuracy (the adjusted average is renormalised over the groups present)."
        )
    if empty:
        logger.warning(
            "%s: group(s) %s have no samples; reported with n = 0 (evaluation.allow_empty_groups)", label, empty
        )
    return empty


def load_image(
    path: Path | IO[bytes], image_size: int, interpolation: str = "bicubic", resize_mode: str = "shortest"
) -> torch.Tensor:
    """Decode one image as RGB uint8 (3, S, S), sized as open_clip's eval transform does
    (:func:`~starft_pipeline.data.images.resize_and_crop`; default: shorter side resized to S,
    bicubic, centre-cropped, CLIP's preprocessing).

    Any PIL mode is accepted (:mod:`starft_pipeline.data.images`); a file that cannot be decoded is a
    :class:`DataError` naming it.
    """
    try:
        image = decode_rgb(path)
    except FileNotFoundError:
        raise DataError(f"image file {str(path)!r} does not exist (it was listed in the data set's metadata)") from None
    except DECODE_ERRORS as error:
        raise DataError(
            f"image file {str(path)!r} cannot be decoded ({type(error).__name__}: {error}). Replace it, or rerun "
            "the class_names stage with `check_images: decode` and `bad_data: skip` for its data set to leave it out."
        ) from None
    array = np.asarray(resize_and_crop(image, image_size, interpolation, resize_mode), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class ImageFileDataset(Dataset):
    """Lazily decoded images of a split; item = (uint8 image, label, group, index).

    ``interpolation`` and ``resize_mode``: the weights' preprocessing (:func:`load_image`).
    """

    def __init__(
        self, split: GroupSplit, image_size: int, interpolation: str = "bicubic", resize_mode: str = "shortest"
    ) -> None:
        self.split = split
        self.image_size = image_size
        self.interpolation = interpolation
        self.resize_mode = resize_mode

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        image = load_image(self.split.paths[index], self.image_size, self.interpolation, self.resize_mode)
        return image, int(self.split.labels[index]), int(self.split.groups[index]), index


def load_split_images(
    split: GroupSplit,
    image_size: int,
    num_workers: int = 0,
    batch_size: int = 256,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
) -> torch.Tensor:
    """Decode every image of a split into one uint8 tensor (N, 3, S, S), in the split's order."""
    if len(split) == 0:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
    dataset = ImageFileDataset(split, image_size, interpolation, resize_mode)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    return torch.cat([images for images, *_ in loader])


def normalise_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float, scaled to [0, 1] and standardised with the model's mean/std."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t
