"""The StarFT regulariser's gradient norm at several logit scales, along a run's first steps.

    python -m starft_pipeline.gradient_norms --env miniature --method star --steps 20 --scales 100 [--params KEY=VALUE ...]

builds what the ``<method>.finetune`` node would train (the environment's ``<method>.finetune`` block plus
``--params``, the model, the train data, the teacher source, the device: ``prepare_finetune``), trains its
first ``--steps`` steps and before each measures ‖∇R‖ on that step's batch at the run's own τ (the
reference: ``reg_logit_scale``, else the teacher's τ₀), at the teacher's own τ₀ and at each ``--scales``
(:mod:`starft_pipeline.train.gradient_norms`). It prints one line per step and the summary (mean ‖∇R‖
per scale, the ratio to the reference, the matched λ) and writes
``data/08_reporting/<method>_reg_gradient_norms.csv`` atomically. It reads the upstream stages' outputs
(``class_names``, ``descriptions``, ``teacher``) from the catalog; it does not run them.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from starft_pipeline.core.io_utils import atomic_path
from starft_pipeline.methods_table import REPORT_DIR, kedro_session, parse_overrides
from starft_pipeline.pipelines.finetune.nodes import StageInputs, prepare_finetune
from starft_pipeline.train.gradient_norms import GradientNorms, measure_gradient_norms

# Not __name__: under `python -m` that is __main__, which conf/logging.yml does not show.
logger = logging.getLogger("starft_pipeline.gradient_norms")

#: The finetune node's shared inputs, all written by the upstream stages (class_names, descriptions, teacher).
UPSTREAM_INPUTS = ("dataset_metadata", "dataset_index", "descriptions", "teacher_model", "teacher_cache")


def output_path(project_path: Path, method: str) -> Path:
    return project_path / REPORT_DIR / f"{method}_reg_gradient_norms.csv"


def load_stage_inputs(catalog: Any, env: str | None) -> StageInputs:
    """The finetune node's inputs from the catalog; an error naming the upstream stages when one is missing."""
    missing = [name for name in UPSTREAM_INPUTS if not catalog.exists(name)]
    if missing:
        env_flag = f" --env {env}" if env else ""
        raise FileNotFoundError(
            f"missing upstream outputs {missing}: run the class_names, descriptions and teacher stages first "
            f"(kedro run{env_flag} --pipelines class_names,descriptions,teacher)"
        )
    return cast(StageInputs, {name: catalog.load(name) for name in UPSTREAM_INPUTS})


def step_line(row: dict[str, float]) -> str:
    return (
        f"step {int(row['step'])} (epoch {int(row['epoch']) + 1}) τ {row['scale']:g}: "
        f"R {row['regulariser']:.5f}, ‖∇R‖ {row['grad_norm']:.5f}"
    )


def summary_lines(result: GradientNorms, own_scale: float, method: str) -> list[str]:
    """Mean ‖∇R‖ per scale, its ratio to the reference's, and the λ that matches the reference's pull."""
    steps = int(result.per_step["step"].max())
    lines = [
        f"{method}: mean ‖∇R‖ over {steps} steps; reference τ {result.reference_scale:g} at λ {result.reg_weight:g}"
        f" (the teacher's own τ₀ is {own_scale:g})"
    ]
    for row in result.summary.itertuples():
        tags = [tag for tag, on in (("reference", row.reference), ("own τ₀", row.scale == own_scale)) if on]
        lines.append(
            f"  τ {row.scale:g}{' (' + ', '.join(tags) + ')' if tags else ''}: mean ‖∇R‖ {row.mean_grad_norm:.5f}, "
            f"ratio {row.ratio:.4f}, matched λ {row.matched_reg_weight:.4f}"
        )
    return lines


def write_csv(result: GradientNorms, path: Path, method: str, own_scale: float) -> Path:
    """The per-step rows with the summary's columns per scale (mean, ratio, matched λ), replaced atomically."""
    table = result.per_step.merge(result.summary, on="scale", how="left").assign(
        method=method, reference_scale=result.reference_scale, own_scale=own_scale, reg_weight=result.reg_weight
    )
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def run(
    project_path: Path, env: str | None, method: str, steps: int, scales: Sequence[float], overrides: dict[str, Any]
) -> tuple[GradientNorms, float]:
    """Measure along ``method``'s run as the environment (and ``overrides``) sets it up; (result, own τ₀)."""
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project_path)
    with kedro_session(project_path, env, overrides) as session:
        context = session.load_context()
        params = context.params
        if not isinstance(params.get(method), dict) or "finetune" not in params[method]:
            raise ValueError(f"the environment has no {method}.finetune parameters block")
        inputs = load_stage_inputs(context.catalog, env)
    prepared = prepare_finetune(params[method]["finetune"], None, inputs)
    own = float(prepared.cache.logit_scale)
    result = measure_gradient_norms(
        prepared.loaded,
        prepared.data,
        prepared.config,
        prepared.device,
        [own, *scales],
        steps,
        on_step=lambda row: print(step_line(row), flush=True),
    )
    return result, own


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--env", default=None, help="Kedro configuration environment")
    parser.add_argument("--method", default="star", help="a StarFT method with a finetune block (default star)")
    parser.add_argument("--steps", type=int, default=20, help="steps of the run to measure (default 20)")
    parser.add_argument(
        "--scales", type=float, nargs="+", default=[100.0], help="logit scales to compare (default 100)"
    )
    parser.add_argument("--project-path", type=Path, default=Path.cwd(), help="Kedro project root (default: cwd)")
    parser.add_argument(
        "--params", nargs="+", default=[], metavar="KEY=VALUE", help="runtime parameters (e.g. star.finetune.seed=1)"
    )
    args = parser.parse_args(argv)
    project_path = args.project_path.resolve()
    try:
        overrides = parse_overrides(args.params)
    except ValueError as error:
        parser.error(str(error))
    try:
        result, own = run(project_path, args.env, args.method, args.steps, args.scales, overrides)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"gradient norms: {error}") from error
    for line in summary_lines(result, own, args.method):
        print(line)
    path = write_csv(result, output_path(project_path, args.method), args.method, own)
    logger.info("gradient norms: %s", path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
