"""Peak RSS of the pipeline's stages on an ImageNet-shaped tree at two sizes: does memory grow with the data?

    python benchmarks/bench_memory.py                       # this checkout, teacher stage, 10 k and 40 k images
    python benchmarks/bench_memory.py --source /tmp/main    # another checkout's code (e.g. `git archive main`)
    python benchmarks/bench_memory.py --stages teacher finetune evaluation \\
        --params "ft.finetune.epochs=1"                     # more stages (see docs/data-at-scale.md)

For each size it writes the tree (benchmarks/make_imagenet_like.py's generator, 1,000 classes, 80 %
train / 20 % val; kept between runs under --work), a copy of the project (the --source checkout's
conf/ and src/, plus this checkout's conf/imagenet_like), runs `class_names` and `descriptions`,
then each measured stage as a real `kedro run --env=imagenet_like --pipelines=<stage>` subprocess,
and reports its peak RSS (the largest process, from wait4's rusage) and wall time; then the ratio
largest / smallest size per stage (target <= 1.2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "src"))

from starft_pipeline.data.imagenet_like import N_CLASSES, write_imagenet_like  # noqa: E402

ENV = "imagenet_like"
UNMEASURED = ("class_names", "descriptions")


def make_project(source: Path, destination: Path) -> Path:
    """A runnable copy: the source's configuration and code, this checkout's benchmark environment."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for name in ("pyproject.toml", ".telemetry"):
        if (source / name).exists():
            shutil.copy2(source / name, destination / name)
    shutil.copytree(source / "conf", destination / "conf", ignore=shutil.ignore_patterns("credentials*", "local"))
    shutil.copytree(HERE / "conf" / ENV, destination / "conf" / ENV, dirs_exist_ok=True)
    (destination / "conf" / "local").mkdir(exist_ok=True)
    (destination / "src").mkdir()
    (destination / "src" / "starft_pipeline").symlink_to(source / "src" / "starft_pipeline")
    (destination / "data").mkdir()
    return destination


def run_stage(project: Path, source: Path, stage: str, params: str, log: Path) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one `kedro run` subprocess; its output goes to ``log``."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "PYTHONPATH": str(source / "src")}
    kedro = Path(sys.executable).with_name("kedro")
    command = [str(kedro), "run", f"--env={ENV}", f"--pipelines={stage}", "--params", params]
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"`{' '.join(command)}` failed in {project}; see {log}")
    return usage.ru_maxrss / 1024, wall  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=HERE, help="checkout whose conf/ and src/ are measured")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000], help="images (train + val)")
    parser.add_argument("--stages", nargs="+", default=["teacher"])
    parser.add_argument("--params", default="", help="extra --params for every measured run (k=v,k=v)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/starft_bench_memory"))
    args = parser.parse_args()
    source = args.source.resolve()
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for size in args.sizes:
        per_class = size // N_CLASSES
        train, val = per_class - per_class // 5, per_class // 5
        tree = args.work / f"tree_{size}"
        counts = write_imagenet_like(tree, train, val)
        project = make_project(source, args.work / f"project_{size}")
        params = f"datasets.imagenet_like.roots.train={tree}/train,datasets.imagenet_like.roots.test={tree}/val"
        measured_params = ",".join(p for p in (params, args.params) if p)
        print(f"{size} images: {counts['train']} train + {counts['val']} val in {tree}", flush=True)
        for stage in UNMEASURED:
            run_stage(project, source, stage, params, args.work / f"{stage}_{size}.log")
        for stage in args.stages:
            rss, wall = run_stage(project, source, stage, measured_params, args.work / f"{stage}_{size}.log")
            results[stage, size] = rss, wall
            print(f"  {stage:<12} peak RSS {rss:8.1f} MB   wall {wall:6.1f} s", flush=True)
    smallest, largest = min(args.sizes), max(args.sizes)
    print(f"\nsource: {source}")
    print(f"{'stage':<12} " + " ".join(f"{f'RSS@{s}':>12}" for s in args.sizes) + f"   ratio {largest}/{smallest}")
    for stage in args.stages:
        row = " ".join(f"{results[stage, s][0]:10.1f}MB" for s in args.sizes)
        print(f"{stage:<12} {row}   {results[stage, largest][0] / results[stage, smallest][0]:.2f}")


if __name__ == "__main__":
    main()
