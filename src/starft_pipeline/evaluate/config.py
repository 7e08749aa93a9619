"""The evaluation stage's settings (parameters ``evaluation``), each default written once, here.

:class:`EvaluationConfig` holds the one pass's settings, :class:`~starft_pipeline.evaluate.results.BootstrapSettings`
the intervals' and :class:`WiseFtConfig` the WiSE-FT sweep's; ``params.py`` generates the parameter models
from them, so a field or a range added here is accepted and checked there at once. No Kedro here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from starft_pipeline.core.configs import Check, bounded, check_device, check_fields, config_from_params
from starft_pipeline.evaluate.results import BootstrapSettings
from starft_pipeline.train.methods import check_methods

SplitName = Literal["train", "val", "test"]
SPLIT_NAMES: tuple[str, ...] = get_args(SplitName)
DEFAULT_ALPHAS = tuple(round(0.1 * step, 1) for step in range(11))


def check_splits(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value or any(split not in SPLIT_NAMES for split in value):
        raise ValueError(f"splits must list one or more of {list(SPLIT_NAMES)}, got {list(value)}")
    return value


def check_alphas(value: tuple[float, ...]) -> tuple[float, ...]:
    if not value or any(not 0.0 <= alpha <= 1.0 for alpha in value):
        raise ValueError(f"alphas must be one or more values in [0, 1], got {list(value)}")
    return value


def methods_check(name: str) -> Check:
    """A check that every value of field ``name`` is a fine-tuning method (methods.METHOD_SPECS, read at call time)."""

    def check(value: tuple[str, ...]) -> tuple[str, ...]:
        check_methods(value, name)
        return value

    return check


@dataclass(frozen=True)
class WiseFtConfig:
    """``evaluation.wise_ft``: θ_α = (1 − α)·θ_zero-shot + α·θ_fine-tuned for every α of a sweep."""

    methods: tuple[str, ...] = bounded(
        (), check=methods_check("methods")
    )  # fine-tuned methods to sweep (none: no sweep)
    alphas: tuple[float, ...] = bounded(DEFAULT_ALPHAS, check=check_alphas)
    alpha: float = bounded(0.5, ge=0, le=1)  # reported in results.csv as "<method>+wise"
    splits: tuple[SplitName, ...] | None = bounded(None, check=check_splits)  # None: the evaluation's splits

    def __post_init__(self) -> None:
        check_fields(self, "evaluation.wise_ft.")


@dataclass(frozen=True)
class EvaluationConfig:
    """``evaluation``: which models the one pass evaluates, on which splits, and how."""

    models: tuple[str, ...] | None = bounded(None, check=methods_check("models"))  # None: every fine-tuned method
    zero_shot: bool = True  # False: leave the zero-shot model out (a study evaluates it once, not every run)
    splits: tuple[SplitName, ...] = bounded(("val", "test"), check=check_splits)
    device: str = bounded("auto", check=check_device)
    batch_size: int = bounded(256, ge=1)  # images per batch (every model encodes each batch)
    num_workers: int = bounded(0, ge=0)  # DataLoader workers decoding the images
    allow_empty_groups: bool = False  # True: a group without samples is reported with n = 0 instead of stopping
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    wise_ft: WiseFtConfig = field(default_factory=WiseFtConfig)

    def __post_init__(self) -> None:
        check_fields(self, "evaluation.")
        for name in ("zero_shot", "allow_empty_groups"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"evaluation.{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> EvaluationConfig:
        """Build from the ``evaluation`` block (None: the defaults); an unknown key, here or in a
        nested block, is an error that names it."""
        params = dict(params or {})
        bootstrap = config_from_params(BootstrapSettings, params.pop("bootstrap", None), "evaluation.bootstrap")
        wise_ft = config_from_params(WiseFtConfig, params.pop("wise_ft", None), "evaluation.wise_ft")
        return dataclasses.replace(config_from_params(cls, params, "evaluation"), bootstrap=bootstrap, wise_ft=wise_ft)

    @property
    def sweep_splits(self) -> tuple[str, ...]:
        """The WiSE-FT sweep's splits (``wise_ft.splits``, else the evaluation's)."""
        return self.splits if self.wise_ft.splits is None else self.wise_ft.splits
