"""Kedro project settings."""

import atexit
import gc
from typing import Any

from kedro.config import OmegaConfigLoader

from starft_pipeline.hooks import ParameterValidationHooks, ProcessGroupHooks, RankZeroOutputsHooks, untracked_pipelines

# Typed parameters (starft_pipeline.params) are checked before any node runs; under torchrun only
# rank 0 writes outputs and logs to MLflow, and the process group gets the `distributed` timeout.
HOOKS = (ParameterValidationHooks(), RankZeroOutputsHooks(), ProcessGroupHooks())

# At exit the interpreter's garbage collector walks every object MLflow, torch and pandas created
# (1–2 s of every kedro command; docs/stack-notes.md): freezing them first skips that walk. Registered
# before MLflow is imported, so it runs after MLflow's own atexit handler (which ends an open run).
# Objects are still released by reference counting; only cycles left at exit are not collected.
atexit.register(gc.freeze)

#: Parameter blocks an environment replaces whole: it names its own data sets (and their class names).
REPLACED_PARAMETER_BLOCKS = ("datasets", "class_names")


class ProjectConfigLoader(OmegaConfigLoader):
    """Kedro's loader; an environment's parameters are merged key by key into base's (``conf/imagenet``
    that sets ``batch_size`` keeps base's other finetune keys), except the blocks of
    ``REPLACED_PARAMETER_BLOCKS``, which it replaces whole (no base data set leaks into its runs)."""

    @staticmethod
    def _soft_merge(config: dict[str, Any], env_config: dict[str, Any], env_path: str | None = None) -> Any:
        merged = OmegaConfigLoader._soft_merge(config, env_config, env_path)
        for block in REPLACED_PARAMETER_BLOCKS:
            if block in env_config:
                merged[block] = OmegaConfigLoader._soft_merge({}, {block: env_config[block]})[block]
        return merged


CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft"},
    "custom_resolvers": {"starft_untracked_pipelines": untracked_pipelines},
}
