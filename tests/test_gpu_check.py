"""benchmarks/gpu_check.sh runs: its CPU dry mode (tiny model, 2 steps) goes through every section."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers import PROJECT_ROOT


@pytest.mark.slow
def test_gpu_check_dry_mode_runs_every_section():
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry"], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for method in ("flyp", "star_cached"):
        assert re.search(rf"^train  {method} eager +\d+\.\d img/s", out, re.MULTILINE), out
    for section in ("train  star_online", "loader cpu decode", "loader gpu decode", "evaluation"):
        assert re.search(rf"^{re.escape(section)} .*(img/s|skipped: .+)$", out, re.MULTILINE), out
    assert "gpu_check: done" in out
