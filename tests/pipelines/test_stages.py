"""Core of the teacher and finetune stages on tiny data, and the sliced Kedro pipeline."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.data.dataset_index import dataset_split
from starft_pipeline.data.descriptions import flatten_descriptions
from starft_pipeline.models.clip import ModelSpec, create_model
from starft_pipeline.models.teacher import StaleCacheError, TeacherCache, check_fresh
from starft_pipeline.pipeline_registry import register_pipelines
from starft_pipeline.pipelines.class_names.nodes import build_dataset_index, prepare_datasets
from starft_pipeline.pipelines.descriptions.nodes import generate_descriptions
from starft_pipeline.pipelines.teacher.nodes import build_teacher_cache
from starft_pipeline.train.finetune import FinetuneConfig, finetune, train_data_from_cache
from tests.helpers import PROJECT_ROOT, tiny_parameters


def _yaml(relative: str):
    return yaml.safe_load((PROJECT_ROOT / relative).read_text())


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """class_names → descriptions → teacher run through the node functions on tiny data."""
    root = tmp_path_factory.mktemp("data")
    params = tiny_parameters(root)
    metadata = prepare_datasets(params["datasets"])
    index = build_dataset_index(metadata, _yaml("conf/base/templates/prompt_templates.yml"), params["class_names"])
    document, _ = generate_descriptions(
        index, _yaml("conf/base/templates/spurious_templates.yml"), params["descriptions"]
    )
    params["teacher"]["model"]["pretrained"] = None  # random init keeps this test independent of the committed weights
    record, bundle = build_teacher_cache(metadata, index, document, params["teacher"])
    return params, metadata, index, document, record, bundle


def test_metadata_has_every_dataset_and_split(staged):
    _, metadata, index, *_ = staged
    assert set(metadata["dataset"]) == {"synthetic", "waterbirds_like"}
    assert index["finetune_dataset"] == "synthetic"
    entry = index["datasets"]["synthetic"]
    assert entry["class_names"] == ["circle", "square", "triangle"]
    assert len(entry["group_names"]) == 9 and sum(entry["train_group_counts"]) == 72


def test_teacher_cache_rows_follow_the_metadata(staged, tmp_path):
    _, metadata, index, document, record, bundle = staged
    path = tmp_path / "cache.safetensors"
    bundle.save(path)
    cache = TeacherCache.from_bundle(TensorBundle.load(path))
    train = dataset_split(metadata, index, "synthetic", "train")
    assert cache.image_features["synthetic/train"].shape == (len(train), 128)
    assert torch.allclose(cache.image_features["synthetic/train"].norm(dim=1), torch.ones(len(train)), atol=1e-5)
    pool = flatten_descriptions(document, index["datasets"]["synthetic"]["class_names"])
    assert cache.description_features.shape[0] == len(pool.texts)
    # zero-shot logits are the scaled cosine similarities with the class prompts' mean embedding
    expected = cache.logit_scale * cache.image_features["synthetic/test"] @ cache.class_features["synthetic"].T
    assert torch.allclose(cache.zero_shot_logits("synthetic/test"), expected, atol=1e-5)
    assert cache.fingerprint == record["fingerprint"]


def test_stale_cache_is_detected(staged):
    *_, bundle = staged
    with pytest.raises(StaleCacheError, match="Rerun `kedro run --pipelines=teacher`"):
        check_fresh(TeacherCache.from_bundle(bundle), "0000")


def _train_data(staged, config):
    _, metadata, index, document, record, bundle = staged
    cache = TeacherCache.from_bundle(bundle)
    loaded = create_model(ModelSpec(**record["spec"]))
    split = dataset_split(metadata, index, "synthetic", "train")
    from starft_pipeline.data.splits import load_split_images

    names = index["datasets"]["synthetic"]["class_names"]
    data = train_data_from_cache(
        load_split_images(split, loaded.image_size),
        torch.tensor(split.labels),
        names,
        flatten_descriptions(document, names),
        cache.image_features["synthetic/train"],
        cache.description_features,
        cache.logit_scale,
        config,
    )
    return loaded, data


def test_star_finetune_moves_both_towers(staged):
    config = FinetuneConfig(
        method="star", epochs=2, batch_size=16, lr=1e-3, diminishing=False, confounder_types=("synthetic_background",)
    )
    loaded, data = _train_data(staged, config)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    state = finetune(loaded, data, config, torch.device("cpu"))
    after = state.model.state_dict()
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])
    assert not torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])
    history = pd.DataFrame(state.history)
    assert len(history) == 2 * (72 // 16)
    assert history["regulariser"].notna().all() and (history["regulariser"] >= 0).all()
    assert history["loss"].map(lambda v: v == v).all()


def test_flyp_records_no_regulariser(staged):
    config = FinetuneConfig(method="flyp", epochs=1, batch_size=16, reg_weight=0.0)
    loaded, data = _train_data(staged, config)
    state = finetune(loaded, data, config, torch.device("cpu"))
    assert "regulariser" not in state.history[0]


def test_sliced_pipeline_runs_on_an_in_memory_catalog(tmp_path):
    """class_names → shards → teacher through Kedro's runner, as the spaceflights starter tests do."""
    params = tiny_parameters(tmp_path)
    params["teacher"]["model"]["pretrained"] = None
    pipelines = register_pipelines()
    pipeline = pipelines["class_names"] + pipelines["descriptions"] + pipelines["shards"] + pipelines["teacher"]
    catalog = DataCatalog(
        {
            "prompt_template_sets": MemoryDataset(_yaml("conf/base/templates/prompt_templates.yml")),
            "spurious_template_pools": MemoryDataset(_yaml("conf/base/templates/spurious_templates.yml")),
            **{f"params:{key}": MemoryDataset(value) for key, value in params.items()},
        }
    )
    outputs = SequentialRunner().run(pipeline, catalog)
    cache = TeacherCache.from_bundle((outputs.get("teacher_cache") or catalog["teacher_cache"]).load())
    assert {"synthetic/train", "synthetic/test", "waterbirds_like/test"} <= set(cache.image_features)
    assert len(cache.fingerprint) == 16
