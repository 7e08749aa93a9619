"""Where a configured data set's rows come from: the data formats (``datasets.<name>.format``).

* ``release`` (the default): Waterbirds' release format, ``<root>/metadata.csv`` (img_id,
  img_filename, y, split, place) with the images under ``<root>``; ``generate`` writes a synthetic
  one there first (idempotent).
* ``image_folder``: one ImageFolder tree per split (``roots: {split: folder}``, a class per
  sub-folder), read by ``splits.read_image_folder_splits``.

Every format ends in the same checked frame (``metadata.CheckedMetadata``, a ``root`` column added),
rows checked by ``bad_data`` and the other ``DataChecks``. docs/data-at-scale.md. No Kedro here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from starft_pipeline.data import synthetic
from starft_pipeline.data.metadata import CheckedMetadata, DataChecks, DataError, check_image_files, read_metadata
from starft_pipeline.data.splits import read_image_folder_splits

logger = logging.getLogger(__name__)

DataFormat = Literal["release", "image_folder"]
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)


def ensure_generated(name: str, root: Path, generate: Any) -> None:
    """Write the synthetic data set when the parameters ask for one (idempotent)."""
    if generate is None:
        return
    spec = (
        synthetic.DEFAULT_SPECS[generate] if isinstance(generate, str) else synthetic.GroupShiftSpec.from_dict(generate)
    )
    synthetic.write_group_shift_dataset(spec, root)
    logger.info("data set %r: synthetic images in %s", name, root)


def read_dataset(name: str, config: Mapping[str, Any]) -> CheckedMetadata | None:
    """One data set's checked metadata with a ``root`` column; None when an ``optional`` one is absent.

    ``format: release`` (default) reads ``<root>/metadata.csv``; ``format: image_folder`` reads an
    ImageFolder tree per split from ``roots: {split: path}``. Bad rows follow ``bad_data`` (metadata.DataChecks).
    """
    optional = bool(config.get("optional", False))
    data_format = config.get("format", "release")
    checks = DataChecks.from_config(config, f"datasets.{name}")
    if data_format == "image_folder":
        frame = read_image_folder_splits(config["roots"], optional, f"datasets.{name}.roots")
        if frame is None:
            return None
        paths = [Path(root) / filename for root, filename in zip(frame["root"], frame["img_filename"])]
        return check_image_files(frame, paths, checks, f"datasets.{name}.roots")
    if data_format not in DATA_FORMATS:
        raise DataError(f"datasets.{name}.format is {data_format!r}; use release (metadata.csv) or image_folder")
    root = Path(config["root"])
    ensure_generated(name, root, config.get("generate"))
    if optional and not (root / "metadata.csv").is_file():
        logger.warning("datasets.%s.root: %s has no metadata.csv; skipping it (the data set is optional)", name, root)
        return None
    checked = read_metadata(root, checks)
    return CheckedMetadata(checked.frame.assign(root=str(root)), checked.skipped)
