"""Typed parameters: a wrong type, an out-of-range value or an unknown key fails before any node runs,
and the message names the full key path."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from starft_pipeline.data.metadata import DataChecks
from starft_pipeline.evaluate.config import EvaluationConfig, WiseFtConfig
from starft_pipeline.evaluate.results import BootstrapSettings
from starft_pipeline.hooks import parameter_paths, runtime_parameter_names
from starft_pipeline.models.clip import ModelSpec
from starft_pipeline.params import (
    BLOCK_MODELS,
    EVALUATION_NESTED_FIELDS,
    BootstrapParams,
    EvaluationParams,
    FinetuneParams,
    ParameterError,
    PretrainParams,
    TeacherModelParams,
    WiseFtParams,
    check_parameters,
    model_for,
    parameter_errors,
    parameter_warnings,
)
from starft_pipeline.pipeline_registry import register_pipelines
from starft_pipeline.pipelines.finetune.nodes import RUNTIME_KEYS
from starft_pipeline.train.finetune import FinetuneConfig
from starft_pipeline.train.pretraining import PretrainConfig
from tests.helpers import PROJECT_ROOT, copy_project, kedro_env, project_parameters


@pytest.fixture(scope="module")
def read_paths() -> set[str]:
    return parameter_paths(register_pipelines().values())


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return project_parameters()


def _all_errors(params: dict[str, Any], read_paths: set[str]) -> list[str]:
    return parameter_errors(params, read_paths, read_paths, runtime_parameter_names(PROJECT_ROOT / "conf"))


def _errors(base: dict[str, Any], read_paths: set[str], **changes: Any) -> list[str]:
    """The errors that setting dotted keys (``star__finetune__lr=-1``; ``None`` deletes) adds to the base's."""
    params = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    before = set(_all_errors(base, read_paths))
    return [error for error in _all_errors(params, read_paths) if error not in before]


@pytest.mark.parametrize("env", [None, "waterbirds", "imagenet"])
def test_the_shipped_configurations_are_valid(env: str | None, read_paths: set[str]) -> None:
    assert _all_errors(project_parameters(env), read_paths) == []


def test_every_block_a_pipeline_reads_has_a_model(read_paths: set[str]) -> None:
    assert {path for path in read_paths if model_for(path) is None} == set()


BAD_VALUES = {
    "negative lr": ({"star__finetune__lr": -1.0}, "star.finetune.lr: Input should be greater than 0 (got -1.0)"),
    "lr as text": ({"star__finetune__lr": "1e-4"}, "star.finetune.lr: Input should be a valid number (got '1e-4')"),
    "unknown method": (
        {"flyp__finetune__method": "flip"},
        "flyp.finetune.method: method must be one of lp, ft, lp_ft, flyp, star, kl; got 'flip'",
    ),
    "zero epochs": (
        {"ft__finetune__epochs": 0},
        "ft.finetune.epochs: Input should be greater than or equal to 1 (got 0)",
    ),
    "epochs as float": ({"ft__finetune__epochs": 1.5}, "ft.finetune.epochs: Input should be a valid integer"),
    "bool as text": (
        {"star__finetune__augment": "yes"},
        "star.finetune.augment: Input should be a valid boolean (got 'yes')",
    ),
    "crop scale": (
        {"star__finetune__crop_scale": [0.9, 0.5]},
        "star.finetune.crop_scale: crop_scale must satisfy 0 < low <= high <= 1",
    ),
    "crop ratio without the square": (
        {"star__finetune__crop_ratio": [1.2, 1.5]},
        "star.finetune.crop_ratio: crop_ratio (width / height) must satisfy 0 < low <= 1 <= high",
    ),
    "grad accumulation": (
        {"star__finetune__grad_accum_steps": 3},
        "star.finetune: finetune grad_accum_steps must be >= 1 and divide batch_size (128); got 3",
    ),
    "linear probe grid": (
        {"lp__finetune__linear_probe__c_grid": [-1.0]},
        "lp.finetune.linear_probe: linear_probe.c_grid must be a non-empty list of positive numbers",
    ),
    "device": (
        {"teacher__device": "gpu"},
        "teacher.device: device must be auto, cpu, cuda, cuda:<index> or mps, got 'gpu'",
    ),
    "teacher batch": (
        {"teacher__batch_size": "256"},
        "teacher.batch_size: Input should be a valid integer (got '256')",
    ),
    "architecture missing": ({"teacher__model__architecture": None}, "teacher.model.architecture: Field required"),
    "bad data policy": (
        {"datasets__synthetic__bad_data": "ignore"},
        "datasets.synthetic.bad_data: Input should be 'error' or 'skip' (got 'ignore')",
    ),
    "image check": (
        {"datasets__synthetic__check_images": "all"},
        "datasets.synthetic.check_images: Input should be 'auto', 'decode', 'header', 'exists' or 'none'",
    ),
    "no root": ({"datasets__synthetic__root": None}, "datasets.synthetic: format release needs `root`"),
    "unknown spec": ({"datasets__synthetic__generate": "nope"}, "datasets.synthetic: generate is 'nope'; use one of"),
    "finetune dataset": (
        {"class_names__finetune_dataset": "other"},
        "class_names: finetune_dataset is 'other', which has no entry under datasets",
    ),
    "convention": (
        {"class_names__datasets__synthetic__convention": "wilds"},
        "class_names.datasets.synthetic.convention: must be one of ['waterbirds', 'celeba', 'generic']",
    ),
    "no cache dir": ({"descriptions__cache_dir": None}, "descriptions.cache_dir: Field required"),
    "anthropic block": (
        {"descriptions__provider": "anthropic", "descriptions__anthropic": None},
        "descriptions: provider anthropic needs the `anthropic` block",
    ),
    "provider": (
        {"descriptions__provider": "openai"},
        "descriptions.provider: Input should be 'offline' or 'anthropic' (got 'openai')",
    ),
    "no confounders": (
        {"descriptions__confounder_types": []},
        "descriptions.confounder_types: List should have at least 1 item",
    ),
    "max tokens": (
        {"descriptions__anthropic__max_tokens": 10},
        "descriptions.anthropic.max_tokens: Input should be greater than or equal to 64 (got 10)",
    ),
    "eval split": (
        {"evaluation__splits": ["dev"]},
        "evaluation.splits.0: Input should be 'train', 'val' or 'test' (got 'dev')",
    ),
    "confidence": (
        {"evaluation__bootstrap__confidence": 1.5},
        "evaluation.bootstrap.confidence: Input should be less than 1 (got 1.5)",
    ),
    "alpha": (
        {"evaluation__wise_ft__alpha": 2.0},
        "evaluation.wise_ft.alpha: Input should be less than or equal to 1 (got 2.0)",
    ),
    "wise method": (
        {"evaluation__wise_ft__methods": ["zs"]},
        "evaluation.wise_ft.methods: methods lists ['zs'], which are not fine-tuning methods; known: [",
    ),
    "empty groups flag": (
        {"evaluation__allow_empty_groups": "no"},
        "evaluation.allow_empty_groups: Input should be a valid boolean (got 'no')",
    ),
    "reporting split": (
        {"reporting__comparison_split": "all"},
        "reporting.comparison_split: Input should be 'train', 'val' or 'test'",
    ),
    "pretrain lr": ({"pretrain__lr": "fast"}, "pretrain.lr: Input should be a valid number (got 'fast')"),
    "pretrain batch": ({"pretrain__batch_size": 1}, "pretrain: pretrain.batch_size must be"),
    "not a number": (
        {"star__finetune__weight_decay": float("nan")},
        "star.finetune.weight_decay: Input should be a finite number",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_a_bad_value_is_named_by_its_full_key(case: str, base: dict[str, Any], read_paths: set[str]) -> None:
    changes, expected = BAD_VALUES[case]
    errors = _errors(base, read_paths, **changes)
    assert any(expected in error for error in errors), errors


def test_unknown_keys_are_named_with_the_known_ones(base: dict[str, Any], read_paths: set[str]) -> None:
    errors = _errors(
        base,
        read_paths,
        star__finetune__lrr=1e-4,
        evalution={"splits": ["test"]},
        star__finetun={"lr": 1.0},
        datasets__synthetic__bad_date="skip",
    )
    joined = "\n".join(errors)
    assert "star.finetune.lrr: unknown parameter; known keys: [" in joined and "'lr'" in joined
    assert (
        "evalution: unknown parameter; no pipeline reads it (known keys here: [" in joined and "'evaluation'" in joined
    )
    assert "star.finetun: unknown parameter; no pipeline reads it (known keys here: ['finetune'])" in joined
    assert "datasets.synthetic.bad_date: unknown parameter; known keys: ['bad_data'," in joined


def test_anchors_and_runtime_parameters_are_not_unknown(base: dict[str, Any], read_paths: set[str]) -> None:
    assert "pretrain_output" in runtime_parameter_names(PROJECT_ROOT / "conf")
    assert _errors(base, read_paths, pretrain_output="/tmp/w.safetensors", _anchor={"x": 1}) == []


def test_credentials_in_parameters_are_refused(base: dict[str, Any], read_paths: set[str]) -> None:
    errors = _errors(base, read_paths, descriptions__api_key="abc", evaluation__note="sk-ant-api03-xyz")
    joined = "\n".join(errors)
    assert "descriptions.api_key: looks like a credential. Parameters are logged to MLflow" in joined
    assert "evaluation.note: holds what looks like an Anthropic API key" in joined
    assert "sk-ant-api03-xyz" not in joined  # the value itself is never echoed
    assert _errors(base, read_paths, descriptions__anthropic__max_tokens=2048) == []  # *_tokens is no credential


def test_other_stages_blocks_only_warn(base: dict[str, Any], read_paths: set[str]) -> None:
    params = copy.deepcopy(base)
    params["star"]["finetune"]["lr"] = -1.0
    params["datasets"]["synthetic"]["bad_data"] = "maybe"
    run_paths = {"datasets", "class_names"}
    assert parameter_errors(params, run_paths, read_paths, runtime_parameter_names(PROJECT_ROOT / "conf")) == [
        "datasets.synthetic.bad_data: Input should be 'error' or 'skip' (got 'maybe')"
    ]
    assert "star.finetune.lr: Input should be greater than 0 (got -1.0)" in parameter_warnings(
        params, run_paths, read_paths
    )


def test_check_parameters_lists_every_problem(base: dict[str, Any], read_paths: set[str]) -> None:
    params = copy.deepcopy(base)
    params["star"]["finetune"]["lr"] = 0
    params["teacher"]["batch_size"] = 0
    with pytest.raises(ParameterError) as error:
        check_parameters(params, {"star.finetune", "teacher"}, read_paths)
    assert str(error.value).splitlines() == [
        "invalid parameters:",
        "  - star.finetune.lr: Input should be greater than 0 (got 0)",
        "  - teacher.batch_size: Input should be greater than or equal to 1 (got 0)",
    ]


@pytest.mark.parametrize(
    ("dataclass", "model", "extra"),
    [
        (FinetuneConfig, FinetuneParams, set(RUNTIME_KEYS)),
        (ModelSpec, TeacherModelParams, set()),
        (PretrainConfig, PretrainParams, set()),
        (EvaluationConfig, EvaluationParams, set()),
        (WiseFtConfig, WiseFtParams, set()),
    ],
)
def test_models_follow_their_dataclasses(dataclass: type, model: type, extra: set[str]) -> None:
    """A field added to the dataclass is a parameter at once; the declared ranges name existing fields."""
    names = {field.name for field in dataclasses.fields(dataclass)}
    assert set(model.model_fields) == names | extra
    defaults = {
        field.name: field.default for field in dataclasses.fields(dataclass) if field.default is not dataclasses.MISSING
    }
    assert {name: model.model_fields[name].default for name in defaults} == defaults


@pytest.mark.parametrize(
    ("dataclass", "model", "key", "bad"),
    [
        (FinetuneConfig, FinetuneParams, "epochs", 0),
        (FinetuneConfig, FinetuneParams, "lr", 0.0),
        (FinetuneConfig, FinetuneParams, "crop_scale", (0.9, 0.5)),
        (FinetuneConfig, FinetuneParams, "crop_ratio", (0.5, 0.9)),
        (ModelSpec, TeacherModelParams, "init_seed", -1),
        (PretrainConfig, PretrainParams, "single_concept_prob", 1.5),
        (PretrainConfig, PretrainParams, "device", "gpu"),
        (BootstrapSettings, BootstrapParams, "confidence", 1.0),
        (EvaluationConfig, EvaluationParams, "batch_size", 0),
        (EvaluationConfig, EvaluationParams, "device", "gpu"),
        (WiseFtConfig, WiseFtParams, "alpha", 1.5),
        (WiseFtConfig, WiseFtParams, "alphas", (0.0, 1.5)),
    ],
)
def test_a_range_is_written_once(dataclass: type, model: type, key: str, bad: Any) -> None:
    """The dataclass and its generated model reject the same value: the range lives on the field."""
    required = {"architecture": "starft-tiny-vit"} if dataclass is ModelSpec else {}
    with pytest.raises(ValueError, match=key):
        dataclass(**required, **{key: bad})
    errors = _validation_errors(model, {**required, key: list(bad) if isinstance(bad, tuple) else bad})
    assert [error["loc"] for error in errors] == [(key,)]


def test_the_base_evaluation_block_repeats_no_default_but_its_own_settings(base: dict[str, Any]) -> None:
    """conf/base keeps a few evaluation keys to document them, at the dataclass's default; a value that
    differs is a setting of this project (the sweep's methods), listed here on purpose."""
    defaults = dataclasses.asdict(EvaluationConfig())
    differing = {}
    for key, value in base["evaluation"].items():
        block = value if key in EVALUATION_NESTED_FIELDS else {None: value}
        for inner, setting in block.items():
            default = defaults[key] if inner is None else defaults[key][inner]
            if (tuple(setting) if isinstance(setting, list) else setting) != default:
                differing[key if inner is None else f"{key}.{inner}"] = setting
    assert differing == {"wise_ft.methods": ["ft", "flyp"]}


def _validation_errors(model: type, values: dict[str, Any]) -> list[Any]:
    from pydantic import ValidationError

    try:
        model.model_validate(values)
    except ValidationError as error:
        return error.errors()
    return []


def test_data_checks_fields_are_dataset_parameters() -> None:
    fields = BLOCK_MODELS["datasets"].model_fields["root"].annotation.__args__[1].model_fields  # type: ignore[index]
    assert {field.name for field in dataclasses.fields(DataChecks)} - {"source"} <= set(fields)


@pytest.mark.slow
def test_a_bad_parameter_stops_kedro_before_any_node_runs(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "kedro",
            "run",
            "--pipelines=class_names",
            "--params=datasets.synthetic.bad_data=maybe,star.finetune.lr=-1,evaluation.splitz=[test],evalution.x=1",
        ],
        cwd=project,
        env=kedro_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "Parameter validation failed before any node ran:" in output
    assert "- datasets.synthetic.bad_data: Input should be 'error' or 'skip' (got 'maybe')" in output
    assert "- evalution: unknown parameter; no pipeline reads it" in output
    assert (
        "parameters of another stage (this run does not read them): star.finetune.lr: Input should be greater than 0"
        in output
    )
    assert "(this run does not read them): evaluation.splitz: unknown parameter; known keys: [" in output
    assert "Running node" not in output and not (project / "data" / "02_intermediate").exists()
    assert "Mlflow run" not in output  # stopped before kedro-mlflow started a run and logged the parameters
