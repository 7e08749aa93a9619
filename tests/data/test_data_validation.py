"""Bad input data: every malformed metadata row, column, image and split gets a clear message or a counted skip.

Each test checks the message text (file, line, column or parameter named), not only that something
raised. Property-based tests (hypothesis) drive the metadata reader with valid and corrupted tables
and with arbitrary bytes.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from starft_pipeline.data.dataset_index import dataset_entry
from starft_pipeline.data.images import to_rgb
from starft_pipeline.data.metadata import (
    MAX_LISTED,
    METADATA_COLUMNS,
    CheckedMetadata,
    DataChecks,
    DataError,
    read_metadata,
    require_split_rows,
)
from starft_pipeline.data.splits import GroupSplit, check_groups_present, load_image
from starft_pipeline.pipelines.class_names.nodes import data_quality_metrics, prepare_checked_datasets

SKIP = DataChecks(bad_data="skip", source="datasets.mine")
STRICT = DataChecks(bad_data="error", source="datasets.mine")
NO_FILES = DataChecks(bad_data="error", check_images="none", source="datasets.mine")


def _image(path: Path, mode: str = "RGB", size: tuple[int, int] = (12, 10), color: Any = (10, 200, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format="TIFF" if path.suffix == ".tif" else "PNG")
    return path


def _row(img_id: int, name: str, y: Any = 0, split: Any = 0, place: Any = 0) -> dict[str, Any]:
    return {"img_id": img_id, "img_filename": name, "y": y, "split": split, "place": place, "place_filename": ""}


def _dataset(root: Path, rows: list[dict[str, Any]], images: bool = True, columns: list[str] | None = None) -> Path:
    """metadata.csv with ``rows`` (written by csv, so any text survives) and an RGB image per file name."""
    root.mkdir(parents=True, exist_ok=True)
    columns = columns or list(METADATA_COLUMNS)
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    for row in rows if images else []:
        name = str(row.get("img_filename", ""))
        if name.strip():
            _image(root / name)
    return root


def _good_rows(n: int = 6) -> list[dict[str, Any]]:
    return [_row(i, f"images/{i}.png", y=i % 2, split=i % 3, place=(i // 2) % 2) for i in range(n)]


# --- columns and file format -------------------------------------------------------------------------


def test_missing_column_names_the_column_and_file(tmp_path: Path) -> None:
    root = _dataset(tmp_path, _good_rows(), columns=["img_id", "img_filename", "y", "split", "place_filename"])
    with pytest.raises(DataError) as error:
        read_metadata(root, STRICT)
    assert "metadata.csv: missing column(s) ['place']" in str(error.value)
    assert str(root / "metadata.csv") in str(error.value)


def test_a_column_in_other_case_gets_a_hint(tmp_path: Path) -> None:
    rows = [{**row, "Y": row["y"]} for row in _good_rows()]
    root = _dataset(tmp_path, rows, columns=["img_id", "img_filename", "Y", "split", "place", "place_filename"])
    with pytest.raises(DataError, match=r"missing column\(s\) \['y'\].*case-sensitive: found 'Y' for 'y'"):
        read_metadata(root, STRICT)


def test_reserved_column_is_refused(tmp_path: Path) -> None:
    rows = [{**row, "path": "x"} for row in _good_rows()]
    root = _dataset(tmp_path, rows, columns=[*METADATA_COLUMNS, "path"])
    with pytest.raises(DataError, match=r"column\(s\) \['path'\] are added by the pipeline; rename or remove them"):
        read_metadata(root, STRICT)


def test_extra_columns_are_kept_with_a_warning_or_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [{**row, "note": "n", "Unnamed: 0": i} for i, row in enumerate(_good_rows())]
    root = _dataset(tmp_path, rows, columns=[*METADATA_COLUMNS, "note", "Unnamed: 0"])
    with caplog.at_level(logging.WARNING, logger="starft_pipeline.data.splits"):
        frame = read_metadata(root, STRICT).frame
    assert "note" in frame.columns
    assert (
        "extra column(s) ['note', 'Unnamed: 0'] are kept but not used (datasets.mine.extra_columns: ignore)"
        in caplog.text
    )
    with pytest.raises(
        DataError,
        match=r"unexpected column\(s\) \['note', 'Unnamed: 0'\]; remove them, or set "
        r"`datasets.mine.extra_columns: ignore`",
    ):
        read_metadata(root, DataChecks(extra_columns="error", source="datasets.mine"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty; it needs a header line"),
        (
            b"img_id,img_filename,y,split,place,place_filename\n0,a.png,0,0,0,\n1,b.png,0,0,0,,extra,cells\n",
            "is not a well-formed CSV file",
        ),
        (
            "img_id,img_filename,y,split,place,place_filename\n0,caf\u00e9.png,0,0,0,\n".encode("latin-1"),
            "is not UTF-8 text",
        ),
    ],
    ids=["empty", "ragged", "latin-1"],
)
def test_unreadable_csv_is_a_data_error(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "metadata.csv").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_metadata(tmp_path, NO_FILES)


def test_missing_metadata_file_says_where_to_point(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"metadata.csv not found. Point the dataset root parameter"):
        read_metadata(tmp_path / "nowhere")


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    root = _dataset(tmp_path, _good_rows())
    (root / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + (root / "metadata.csv").read_bytes())
    assert len(read_metadata(root, STRICT).frame) == 6


# --- bad rows ------------------------------------------------------------------------------------------

BAD_ROWS = {
    "unknown_split": (
        _row(10, "images/10.png", split=7),
        "line 8 (img_id 10, 'images/10.png'): unknown split code 7; use 0=train, 1=val, 2=test",
    ),
    "label_text": (
        _row(10, "images/10.png", y="bird"),
        "line 8 (img_id 10, 'images/10.png'): column 'y' holds 'bird', not an integer",
    ),
    "label_empty": (_row(10, "images/10.png", y=""), "column 'y' holds '', not an integer"),
    "label_fraction": (_row(10, "images/10.png", y="1.5"), "column 'y' holds '1.5', not an integer"),
    "label_negative": (
        _row(10, "images/10.png", y=-1),
        "label_out_of_range: line 8 (img_id 10, 'images/10.png'): column 'y' is -1; labels and places count from 0",
    ),
    "place_negative": (
        _row(10, "images/10.png", place=-2),
        "place_out_of_range: line 8 (img_id 10, 'images/10.png'): column 'place' is -2",
    ),
    "split_text": (_row(10, "images/10.png", split="train"), "column 'split' holds 'train', not an integer"),
    "empty_filename": (_row(10, "   "), "column 'img_filename' is empty"),
    "duplicate_id": (
        _row(3, "images/10.png"),
        "duplicate_img_id: line 8 (img_id 3, 'images/10.png'): img_id 3 is also on line 5",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_row_is_named_with_its_line_and_the_way_out(tmp_path: Path, case: str) -> None:
    bad, expected = BAD_ROWS[case]
    root = _dataset(tmp_path, [*_good_rows(), bad])
    with pytest.raises(DataError) as error:
        read_metadata(root, STRICT)
    message = str(error.value)
    assert expected in message
    assert "1 of 7 row(s) are unusable" in message
    assert "set `datasets.mine.bad_data: skip` to leave them out" in message and "skipped_items.csv" in message


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_row_is_skipped_and_reported_under_skip(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad, _ = BAD_ROWS[case]
    root = _dataset(tmp_path, [*_good_rows(), bad])
    with caplog.at_level(logging.WARNING, logger="starft_pipeline.data.splits"):
        checked = read_metadata(root, SKIP)
    assert len(checked.frame) == 6 and list(checked.frame["img_id"]) == list(range(6))
    assert [issue.line for issue in checked.skipped] == [8]
    assert "skipping 1 bad row(s) (datasets.mine.bad_data: skip)" in caplog.text


def test_the_error_lists_at_most_five_rows_per_reason(tmp_path: Path) -> None:
    rows = [*_good_rows(), *(_row(100 + i, f"images/{100 + i}.png", split=9) for i in range(8))]
    root = _dataset(tmp_path, rows)
    with pytest.raises(DataError) as error:
        read_metadata(root, STRICT)
    message = str(error.value)
    assert "8 of 14 row(s) are unusable (8 unknown_split)" in message
    assert message.count("unknown_split: line") == MAX_LISTED and "… and 3 more" in message


def test_labels_beyond_the_class_names_name_the_data_set_and_span() -> None:
    rows = pd.DataFrame([_row(i, f"{i}.png", y=y) for i, y in enumerate([0, 1, 5])])
    with pytest.raises(
        DataError, match=r"data set 'mine': labels span 0..5 but 2 class names are configured .*labels must be 0..1"
    ):
        dataset_entry(rows, ["cat", "dog"], ["any"], ["a photo of a {c}."], "mine")


# --- files and images -------------------------------------------------------------------------------


def test_a_missing_image_file_is_named_with_a_hint(tmp_path: Path) -> None:
    root = _dataset(tmp_path, _good_rows())
    rows = [*_good_rows(), _row(6, "images/gone.png"), _row(7, "images/0.png ")]
    _dataset(tmp_path, rows, images=False)
    with pytest.raises(DataError) as error:
        read_metadata(root, STRICT)
    message = str(error.value)
    assert (
        f"missing_file: line 8 (img_id 6, 'images/gone.png'): image file '{root / 'images/gone.png'}' does not exist"
        in message
    )
    assert "the name has leading/trailing spaces" in message


def test_corrupt_and_truncated_images_are_named(tmp_path: Path) -> None:
    root = _dataset(tmp_path, _good_rows(4))
    (root / "images" / "junk.png").write_bytes(b"not an image at all")
    whole = (_image(root / "images" / "big.png", size=(64, 64), color=(1, 2, 3))).read_bytes()
    (root / "images" / "cut.png").write_bytes(whole[: len(whole) // 2])
    _dataset(tmp_path, [*_good_rows(4), _row(4, "images/junk.png"), _row(5, "images/cut.png")], images=False)
    with pytest.raises(DataError) as error:
        read_metadata(root, DataChecks(check_images="decode", source="datasets.mine"))
    message = str(error.value)
    assert (
        "unreadable_image: line 6 (img_id 4, 'images/junk.png')" in message and "cannot identify image file" in message
    )
    assert "unreadable_image: line 7 (img_id 5, 'images/cut.png')" in message and "truncated" in message
    # headers only: the truncated file passes the check, and decoding it later names it
    checked = read_metadata(root, DataChecks(check_images="header", bad_data="skip", source="datasets.mine"))
    assert [issue.img_filename for issue in checked.skipped] == ["images/junk.png"]
    with pytest.raises(
        DataError, match=r"image file '.*cut.png' cannot be decoded \(OSError: .*truncated.*\). Replace it"
    ):
        load_image(root / "images" / "cut.png", 8)


def test_an_image_removed_after_the_check_is_named_at_load_time(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"image file '.*gone.png' does not exist \(it was listed in the data set's metadata\)"
    ):
        load_image(tmp_path / "gone.png", 8)


@pytest.mark.parametrize(
    ("name", "mode", "color", "expected"),
    [
        ("gray", "L", 128, (128, 128, 128)),
        ("bilevel", "1", 1, (255, 255, 255)),
        ("gray_alpha", "LA", (0, 0), (255, 255, 255)),  # fully transparent → white background
        ("rgba_transparent", "RGBA", (255, 0, 0, 0), (255, 255, 255)),
        ("rgba_half", "RGBA", (255, 0, 0, 128), (255, 127, 127)),
        ("rgba_opaque", "RGBA", (255, 0, 0, 255), (255, 0, 0)),
        ("cmyk", "CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("gray16", "I;16", 32896, (128, 128, 128)),  # 16-bit: / 257, not clipped to white
        ("int32", "I", 1000, (4, 4, 4)),
        ("float", "F", 100.0, (100, 100, 100)),
    ],
)
def test_every_image_mode_becomes_rgb(
    tmp_path: Path, name: str, mode: str, color: Any, expected: tuple[int, ...]
) -> None:
    suffix = ".tif" if mode in ("I", "F", "CMYK") else ".png"
    path = _image(tmp_path / f"{name}{suffix}", mode, (8, 8), color)
    image = load_image(path, 8)
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8)
    assert tuple(int(v) for v in image[:, 4, 4]) == pytest.approx(expected, abs=2)


def test_a_palette_image_with_a_transparent_colour_is_composited(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png")
    assert tuple(int(v) for v in load_image(tmp_path / "p.png", 8)[:, 0, 0]) == (255, 255, 255)
    assert to_rgb(Image.open(tmp_path / "p.png")).mode == "RGB"


UNUSUAL_NAMES = [
    "with space.png",
    "caf\u00e9 \u65e5\u672c.png",
    "NA.png",
    "null",
    "1e5.png",
    'comma, quote".png',
    "#hash.png",
    "sub dir/nested.png",
    "-dash.png",
]


def test_unusual_file_names_are_read_verbatim_and_load(tmp_path: Path) -> None:
    rows = [_row(i, name, split=i % 3) for i, name in enumerate(UNUSUAL_NAMES)]
    root = _dataset(tmp_path, rows)
    frame = read_metadata(root, DataChecks(check_images="decode")).frame
    assert list(frame["img_filename"]) == UNUSUAL_NAMES
    for name in UNUSUAL_NAMES:
        assert load_image(root / name, 8).shape == (3, 8, 8)


# --- splits and groups --------------------------------------------------------------------------------


def test_an_empty_split_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _dataset(tmp_path, [_row(i, f"images/{i}.png", split=0) for i in range(3)])
    with caplog.at_level(logging.WARNING, logger="starft_pipeline.data.splits"):
        read_metadata(root, STRICT)
    assert "split(s) ['val', 'test'] have no rows; nothing is trained or evaluated on them" in caplog.text


def test_no_usable_rows_left_is_an_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path, [_row(i, f"images/{i}.png", split=5) for i in range(3)])
    with pytest.raises(
        DataError, match=r"no usable rows left \(3 bad: 3 unknown_split\); the data set datasets.mine needs"
    ):
        read_metadata(root, SKIP)


def test_a_finetune_dataset_without_train_rows_is_named() -> None:
    metadata = pd.DataFrame({"dataset": ["mine", "mine"], "split": [1, 2]})
    with pytest.raises(
        DataError, match=r"data set 'mine' has no train rows \(split code 0\), but fine-tuning needs them"
    ):
        require_split_rows(metadata, "mine", "train", "fine-tuning")


def _split(groups: list[int]) -> GroupSplit:
    groups_array = np.asarray(groups)
    return GroupSplit(
        "test", tuple(Path(f"{i}.png") for i in groups), groups_array // 2, groups_array % 2, groups_array
    )


def test_a_group_without_samples_stops_evaluation_or_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    names = ["cat on land", "cat on water", "dog on land", "dog on water"]
    with pytest.raises(
        DataError,
        match=r"mine/test: group\(s\) \['dog on land'\] have no samples.*"
        r"`evaluation.allow_empty_groups: true`",
    ):
        check_groups_present(_split([0, 1, 3, 3]), names, "mine/test", allow_empty=False)
    with caplog.at_level(logging.WARNING, logger="starft_pipeline.data.splits"):
        assert check_groups_present(_split([0, 1, 3, 3]), names, "mine/test", allow_empty=True) == ["dog on land"]
    assert "reported with n = 0 (evaluation.allow_empty_groups)" in caplog.text


def test_an_empty_group_is_reported_with_n_zero_when_allowed() -> None:
    from starft_pipeline.evaluate.results import BootstrapSettings, split_report

    class Layout:
        class_names = ("cat", "dog")
        group_names = ("cat on land", "cat on water", "dog on land", "dog on water")
        train_group_counts = (10, 5, 5, 10)

    y = np.array([0, 0, 1, 1])
    report = split_report(
        "m",
        "mine/test",
        y,
        y,
        np.array([0, 1, 3, 3]),
        Layout(),
        "generic",
        BootstrapSettings(n_resamples=20),
        allow_empty_groups=True,
    )
    empty = [row for row in report["groups"] if row["n"] == 0]
    assert len(empty) == 1 and report["results"][0]["worst_group_acc"] == 1.0


# --- the class_names stage: skipped-items report and MLflow counts ------------------------------------


def test_the_stage_reports_skipped_rows_and_counts_them(tmp_path: Path) -> None:
    root = _dataset(
        tmp_path / "mine", [*_good_rows(), _row(10, "images/gone.png"), _row(11, "images/3.png", split=4)], images=False
    )
    for row in _good_rows():
        _image(root / row["img_filename"])
    config = {"mine": {"root": str(root), "generate": None, "bad_data": "skip"}}
    metadata, skipped = prepare_checked_datasets(config)
    assert len(metadata) == 6
    assert skipped[["dataset", "line", "reason"]].values.tolist() == [
        ["mine", 8, "missing_file"],
        ["mine", 9, "unknown_split"],
    ]
    metrics = data_quality_metrics(metadata, skipped)
    assert metrics["mine.skipped"]["value"] == 2.0  # logged as data.mine.skipped (the catalog's prefix)
    assert metrics["mine.skipped.missing_file"]["value"] == 1.0
    assert metrics["mine.train.images"]["value"] == 2.0
    with pytest.raises(DataError, match=r"datasets.mine.bad_data: skip"):
        prepare_checked_datasets({"mine": {**config["mine"], "bad_data": "error"}})


def test_a_bad_checks_value_names_the_parameter() -> None:
    with pytest.raises(DataError, match=r"datasets.mine.bad_data is 'ignore'; use one of \['error', 'skip'\]"):
        DataChecks.from_config({"bad_data": "ignore"}, "datasets.mine")


# --- property-based tests of the metadata reader -------------------------------------------------------

_NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))
_names = st.text(_NAME_CHARS, min_size=1, max_size=20).filter(lambda name: name.strip() != "")
_valid_rows = st.lists(
    st.tuples(_names, st.integers(0, 5), st.integers(0, 2), st.integers(0, 3)), min_size=1, max_size=25
).map(lambda rows: [_row(i * 3 + 1, name, y, split, place) for i, (name, y, split, place) in enumerate(rows)])

_CORRUPTIONS = {
    "unknown_split": lambda row: {**row, "split": 3},
    "bad_value": lambda row: {**row, "y": "x"},
    "place_out_of_range": lambda row: {**row, "place": -1},
    "duplicate_img_id": lambda row: {**row, "img_id": 0},  # row 0 keeps id 0 (see _with_corruptions)
}


def _write(folder: str, rows: list[dict[str, Any]], order: list[int]) -> Path:
    return _dataset(Path(folder), [rows[i] for i in order], images=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_valid_rows, data=st.data())
def test_valid_tables_round_trip_in_img_id_order(rows: list[dict[str, Any]], data: st.DataObject) -> None:
    order = data.draw(st.permutations(range(len(rows))))
    with tempfile.TemporaryDirectory() as folder:
        checked = read_metadata(_write(folder, rows, order), NO_FILES)
    assert checked.skipped == ()
    expected = sorted(rows, key=lambda row: row["img_id"])
    assert checked.frame["img_filename"].tolist() == [row["img_filename"] for row in expected]
    for column in ("img_id", "y", "split", "place"):
        assert checked.frame[column].tolist() == [row[column] for row in expected]
        assert checked.frame[column].dtype == np.int64


def _with_corruptions(
    rows: list[dict[str, Any]], picks: list[tuple[int, str]]
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Row 0 becomes id 0 (so the duplicate corruption has a first); corrupted rows by file line."""
    rows = [{**rows[0], "img_id": 0}, *rows[1:]]
    corrupted = {}
    for position, reason in picks:
        if position == 0 or position >= len(rows) or position + 2 in corrupted:
            continue
        rows[position] = _CORRUPTIONS[reason](rows[position])
        corrupted[position + 2] = reason
    return rows, corrupted


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=_valid_rows, picks=st.lists(st.tuples(st.integers(0, 24), st.sampled_from(sorted(_CORRUPTIONS))), max_size=8)
)
def test_corrupted_rows_are_exactly_the_skipped_or_named_ones(
    rows: list[dict[str, Any]], picks: list[tuple[int, str]]
) -> None:
    rows, corrupted = _with_corruptions(rows, picks)
    with tempfile.TemporaryDirectory() as folder:
        root = _write(folder, rows, list(range(len(rows))))
        checked = read_metadata(root, DataChecks(bad_data="skip", check_images="none"))
        error = None
        if corrupted:
            with pytest.raises(DataError) as error:
                read_metadata(root, NO_FILES)
    assert {issue.line: issue.reason for issue in checked.skipped} == corrupted
    assert sorted(checked.frame["img_id"]) == sorted(
        row["img_id"] for i, row in enumerate(rows) if i + 2 not in corrupted
    )
    if error is not None:
        message = str(error.value)
        assert f"{len(corrupted)} of {len(rows)} row(s) are unusable" in message
        for line in sorted(corrupted)[:MAX_LISTED]:
            assert f"line {line} " in message


@settings(max_examples=60, deadline=None)
@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda text: text.encode("utf-8"))))
def test_arbitrary_bytes_give_a_table_or_a_data_error(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "metadata.csv").write_bytes(b"img_id,img_filename,y,split,place,place_filename\n" + content)
        try:
            checked = read_metadata(folder, DataChecks(bad_data="skip", check_images="none"))
        except DataError as error:
            assert str(folder / "metadata.csv") in str(error)
            return
    assert isinstance(checked, CheckedMetadata) and len(checked.frame) > 0
    assert checked.frame["split"].isin([0, 1, 2]).all() and (checked.frame["y"] >= 0).all()
