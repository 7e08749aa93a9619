"""Start-up and exit of every `kedro` command: what the project's settings do to keep them short
(`benchmarks/bench_startup.py` measures them; no timings are asserted here)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

EXIT_OF_A_KEDRO_COMMAND = textwrap.dedent(
    """
    import atexit, gc
    atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count()))  # runs after the settings' handler
    import starft_pipeline.settings  # what Kedro imports before any command
    print("frozen before exit:", gc.get_freeze_count())
    """
)


def test_the_settings_freeze_the_garbage_collector_at_exit_only() -> None:
    done = subprocess.run([sys.executable, "-c", EXIT_OF_A_KEDRO_COMMAND], capture_output=True, text=True, check=True)
    before, at_exit = (int(line.rsplit(":", 1)[1]) for line in done.stdout.splitlines())
    assert before == 0  # a long-lived process (a notebook, the methods table) keeps its normal collection
    assert at_exit > 0  # the exit skips the collector's walk over every object MLflow and torch made
