"""Crashes: a process killed (SIGKILL) during the teacher stage or the descriptions stage loses nothing
already finished, and the rerun resumes from it. Fine-tuning's resume-after-kill is tested with the
checkpoints (tests of the finetune stage)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from starft_pipeline.pipelines.descriptions.nodes import generate_descriptions
from starft_pipeline.pipelines.teacher.nodes import build_teacher_cache
from tests.helpers import PROJECT_ROOT, tiny_upstream
from tests.llm.fake_messages_server import FakeMessagesServer, Reply, auto_answer

pytestmark = pytest.mark.slow
WAIT_S = 240

# The child runs the real teacher node; it stalls (sleeps) when it reaches the second split, so that
# the parent can kill it with one split finished. Everything it needs comes as files.
TEACHER_CHILD = """
import json, sys, time
import pandas as pd
from starft_pipeline.models import teacher
from starft_pipeline.pipelines.teacher.nodes import build_teacher_cache

folder = sys.argv[1]
encode = teacher.split_features
calls = []
def stalling(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        time.sleep(600)
    return encode(*args, **kwargs)
teacher.split_features = stalling
inputs = json.load(open(f"{folder}/inputs.json"))
build_teacher_cache(pd.read_csv(f"{folder}/metadata.csv"), inputs["index"], inputs["descriptions"], inputs["teacher"])
"""

DESCRIPTIONS_CHILD = """
import json, sys
from starft_pipeline.pipelines.descriptions.nodes import generate_descriptions

inputs = json.load(open(sys.argv[1]))
generate_descriptions(inputs["index"], {}, inputs["descriptions"])
"""


def _child(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=PROJECT_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool]) -> None:
    """SIGKILL ``process`` as soon as ``ready()``; fails with its output if it ends or takes too long first."""
    deadline = time.monotonic() + WAIT_S
    try:
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                pytest.fail(
                    f"the child ended or stalled before the kill point (rc {process.returncode}):\n{output[-4000:]}"
                )
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def _finished_parts(work_dir: Path) -> list[Path]:
    return [path for path in work_dir.rglob("*.safetensors") if not path.name.startswith(".")]


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return tiny_upstream(tmp_path_factory.mktemp("crash") / "data")


def test_a_killed_teacher_run_resumes_from_its_finished_splits(
    tiny_inputs: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    work_dir = tmp_path / "parts"
    teacher = {**tiny_inputs["params"]["teacher"], "work_dir": str(work_dir)}
    tiny_inputs["metadata"].to_csv(tmp_path / "metadata.csv", index=False)
    inputs = {"index": tiny_inputs["index"], "descriptions": tiny_inputs["descriptions"], "teacher": teacher}
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))

    _kill_when(_child(TEACHER_CHILD, str(tmp_path)), lambda: len(_finished_parts(work_dir)) >= 1)
    finished = _finished_parts(work_dir)
    assert len(finished) == 1
    stamp = finished[0].stat().st_mtime_ns

    metadata = pd.read_csv(tmp_path / "metadata.csv")
    with caplog.at_level(logging.INFO, logger="starft_pipeline.models.teacher"):
        _, resumed = build_teacher_cache(metadata, tiny_inputs["index"], tiny_inputs["descriptions"], teacher)
    splits = [key for key in resumed.tensors if key.startswith("image/")]
    assert caplog.text.count("reusing the finished features of") == 1
    assert caplog.text.count("teacher: encoded") == len(splits) - 1
    assert finished[0].stat().st_mtime_ns == stamp  # not rewritten

    _, uninterrupted = build_teacher_cache(
        metadata, tiny_inputs["index"], tiny_inputs["descriptions"], {**teacher, "work_dir": None}
    )
    assert resumed.metadata == uninterrupted.metadata
    assert all(torch.equal(resumed.tensors[key], uninterrupted.tensors[key]) for key in uninterrupted.tensors)


def _descriptions_params(server_url: str, cache_dir: Path) -> dict[str, Any]:
    return {
        "provider": "anthropic",
        "confounder_types": ["background"],
        "pinned_file": None,
        "cache_dir": str(cache_dir),
        "credentials_file": None,
        "anthropic": {
            "base_url": server_url,
            "n_descriptions": 3,
            "max_concurrency": 1,
            "http_max_retries": 0,
            "timeout_s": 300,
        },
    }


def test_a_killed_descriptions_run_keeps_every_finished_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    classes = ["apple", "bench", "cactus", "drum"]
    index = {"finetune_dataset": "d", "datasets": {"d": {"class_names": classes}}}
    cache_dir = tmp_path / "cache"
    key = "test-sentinel-key-crash-1"
    with FakeMessagesServer() as server:
        stall = auto_answer(
            {
                "tools": [{"input_schema": {"properties": {"descriptions": {"maxItems": 3}}}}],
                "messages": [{"content": 'Class name: "cactus"'}],
            }
        )
        server.enqueue_for('Class name: "cactus"', Reply(body=stall.body, delay_s=120))
        inputs = tmp_path / "inputs.json"
        inputs.write_text(json.dumps({"index": index, "descriptions": _descriptions_params(server.url, cache_dir)}))
        child = _child(DESCRIPTIONS_CHILD, str(inputs), env={"ANTHROPIC_API_KEY": key})
        _kill_when(
            child,
            lambda: (
                len(server.requests_matching('Class name: "cactus"')) == 1 and len(list(cache_dir.glob("*.json"))) == 2
            ),
        )
        assert len(list(cache_dir.glob("*.json"))) == 2  # apple and bench were answered and kept
        asked_before = len(server.requests)

        monkeypatch.setenv("ANTHROPIC_API_KEY", key)
        document, _ = generate_descriptions(index, {}, _descriptions_params(server.url, cache_dir))
        resent = [request.prompt for request in server.requests[asked_before:]]
    assert len(resent) == 2 and all('"apple"' not in p and '"bench"' not in p for p in resent)
    assert sorted(document["descriptions"]["background"]) == sorted(classes)
    assert len(list(cache_dir.glob("*.json"))) == 4
