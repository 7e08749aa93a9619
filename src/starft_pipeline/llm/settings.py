"""Settings of the LLM descriptions generator, built from the ``descriptions`` parameters block."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from starft_pipeline.core.configs import reject_unknown_keys

DEFAULT_MODEL = "claude-sonnet-4-6"

DEFAULT_CONFOUNDER_TYPES: tuple[str, ...] = ("background", "texture", "resolution")

DEFAULT_CONFOUNDER_HINTS: dict[str, str] = {
    "background": "the scene, place or surroundings the object is photographed in, e.g. water, a forest, snow, "
    "a city street, a kitchen table",
    "texture": "a surface pattern, material or rendering style of the picture, e.g. striped, furry, woven, "
    "painted, made of clay",
    "resolution": "the image quality or capture conditions, e.g. blurry, pixelated, low-resolution, grainy, "
    "overexposed, shot from far away",
    "synthetic_background": "the background scene the shape is drawn on, e.g. grass, water, sand, snow, "
    "a brick wall, a forest",
}

#: How the prompt names a confounder type whose internal name is not a phrase (``{confounder_type} cue``).
DEFAULT_CONFOUNDER_PHRASES: dict[str, str] = {"synthetic_background": "background"}

DEFAULT_PROMPT_TEMPLATE = """\
We are building text prompts for a vision-language model (CLIP). Each prompt describes a photo of an object \
class together with a spurious cue: something that often appears together with that class in photos, but \
is not part of the object itself and does not define the class.

Class name: "{class_name}"
Confounder type: {confounder_type} ({confounder_hint})

Write {n} different short descriptions of photos of {class_name}, each naming one concrete \
{confounder_type} cue that often co-occurs with {class_name} in photos. Example of the form, for the \
class "camel" and the confounder type background: "a photo of a camel in a sandy desert".

Rules:
- Every description contains the class name exactly as written: {class_name}
- One plain sentence fragment each, at most {max_chars} characters, no numbering, no quotation marks.
- Each description names a different {confounder_type}; do not describe parts, colours or shapes of the \
{class_name} itself.

Submit the {n} descriptions with the submit_descriptions tool."""

#: The slots a prompt template may use; the first three are required.
REQUIRED_TEMPLATE_SLOTS = frozenset({"class_name", "confounder_type", "n"})
OPTIONAL_TEMPLATE_SLOTS = frozenset({"confounder_hint", "max_chars"})


class LLMSettingsError(ValueError):
    """Parameters for the LLM descriptions stage that cannot be used; the message names the key."""


def template_slots(template: str) -> set[str]:
    """The ``{slot}`` names used by a str.format template (raises ValueError on unbalanced braces)."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


class LLMSettings(BaseModel):
    """How the descriptions are asked for. Immutable; build it with :meth:`from_params`.

    The API key is deliberately *not* a setting: it is resolved separately (:func:`resolve_api_key`)
    so it can never appear in this object's repr, in parameter logs or in cache records.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Literal["anthropic", "offline"] = "anthropic"
    model: str = DEFAULT_MODEL
    max_tokens: int = Field(2048, ge=64)
    #: ``None`` = the model's default (the request omits it). SDK 1.x+ dropped the keyword, so a set value
    #: travels in ``extra_body``; some newer models (Opus 4.7+) reject it with a 400.
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    n_descriptions: int = Field(10, ge=1, le=100)
    confounder_types: tuple[str, ...] = DEFAULT_CONFOUNDER_TYPES
    #: Extra/overriding hints per confounder type, shown in the prompt's ``{confounder_hint}`` slot.
    confounder_hints: dict[str, str] = Field(default_factory=dict)
    #: How the prompt names a confounder type (``synthetic_background`` → ``background``); overrides the defaults.
    confounder_phrases: dict[str, str] = Field(default_factory=dict)
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_description_chars: int = Field(200, ge=10)
    max_class_name_chars: int = Field(100, ge=1)
    base_url: str | None = None
    max_concurrency: int = Field(4, ge=1, le=64)
    max_validation_attempts: int = Field(3, ge=1, le=10)
    http_max_retries: int = Field(4, ge=0, le=20)
    timeout_s: float = Field(120.0, gt=0)
    input_price_per_mtok: float = Field(3.0, ge=0)
    output_price_per_mtok: float = Field(15.0, ge=0)

    @field_validator("confounder_types", mode="before")
    @classmethod
    def _confounder_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("confounder_types must be a list of names, e.g. [background, texture]")
        return value

    @field_validator("confounder_types")
    @classmethod
    def _confounders_valid(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(kind.strip() for kind in value)
        if not cleaned or any(not kind for kind in cleaned):
            raise ValueError("confounder_types must hold at least one non-empty name")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError(f"confounder_types has duplicates: {list(cleaned)}")
        return cleaned

    @field_validator("prompt_template")
    @classmethod
    def _template_valid(cls, value: str) -> str:
        try:
            slots = template_slots(value)
        except ValueError as err:
            raise ValueError(
                f"prompt_template is not a valid format string ({err}); write literal braces as {{{{ }}}}"
            ) from err
        missing = REQUIRED_TEMPLATE_SLOTS - slots
        if missing:
            raise ValueError(f"prompt_template lacks the slot(s) {sorted('{' + s + '}' for s in missing)}")
        unknown = slots - REQUIRED_TEMPLATE_SLOTS - OPTIONAL_TEMPLATE_SLOTS
        if unknown:
            allowed = sorted(REQUIRED_TEMPLATE_SLOTS | OPTIONAL_TEMPLATE_SLOTS)
            raise ValueError(f"prompt_template uses unknown slot(s) {sorted(unknown)}; allowed: {allowed}")
        return value

    @model_validator(mode="after")
    def _base_url_valid(self) -> LLMSettings:
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        return self

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> LLMSettings:
        """Build from a parameters dict; unknown keys and bad values raise :class:`LLMSettingsError`."""
        params = dict(params or {})
        try:
            reject_unknown_keys(params, cls.model_fields, "descriptions.anthropic")
        except ValueError as err:  # the same check and message as every config's from_params
            raise LLMSettingsError(str(err)) from None
        try:
            return cls(**params)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
                for error in err.errors()
            )
            raise LLMSettingsError(f"invalid LLM settings: {problems}") from None

    def __hash__(self) -> int:  # the hints dict would make pydantic's field hash fail
        return hash(self.model_dump_json())

    def confounder_hint(self, confounder_type: str) -> str:
        """The prompt hint for a confounder type; unknown types fall back to the type's phrase."""
        if confounder_type in self.confounder_hints:
            return self.confounder_hints[confounder_type]
        return DEFAULT_CONFOUNDER_HINTS.get(confounder_type, f"a {self.confounder_phrase(confounder_type)} cue")

    def confounder_phrase(self, confounder_type: str) -> str:
        """How the prompt names a confounder type: a configured or default phrase, else the name with spaces.

        Internal names (``synthetic_background``) are identifiers, not words to show the model.
        """
        if confounder_type in self.confounder_phrases:
            return self.confounder_phrases[confounder_type]
        return DEFAULT_CONFOUNDER_PHRASES.get(confounder_type, confounder_type.replace("_", " "))

    def estimated_cost_usd(self, input_tokens: float, output_tokens: float) -> float:
        return input_tokens / 1e6 * self.input_price_per_mtok + output_tokens / 1e6 * self.output_price_per_mtok
