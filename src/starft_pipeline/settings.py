"""Kedro project settings."""

import atexit
import gc
import warnings
from typing import Any

from kedro.config import OmegaConfigLoader
from omegaconf import OmegaConf

from starft_pipeline.hooks import ParameterValidationHooks, ProcessGroupHooks, RankZeroOutputsHooks, untracked_pipelines

# Typed parameters (starft_pipeline.params) are checked before any node runs; under torchrun only
# rank 0 writes outputs and logs to MLflow, and the process group gets the `distributed` timeout.
HOOKS = (ParameterValidationHooks(), RankZeroOutputsHooks(), ProcessGroupHooks())

# At exit the interpreter's garbage collector walks every object MLflow, torch and pandas created
# (1–2 s of every kedro command; docs/stack-notes.md): freezing them first skips that walk. Registered
# before MLflow is imported, so it runs after MLflow's own atexit handler (which ends an open run).
# Objects are still released by reference counting; only cycles left at exit are not collected.
atexit.register(gc.freeze)

# Our resolver (conf/base/mlflow.yml) is registered through omegaconf's current API; Kedro's
# ``custom_resolvers`` setting would register it through the deprecated one, with a warning.
if not OmegaConf.has_resolver("starft_untracked_pipelines"):
    OmegaConf.register_resolver("starft_untracked_pipelines", untracked_pipelines)
# Kedro 1.x (its globals and runtime_params resolvers) and kedro-mlflow 2.0 still call omegaconf's
# deprecated register_new_resolver on every run; the notice is theirs to act on, not a user's.
warnings.filterwarnings(
    "ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning, module=r"(kedro|kedro_mlflow)\."
)
# The one-pass evaluation node reads every method's namespaced outputs (``star.weights``, …) from its
# own namespace by design; Kedro flags any dotted name read across namespaces as possibly a typo.
warnings.filterwarnings(
    "ignore", message=r"One or more dataset names contain '\.' characters", module=r"starft_pipeline\.pipelines\."
)

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
}
