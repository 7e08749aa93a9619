"""Tests for the procedural synthetic world (rendering, captions, corpus, group-shift data sets)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from starft_pipeline.data.synthetic import (
    BACKGROUND_CAPTION_TEMPLATES,
    BACKGROUNDS,
    CAPTION_TEMPLATES,
    COLOURS,
    DEFAULT_SPECS,
    LAND_BACKGROUNDS,
    METADATA_COLUMNS,
    OBJECT_CAPTION_TEMPLATES,
    OBJECTS,
    WATER_BACKGROUNDS,
    Caption,
    GroupShiftSpec,
    describe,
    pretraining_corpus,
    render_background,
    render_image,
    render_images,
    split_group_counts,
    train_place_counts,
    write_group_shift_dataset,
)

SMALL_SPEC = GroupShiftSpec(
    name="small",
    object_ids=(0, 2, 4),
    background_ids=(1, 3, 5),
    train_per_class=40,
    val_per_group=2,
    test_per_group=3,
    correlation=0.8,
    seed=3,
    image_size=16,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_group_shift_dataset(SMALL_SPEC, tmp_path_factory.mktemp("small"))


# ---------------------------------------------------------------- world and rendering


def test_world_has_six_distinct_objects_and_backgrounds() -> None:
    assert len(OBJECTS) == len(set(OBJECTS)) == 6
    assert len(BACKGROUNDS) == len(set(BACKGROUNDS)) == 6
    assert "water" in WATER_BACKGROUNDS and set(BACKGROUNDS) == LAND_BACKGROUNDS | WATER_BACKGROUNDS


@pytest.mark.parametrize("size", [16, 32, 48])
def test_render_shapes_and_dtypes(size: int) -> None:
    assert render_image(1, 2, _rng(), size).shape == (size, size, 3)
    assert render_image(1, 2, _rng(), size).dtype == np.uint8
    assert render_background(4, _rng(), size).shape == (size, size, 3)
    batch = render_images([0, 5, 3], [1, 4, 0], _rng(), size)
    assert batch.shape == (3, size, size, 3) and batch.dtype == np.uint8


def test_render_is_deterministic_and_seed_dependent() -> None:
    a = render_images(np.arange(6), np.arange(6)[::-1], _rng(7))
    b = render_images(np.arange(6), np.arange(6)[::-1], _rng(7))
    c = render_images(np.arange(6), np.arange(6)[::-1], _rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_render_rejects_bad_ids_and_lengths() -> None:
    with pytest.raises(ValueError, match="object_id"):
        render_image(len(OBJECTS), 0, _rng())
    with pytest.raises(ValueError, match="background_id"):
        render_image(0, -1, _rng())
    with pytest.raises(ValueError, match="length"):
        render_images([0, 1], [0], _rng())


@pytest.mark.parametrize("object_id", range(len(OBJECTS)))
@pytest.mark.parametrize("background_id", range(len(BACKGROUNDS)))
def test_every_object_is_visible_on_every_background(object_id: int, background_id: int) -> None:
    # Against the same-seed background, the object's ~30 most changed pixels must differ strongly
    # (L1 over RGB); the smallest objects cover ~45 full pixels at 32 px.
    for seed in range(4):
        image = render_image(object_id, background_id, _rng(seed)).astype(np.int32)
        background = render_background(background_id, _rng(seed)).astype(np.int32)
        diff = np.sort(np.abs(image - background).sum(axis=-1).ravel())
        assert diff[-30] > 100, (OBJECTS[object_id], BACKGROUNDS[background_id], seed, diff[-30])


def test_backgrounds_differ_from_each_other() -> None:
    means = np.stack([render_background(b, _rng(b)).reshape(-1, 3).mean(0) for b in range(len(BACKGROUNDS))])
    gaps = np.abs(means[:, None] - means[None]).sum(-1) + np.eye(len(BACKGROUNDS)) * 1e9
    assert gaps.min() > 40


# ---------------------------------------------------------------- captions


def test_caption_templates_have_the_right_slots() -> None:
    assert len(CAPTION_TEMPLATES) >= 8
    assert all("{object}" in t and "{background}" in t for t in CAPTION_TEMPLATES)
    assert all("{object}" in t and "{background}" not in t for t in OBJECT_CAPTION_TEMPLATES)
    assert all("{background}" in t and "{object}" not in t for t in BACKGROUND_CAPTION_TEMPLATES)
    assert "a photo of a {object}." in OBJECT_CAPTION_TEMPLATES  # the usual zero-shot prompt


def test_captions_name_their_concepts() -> None:
    rng = _rng(1)
    for o in range(len(OBJECTS)):
        for b in range(len(BACKGROUNDS)):
            caption = describe(o, b, rng, single_concept_prob=0.0).text
            assert OBJECTS[o] in caption and BACKGROUNDS[b] in caption
    captions = [describe(2, 3, rng).text for _ in range(300)]
    assert all(OBJECTS[2] in c or BACKGROUNDS[3] in c for c in captions)
    assert len(set(captions)) >= 10  # varied phrasings
    assert any(OBJECTS[2] not in c for c in captions) and any(BACKGROUNDS[3] not in c for c in captions)


def test_a_caption_knows_which_concepts_it_names() -> None:
    rng = _rng(2)
    for _ in range(300):
        caption = describe(1, 4, rng, single_concept_prob=0.9, colour_id=3, colour_prob=0.5)
        assert (caption.object_id is not None) == (OBJECTS[1] in caption.text)
        assert (caption.background_id is not None) == (BACKGROUNDS[4] in caption.text)
        assert (caption.colour_id is not None) == (COLOURS[3] in caption.text)
        assert caption.describes(1, 4, 3)
    colour_only = [describe(1, 4, _rng(k), 1.0, 3, 0.0001) for k in range(60)]
    named = {(c.object_id, c.background_id, c.colour_id) for c in colour_only}
    assert named == {(1, None, None), (None, 4, None), (None, None, 3)}  # one concept each, all three kinds


def test_describes_compares_only_the_named_concepts() -> None:
    circle = Caption("a circle.", 0, None, None)
    assert circle.describes(0, 5, 2) and not circle.describes(1, 5, 2)
    magenta_circle_on_water = Caption("a magenta circle on water.", 0, 1, 0)
    assert magenta_circle_on_water.describes(0, 1, 0)
    assert not magenta_circle_on_water.describes(0, 1, 2) and not magenta_circle_on_water.describes(0, 2, 0)


# ---------------------------------------------------------------- pretraining corpus


def test_corpus_is_balanced_and_deterministic() -> None:
    corpus = pretraining_corpus(110, seed=5, image_size=16)
    assert corpus.images.shape == (110, 16, 16, 3) and corpus.images.dtype == np.uint8
    assert len(corpus) == len(corpus.captions) == 110
    counts = np.zeros((len(OBJECTS), len(BACKGROUNDS)), dtype=int)
    np.add.at(counts, (corpus.object_ids, corpus.background_ids), 1)
    assert counts.min() == 110 // 36 and counts.max() - counts.min() <= 1
    again = pretraining_corpus(110, seed=5, image_size=16)
    np.testing.assert_array_equal(corpus.images, again.images)
    assert corpus.captions == again.captions
    assert not np.array_equal(corpus.images, pretraining_corpus(110, seed=6, image_size=16).images)


def test_corpus_rejects_empty() -> None:
    with pytest.raises(ValueError, match="n must"):
        pretraining_corpus(0, seed=0)


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("object_ids", ()),
        ("object_ids", (0, 99)),
        ("object_ids", (1, 1)),
        ("object_ids", ("circle", "hexagon")),
        ("background_ids", ()),
        ("background_ids", (-1,)),
        ("train_per_class", 0),
        ("val_per_group", 0),
        ("test_per_group", -2),
        ("correlation", 1.5),
        ("correlation", -0.1),
        ("seed", -1),
        ("image_size", 4),
    ],
)
def test_spec_validation_names_the_field(field: str, value: object) -> None:
    params = {
        "name": "t",
        "object_ids": (0, 1),
        "background_ids": (0, 1),
        "train_per_class": 10,
        "val_per_group": 1,
        "test_per_group": 1,
    }
    params[field] = value
    with pytest.raises(ValueError, match=field):
        GroupShiftSpec(**params)


def test_spec_accepts_names_and_lists() -> None:
    spec = GroupShiftSpec.from_dict(
        {
            "name": "named",
            "object_ids": ["ring", "star"],
            "background_ids": [5, "water"],
            "train_per_class": 10,
            "val_per_group": 1,
            "test_per_group": 1,
        }
    )
    assert spec.object_ids == (4, 5) and spec.background_ids == (5, 1)
    assert spec.class_names == ["ring", "star"] and spec.place_names == ["forest", "water"]
    with pytest.raises(ValueError, match="unknown fields"):
        GroupShiftSpec.from_dict({"name": "x", "colour": 1})


@pytest.mark.parametrize("correlation", [0.0, 0.001, 0.5, 0.8, 0.95, 0.99, 1.0])
def test_train_counts_follow_the_correlation_rule(correlation: float) -> None:
    spec = GroupShiftSpec("c", (0, 1, 2), (0, 1), train_per_class=101, val_per_group=1, test_per_group=1,
                          correlation=correlation)  # fmt: skip
    counts = train_place_counts(spec)
    assert (counts.sum(axis=1) == 101).all()
    for y in range(3):
        major = y % 2
        assert abs(counts[y, major] - correlation * 101) <= 1
        if 0 < correlation < 1:
            assert counts[y].min() >= 1
        minority = np.delete(counts[y], major)
        assert minority.max() - minority.min() <= 1


def test_default_specs() -> None:
    finetune, wb = DEFAULT_SPECS["finetune"], DEFAULT_SPECS["waterbirds_like"]
    assert (finetune.n_classes, finetune.n_places) == (4, 4)
    assert (wb.n_classes, wb.n_places) == (2, 2)
    assert not set(finetune.object_ids) & set(wb.object_ids)
    assert wb.place_names[0] in LAND_BACKGROUNDS and wb.place_names[1] in WATER_BACKGROUNDS
    for spec in (finetune, wb):
        counts = split_group_counts(spec)
        assert counts["test"].min() >= 50
        assert counts["train"].min() >= 1
        assert counts["train"].trace() / counts["train"].sum() == pytest.approx(0.95, abs=0.01)


# ---------------------------------------------------------------- written data sets


def test_written_dataset_layout_and_counts(small_root: Path) -> None:
    meta = pd.read_csv(small_root / "metadata.csv")
    assert tuple(meta.columns) == METADATA_COLUMNS
    assert meta["img_id"].tolist() == list(range(1, len(meta) + 1))
    expected = split_group_counts(SMALL_SPEC)
    for code, split in enumerate(("train", "val", "test")):
        part = meta[meta["split"] == code]
        got = pd.crosstab(part["y"], part["place"]).reindex(index=range(3), columns=range(3), fill_value=0)
        np.testing.assert_array_equal(got.to_numpy(), expected[split], err_msg=split)
    train = meta[meta["split"] == 0]
    # Correlation rule: class y mostly on place y % n_places, others non-empty.
    assert ((train["place"] == train["y"] % 3).mean()) == pytest.approx(0.8, abs=0.01)
    for row in meta.itertuples():
        assert row.img_filename.startswith(f"images/{('train', 'val', 'test')[row.split]}/")
        assert SMALL_SPEC.class_names[row.y] in row.img_filename
        assert SMALL_SPEC.place_names[row.place] in row.place_filename
    first = Image.open(small_root / meta["img_filename"].iloc[0])
    assert first.size == (16, 16) and first.mode == "RGB"
    assert len(list((small_root / "images").rglob("*.png"))) == len(meta)


def test_manifest_records_spec(small_root: Path) -> None:
    manifest = json.loads((small_root / "dataset.json").read_text())
    assert manifest["fingerprint"] == SMALL_SPEC.fingerprint()
    assert manifest["class_names"] == ["circle", "triangle", "ring"]
    assert manifest["place_names"] == ["water", "snow", "forest"]
    assert GroupShiftSpec(**manifest["spec"]) == SMALL_SPEC


def test_second_write_touches_nothing(small_root: Path) -> None:
    before = _mtimes(small_root)
    assert write_group_shift_dataset(SMALL_SPEC, small_root) == small_root
    assert _mtimes(small_root) == before


def test_write_is_deterministic(small_root: Path, tmp_path: Path) -> None:
    other = write_group_shift_dataset(SMALL_SPEC, tmp_path / "again")
    assert (other / "metadata.csv").read_bytes() == (small_root / "metadata.csv").read_bytes()
    meta = pd.read_csv(other / "metadata.csv")
    for name in meta["img_filename"].iloc[::17]:
        a = np.asarray(Image.open(other / name))
        b = np.asarray(Image.open(small_root / name))
        np.testing.assert_array_equal(a, b)


def test_interrupted_or_changed_generation_is_redone(tmp_path: Path) -> None:
    root = write_group_shift_dataset(SMALL_SPEC, tmp_path / "d")
    # Simulate a run that died before the manifest was written: it must be regenerated.
    (root / "dataset.json").unlink()
    stale = root / "images" / "train" / "circle" / "999999.png"
    stale.write_bytes(b"not a png")
    write_group_shift_dataset(SMALL_SPEC, root)
    assert (root / "dataset.json").is_file() and not stale.exists()
    # A different spec in the same root replaces the data set and leaves no orphans.
    smaller = GroupShiftSpec(**{**SMALL_SPEC.__dict__, "train_per_class": 10, "seed": 4})
    write_group_shift_dataset(smaller, root)
    meta = pd.read_csv(root / "metadata.csv")
    assert (meta["split"] == 0).sum() == 30
    assert len(list((root / "images").rglob("*.png"))) == len(meta)
    assert json.loads((root / "dataset.json").read_text())["fingerprint"] == smaller.fingerprint()
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    assert os.listdir(root)  # sanity
