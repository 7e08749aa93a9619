"""One JSON record per (class, confounder type), named by a key over everything that shapes the answer.

Records are written atomically the moment a pair completes, so a crash or Ctrl-C loses only the
requests in flight. A rerun reads every record whose key still matches and sends no request for it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from starft_pipeline.core.io_utils import atomic_write_json, fingerprint
from starft_pipeline.llm.prompts import SCHEMA_VERSION, SYSTEM_PROMPT, submit_tool
from starft_pipeline.llm.settings import LLMSettings
from starft_pipeline.llm.validation import InvalidAnswerError, validate_descriptions


def cache_key(settings: LLMSettings, prompt: str) -> str:
    """Hash of (model, template hash, rendered prompt, n, temperature, max_tokens, max chars, schema).

    The rendered prompt carries the class name, the confounder type and its hint. The system prompt
    and the tool schema are hashed too, so a code change to either invalidates the cache.
    """
    return fingerprint(
        {
            "schema_version": SCHEMA_VERSION,
            "model": settings.model,
            "template": fingerprint(settings.prompt_template),
            "prompt": prompt,
            "system": fingerprint(SYSTEM_PROMPT),
            "tool": fingerprint(submit_tool(settings.n_descriptions, settings.max_description_chars)),
            "n": settings.n_descriptions,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "max_chars": settings.max_description_chars,
        }
    )


def record_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"{key}.json"


def write_record(cache_dir: Path, record: dict[str, Any]) -> Path:
    path = record_path(cache_dir, record["key"])
    atomic_write_json(path, record)
    return path


def load_record(
    cache_dir: Path,
    key: str,
    class_name: str,
    n: int,
    max_chars: int,
    logger: logging.Logger,
) -> dict[str, Any] | None:
    """The cached record for ``key``, or None when absent; unusable files are logged and ignored.

    The stored texts are validated again (a hand-edited record must still satisfy the rules);
    a corrupt, truncated or invalid record is regenerated, and the next write replaces it.
    """
    path = record_path(cache_dir, key)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        if record.get("key") != key or record.get("schema_version") != SCHEMA_VERSION:
            raise ValueError("key or schema version does not match the file name")
        record["descriptions"] = validate_descriptions(record.get("descriptions"), class_name, n, max_chars)
    except (OSError, UnicodeDecodeError, ValueError, InvalidAnswerError) as err:
        logger.warning("Ignoring unusable LLM cache record %s (%s); regenerating it", path, err)
        return None
    return record
