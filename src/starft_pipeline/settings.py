"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from starft_pipeline.hooks import ParameterValidationHooks

# Typed parameters (starft_pipeline.params) are checked before any node runs.
HOOKS = (ParameterValidationHooks(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
