"""Class-name extraction and cleaning."""

import pytest

from starft_pipeline.data.class_names import (
    ClassNameError,
    clean_class_name,
    names_from_csv,
    names_from_image_folder,
    names_from_mapping,
)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("001.Black_footed_Albatross", "black footed albatross"),
        ("n01440764 tench", "n01440764 tench"),
        ("  Great_White__Shark ", "great white shark"),
        ("waterbird", "waterbird"),
        ("bad\nname{x}", "bad name x"),
    ],
)
def test_clean_class_name(raw, clean):
    assert clean_class_name(raw) == clean


def test_names_from_mapping_accepts_string_keys():
    assert names_from_mapping([0, 1, 1, 0], {"0": "landbird", "1": "waterbird"}) == ["landbird", "waterbird"]


def test_label_without_a_name_is_named():
    with pytest.raises(ClassNameError, match=r"label\(s\) \[2\] have no name"):
        names_from_mapping([0, 1, 2], {0: "a", 1: "b"})


def test_duplicate_names_are_named():
    with pytest.raises(ClassNameError, match="labels 0 and 1 both have the name 'bird'"):
        names_from_mapping([0, 1], {0: "Bird", 1: "bird"})


def test_no_classes_is_an_error():
    with pytest.raises(ClassNameError, match="label column is empty"):
        names_from_mapping([], {0: "a"})


def test_image_folder_sorted_and_cleaned(tmp_path):
    for folder in ("002.Laysan_Albatross", "001.Black_footed_Albatross", ".hidden"):
        (tmp_path / folder).mkdir()
    assert names_from_image_folder(tmp_path) == ["black footed albatross", "laysan albatross"]


def test_empty_image_folder_is_an_error(tmp_path):
    with pytest.raises(ClassNameError, match="no classes found"):
        names_from_image_folder(tmp_path)


def test_csv_with_label_column(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_text("label,name\n1,Water_Bird\n0,Land_Bird\n")
    assert names_from_csv(path, "name", "label") == ["land bird", "water bird"]


def test_csv_missing_column_is_named(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_text("label,title\n0,a\n")
    with pytest.raises(ClassNameError, match="no column 'name'"):
        names_from_csv(path, "name")
