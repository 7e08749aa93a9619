"""models.teacher: the cache's zero-shot logits and bundle round trip, its parts, and the freshness checks
(the stage on tiny data is in tests/pipelines/teacher/)."""

from __future__ import annotations

import pytest
import torch

from starft_pipeline.models.teacher import (
    StaleCacheError,
    TeacherCache,
    check_fresh,
    check_trained_from,
    part_key,
    part_ranges,
)


def _cache() -> TeacherCache:
    return TeacherCache(
        image_features={"d/test": torch.tensor([[1.0, 0.0], [0.6, 0.8]])},
        class_features={"d": torch.tensor([[1.0, 0.0], [0.0, 1.0]])},
        description_features=torch.eye(2),
        description_labels=torch.tensor([0, 1]),
        logit_scale=10.0,
        fingerprint="abc",
    )


def test_zero_shot_logits_are_the_scaled_similarities_with_the_class_features():
    assert _cache().zero_shot_logits("d/test").tolist() == [[10.0, 0.0], [6.0, 8.0]]
    assert _cache().zero_shot_logits("d/test", torch.tensor([1])).tolist() == [[6.0, 8.0]]


def test_the_cache_round_trips_through_a_bundle():
    again = TeacherCache.from_bundle(_cache().to_bundle())
    assert again.logit_scale == 10.0 and again.fingerprint == "abc"
    assert torch.equal(again.image_features["d/test"], _cache().image_features["d/test"])


def test_parts_cover_a_split_and_a_whole_split_keeps_its_name():
    assert part_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)] and part_ranges(0, 2) == [(0, 0)]
    assert part_key("d/test", 0, 5, 5) == "d/test" and part_key("d/test", 2, 4, 5) == "d/test[2:4]"
    with pytest.raises(ValueError, match="teacher part_rows must be >= 1"):
        part_ranges(5, 0)


def test_a_stale_cache_or_weights_say_which_stage_to_rerun():
    check_fresh(_cache(), "abc")
    with pytest.raises(StaleCacheError, match="Rerun `kedro run --pipelines=teacher`"):
        check_fresh(_cache(), "other")
    with pytest.raises(StaleCacheError, match="--namespaces=star"):
        check_trained_from("star", "old", {"fingerprint": "abc"}, {"datasets": {}})
