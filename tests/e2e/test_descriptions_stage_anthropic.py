"""`kedro run --pipelines=descriptions` with provider anthropic against a local Messages API server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import copy_project, kedro_env
from tests.llm.fake_messages_server import SENTINEL_KEY, FakeMessagesServer

pytestmark = pytest.mark.slow


def _kedro(project: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = kedro_env()
    if key:
        env["ANTHROPIC_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "kedro", "run", *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


def test_descriptions_from_the_messages_api_feed_the_teacher(tmp_path):
    project = copy_project(tmp_path / "project")
    with FakeMessagesServer() as server:
        params = (
            f"descriptions.provider=anthropic,descriptions.anthropic.base_url={server.url},"
            "descriptions.anthropic.n_descriptions=3,descriptions.confounder_types=[background]"
        )
        first = _kedro(project, "--pipelines=class_names")
        assert first.returncode == 0, first.stdout + first.stderr
        run = _kedro(project, "--pipelines=descriptions", f"--params={params}", key=SENTINEL_KEY)
        assert run.returncode == 0, run.stdout + run.stderr
        requests = list(server.requests)
        # one request per class × confounder type; the class name is in the prompt, the schema forced
        assert len(requests) == 4
        prompts = " ".join(request.prompt for request in requests)
        for name in ("circle", "square", "triangle", "cross"):
            assert f'"{name}"' in prompts
        body = requests[0].body
        assert body["model"] == "claude-sonnet-4-6"
        assert body["tool_choice"] == {"type": "tool", "name": "submit_descriptions"}
        assert requests[0].headers["authorization"] == f"Bearer {SENTINEL_KEY}"

        rerun = _kedro(project, "--pipelines=descriptions", f"--params={params}")  # cached: no key, no request
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert len(server.requests) == 4

    document = json.loads((project / "data/03_primary/descriptions.json").read_text())
    assert document["provider"] == "anthropic"
    assert set(document["descriptions"]["background"]) == {"circle", "square", "triangle", "cross"}
    assert all(len(texts) == 3 for texts in document["descriptions"]["background"].values())

    teacher = _kedro(project, "--pipelines=teacher")
    assert teacher.returncode == 0, teacher.stdout + teacher.stderr
    from safetensors import safe_open

    with safe_open(str(project / "data/04_feature/teacher_cache.safetensors"), "pt") as cache:
        assert cache.get_slice("descriptions/features").get_shape()[0] == 12

    leaked = [str(path) for path in project.rglob("*") if path.is_file() and SENTINEL_KEY.encode() in path.read_bytes()]
    assert leaked == [] and SENTINEL_KEY not in run.stdout + run.stderr


def test_anthropic_without_a_key_fails_at_once_with_the_fix(tmp_path):
    project = copy_project(tmp_path / "project")
    assert _kedro(project, "--pipelines=class_names").returncode == 0
    run = _kedro(project, "--pipelines=descriptions", "--params=descriptions.provider=anthropic")
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "ANTHROPIC_API_KEY" in output and "provider" in output and "offline" in output
