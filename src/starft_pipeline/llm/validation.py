"""Checking the model's answer. Pure functions: the answer is data, never evaluated.

An invalid answer raises :class:`InvalidAnswerError` whose message is written for the model (it is fed
back as the follow-up turn) and for the user (it ends up in the final error after the last attempt).
"""

from __future__ import annotations

import re
from typing import Any

from starft_pipeline.llm.prompts import TOOL_NAME, strip_control_characters

CLASS_SLOT = "{c}"
_MAX_LISTED_PROBLEMS = 8
_PLAIN_CAPTION = re.compile(
    r"^(?:(?:this is )?(?:a|an) (?:photo|picture|image|photograph) of )?(?:(?:a|an|the) )?\x00$"
)


class InvalidAnswerError(ValueError):
    """The model's answer cannot be used as it is; the message says why."""


def _dedup_key(text: str) -> str:
    return " ".join(text.split()).casefold()


def _is_plain_caption(text: str, class_pattern: re.Pattern[str]) -> bool:
    """True when the text is the class name alone (or 'a photo of a <class>'), with no confounder."""
    core = class_pattern.sub("\x00", text).lower().strip(" .!?,;:'\"()-")
    return bool(_PLAIN_CAPTION.match(" ".join(core.split())))


def validate_descriptions(raw: Any, class_name: str, n: int, max_chars: int) -> list[str]:
    """The cleaned, deduplicated first ``n`` descriptions, or :class:`InvalidAnswerError`.

    Each item: control characters stripped, whitespace collapsed, a ``{c}`` slot filled with the class
    name; it must be non-empty, at most ``max_chars`` long, contain the class name (case-insensitively;
    the occurrences are rewritten to the exact spelling so downstream ``class_name in text`` holds), and
    be more than the bare class name. Duplicates (case/whitespace-insensitive) are dropped; fewer than
    ``n`` distinct texts is invalid, more are cut to the first ``n``.
    """
    if not isinstance(raw, list):
        raise InvalidAnswerError(f"'descriptions' must be a list of strings, got {type(raw).__name__}")
    class_pattern = re.compile(re.escape(class_name), re.IGNORECASE)
    problems: list[str] = []
    kept: list[str] = []
    seen: set[str] = set()
    duplicates = 0
    for index, item in enumerate(raw, start=1):
        if not isinstance(item, str):
            problems.append(f"item {index} is a {type(item).__name__}, not a string")
            continue
        text = strip_control_characters(item.replace(CLASS_SLOT, class_name))
        if not text:
            problems.append(f"item {index} is empty")
            continue
        if len(text) > max_chars:
            problems.append(f"item {index} is {len(text)} characters long (limit {max_chars})")
            continue
        if not class_pattern.search(text):
            problems.append(f"item {index} does not contain the class name {class_name!r}")
            continue
        text = class_pattern.sub(lambda _match: class_name, text)
        if _is_plain_caption(text, class_pattern):
            problems.append(f"item {index} is only the class name, with no confounder")
            continue
        key = _dedup_key(text)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        kept.append(text)
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED_PROBLEMS])
        more = f" (and {len(problems) - _MAX_LISTED_PROBLEMS} more)" if len(problems) > _MAX_LISTED_PROBLEMS else ""
        raise InvalidAnswerError(f"{len(problems)} of {len(raw)} descriptions are invalid: {listed}{more}")
    if len(kept) < n:
        dup_note = f" after removing {duplicates} duplicate(s)" if duplicates else ""
        raise InvalidAnswerError(f"got {len(kept)} distinct descriptions{dup_note}, need exactly {n}")
    return kept[:n]


def extract_tool_input(message: Any) -> Any:
    """The ``descriptions`` value of the answer's ``submit_descriptions`` call, or InvalidAnswerError.

    ``message`` is an SDK ``Message`` (read through attributes only). A refusal, an answer cut at
    ``max_tokens`` and an answer without the tool call are invalid answers with a clear message.
    """
    stop_reason = getattr(message, "stop_reason", None)
    if stop_reason == "refusal":
        raise InvalidAnswerError("the model refused to answer (stop_reason 'refusal')")
    if stop_reason == "max_tokens":
        raise InvalidAnswerError(
            "the answer was cut off at max_tokens; write shorter descriptions (or raise max_tokens)"
        )
    blocks = [
        block for block in (getattr(message, "content", None) or []) if getattr(block, "type", None) == "tool_use"
    ]
    calls = [block for block in blocks if getattr(block, "name", None) == TOOL_NAME]
    if not calls:
        raise InvalidAnswerError(f"the answer did not call the {TOOL_NAME} tool (stop_reason {stop_reason!r})")
    tool_input = getattr(calls[0], "input", None)
    if not isinstance(tool_input, dict) or "descriptions" not in tool_input:
        raise InvalidAnswerError(f"the {TOOL_NAME} call has no 'descriptions' field")
    return tool_input["descriptions"]
