"""benchmarks/gpu_check.sh runs: its CPU dry mode (tiny model, 2 steps, a 16-image tree) runs every section."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import PROJECT_ROOT


@pytest.mark.slow
def test_gpu_check_dry_mode_runs_every_section():
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for method in ("flyp", "star_cached", "star_online"):
        assert re.search(rf"^train  {method} eager +\d+\.\d img/s", out, re.MULTILINE), out
    for decode in ("cpu", "gpu"):  # training through the real loader from shards
        assert re.search(rf"^train  flyp from shards {decode} +1w.* +\d+\.\d img/s", out, re.MULTILINE), out
    for workers in (0, 1):  # CPU decode in the loader workers
        assert re.search(rf"^loader cpu decode +{workers} workers +\d+\.\d img/s$", out, re.MULTILINE), out
    assert re.search(r"^loader gpu decode .* img/s( \(fell back on cpu: no CUDA\))?$", out, re.MULTILINE), out
    assert re.search(r"^evaluation 3 models, one pass +\d+\.\d img/s", out, re.MULTILINE), out
    assert "skipped" not in out.replace("skipped: --dry", ""), out  # every section ran (compiling aside)
    assert "gpu_check: done" in out
