"""Clean class names from a dataset's labels: a label→name mapping, an ImageFolder tree, or a CSV column."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

_LEADING_INDEX = re.compile(r"^\s*\d+[.\-_ ]+")  # "001.Black_footed_Albatross" → "Black_footed_Albatross"
_SEPARATORS = re.compile(r"[_\s]+")
_ALLOWED = re.compile(r"[^\w\s'\-&(),.]", re.UNICODE)
MAX_NAME_LENGTH = 80


class ClassNameError(ValueError):
    """Class names that cannot be used; the message says which label or name and why."""


def clean_class_name(raw: str) -> str:
    """Human-readable name: no numeric prefix, underscores as spaces, lower case, safe characters only.

    Names go into prompts (ours and the LLM's), so anything but letters, digits and light punctuation
    is dropped, and length is capped.
    """
    name = _LEADING_INDEX.sub("", str(raw))
    name = _ALLOWED.sub(" ", name.replace("_", " "))
    name = _SEPARATORS.sub(" ", name).strip().lower()
    return name[:MAX_NAME_LENGTH].strip()


def check_class_names(names: list[str], source: str) -> list[str]:
    """Reject an empty list, empty names and duplicates, naming the offending entries."""
    if not names:
        raise ClassNameError(f"{source}: no classes found")
    empty = [index for index, name in enumerate(names) if not name]
    if empty:
        raise ClassNameError(f"{source}: label(s) {empty} have an empty name after cleaning; give them a name")
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise ClassNameError(
                f"{source}: labels {seen[name]} and {index} both have the name {name!r}; class names must be unique"
            )
        seen[name] = index
    return names


def names_from_mapping(
    labels: Iterable[int],
    mapping: Mapping[int | str, str],
    source: str = "mapping",
    parameter: str = "class_names.datasets.<name>.mapping",
) -> list[str]:
    """Names for labels 0..max(labels) from ``mapping`` (keys may be ints or strings of ints).

    ``parameter`` is the key the mapping comes from, named in the error message.
    """
    by_label = {int(key): value for key, value in mapping.items()}
    present = sorted({int(label) for label in labels})
    if not present:
        raise ClassNameError(f"{source}: the label column is empty")
    if present[0] < 0:
        raise ClassNameError(f"{source}: negative label {present[0]}; labels must be 0..C-1")
    missing = [label for label in range(present[-1] + 1) if label not in by_label]
    if missing:
        raise ClassNameError(
            f"{source}: label(s) {missing} have no name; add them to the class-name mapping "
            f"(parameter {parameter}), e.g. {{{missing[0]}: <name>}}"
        )
    unused = sorted(set(by_label) - set(range(present[-1] + 1)))
    if unused:
        raise ClassNameError(
            f"{source}: mapping names label(s) {unused} that are not in the data (labels 0..{present[-1]})"
        )
    return check_class_names([clean_class_name(by_label[label]) for label in range(present[-1] + 1)], source)


def _metadata_lines(metadata_file: Path) -> dict[str, int]:
    """img_id → its line in ``metadata_file`` (header = line 1); {} when the file cannot be read."""
    try:
        ids = pd.read_csv(metadata_file, usecols=["img_id"], dtype=str)["img_id"]
    except (OSError, ValueError):
        return {}
    return {str(value).strip(): position + 2 for position, value in enumerate(ids)}


def check_labels_named(rows: pd.DataFrame, mapping: Mapping[int | str, str], parameter: str, limit: int = 5) -> None:
    """Raise when a row's label ``y`` has no name in ``mapping``, naming the file, line and img_id of the
    first ``limit`` such rows and the parameter to extend (``rows`` has ``y``, ``img_id``, ``img_filename``
    and the data set's ``root``, which holds its ``metadata.csv``)."""
    named = {int(key) for key in mapping}
    unnamed = rows[~rows["y"].astype(int).isin(named)]
    if unnamed.empty:
        return
    labels = sorted({int(label) for label in unnamed["y"]})
    places: list[str] = []
    for root, group in unnamed.groupby("root", sort=False):
        metadata_file = Path(str(root)) / "metadata.csv"
        lines = _metadata_lines(metadata_file)
        for row in group.head(limit - len(places)).itertuples():
            line = lines.get(str(row.img_id).strip())
            at = f"line {line} " if line else ""
            places.append(f"{metadata_file} {at}(img_id {row.img_id}, {row.img_filename!r}, y = {row.y})")
        if len(places) >= limit:
            break
    more = f" and {len(unnamed) - len(places)} more row(s)" if len(unnamed) > len(places) else ""
    raise ClassNameError(
        f"label(s) {labels} have no name in {parameter} (it names {sorted(named)}): "
        + "; ".join(places)
        + more
        + f". Fix the label in the file (labels are 0..C-1), or add the class to {parameter}, "
        f"e.g. {{{labels[0]}: <name>}}"
    )


def names_from_image_folder(root: str | Path) -> list[str]:
    """Names from an ImageFolder-style tree: one sub-directory per class, sorted as torchvision sorts them."""
    root = Path(root)
    if not root.is_dir():
        raise ClassNameError(f"{root}: not a directory; point class_names.image_folder at the tree of class folders")
    folders = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    return check_class_names([clean_class_name(folder) for folder in folders], str(root))


def names_from_csv(path: str | Path, name_column: str, label_column: str | None = None) -> list[str]:
    """Names from a CSV's ``name_column``, ordered by ``label_column`` when given, else by row."""
    path = Path(path)
    frame = pd.read_csv(path)
    for column in (name_column, label_column):
        if column is not None and column not in frame.columns:
            raise ClassNameError(f"{path}: no column {column!r} (columns: {list(frame.columns)})")
    if label_column is not None:
        return names_from_mapping(frame[label_column], dict(zip(frame[label_column], frame[name_column])), str(path))
    return check_class_names([clean_class_name(name) for name in frame[name_column].astype(str)], str(path))


def folder_name(value: object) -> str:
    """A class folder's name as read back from a CSV (``0.0`` → ``"0"`` for numbered folders)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def names_from_folders(folders: Sequence[str], class_map: str | Path | None = None) -> list[str]:
    """Names of ImageFolder classes in label order: the cleaned folder names, or a class map's names.

    ``class_map`` is a CSV with columns ``folder,name`` (e.g. ``n01440764,tench``), its rows in the
    canonical label order; a numbered folder ``k`` (ImageNet-V2's ``0`` … ``999``) is the map's row k.
    """
    if class_map is None:
        return check_class_names([clean_class_name(folder) for folder in folders], "class folders")
    path = Path(class_map)
    if not path.is_file():
        raise ClassNameError(
            f"class map {path} not found; give a CSV with columns folder,name (see conf/imagenet/parameters_class_names.yml)"
        )
    frame = pd.read_csv(path, dtype=str)
    for column in ("folder", "name"):
        if column not in frame.columns:
            raise ClassNameError(f"{path}: no column {column!r} (columns: {list(frame.columns)})")
    by_folder = dict(zip(frame["folder"], frame["name"]))
    names = []
    for folder in folders:
        if folder in by_folder:
            names.append(by_folder[folder])
        elif folder.isdigit() and int(folder) < len(frame):
            names.append(frame["name"].iloc[int(folder)])
        else:
            raise ClassNameError(f"{path}: class folder {folder!r} is not in the map; add a row {folder},<name>")
    return check_class_names([clean_class_name(name) for name in names], str(path))
