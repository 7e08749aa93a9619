"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from starft_pipeline.hooks import ParameterValidationHooks, RankZeroOutputsHooks, untracked_pipelines

# Typed parameters (starft_pipeline.params) are checked before any node runs; under torchrun only
# rank 0 writes outputs and logs to MLflow.
HOOKS = (ParameterValidationHooks(), RankZeroOutputsHooks())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": {"starft_untracked_pipelines": untracked_pipelines},
}
