"""Pretraining on the synthetic world: a tiny run learns, reports both concepts and repeats exactly."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from starft_pipeline.data import synthetic
from starft_pipeline.models.clip import ModelSpec, create_model, save_weights, state_dict_copy
from starft_pipeline.pipeline_registry import register_pipelines
from starft_pipeline.pipelines.pretrain.nodes import pretrain_metrics, pretrain_world_model
from starft_pipeline.train.pretraining import (
    BACKGROUND_PROMPTS,
    OBJECT_PROMPTS,
    PretrainConfig,
    batch_captions,
    batch_indices,
    caption_positives,
    curriculum_schedule,
    eval_corpus,
    pretrain,
    render_corpus,
    stored_weights,
    zero_shot_accuracies,
)

TINY = {
    "corpus_size": 144,
    "batch_size": 36,
    "steps": 8,
    "lr": 1e-3,
    "warmup_steps": 2,
    "eval_per_pair": 1,
    "eval_every": 4,
    "num_threads": 2,
    "object_only_steps": 2,
}


@pytest.fixture(scope="module")
def tiny_run():
    config = PretrainConfig(**TINY)
    result = pretrain(config)
    return config, result, state_dict_copy(result.loaded.model)  # the fp32 weights: stored_weights rounds in place


def test_loss_decreases(tiny_run):
    _, result, _ = tiny_run
    losses = [record["loss"] for record in result.history]
    assert len(losses) == TINY["steps"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_report_has_both_accuracies_of_the_stored_weights(tiny_run, tmp_path):
    config, result, _ = tiny_run
    state, report = stored_weights(result, config)
    assert all(value.dtype == torch.float16 for value in state.values() if value.is_floating_point())
    for concept, names in (("objects", synthetic.OBJECTS), ("backgrounds", synthetic.BACKGROUNDS)):
        assert 0.0 <= report[concept]["accuracy"] <= 1.0
        assert set(report[concept]["per_class"]) == set(names)
        assert report[concept]["worst_class_accuracy"] <= report[concept]["accuracy"]
    assert report["n_test"] == 36 and report["chance"]["objects"] == pytest.approx(1 / 6)
    # the report describes the file: a model loaded from it scores the same
    path = tmp_path / "world.safetensors"
    save_weights(result.loaded.model, path, dtype=torch.float16)
    reloaded = create_model(ModelSpec(config.architecture, pretrained=str(path)))
    accuracies = zero_shot_accuracies(reloaded, result.test, config)
    assert accuracies == {concept: report[concept]["accuracy"] for concept in ("objects", "backgrounds")}


def test_a_run_repeats_exactly(tiny_run):
    config, first, weights = tiny_run
    second = pretrain(config)
    assert [r["loss"] for r in first.history] == [r["loss"] for r in second.history]
    for key, value in second.loaded.model.state_dict().items():
        assert torch.equal(weights[key], value), key


def test_batches_are_balanced_and_a_pass_covers_the_corpus():
    config = PretrainConfig(**{**TINY, "batch_size": 72})
    corpus = render_corpus(config.corpus_size, seed=3, image_size=32)
    per_pass = config.corpus_size // config.batch_size
    batches = [batch_indices(corpus, config, step) for step in range(per_pass)]
    for batch in batches:
        pairs = corpus.object_ids[batch.numpy()] * 6 + corpus.background_ids[batch.numpy()]
        assert sorted(pairs.tolist()) == sorted(list(range(36)) * 2)  # every pair twice
    seen = torch.cat(batches).tolist()
    assert sorted(seen) == list(range(config.corpus_size))
    assert not torch.equal(
        batch_indices(corpus, config, 0), batch_indices(corpus, config, per_pass)
    )  # new pass, new order


def _named(caption: str, names) -> list[str]:
    return [name for name in names if name in caption]


def test_captions_vary_and_name_only_the_object_first():
    config = PretrainConfig(**{**TINY, "object_only_steps": 3})
    corpus = render_corpus(72, seed=3, image_size=32)
    indices = torch.arange(72)
    assert batch_captions(corpus, indices, config, 4) == batch_captions(corpus, indices, config, 4)
    assert batch_captions(corpus, indices, config, 4) != batch_captions(corpus, indices, config, 5)
    for caption, obj in zip(batch_captions(corpus, indices, config, 2), corpus.object_ids):
        assert _named(caption.text, synthetic.OBJECTS) == [synthetic.OBJECTS[obj]], caption
        assert not _named(caption.text, synthetic.BACKGROUNDS), caption
        assert (caption.object_id, caption.background_id, caption.colour_id) == (obj, None, None)
    later = [caption.text for caption in batch_captions(corpus, indices, config, 3)]
    assert any(_named(c, synthetic.OBJECTS) and _named(c, synthetic.BACKGROUNDS) for c in later)
    assert any(_named(c, synthetic.BACKGROUNDS) and not _named(c, synthetic.OBJECTS) for c in later)


def test_positives_are_the_images_a_caption_describes():
    config = PretrainConfig(**{**TINY, "object_only_steps": 0, "colour_prob": 0.5, "single_concept_prob": 0.9})
    corpus = render_corpus(72, seed=3, image_size=32)
    indices = torch.arange(36, 72)
    captions = batch_captions(corpus, indices, config, 1)
    positives = caption_positives(corpus, indices, captions)
    assert positives.shape == (36, 36) and positives.diagonal().all()
    for j, caption in enumerate(captions):
        for i, k in enumerate(indices.tolist()):
            named = [
                (caption.object_id, corpus.object_ids[k]),
                (caption.background_id, corpus.background_ids[k]),
                (caption.colour_id, corpus.colour_ids[k]),
            ]
            assert positives[i, j] == all(mine is None or mine == theirs for mine, theirs in named)
    # a one-concept caption ("a circle.") describes all six circles of a balanced batch, so more than itself
    assert (positives.sum(dim=0) > 1).any()


def test_multi_positive_pretraining_runs_and_changes_the_step():
    plain = PretrainConfig(**{**TINY, "object_only_steps": 0, "steps": 2})
    multi = PretrainConfig(**{**TINY, "object_only_steps": 0, "steps": 2, "multi_positive": True})
    losses = [pretrain(config).history[0]["loss"] for config in (plain, multi)]
    assert all(math.isfinite(loss) for loss in losses) and losses[0] != losses[1]


def test_learning_rate_warms_up_again_after_the_object_only_phase():
    config = PretrainConfig(**{**TINY, "steps": 10, "object_only_steps": 4, "warmup_steps": 2, "lr": 1.0})
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    scheduler = curriculum_schedule(optimizer, config)
    rates = []
    for _ in range(config.steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # phase 1 (4 steps): warm-up 0.5, 1, then cosine over the remaining 2 steps: 1, 0.5
    # phase 2 (6 steps): warm-up 0.5, 1, then cosine over 4 steps: 1, cos²(π/8), 0.5, cos²(3π/8)
    expected = [0.5, 1.0, 1.0, 0.5, 0.5, 1.0, 1.0, math.cos(math.pi / 8) ** 2, 0.5, math.cos(3 * math.pi / 8) ** 2]
    assert rates == pytest.approx(expected)


def test_prompts_come_from_the_world_captions():
    assert "a photo of a {c}." in OBJECT_PROMPTS
    assert "a photo of {c}." in BACKGROUND_PROMPTS
    assert all("{c}" in prompt for prompt in OBJECT_PROMPTS + BACKGROUND_PROMPTS)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"steps": 0}, "pretrain.steps"),
        ({"batch_size": 48}, "pretrain.batch_size"),
        ({"batch_size": 72, "corpus_size": 36}, "pretrain.batch_size"),
        ({"corpus_size": 100}, "pretrain.corpus_size"),
        ({"init_logit_scale": 0.5}, "pretrain.init_logit_scale"),
        ({"object_only_steps": -1}, "pretrain.object_only_steps"),
        ({"steps": 100, "object_only_steps": 100}, "pretrain.object_only_steps"),
        ({"single_concept_prob": 1.5}, "pretrain.single_concept_prob"),
        ({"crop_scale": [0.0, 1.0]}, "pretrain.crop_scale"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        PretrainConfig.from_params(params)


def test_eval_seed_must_differ_from_seed():
    with pytest.raises(ValueError, match="eval_seed"):
        pretrain(PretrainConfig(**{**TINY, "seed": 5, "eval_seed": 5}))


def test_node_and_metrics_format():
    bundle, history, report = pretrain_world_model({**TINY, "steps": 2, "object_only_steps": 1, "eval_every": 0})
    assert bundle.metadata["made_by"] == "kedro run --pipelines=pretrain"
    assert set(bundle.metadata["zero_shot_accuracy"]) == {"objects", "backgrounds"}
    metrics = pretrain_metrics(history, report)
    assert [point["step"] for point in metrics["pretrain.loss"]] == [1, 2]
    assert metrics["pretrain.final.objects_accuracy"]["value"] == report["objects"]["accuracy"]


def test_pretrain_is_registered_apart_from_full():
    pipelines = register_pipelines()
    assert "pretrain" in pipelines
    assert not set(pipelines["pretrain"].all_outputs()) & set(pipelines["full"].all_outputs())
    assert pipelines["pretrain"].all_outputs() >= {"pretrained_weights", "pretrain_report"}


def test_the_committed_default_teacher_knows_both_concepts(caplog):
    """conf/base points the teacher at the committed weights, and they are a real zero-shot model."""
    from tests.helpers import PROJECT_ROOT, project_parameters

    spec = project_parameters()["teacher"]["model"]
    assert spec["pretrained"] == "src/starft_pipeline/assets/weights/starft-tiny-vit-world.safetensors"
    with caplog.at_level(logging.INFO):
        loaded = create_model(ModelSpec(spec["architecture"], pretrained=str(PROJECT_ROOT / spec["pretrained"])))
    assert "initialized randomly" not in caplog.text and "weights loaded from" in caplog.text
    config = PretrainConfig(**{**TINY, "eval_per_pair": 5})
    accuracies = zero_shot_accuracies(loaded, eval_corpus(config), config)
    assert accuracies["objects"] > 0.85 and accuracies["backgrounds"] > 0.85, accuracies  # committed: 94.7%, 100%


@pytest.mark.parametrize(
    ("env", "name"), [("base", "starft-tiny-vit-world"), ("miniature", "starft-tiny-vit-world-colours")]
)
def test_pretraining_writes_under_data_not_into_the_package(env, name):
    """Promotion into src/ is an explicit, checked step (starft_pipeline.train.promote_teacher), never a run's side effect."""
    from starft_pipeline.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS
    from tests.helpers import PROJECT_ROOT

    loader = CONFIG_LOADER_CLASS(str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": env})
    assert loader["catalog"]["pretrained_weights"]["filepath"] == f"data/06_models/pretrained/{name}.safetensors"
