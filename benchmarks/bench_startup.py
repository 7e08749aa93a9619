"""Start-up cost of the everyday loop: `kedro registry list` and one cached stage against bare imports.

Measures, in one run and on the same machine, the wall time (and the children's CPU time) of

- ``python -c "import kedro, torch, mlflow"`` — the floor: what any Kedro + torch + MLflow
  command pays before it does anything;
- ``kedro registry list`` — registering every pipeline;
- ``kedro run --pipelines=<stage>`` (default ``class_names``) on cached inputs (one warm-up run
  first renders the synthetic data), with the pipeline's own execution time parsed from Kedro's
  ``Pipeline execution completed successfully in X sec.`` line.

A stage's *overhead* is its wall time minus that execution time; the target is an overhead of at
most 1.5× the bare import time. Commands alternate round by round and medians are printed, so that
load from other jobs on a shared CPU hits them alike; on a busy machine expect noise of a few
seconds — compare the ratios, and the CPU times, more than the walls.

``--compare DIR`` also runs the Kedro commands in another checkout of the project (e.g. an older
commit: ``git worktree add /tmp/before <commit>``), with its own ``src`` first on ``PYTHONPATH``,
in the same rounds: a before/after comparison under the same load.

    python benchmarks/bench_startup.py --repeats 5
    python benchmarks/bench_startup.py --repeats 3 --stage class_names
    python benchmarks/bench_startup.py --repeats 5 --compare /tmp/before

Run it in the project root (``kedro`` must be on PATH, i.e. the venv active, or pass ``--kedro``).
A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

EXECUTION_LINE = re.compile(r"Pipeline execution completed successfully in ([0-9.]+) sec")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.5


@dataclass
class Timings:
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    execution_s: list[float] = field(default_factory=list)

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Command:
    """A command line, the project root it runs in, and the environment it runs with."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]


def project_env(root: Path, base: dict[str, str]) -> dict[str, str]:
    """``base`` with ``root``'s ``src`` first on ``PYTHONPATH`` (its code, not the installed package's)."""
    paths = [str(root / "src"), *filter(None, [base.get("PYTHONPATH")])]
    return {**base, "PYTHONPATH": os.pathsep.join(paths)}


def timed(command: Command) -> tuple[float, float, str]:
    """Run ``command``; return wall seconds, CPU seconds and its output."""
    cpu_before = children_cpu_s()
    start = time.perf_counter()
    done = subprocess.run(command.argv, cwd=command.cwd, env=command.env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    output = done.stdout + done.stderr
    if done.returncode != 0:
        sys.exit(f"`{' '.join(command.argv)}` in {command.cwd} failed (exit {done.returncode}):\n{output[-3000:]}")
    return wall, children_cpu_s() - cpu_before, output


def execution_seconds(output: str, command: Command) -> float:
    match = EXECUTION_LINE.search(output)
    if match is None:
        sys.exit(f"no 'Pipeline execution completed' line in the output of `{' '.join(command.argv)}`")
    return float(match.group(1))


def overhead_s(t: Timings) -> float:
    """Median of wall − pipeline execution (the whole wall for a command that runs no pipeline)."""
    if not t.execution_s:
        return t.median(t.wall_s)
    return statistics.median(w - e for w, e in zip(t.wall_s, t.execution_s))


def project_commands(root: Path, label: str, stage: str, kedro: str, env: dict[str, str]) -> dict[str, Command]:
    run_env = project_env(root, env)
    return {
        f"{label}kedro registry list": Command([kedro, "registry", "list"], root, run_env),
        f"{label}kedro run --pipelines={stage}": Command([kedro, "run", f"--pipelines={stage}"], root, run_env),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds (medians are reported)")
    parser.add_argument("--stage", default="class_names", help="the cached stage to run")
    parser.add_argument("--kedro", default=shutil.which("kedro") or "kedro", help="kedro executable")
    parser.add_argument("--compare", type=Path, help="another checkout of the project, measured in the same rounds")
    args = parser.parse_args()

    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    commands = {"bare import": Command([sys.executable, "-c", "import kedro, torch, mlflow"], PROJECT_ROOT, env)}
    projects = {"": PROJECT_ROOT} if args.compare is None else {"this: ": PROJECT_ROOT, "compared: ": args.compare}
    stage_names = {}
    for label, root in projects.items():
        commands |= project_commands(root.resolve(), label, args.stage, args.kedro, env)
        stage_names[label] = f"{label}kedro run --pipelines={args.stage}"
    for label, root in projects.items():
        print(f"warm-up: kedro run --pipelines={args.stage} in {root} (renders and caches its inputs)", flush=True)
        timed(commands[stage_names[label]])

    timings = {name: Timings() for name in commands}
    for round_index in range(args.repeats):
        for name, command in commands.items():
            wall, cpu, output = timed(command)
            timings[name].wall_s.append(wall)
            timings[name].cpu_s.append(cpu)
            if name in stage_names.values():
                timings[name].execution_s.append(execution_seconds(output, command))
        print(f"round {round_index + 1}/{args.repeats} done", flush=True)

    bare = timings["bare import"]
    bare_wall, bare_cpu = bare.median(bare.wall_s), bare.median(bare.cpu_s)
    print(f"\nmedians of {args.repeats} rounds (shared CPU: other jobs add noise)")
    for label, root in projects.items():
        if label:
            print(f"{label}{root}")
    width = max(len(name) for name in commands) + 2
    print(f"{'command':<{width}} {'wall s':>8} {'cpu s':>8} {'exec s':>8} {'overhead s':>11} {'overhead/bare':>14}")
    for name, t in timings.items():
        wall, cpu = t.median(t.wall_s), t.median(t.cpu_s)
        execution = t.median(t.execution_s) if t.execution_s else 0.0
        print(
            f"{name:<{width}} {wall:8.2f} {cpu:8.2f} {execution:8.2f} {overhead_s(t):11.2f} "
            f"{overhead_s(t) / bare_wall:13.2f}x"
        )
    print()
    for label in projects:
        stage_name = stage_names[label]
        ratio = overhead_s(timings[stage_name]) / bare_wall
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        print(
            f"{stage_name}: overhead {overhead_s(timings[stage_name]):.2f} s = {ratio:.2f}x the bare import "
            f"({bare_wall:.2f} s wall, {bare_cpu:.2f} s cpu); {verdict} the target <= {TARGET_RATIO}x"
        )
        registry = timings[f"{label}kedro registry list"]
        print(f"{label}kedro registry list: {registry.median(registry.wall_s) / bare_wall:.2f}x the bare import")


if __name__ == "__main__":
    main()
