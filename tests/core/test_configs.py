"""One helper builds every config from its parameters block; a field carries its own range."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from starft_pipeline.core.configs import bounded, check_crop_scale, check_fields, config_from_params, field_bounds
from starft_pipeline.train.checkpointing import CheckpointConfig
from starft_pipeline.train.finetune import FinetuneConfig
from starft_pipeline.train.linear_probe import LinearProbeConfig
from starft_pipeline.train.pretraining import PretrainConfig


@dataclass(frozen=True)
class _Toy:
    steps: int = bounded(3, ge=1)
    share: float = bounded(0.5, gt=0, lt=1)
    threads: int | None = bounded(None, ge=1)
    crop: tuple[float, float] = bounded((0.9, 1.0), check=check_crop_scale)
    names: tuple[str, ...] = ("a",)

    def __post_init__(self) -> None:
        check_fields(self, "toy.")


@pytest.mark.parametrize(
    ("config", "block"),
    [
        (FinetuneConfig, "finetune"),
        (PretrainConfig, "pretrain"),
        (CheckpointConfig, "finetune checkpoint"),
        (LinearProbeConfig, "linear_probe"),
    ],
)
def test_an_unknown_key_is_named_with_the_known_ones(config: type, block: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown {block} parameter\(s\) \['bogus'\]; known: \[") as error:
        config.from_params({"bogus": 1})
    assert "'seed'" in str(error.value) or config in (CheckpointConfig, LinearProbeConfig)


def test_lists_become_tuples_and_excluded_keys_are_skipped() -> None:
    toy = config_from_params(
        _Toy, {"names": ["x", "y"], "crop": [0.8, 1.0], "device": "cpu"}, "toy", exclude=["device"]
    )
    assert toy == _Toy(names=("x", "y"), crop=(0.8, 1.0))
    assert config_from_params(_Toy, None, "toy") == _Toy()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": 0}, "toy.steps must be >= 1, got 0"),
        ({"share": 1.0}, "toy.share must be < 1, got 1.0"),
        ({"threads": 0}, "toy.threads must be >= 1, got 0"),
        ({"crop": (0.9, 0.5)}, r"toy.crop_scale must satisfy 0 < low <= high <= 1, got \[0.9, 0.5\]"),
    ],
)
def test_a_field_checks_its_own_range(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _Toy(**values)


def test_none_passes_an_optional_range_and_bounds_are_readable() -> None:
    assert _Toy(threads=None).threads is None
    assert field_bounds(_Toy) == {"steps": {"ge": 1}, "share": {"gt": 0, "lt": 1}, "threads": {"ge": 1}, "crop": {}}


def test_a_misspelt_bound_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown bound"):
        bounded(1, gte=1)
