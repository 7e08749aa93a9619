"""The everyday loop's messages: preconditions found before the first node, a label outside the class
mapping named by file, line and img_id, the closest key for an unknown one, and confounder types
shown to the LLM as phrases; and start-up that imports no heavy library before a node needs it."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kedro.pipeline import Node, Pipeline
from kedro.validation import ParameterValidationError

from starft_pipeline import hooks
from starft_pipeline.data.class_names import ClassNameError, check_labels_named
from starft_pipeline.llm import LLMSettings
from starft_pipeline.llm.prompts import render_prompt
from starft_pipeline.params import closest_key, parameter_errors, precondition_errors
from starft_pipeline.pipeline_registry import register_pipelines
from tests.helpers import PROJECT_ROOT, copy_project, kedro_env, project_parameters


@pytest.fixture(scope="module")
def base_params() -> dict[str, Any]:
    return project_parameters()


def _with_teacher_weights(params: dict[str, Any], pretrained: str | None, **model: Any) -> dict[str, Any]:
    changed = copy.deepcopy(params)
    changed["teacher"]["model"].update(pretrained=pretrained, **model)
    return changed


# --- fail fast -------------------------------------------------------------------------------------


def test_the_committed_teacher_weights_pass(base_params: dict[str, Any]) -> None:
    assert precondition_errors(base_params, ["teacher", "descriptions"]) == []


@pytest.mark.parametrize("kind", ["missing", "a folder", "truncated"])
def test_teacher_weights_that_cannot_be_loaded_name_the_parameter(
    base_params: dict[str, Any], tmp_path: Path, kind: str
) -> None:
    weights = tmp_path / "teacher.safetensors"
    if kind == "a folder":
        weights.mkdir()
    elif kind == "truncated":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    errors = precondition_errors(_with_teacher_weights(base_params, str(weights)), ["teacher"])
    assert len(errors) == 1
    assert errors[0].startswith("teacher.model.pretrained: ") and str(weights) in errors[0]
    assert "model.pretrained" in errors[0].split(": ", 1)[1]  # says what to set


def test_a_pretrained_tag_not_in_the_local_cache_is_found_without_building_a_model(
    base_params: dict[str, Any], tmp_path: Path
) -> None:
    params = _with_teacher_weights(
        base_params,
        "openai",
        architecture="ViT-B-16-quickgelu",
        allow_download=False,
        cache_dir=str(tmp_path / "empty"),
    )
    errors = precondition_errors(params, ["teacher"])
    assert len(errors) == 1 and errors[0].startswith("teacher.model.pretrained: ")
    assert "not in the local cache" in errors[0] and "allow_download" in errors[0]


def test_only_stages_that_need_the_weights_check_them(base_params: dict[str, Any]) -> None:
    params = _with_teacher_weights(base_params, "missing/teacher.safetensors")
    assert precondition_errors(params, ["datasets", "class_names", "descriptions"]) == []


def test_a_missing_pinned_descriptions_file_is_named(base_params: dict[str, Any], tmp_path: Path) -> None:
    params = copy.deepcopy(base_params)
    params["descriptions"]["pinned_file"] = str(tmp_path / "reviewed.json")
    errors = precondition_errors(params, ["descriptions"])
    assert len(errors) == 1 and errors[0].startswith("descriptions.pinned_file: ")


class _Catalog:
    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def load(self, name: str) -> dict[str, Any]:
        assert name == "parameters"
        return self.params


def _never_run(*_: Any) -> None:
    raise AssertionError("a node ran")


def test_the_hook_stops_the_run_before_the_first_node(
    base_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = Pipeline(
        [
            Node(_never_run, "params:class_names", "a", name="first"),
            Node(_never_run, ["a", "params:teacher"], "b", name="teacher_node"),
        ]
    )
    monkeypatch.setattr(hooks, "_registered_pipelines", lambda: list(register_pipelines().values()))
    params = _with_teacher_weights(base_params, "nowhere/teacher.safetensors")
    with pytest.raises(ParameterValidationError, match=r"- teacher\.model\.pretrained: .*nowhere/teacher\.safetensors"):
        hooks.ParameterValidationHooks().before_pipeline_run({}, pipeline, _Catalog(params))


# --- a label outside the class mapping --------------------------------------------------------------


def test_a_label_outside_the_mapping_names_file_line_img_id_and_key(tmp_path: Path) -> None:
    metadata = pd.DataFrame(
        {
            "img_id": [10, 11, 12, 13],
            "img_filename": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
            "y": [0, 1, 2, 1],
            "split": [0, 0, 0, 1],
            "place": [0, 1, 0, 1],
            "place_filename": ["p"] * 4,
        }
    )
    metadata.to_csv(tmp_path / "metadata.csv", index=False)
    rows = metadata.assign(root=str(tmp_path))
    key = "class_names.datasets.waterbirds.mapping"
    with pytest.raises(ClassNameError) as raised:
        check_labels_named(rows, {0: "landbird", 1: "waterbird"}, key)
    message = str(raised.value)
    assert f"{tmp_path / 'metadata.csv'} line 4 (img_id 12, 'c.jpg', y = 2)" in message
    assert "label(s) [2]" in message and f"add the class to {key}" in message
    assert "class_names.mapping" not in message.replace(key, "")
    check_labels_named(rows, {0: "landbird", 1: "waterbird", 2: "seabird"}, key)  # all named: no error


# --- unknown keys ------------------------------------------------------------------------------------


def test_an_unknown_key_suggests_the_nested_near_miss(base_params: dict[str, Any]) -> None:
    params = copy.deepcopy(base_params)
    params["descriptions"]["base_url"] = "http://localhost:1"
    params["descriptions"]["anthropic"]["modle"] = "claude"
    params["evalution"] = {"splits": ["test"]}
    errors = parameter_errors(params, ["descriptions"], ["descriptions", "evaluation"])
    joined = "\n".join(errors)
    assert "descriptions.base_url: unknown parameter; known keys: [" in joined
    assert "did you mean `descriptions.anthropic.base_url`?" in joined
    assert "did you mean `descriptions.anthropic.model`?" in joined
    assert "did you mean `evaluation`?" in joined


def test_no_suggestion_for_a_key_like_none() -> None:
    assert closest_key("zzzz", ["provider", "anthropic.model"]) is None
    assert closest_key("lrr", ["lr", "epochs", "linear_probe.c_grid"]) == "lr"


# --- confounder phrases --------------------------------------------------------------------------------


def test_the_prompt_names_a_confounder_by_its_phrase_not_its_key(base_params: dict[str, Any]) -> None:
    block = base_params["descriptions"]
    settings = LLMSettings.from_params({**block["anthropic"], "confounder_types": block["confounder_types"]})
    prompt = render_prompt(settings, "circle", "synthetic_background")
    assert "synthetic_background" not in prompt
    assert "one concrete background cue" in prompt
    default = LLMSettings.from_params({"confounder_types": ["camera_angle"]})
    assert "one concrete camera angle cue" in render_prompt(default, "circle", "camera_angle")


# --- start-up ---------------------------------------------------------------------------------------


def test_registering_pipelines_and_checking_parameters_import_no_heavy_library() -> None:
    """open_clip (torchvision, torch._dynamo), scikit-learn, matplotlib and the Anthropic SDK cost seconds
    of start-up to every kedro command; they belong in the functions that use them."""
    script = (
        "import sys\n"
        "from tests.helpers import project_parameters\n"
        "from starft_pipeline.pipeline_registry import register_pipelines\n"
        "from starft_pipeline.params import parameter_errors, precondition_errors\n"
        "from starft_pipeline.hooks import parameter_paths\n"
        "import starft_pipeline.settings\n"
        "pipelines = register_pipelines()\n"
        "paths = parameter_paths(pipelines.values())\n"
        "params = project_parameters()\n"
        "assert parameter_errors(params, paths, paths) == [] and precondition_errors(params, paths) == []\n"
        "print(sorted(m for m in ('open_clip', 'torchvision', 'sklearn', 'matplotlib', 'anthropic') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_the_waterbirds_environment_without_cached_weights_stops_before_class_names(tmp_path: Path) -> None:
    """The issue's case: `--env waterbirds` (openai weights, no download) used to run class_names and
    descriptions before failing in teacher; now nothing runs and no MLflow run starts."""
    project = copy_project(tmp_path / "project")
    env = {**kedro_env(), "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--env", "waterbirds", "--pipelines=full"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert (
        "- teacher.model.pretrained: open_clip weights ViT-B-16-quickgelu/openai are not in the local cache" in output
    )
    assert "Running node" not in output and "Mlflow run" not in output
    assert not (project / "data" / "02_intermediate").exists()
