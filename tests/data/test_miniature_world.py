"""The miniature at the paper's shape: compound classes, the colour teacher's pretraining options, promotion, conf/miniature."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.data import synthetic
from starft_pipeline.models.clip import ModelSpec, create_model, save_weights
from starft_pipeline.params import parameter_errors
from starft_pipeline.train.pretraining import PretrainConfig, batch_captions, initial_model, render_corpus
from starft_pipeline.train.promote_teacher import PromotionRefused, main, promote
from tests.helpers import PROJECT_ROOT, project_parameters

# Measured before colour_ids existed: the default specs' fingerprints, metadata and first pixels.
BEFORE_COLOURS = {
    "finetune": ("1ca5408a58deae95", "f3e3de8e573fc56b", "b12e11881eedabe9"),
    "waterbirds_like": ("cb1de949c9c64614", "579cbcb968bc884b", "158747fd7763c308"),
}


def _digests(spec: synthetic.GroupShiftSpec) -> tuple[str, str, str]:
    rows = synthetic._metadata_rows(spec)
    pixels = hashlib.sha256()
    for row in rows[:40:7]:
        rng = synthetic._image_rng(spec, row["img_id"])
        obj, bg = spec.object_ids[row["y"]], spec.background_ids[row["place"]]
        pixels.update(synthetic.render_image(obj, bg, rng, spec.image_size, spec.class_colour(row["y"])).tobytes())
    metadata = hashlib.sha256(synthetic._metadata_csv(rows).encode()).hexdigest()[:16]
    return spec.fingerprint(), metadata, pixels.hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(BEFORE_COLOURS))
def test_specs_without_colours_render_and_fingerprint_as_before(name):
    assert _digests(synthetic.DEFAULT_SPECS[name]) == BEFORE_COLOURS[name]
    assert synthetic.RENDER_VERSION == 1


def test_a_fixed_colour_paints_the_object_and_changes_nothing_else():
    pictures = {
        colour: synthetic.render_image(1, 2, np.random.default_rng(7), 32, colour)
        for colour in range(len(synthetic.COLOURS))
    }
    assert any(np.array_equal(synthetic.render_image(1, 2, np.random.default_rng(7)), p) for p in pictures.values())
    differs = np.any(pictures[0] != pictures[2], axis=-1)
    assert 20 < differs.sum() < 32 * 32 // 2  # the object only: same background, place, size
    for colour, picture in pictures.items():
        mean = picture[differs].astype(float).mean(axis=0)
        nearest = np.argmin(np.linalg.norm(np.asarray(synthetic.FOREGROUND_PALETTE) - mean, axis=1))
        assert nearest == colour, (synthetic.COLOURS[colour], mean)


def test_the_miniature_task_has_20_compound_classes_each_in_its_colour():
    spec = synthetic.DEFAULT_SPECS["miniature"]
    assert spec.n_classes == 20 and spec.place_names == ["forest", "water", "sand", "snow"]
    assert spec.class_names[:6] == [
        "magenta circle", "yellow circle", "cyan circle", "orange circle", "violet circle", "magenta square"
    ]  # fmt: skip
    assert len(set(spec.class_names)) == 20
    rows = synthetic._metadata_rows(spec)
    assert rows[0]["img_filename"].split("/")[2] == spec.class_names[rows[0]["y"]].replace(" ", "_")
    counts = synthetic.train_place_counts(spec)
    assert all(counts[y, y % 4] == round(0.95 * spec.train_per_class) for y in range(20))
    transfer = synthetic.DEFAULT_SPECS["waterbirds_like_miniature"]
    assert transfer.class_names == ["ring", "star"] and transfer.test_per_group >= 400 and transfer.val_per_group >= 200


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"object_ids": ["circle", "circle"]}, "duplicate classes"),
        ({"object_ids": ["circle", "circle"], "colour_ids": ["cyan", "cyan"]}, "duplicate classes"),
        ({"colour_ids": ["cyan"]}, "colour_ids must be null or a list of 2"),
        ({"colour_ids": ["cyan", "green"]}, "unknown colour 'green'"),
    ],
)
def test_bad_compound_classes_are_named(fields, message):
    base = {"name": "t", "object_ids": ["circle", "square"], "background_ids": [0, 1], "train_per_class": 4,
            "val_per_group": 1, "test_per_group": 1}  # fmt: skip
    with pytest.raises(ValueError, match=message):
        synthetic.GroupShiftSpec.from_dict({**base, **fields})


def test_mixed_random_and_fixed_colours_name_only_the_fixed_ones():
    spec = synthetic.GroupShiftSpec("t", ["circle", "circle"], [0, 1], 4, 1, 1, colour_ids=[None, "cyan"])
    assert spec.class_names == ["circle", "cyan circle"]
    assert (
        "colour_ids" in spec.as_dict()
        and spec.fingerprint() != synthetic.GroupShiftSpec("t", ["circle", "square"], [0, 1], 4, 1, 1).fingerprint()
    )


def test_colour_captions_name_the_drawn_colour():
    corpus = render_corpus(72, seed=3, image_size=32)
    config = PretrainConfig(corpus_size=144, object_only_steps=0, colour_prob=1.0, single_concept_prob=0.0)
    for caption, obj, colour in zip(
        batch_captions(corpus, torch.arange(72), config, 0), corpus.object_ids, corpus.colour_ids, strict=True
    ):
        assert f"{synthetic.COLOURS[colour]} {synthetic.OBJECTS[obj]}" in caption.text, caption
        assert (caption.object_id, caption.colour_id) == (obj, colour), caption
    plain = PretrainConfig(corpus_size=144, object_only_steps=0)  # colour_prob 0: no colour words
    assert not any(
        colour in caption.text
        for caption in batch_captions(corpus, torch.arange(72), plain, 0)
        for colour in synthetic.COLOURS
    )


def test_warm_start_loads_the_weights(tmp_path):
    source = create_model(ModelSpec("starft-tiny-vit", init_seed=5)).model
    path = tmp_path / "init.safetensors"
    save_weights(source, path)
    # init_seed 0 would build other weights: equality means the file's were loaded
    warm = initial_model(PretrainConfig(init_weights=str(path), init_seed=0)).model.state_dict()
    assert all(torch.equal(warm[key], value) for key, value in source.state_dict().items())
    with pytest.raises(ValueError, match="pretrain.init_weights"):
        PretrainConfig(init_weights=str(tmp_path / "missing.safetensors"))


def _weights_file(path, accuracies):
    TensorBundle({"w": torch.zeros(2, dtype=torch.float16)}, {"zero_shot_accuracy": accuracies}).save(path)
    return path


def test_promotion_refuses_weights_below_the_thresholds(tmp_path):
    source = _weights_file(tmp_path / "run.safetensors", {"objects": 0.95, "colours": 0.85, "backgrounds": 1.0})
    target = tmp_path / "pkg" / "teacher.safetensors"
    with pytest.raises(PromotionRefused, match=r"colours 85\.0% < 90\.0%.*Nothing was copied"):
        promote(source, target)
    with pytest.raises(PromotionRefused, match="coloured_objects not measured"):
        promote(source, target, concepts=["objects", "coloured_objects"])
    with pytest.raises(PromotionRefused, match="size"):
        promote(source, target, concepts=["objects"], max_mb=1e-6)
    bare = tmp_path / "bare.safetensors"
    TensorBundle({"w": torch.zeros(2)}).save(bare)
    with pytest.raises(PromotionRefused, match="no zero_shot_accuracy"):
        promote(bare, target)
    with pytest.raises(SystemExit, match="refusing"):
        main(["--from", str(source), "--to", str(target)])
    assert not target.exists()


def test_promotion_copies_passing_weights_atomically(tmp_path):
    source = _weights_file(tmp_path / "run.safetensors", {"objects": 0.95, "colours": 0.99, "backgrounds": 1.0})
    target = tmp_path / "pkg" / "teacher.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"old")
    assert promote(source, target) == {"backgrounds": 1.0, "colours": 0.99, "objects": 0.95}
    assert target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["teacher.safetensors"]  # no temporary left


def test_the_miniature_environment_validates_and_names_its_world():
    params = project_parameters("miniature")
    blocks = ["datasets", "class_names", "descriptions", "shards", "teacher", "evaluation", "pretrain"]
    blocks += [f"{method}.finetune" for method in ("ft", "lp_ft", "flyp", "star", "kl")]
    assert (
        parameter_errors(params, blocks, blocks + ["lp.finetune", "reporting", "export", "predict", "distributed"])
        == []
    )
    assert set(params["datasets"]) == {"miniature", "waterbirds_like"}  # base's data sets replaced whole
    assert params["datasets"]["miniature"]["generate"] == "miniature"
    assert params["class_names"]["finetune_dataset"] == "miniature"
    weights = params["teacher"]["model"]["pretrained"]
    assert weights.endswith("starft-tiny-vit-world-colours.safetensors") and (PROJECT_ROOT / weights).is_file()
    assert params["pretrain"]["init_weights"] == "src/starft_pipeline/assets/weights/starft-tiny-vit-world.safetensors"
    assert params["pretrain"]["colour_prob"] > 0 and params["pretrain"]["object_only_steps"] == 0
    base = project_parameters()
    star = params["star"]["finetune"]
    # the study's validation choice (docs/results.md, "The study at equal in-distribution accuracy");
    # every other key merged from base, the teacher's own logit scale included
    assert (star["reg_weight"], star["diminishing"], star["teacher_mode"], star["reg_logit_scale"]) == (
        2.0,
        True,
        "online",
        None,
    )
    assert star["confounder_types"] == base["star"]["finetune"]["confounder_types"]
    assert params["kl"]["finetune"]["reg_weight"] == base["kl"]["finetune"]["reg_weight"]
    # the committed teacher was measured on colours too (its numbers: docs/miniature-world.md)
    measured = TensorBundle.load(PROJECT_ROOT / weights).metadata["zero_shot_accuracy"]
    assert set(measured) == {"objects", "backgrounds", "colours", "coloured_objects"}, measured
    assert min(measured.values()) >= 0.9, measured  # every concept of the compound classes, as CLIP knows its classes
