"""Release-format metadata: reading ``metadata.csv`` and checking it, its rows and its image files.

One reader serves the real Waterbirds release and the embedded synthetic default: a dataset root
holding ``metadata.csv`` (columns ``img_id, img_filename, y, split, place, place_filename``) with
image paths relative to the root. Group ``g = y · n_places + place`` (``2y + place`` for Waterbirds).

User-assembled data is checked up front (:func:`read_metadata`, :func:`check_image_files`): columns,
every row's values, the image files. A bad row is an error naming its line, or, with
``bad_data: skip``, left out and returned for the skipped-items report (:class:`DataChecks`).
The ImageFolder reader and image loading are in :mod:`starft_pipeline.data.splits`. No Kedro here.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from starft_pipeline.data.images import image_problem

logger = logging.getLogger(__name__)

METADATA_COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}


class DataError(ValueError):
    """Bad input data; the message names the file, row or column and says how to fix it."""


BadDataPolicy = Literal["error", "skip"]
ExtraColumns = Literal["ignore", "error"]
ImageCheck = Literal["auto", "decode", "header", "exists", "none"]
#: ``check_images: auto`` decodes every image of a data set up to this many rows, else reads headers only.
AUTO_DECODE_LIMIT = 20_000
#: Columns the pipeline adds; a metadata.csv must not bring its own.
RESERVED_COLUMNS = ("dataset", "root", "path")
INTEGER_COLUMNS = ("img_id", "y", "split", "place")
#: Columns of the skipped-items report (``data/02_intermediate/skipped_items.csv``).
SKIPPED_COLUMNS = ("dataset", "line", "img_id", "img_filename", "split", "reason", "detail")
#: Examples listed per reason in an error message.
MAX_LISTED = 5
_SKIP_REPORT = "skipped_items.csv"


@dataclass(frozen=True)
class DataChecks:
    """How one data set's rows and images are checked (parameters ``datasets.<name>.*``).

    ``bad_data``: ``error`` stops with a message naming every bad row (up to :data:`MAX_LISTED` per
    reason); ``skip`` drops them, logs a warning and returns them for the skipped-items report.
    ``extra_columns``: columns beyond the release's six are kept and listed in a warning (``ignore``)
    or refused (``error``). ``check_images``: ``decode`` reads every pixel (catches truncation),
    ``header`` opens each file, ``exists`` only looks for it, ``auto`` decodes up to
    :data:`AUTO_DECODE_LIMIT` rows and reads headers above. ``source`` names the parameter block
    in messages.
    """

    bad_data: BadDataPolicy = "error"
    extra_columns: ExtraColumns = "ignore"
    check_images: ImageCheck = "auto"
    source: str = "metadata"

    def __post_init__(self) -> None:
        for name, kind in (("bad_data", BadDataPolicy), ("extra_columns", ExtraColumns), ("check_images", ImageCheck)):
            allowed = get_args(kind)
            if getattr(self, name) not in allowed:
                raise DataError(f"{self.source}.{name} is {getattr(self, name)!r}; use one of {list(allowed)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str) -> DataChecks:
        """The checks of a ``datasets.<name>`` parameter block (absent keys keep their defaults)."""
        keys = ("bad_data", "extra_columns", "check_images")
        return cls(**{key: config[key] for key in keys if config.get(key) is not None}, source=source)


@dataclass(frozen=True)
class RowIssue:
    """One bad row: where it is (``line`` of metadata.csv, header = 1; None for image folders) and why."""

    line: int | None
    img_id: str
    img_filename: str
    split: str
    reason: str
    detail: str

    def describe(self) -> str:
        where = (
            f"line {self.line} (img_id {self.img_id}, {self.img_filename!r})" if self.line else repr(self.img_filename)
        )
        return f"{where}: {self.detail}"


@dataclass(frozen=True)
class CheckedMetadata:
    """The usable rows of a data set and the rows skipped (empty under ``bad_data: error``)."""

    frame: pd.DataFrame
    skipped: tuple[RowIssue, ...] = ()


def read_metadata(
    root: str | Path, checks: DataChecks = DataChecks(), metadata_file: str = "metadata.csv"
) -> CheckedMetadata:
    """Read and check a release-format ``metadata.csv``; rows sorted by ``img_id``.

    Every cell is read as text first (so a file named ``NA`` or ``1e5.png`` stays a name), then the
    integer columns are parsed. Rows with a non-integer, an unknown split code, a negative
    label or place, an empty file name, a repeated ``img_id``, a missing file or an unreadable image
    are bad rows, handled by ``checks.bad_data``.
    """
    path = Path(root) / metadata_file
    if not path.is_file():
        raise DataError(
            f"{path} not found. Point the dataset root parameter at the folder that holds "
            f"{metadata_file} (the Waterbirds release layout), or generate the synthetic default."
        )
    raw = _checked_columns(_read_csv(path), path, checks)
    frame, issues = _parse_rows(raw)
    paths = [Path(root) / name for name in frame["img_filename"]]
    checked = check_image_files(frame, paths, checks, str(path), issues)
    return CheckedMetadata(checked.frame.sort_values("img_id", kind="stable").reset_index(drop=True), checked.skipped)


def _read_csv(path: Path) -> pd.DataFrame:
    """Every cell as text (empty cells as ""), a byte-order mark dropped, column names stripped."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=False)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path} is empty; it needs a header line {list(METADATA_COLUMNS)} and one row per image"
        ) from None
    except pd.errors.ParserError as error:
        raise DataError(f"{path} is not a well-formed CSV file: {error}") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error}); save it as UTF-8") from None
    return frame.fillna("").rename(columns=lambda column: str(column).strip())  # short rows: "" cells


def _checked_columns(frame: pd.DataFrame, path: Path, checks: DataChecks) -> pd.DataFrame:
    """Missing release columns and reserved names are errors; extra columns follow ``extra_columns``."""
    missing = [column for column in METADATA_COLUMNS if column not in frame.columns]
    if missing:
        lower = {str(column).lower(): column for column in frame.columns}
        hints = [f"{lower[name]!r} for {name!r}" for name in missing if name in lower]
        hint = f" (column names are case-sensitive: found {', '.join(hints)})" if hints else ""
        raise DataError(
            f"{path}: missing column(s) {missing}; expected {list(METADATA_COLUMNS)} (found {list(frame.columns)}){hint}"
        )
    reserved = [column for column in RESERVED_COLUMNS if column in frame.columns]
    if reserved:
        raise DataError(f"{path}: column(s) {reserved} are added by the pipeline; rename or remove them")
    extra = [column for column in frame.columns if column not in METADATA_COLUMNS]
    if extra and checks.extra_columns == "error":
        raise DataError(
            f"{path}: unexpected column(s) {extra}; remove them, or set `{checks.source}.extra_columns: ignore` to keep them"
        )
    if extra:
        logger.warning(
            "%s: extra column(s) %s are kept but not used (%s.extra_columns: ignore)", path, extra, checks.source
        )
    return frame


def _integer_column(values: pd.Series) -> pd.Series:
    """Integers parsed from text (``"3"``, ``" 3 "``, ``"3.0"``); anything else is NaN."""
    numbers = pd.to_numeric(values.str.strip(), errors="coerce")
    whole = numbers.notna() & np.isfinite(numbers) & (numbers == np.round(numbers))
    return numbers.where(whole)


def _row_issue(row: pd.Series, line: int | None, reason: str, detail: str) -> RowIssue:
    return RowIssue(line, str(row["img_id"]), str(row["img_filename"]), str(row["split"]), reason, detail)


def _row_checks(raw: pd.DataFrame, parsed: pd.DataFrame) -> list[tuple[pd.Series, str, Callable[[int], str]]]:
    """(bad-row mask, reason, detail of row i) in the order a row's first problem is reported."""

    def not_integer(column: str) -> Callable[[int], str]:
        return lambda i: f"column {column!r} holds {raw[column].iloc[i]!r}, not an integer"

    def negative(column: str) -> Callable[[int], str]:
        return lambda i: f"column {column!r} is {int(parsed[column].iloc[i])}; labels and places count from 0"

    return [
        *((parsed[column].isna(), "bad_value", not_integer(column)) for column in INTEGER_COLUMNS),
        (
            ~parsed["split"].isin(list(SPLIT_NAMES)),
            "unknown_split",
            lambda i: f"unknown split code {int(parsed['split'].iloc[i])}; use 0=train, 1=val, 2=test",
        ),
        (parsed["y"] < 0, "label_out_of_range", negative("y")),
        (parsed["place"] < 0, "place_out_of_range", negative("place")),
        (raw["img_filename"].str.strip() == "", "bad_value", lambda i: "column 'img_filename' is empty"),
    ]


def _parse_rows(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[RowIssue]]:
    """Integer columns parsed; rows with a bad value, unknown split, negative label/place or repeated id set aside.

    Each bad row is reported once, with its first problem. The frame keeps the file line in ``_line``.
    """
    parsed = raw.assign(**{column: _integer_column(raw[column]) for column in INTEGER_COLUMNS})
    flagged = np.zeros(len(raw), dtype=bool)
    issues = []
    for mask, reason, detail in _row_checks(raw, parsed):
        new = mask.to_numpy(dtype=bool) & ~flagged
        issues += [_row_issue(raw.iloc[i], i + 2, reason, detail(i)) for i in np.flatnonzero(new).tolist()]
        flagged |= new
    ids = parsed["img_id"].where(~flagged)
    repeated = (ids.duplicated(keep="first") & ~flagged).to_numpy()
    first_line = {int(value): position + 2 for position, value in ids[~flagged & ~repeated].items()}
    issues += [
        _row_issue(
            raw.iloc[i],
            i + 2,
            "duplicate_img_id",
            f"img_id {int(ids.iloc[i])} is also on line {first_line[int(ids.iloc[i])]}",
        )
        for i in np.flatnonzero(repeated)
    ]
    keep = np.flatnonzero(~flagged & ~repeated)
    frame = parsed.iloc[keep].astype({column: np.int64 for column in INTEGER_COLUMNS})
    return frame.assign(_line=keep + 2), sorted(issues, key=lambda issue: issue.line or 0)


def _missing_file_detail(path: Path) -> str:
    """Why a listed image is not there, with a hint for the usual naming slips."""
    name = path.name
    hints = []
    if name != name.strip():
        hints.append("the name has leading/trailing spaces")
    if "\\" in str(path):
        hints.append("use / as the folder separator, not \\")
    for form in ("NFC", "NFD"):
        variant = path.with_name(unicodedata.normalize(form, name))
        if variant != path and variant.is_file():
            hints.append(f"a file with the {form}-normalised name exists")
    return f"image file {str(path)!r} does not exist" + (f" ({'; '.join(hints)})" if hints else "")


def _file_problem(path: Path, mode: str) -> tuple[str, str] | None:
    if not path.is_file():
        return "missing_file", _missing_file_detail(path)
    if mode in ("decode", "header"):
        problem = image_problem(path, full_decode=mode == "decode")
        if problem:
            return "unreadable_image", f"image file {str(path)!r} cannot be decoded ({problem})"
    return None


def _image_check_mode(checks: DataChecks, n_rows: int) -> str:
    if checks.check_images != "auto":
        return checks.check_images
    return "decode" if n_rows <= AUTO_DECODE_LIMIT else "header"


def check_image_files(
    frame: pd.DataFrame,
    paths: Sequence[Path],
    checks: DataChecks,
    origin: str,
    issues: Sequence[RowIssue] = (),
) -> CheckedMetadata:
    """Check the image of every row (``checks.check_images``), then apply ``checks.bad_data`` to all issues.

    ``paths`` are the rows' image paths in ``frame`` order; ``issues`` are problems found before
    (rows already left out of ``frame``). ``origin`` (the metadata file or image tree) heads messages.
    A data set left without rows is an error; empty splits are logged.
    """
    mode = _image_check_mode(checks, len(frame))
    found = list(issues)
    keep = []
    problems = _file_problems(paths, mode)
    for position, problem in enumerate(problems):
        if problem is None:
            keep.append(position)
            continue
        row = frame.iloc[position]
        found.append(_row_issue(row, int(row["_line"]) if "_line" in frame else None, *problem))
    found.sort(key=lambda issue: (issue.line or 0, issue.img_filename))
    if found and checks.bad_data == "error":
        raise DataError(_bad_rows_message(origin, found, checks, len(frame) + len(issues)))
    if found:
        logger.warning(
            "%s: skipping %d bad row(s) (%s.bad_data: skip): %s",
            origin,
            len(found),
            checks.source,
            _reason_counts(found),
        )
    kept = frame.iloc[keep].drop(columns="_line", errors="ignore").reset_index(drop=True)
    if kept.empty:
        raise DataError(
            f"{origin}: no usable rows left ({len(found)} bad: {_reason_counts(found)}); "
            f"the data set {checks.source} needs at least one image"
        )
    _log_empty_splits(kept, origin)
    return CheckedMetadata(kept, tuple(found))


def _file_problems(paths: Sequence[Path], mode: str) -> list[tuple[str, str] | None]:
    """One file check per path; a few threads, since opening files is mostly waiting on the disk."""
    if mode == "none":
        return [None] * len(paths)
    if len(paths) < 64:
        return [_file_problem(Path(path), mode) for path in paths]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        return list(pool.map(lambda path: _file_problem(Path(path), mode), paths, chunksize=64))


def _reason_counts(issues: Sequence[RowIssue]) -> str:
    counts = Counter(issue.reason for issue in issues)
    return ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))


def _bad_rows_message(origin: str, issues: Sequence[RowIssue], checks: DataChecks, n_rows: int) -> str:
    """Every reason with a count and up to :data:`MAX_LISTED` rows each, and the two ways out."""
    lines = [f"{origin}: {len(issues)} of {n_rows} row(s) are unusable ({_reason_counts(issues)}):"]
    for reason in sorted({issue.reason for issue in issues}):
        of_reason = [issue for issue in issues if issue.reason == reason]
        lines += [f"  - {reason}: {issue.describe()}" for issue in of_reason[:MAX_LISTED]]
        if len(of_reason) > MAX_LISTED:
            lines.append(f"  - {reason}: … and {len(of_reason) - MAX_LISTED} more")
    lines.append(
        f"Fix these rows, or set `{checks.source}.bad_data: skip` to leave them out "
        f"(skipped rows are listed in {_SKIP_REPORT} and counted in MLflow)."
    )
    return "\n".join(lines)


def split_sizes(frame: pd.DataFrame) -> dict[str, int]:
    """Rows per split name (every split listed, 0 when empty)."""
    counts = frame["split"].value_counts()
    return {name: int(counts.get(code, 0)) for name, code in SPLIT_CODES.items()}


def _log_empty_splits(frame: pd.DataFrame, origin: str) -> None:
    empty = [name for name, size in split_sizes(frame).items() if size == 0]
    if empty:
        logger.warning("%s: split(s) %s have no rows; nothing is trained or evaluated on them", origin, empty)


def skipped_table(skipped: Mapping[str, Sequence[RowIssue]]) -> pd.DataFrame:
    """The skipped-items report: one row per skipped row of every data set (columns :data:`SKIPPED_COLUMNS`)."""
    rows = [{"dataset": dataset, **asdict(issue)} for dataset, issues in skipped.items() for issue in issues]
    return pd.DataFrame(rows, columns=list(SKIPPED_COLUMNS))


def data_quality_counts(metadata: pd.DataFrame, skipped: pd.DataFrame) -> dict[str, int]:
    """Per data set: images used per split and rows skipped per reason (``<dataset>.<split>.images``,
    ``<dataset>.skipped``, ``<dataset>.skipped.<reason>``)."""
    counts: dict[str, int] = {}
    for dataset, rows in metadata.groupby("dataset", sort=False):
        counts |= {f"{dataset}.{split}.images": size for split, size in split_sizes(rows).items()}
        of_dataset = skipped[skipped["dataset"] == dataset]
        counts[f"{dataset}.skipped"] = len(of_dataset)
        counts |= {f"{dataset}.skipped.{reason}": int(n) for reason, n in of_dataset["reason"].value_counts().items()}
    return counts


def require_split_rows(metadata: pd.DataFrame, dataset: str, split: str, role: str) -> None:
    """Raise when ``dataset`` has no rows in ``split``, saying which stage needs them (``role``)."""
    rows = metadata[(metadata["dataset"] == dataset) & (metadata["split"] == SPLIT_CODES[split])]
    if rows.empty:
        raise DataError(
            f"data set {dataset!r} has no {split} rows (split code {SPLIT_CODES[split]}), but {role} needs them. "
            f"Check the split column of its metadata, and the skipped rows in {_SKIP_REPORT}."
        )
