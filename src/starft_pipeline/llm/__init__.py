"""Spuriosity-injected descriptions from Claude: plain Python, no Kedro imports.

Entry point for the ``descriptions`` stage::

    settings = LLMSettings.from_params(params)
    result = generate_descriptions(class_names, settings, cache_dir, resolve_api_key(credentials))
"""

from starft_pipeline.llm.client import (
    DescriptionGenerationError,
    DescriptionJob,
    GenerationResult,
    MissingAPIKeyError,
    estimate_usage,
    generate_descriptions,
    plan_jobs,
    resolve_api_key,
)
from starft_pipeline.llm.prompts import (
    SCHEMA_VERSION,
    SYSTEM_PROMPT,
    TOOL_NAME,
    sanitize_class_name,
    strip_control_characters,
)
from starft_pipeline.llm.settings import DEFAULT_PROMPT_TEMPLATE, LLMSettings, LLMSettingsError
from starft_pipeline.llm.validation import InvalidAnswerError, extract_tool_input, validate_descriptions

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "SCHEMA_VERSION",
    "SYSTEM_PROMPT",
    "TOOL_NAME",
    "DescriptionGenerationError",
    "DescriptionJob",
    "GenerationResult",
    "InvalidAnswerError",
    "LLMSettings",
    "LLMSettingsError",
    "MissingAPIKeyError",
    "estimate_usage",
    "extract_tool_input",
    "generate_descriptions",
    "plan_jobs",
    "resolve_api_key",
    "sanitize_class_name",
    "strip_control_characters",
    "validate_descriptions",
]
