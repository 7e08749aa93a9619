"""The evaluation stage's settings: defaults written once (the dataclasses), nested blocks built,
and bad values or unknown keys stopped with an error that names the parameter."""

from __future__ import annotations

import pytest

from starft_pipeline.evaluate.config import EvaluationConfig, WiseFtConfig
from starft_pipeline.evaluate.results import BootstrapSettings


def test_no_parameters_give_the_dataclasses_defaults():
    assert EvaluationConfig.from_params(None) == EvaluationConfig()
    config = EvaluationConfig.from_params({"wise_ft": None, "bootstrap": None})
    assert config.wise_ft == WiseFtConfig() and config.bootstrap == BootstrapSettings()


def test_nested_blocks_are_built_and_lists_become_tuples():
    config = EvaluationConfig.from_params(
        {"splits": ["test"], "bootstrap": {"n_resamples": 10}, "wise_ft": {"methods": ["flyp"], "alphas": [0.0, 1.0]}}
    )
    assert config.splits == ("test",) and config.bootstrap.n_resamples == 10
    assert config.wise_ft.methods == ("flyp",) and config.wise_ft.alphas == (0.0, 1.0)
    assert config.sweep_splits == ("test",)  # no wise_ft.splits: the evaluation's
    assert EvaluationConfig.from_params({"wise_ft": {"splits": ["val"]}}).sweep_splits == ("val",)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"splitz": ["test"]}, r"unknown evaluation parameter\(s\) \['splitz'\]; known: \['allow_empty_groups'"),
        ({"wise_ft": {"alfa": 0.5}}, r"unknown evaluation.wise_ft parameter\(s\) \['alfa'\]"),
        ({"bootstrap": {"n": 5}}, r"unknown evaluation.bootstrap parameter\(s\) \['n'\]"),
        ({"bootstrap": {"n_resamples": -1}}, r"^evaluation.bootstrap.n_resamples must be >= 1, got -1$"),
        ({"wise_ft": {"alpha": 1.5}}, r"^evaluation.wise_ft.alpha must be <= 1, got 1.5$"),
        ({"wise_ft": {"alphas": [0.0, -0.1]}}, r"^evaluation.wise_ft.alphas must be one or more values in \[0, 1\]"),
        ({"splits": []}, r"^evaluation.splits must list one or more of \['train', 'val', 'test'\], got \[\]$"),
        ({"splits": ["dev"]}, r"^evaluation.splits must list one or more of"),
        ({"batch_size": 0}, r"^evaluation.batch_size must be >= 1, got 0$"),
        ({"device": "gpu"}, r"^evaluation.device must be auto, cpu"),
        ({"models": ["zs"]}, r"^evaluation.models lists \['zs'\], which are not fine-tuning methods"),
        ({"zero_shot": "no"}, r"^evaluation.zero_shot must be true or false, got 'no'$"),
    ],
)
def test_bad_parameters_name_the_key(params, message):
    with pytest.raises(ValueError, match=message):
        EvaluationConfig.from_params(params)
