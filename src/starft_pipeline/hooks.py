"""Kedro hooks: typed parameters are checked before any node runs (and before MLflow logs them).

The models live in :mod:`starft_pipeline.params`; this module only finds which parameter blocks the
run reads and raises Kedro's ``ParameterValidationError`` with every problem, each as
``<full.key.path>: <message>``. Nodes keep receiving plain dicts, so node signatures are untouched.
Then the preconditions the parameters reveal (the teacher's weights, a pinned file) are checked for
the stages about to run, so a run that cannot succeed stops in seconds, not after the earlier stages.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset
from kedro.pipeline import Pipeline
from kedro.validation import ParameterValidationError

logger = logging.getLogger(__name__)
_PARAMS = "params:"
#: The parameter block a hook reads, not a node: every run checks it (ProcessGroupHooks).
HOOK_PARAMETERS = "distributed"
_RUNTIME_PARAM = re.compile(r"runtime_params:\s*([A-Za-z_][\w.]*)")


def parameter_paths(pipelines: Iterable[Pipeline]) -> set[str]:
    """The parameter blocks the pipelines' nodes read (``params:star.finetune`` → ``star.finetune``), and
    the block a hook reads for every run (``distributed``)."""
    return {
        name[len(_PARAMS) :] for pipeline in pipelines for name in pipeline.all_inputs() if name.startswith(_PARAMS)
    } | {HOOK_PARAMETERS}


def runtime_parameter_names(conf_source: str | Path | None) -> set[str]:
    """Top-level names the configuration reads through ``${runtime_params:<name>}`` (e.g. a catalog path)."""
    if conf_source is None or not Path(conf_source).is_dir():
        return set()
    return {
        match.split(".")[0]
        for path in Path(conf_source).rglob("*.yml")
        for match in _RUNTIME_PARAM.findall(path.read_text(encoding="utf-8", errors="replace"))
    }


def _registered_pipelines() -> list[Pipeline]:
    from kedro.framework.project import pipelines

    return list(pipelines.values())


class ParameterValidationHooks:
    """Checks the parameter blocks the run reads (other stages' blocks: warnings); unknown keys anywhere are errors."""

    def __init__(self) -> None:
        self._conf_source: str | None = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._conf_source = getattr(context.config_loader, "conf_source", None)

    @hook_impl(tryfirst=True)  # before kedro-mlflow starts a run and logs the parameters
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: Any) -> None:
        from starft_pipeline.params import parameter_errors, parameter_warnings, precondition_errors

        params = catalog.load("parameters")
        run_paths = parameter_paths([pipeline])
        read_paths = parameter_paths([*_registered_pipelines(), pipeline])
        for warning in parameter_warnings(params, run_paths, read_paths):
            logger.warning("parameters of another stage (this run does not read them): %s", warning)
        errors = parameter_errors(params, run_paths, read_paths, runtime_parameter_names(self._conf_source))
        if errors:
            raise ParameterValidationError(
                "Parameter validation failed before any node ran:\n" + "\n".join(f"- {error}" for error in errors)
            )
        # Only on valid parameters: weights and files the run's stages need, before the first node.
        missing = precondition_errors(params, run_paths)
        if missing:
            raise ParameterValidationError(
                "The run cannot succeed, found before any node ran:\n" + "\n".join(f"- {error}" for error in missing)
            )
        logger.info("parameters: %d block(s) read by this run checked against their models", len(run_paths))


# --- torchrun: rank 0 writes ------------------------------------------------------------------


def untracked_pipelines() -> list[str]:
    """``mlflow.yml``'s ``disable_tracking.pipelines``: every pipeline on a torchrun rank other than 0
    (rank 0 holds the one MLflow run), none otherwise."""
    from starft_pipeline.core.distributed import launch_rank

    if launch_rank() == 0:
        return []
    from starft_pipeline.pipeline_registry import register_pipelines

    return sorted(register_pipelines())


class RankZeroOutputsHooks:
    """Under torchrun every rank runs the Kedro pipeline (the fine-tuning nodes need all of them for
    DDP's collectives), but only rank 0 persists: on the other ranks every output of the run becomes
    a MemoryDataset, so later nodes still get their inputs and no file is written twice.

    Tensor bundles (the teacher cache, the linear probes, the fine-tuned weights: outputs the catalog
    stores as safetensors) are held by reference (``copy_mode="assign"``): their consumers only read
    them, and a MemoryDataset's default deep copy on every save and load would put one more copy of
    the cache in each rank's RAM per consumer (5 fine-tunes, 2 probes, evaluation). Everything else
    keeps the default copy, since a consumer may mutate a dict or a frame."""

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: Any) -> None:
        from starft_pipeline.core.distributed import launch_rank

        rank = launch_rank()
        if rank == 0:
            return
        for name in sorted(pipeline.all_outputs()):
            catalog[name] = MemoryDataset(copy_mode=_memory_copy_mode(catalog, name))
        logger.info(
            "torchrun rank %d: the run's %d outputs stay in memory; rank 0 writes them",
            rank,
            len(pipeline.all_outputs()),
        )


class ProcessGroupHooks:
    """``distributed`` parameters (the process group's timeout) for the process group a node joins
    under torchrun (:func:`starft_pipeline.core.distributed.init_from_env`). Read here, not by a
    node, because the first node of a run that joins sets them for every stage after it."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: Any) -> None:
        from starft_pipeline.core.distributed import ProcessGroupConfig, configure_process_group

        params = catalog.load("parameters")
        configure_process_group(ProcessGroupConfig.from_params(params.get(HOOK_PARAMETERS)))


def _memory_copy_mode(catalog: Any, name: str) -> Literal["assign"] | None:
    """``"assign"`` for an output the catalog stores as a tensor bundle (read-only consumers), else the default."""
    from starft_pipeline.kedro_io import TensorBundleDataset

    return "assign" if isinstance(catalog.get(name), TensorBundleDataset) else None  # undeclared: None
