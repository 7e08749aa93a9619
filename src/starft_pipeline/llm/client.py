"""Asking Claude for spuriosity-injected descriptions: one request per (class, confounder type).

Why concurrent Messages calls and not the Message Batches API: a batch is 50% cheaper but may take up to
24 hours to finish and has to be polled, which does not fit a pipeline stage a user waits for (and a
1,000-class run costs a few dollars either way). A bounded thread pool of ordinary requests finishes a
3,000-request run in minutes, surfaces errors at once, and lets every finished pair be cached the moment
it completes. A batch mode (submit the uncached keys as one batch, persist the batch id, collect on the
next run) could be added behind a setting, reusing the same prompts, cache keys and validation.

Retries: HTTP 408/409/429/5xx/529 and timeouts are retried by the SDK's own jittered backoff, which
honours ``retry-after``; ``http_max_retries`` configures it. Invalid *answers* (wrong count, refusal,
missing class name, …) are a separate, bounded loop: the validation error goes back to the model as a
follow-up turn, ``max_validation_attempts`` times at most.

The API key is only handed to the SDK client. It is never stored in settings, records, logs or the
messages of the errors raised here (which also drop the SDK exception that holds the request headers).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starft_pipeline.llm.cache import cache_key, load_record, write_record
from starft_pipeline.llm.prompts import (
    SCHEMA_VERSION,
    SYSTEM_PROMPT,
    render_prompt,
    retry_instruction,
    sanitize_class_name,
    submit_tool,
    tool_choice,
)
from starft_pipeline.llm.settings import LLMSettings
from starft_pipeline.llm.validation import InvalidAnswerError, extract_tool_input, validate_descriptions

if TYPE_CHECKING:  # the SDK is imported where requests are made: parameter checks must not pay for it
    import anthropic

LOGGER = logging.getLogger(__name__)

API_KEY_ENV = "ANTHROPIC_API_KEY"

#: Rough token figures for :func:`estimate_usage` (≈ 4 characters a token; tool-use system overhead).
CHARS_PER_TOKEN = 4
TOOL_USE_OVERHEAD_TOKENS = 350
TYPICAL_DESCRIPTION_CHARS = 70


class DescriptionGenerationError(RuntimeError):
    """A (class, confounder) pair could not be generated; finished pairs are cached, a rerun resumes."""


class MissingAPIKeyError(DescriptionGenerationError):
    """Uncached pairs need the Anthropic API, and no API key was found."""


@dataclass(frozen=True)
class DescriptionJob:
    """One request: a class (as given and as sent) and a confounder type, with its cache key."""

    class_name: str
    prompt_class_name: str
    confounder_type: str
    prompt: str
    key: str

    @property
    def label(self) -> str:
        return f"class {self.class_name!r}, confounder {self.confounder_type!r}"


@dataclass
class GenerationResult:
    """What :func:`generate_descriptions` returns.

    ``descriptions``: confounder type -> class name (as given) -> texts.
    ``usage``: this run's input_tokens, output_tokens, requests (answers received, invalid ones included),
    cached_records (pairs served from the cache) and estimated_cost_usd.
    ``records``: one dict per pair (the JSON stored in the cache plus ``cached``), in plan order.
    """

    descriptions: dict[str, dict[str, list[str]]]
    usage: dict[str, float]
    records: list[dict[str, Any]] = field(default_factory=list)


class _UsageMeter:
    """Thread-safe token and request counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.input_tokens = 0
        self.output_tokens = 0
        self.requests = 0

    def add(self, message: Any) -> tuple[int, int]:
        usage = getattr(message, "usage", None)
        tokens_in = int(getattr(usage, "input_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "output_tokens", 0) or 0)
        with self._lock:
            self.input_tokens += tokens_in
            self.output_tokens += tokens_out
            self.requests += 1
        return tokens_in, tokens_out


def resolve_api_key(credentials: Mapping[str, Any] | None = None) -> str | None:
    """The Anthropic API key: ``ANTHROPIC_API_KEY`` first, then ``credentials["anthropic"]["api_key"]``.

    ``credentials`` is Kedro's credentials dict (``conf/local/credentials.yml``). Returns None when
    neither holds a non-empty key; blank values count as absent.
    """
    from_env = os.environ.get(API_KEY_ENV, "").strip()
    if from_env:
        return from_env
    section = (credentials or {}).get("anthropic") if isinstance(credentials, Mapping) else None
    if isinstance(section, Mapping):
        value = section.get("api_key")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def plan_jobs(class_names: Sequence[str], settings: LLMSettings) -> list[DescriptionJob]:
    """Every (confounder type, class) pair with its prompt and cache key, confounder-major."""
    if len(set(class_names)) != len(class_names):
        duplicates = sorted({name for name in class_names if list(class_names).count(name) > 1})
        raise ValueError(f"class names must be unique; duplicated: {duplicates}")
    sent_names = {name: sanitize_class_name(name, settings.max_class_name_chars) for name in class_names}
    jobs = []
    for confounder_type in settings.confounder_types:
        for name in class_names:
            prompt = render_prompt(settings, sent_names[name], confounder_type)
            jobs.append(
                DescriptionJob(
                    class_name=name,
                    prompt_class_name=sent_names[name],
                    confounder_type=confounder_type,
                    prompt=prompt,
                    key=cache_key(settings, prompt),
                )
            )
    return jobs


def estimate_usage(n_classes: int, settings: LLMSettings) -> dict[str, float]:
    """Rough first-attempt cost of an uncached run (≈ chars/4 tokens; retries not counted)."""
    prompt = render_prompt(settings, "x" * 12, settings.confounder_types[0])
    tool_chars = len(json.dumps(submit_tool(settings.n_descriptions, settings.max_description_chars)))
    per_input = (len(prompt) + len(SYSTEM_PROMPT) + tool_chars) / CHARS_PER_TOKEN + TOOL_USE_OVERHEAD_TOKENS
    per_output = settings.n_descriptions * (TYPICAL_DESCRIPTION_CHARS / CHARS_PER_TOKEN + 3) + 40
    requests = n_classes * len(settings.confounder_types)
    input_tokens, output_tokens = requests * per_input, requests * per_output
    return {
        "requests": float(requests),
        "input_tokens_per_request": per_input,
        "output_tokens_per_request": per_output,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "estimated_cost_usd": settings.estimated_cost_usd(input_tokens, output_tokens),
    }


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _api_error_message(err: Exception, settings: LLMSettings) -> str:
    """A user-facing description of an SDK error that survived the SDK's own retries."""
    import anthropic

    retries = settings.http_max_retries
    if isinstance(err, anthropic.APITimeoutError):
        return (
            f"the request timed out after {settings.timeout_s:g} s (tried {retries + 1} time(s)); "
            "raise timeout_s or http_max_retries, or rerun later"
        )
    if isinstance(err, anthropic.APIConnectionError):
        return f"could not connect to the API at {settings.base_url or 'the default endpoint'} ({err.message})"
    if isinstance(err, anthropic.APIStatusError):
        status = err.status_code
        detail = getattr(err, "message", "") or ""
        if status in (401, 403):
            return (
                f"the API rejected the credentials (HTTP {status}); check ANTHROPIC_API_KEY or "
                "conf/local/credentials.yml"
            )
        if status == 429:
            return f"rate limited (HTTP 429) after {retries} retries; lower max_concurrency or raise http_max_retries"
        if status >= 500:
            return f"server error HTTP {status} after {retries} retries: {detail}"
        return f"the request was rejected (HTTP {status}): {detail}"
    return f"{type(err).__name__}: {err}"


def _assistant_blocks(message: Any) -> list[dict[str, Any]]:
    """The answer's text/tool_use blocks as request params, to continue the conversation."""
    blocks = []
    for block in getattr(message, "content", None) or []:
        kind = getattr(block, "type", None)
        if kind == "text" and getattr(block, "text", ""):
            blocks.append({"type": "text", "text": block.text})
        elif kind == "tool_use":
            blocks.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
    return blocks


def _follow_up(
    first_turn: list[dict[str, Any]], messages: list[dict[str, Any]], message: Any, error: str, n: int
) -> list[dict[str, Any]]:
    """The conversation for the next attempt, with the validation error fed back as a user turn."""
    if message is None or getattr(message, "stop_reason", None) == "refusal":
        return list(first_turn)  # nothing sensible to continue from: ask afresh
    blocks = _assistant_blocks(message)
    if not blocks:
        return list(first_turn)
    instruction = retry_instruction(error, n)
    tool_ids = [block["id"] for block in blocks if block["type"] == "tool_use"]
    if tool_ids:
        content: list[dict[str, Any]] = [
            {"type": "tool_result", "tool_use_id": tool_id, "is_error": True, "content": instruction}
            for tool_id in tool_ids
        ]
    else:
        content = [{"type": "text", "text": instruction}]
    return [*messages, {"role": "assistant", "content": blocks}, {"role": "user", "content": content}]


def _generate_one(
    client: anthropic.Anthropic,
    job: DescriptionJob,
    settings: LLMSettings,
    meter: _UsageMeter,
    cache_dir: Path,
    api_key: str,
    logger: logging.Logger,
) -> dict[str, Any]:
    """Ask, validate, re-ask with the error (bounded); write the record atomically and return it."""
    import anthropic

    first_turn: list[dict[str, Any]] = [{"role": "user", "content": job.prompt}]
    messages = list(first_turn)
    extra_body = {"temperature": settings.temperature} if settings.temperature is not None else None
    tool = submit_tool(settings.n_descriptions, settings.max_description_chars)
    tokens = {"input_tokens": 0, "output_tokens": 0}
    message_ids: list[str] = []
    last_error = ""
    for attempt in range(1, settings.max_validation_attempts + 1):
        message = None
        failure: str | None = None
        try:
            # the SDK's overloads want its TypedDicts; messages, tools and tool_choice are plain JSON dicts
            message = client.messages.create(  # type: ignore[call-overload]
                model=settings.model,
                max_tokens=settings.max_tokens,
                system=SYSTEM_PROMPT,
                messages=messages,
                tools=[tool],
                tool_choice=tool_choice(),
                extra_body=extra_body,
            )
        except anthropic.APIError as err:
            failure = _api_error_message(err, settings)
        except json.JSONDecodeError:  # the SDK's answer to a malformed response body
            last_error = "the API answered with a malformed JSON body"
            logger.warning("%s: attempt %d: %s", job.label, attempt, last_error)
            continue
        if failure is not None:  # raised outside the except block: the SDK error (and its headers) is dropped
            raise DescriptionGenerationError(_redact(f"{job.label}: {failure}", api_key))
        used_in, used_out = meter.add(message)
        tokens["input_tokens"] += used_in
        tokens["output_tokens"] += used_out
        message_ids.append(str(getattr(message, "id", "")))
        try:
            texts = validate_descriptions(
                extract_tool_input(message),
                job.prompt_class_name,
                settings.n_descriptions,
                settings.max_description_chars,
            )
        except InvalidAnswerError as err:
            last_error = str(err)
            logger.warning("%s: attempt %d/%d invalid: %s", job.label, attempt, settings.max_validation_attempts, err)
            messages = _follow_up(first_turn, messages, message, last_error, settings.n_descriptions)
            continue
        record = {
            "schema_version": SCHEMA_VERSION,
            "key": job.key,
            "class_name": job.class_name,
            "prompt_class_name": job.prompt_class_name,
            "confounder_type": job.confounder_type,
            "model": settings.model,
            "response_model": str(getattr(message, "model", "") or ""),
            "prompt": job.prompt,
            "n": settings.n_descriptions,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "max_description_chars": settings.max_description_chars,
            "descriptions": texts,
            "attempts": attempt,
            "message_ids": message_ids,
            "usage": tokens,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_record(cache_dir, record)
        return record
    raise DescriptionGenerationError(
        _redact(
            f"{job.label}: no valid answer after {settings.max_validation_attempts} attempt(s); "
            f"last problem: {last_error}. Finished pairs are cached: rerun, raise max_validation_attempts, "
            "or adjust prompt_template / max_description_chars / n_descriptions.",
            api_key,
        )
    )


def _run_jobs(
    jobs: list[DescriptionJob],
    settings: LLMSettings,
    cache_dir: Path,
    api_key: str,
    meter: _UsageMeter,
    logger: logging.Logger,
) -> dict[str, dict[str, Any]]:
    """Run the uncached jobs on a bounded thread pool; stop scheduling at the first failure.

    Requests in flight when a pair fails still finish (and are cached); jobs not started are skipped.
    """
    import anthropic

    done: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    stop = threading.Event()
    client = anthropic.Anthropic(
        api_key=api_key,
        base_url=settings.base_url,
        max_retries=settings.http_max_retries,
        timeout=settings.timeout_s,
    )

    def work(job: DescriptionJob) -> dict[str, Any] | None:
        if stop.is_set():
            return None
        try:
            return _generate_one(client, job, settings, meter, cache_dir, api_key, logger)
        except BaseException:
            stop.set()
            raise

    step = max(1, len(jobs) // 10)
    with (
        client,
        ThreadPoolExecutor(
            max_workers=min(settings.max_concurrency, len(jobs)), thread_name_prefix="llm-descriptions"
        ) as pool,
    ):
        futures: dict[Future[dict[str, Any] | None], DescriptionJob] = {pool.submit(work, job): job for job in jobs}
        try:
            for future in as_completed(futures):
                job = futures[future]
                if future.cancelled():
                    continue
                try:
                    record = future.result()
                except DescriptionGenerationError as err:
                    if not failures:  # first failure: stop scheduling, let the requests in flight finish
                        for other in futures:
                            other.cancel()
                    failures.append(str(err))
                    continue
                if record is None:  # skipped after a failure
                    continue
                done[job.key] = record
                if len(done) % step == 0 or len(done) == len(jobs):
                    logger.info("LLM descriptions: %d/%d requested pairs done", len(done), len(jobs))
        finally:  # also on Ctrl-C: nothing new starts, requests in flight finish and are cached
            stop.set()
            for other in futures:
                other.cancel()
    if failures:
        not_run = len(jobs) - len(done) - len(failures)
        raise DescriptionGenerationError(
            f"{failures[0]} ({len(done)} pair(s) finished and cached in {cache_dir}, "
            f"{len(failures)} failed, {not_run} not attempted; a rerun requests only the missing pairs)"
        )
    return done


def generate_descriptions(
    class_names: Sequence[str],
    settings: LLMSettings,
    cache_dir: Path | str,
    api_key: str | None,
    logger: logging.Logger | None = None,
) -> GenerationResult:
    """Spuriosity-injected descriptions for every class × confounder type, cached per pair.

    Pairs whose record is in ``cache_dir`` send no request (and need no API key). The others are
    requested concurrently (``max_concurrency`` threads); each finished pair is written at once, so a
    failure or crash part-way loses nothing done. Raises :class:`MissingAPIKeyError` before any request
    when uncached pairs exist and ``api_key`` is None, and :class:`DescriptionGenerationError` naming the
    class and confounder when a pair fails.
    """
    logger = logger or LOGGER
    if settings.provider != "anthropic":
        raise ValueError(
            f"generate_descriptions asks the Anthropic API; provider is {settings.provider!r} "
            "(the offline provider expands the template pools instead)"
        )
    cache_dir = Path(cache_dir)
    jobs = plan_jobs(list(class_names), settings)
    for job in jobs[: len(class_names)]:
        if job.prompt_class_name != job.class_name:
            logger.warning(
                "Class name %r was sanitised to %r for the prompt; its descriptions use the sanitised name",
                job.class_name,
                job.prompt_class_name,
            )
    records: dict[str, dict[str, Any]] = {}
    pending: list[DescriptionJob] = []
    for job in jobs:
        record = load_record(
            cache_dir, job.key, job.prompt_class_name, settings.n_descriptions, settings.max_description_chars, logger
        )
        if record is None:
            pending.append(job)
        else:
            records[job.key] = record
    cached = {key for key in records}
    logger.info(
        "LLM descriptions: %d pair(s) (%d classes × %d confounder types), %d cached, %d to request from %s",
        len(jobs),
        len(class_names),
        len(settings.confounder_types),
        len(cached),
        len(pending),
        settings.model,
    )
    meter = _UsageMeter()
    if pending:
        if not api_key:
            raise MissingAPIKeyError(
                f"No Anthropic API key, and {len(pending)} of {len(jobs)} (class, confounder) pairs are not "
                f"cached in {cache_dir}. Set the {API_KEY_ENV} environment variable, or put "
                "`anthropic: {api_key: ...}` in conf/local/credentials.yml, or set "
                "`descriptions.provider: offline` to use the template pools instead."
            )
        cache_dir.mkdir(parents=True, exist_ok=True)
        records.update(_run_jobs(pending, settings, cache_dir, api_key, meter, logger))

    descriptions: dict[str, dict[str, list[str]]] = {kind: {} for kind in settings.confounder_types}
    ordered: list[dict[str, Any]] = []
    for job in jobs:
        record = records[job.key]
        descriptions[job.confounder_type][job.class_name] = list(record["descriptions"])
        ordered.append({**record, "cached": job.key in cached})
    usage = {
        "input_tokens": float(meter.input_tokens),
        "output_tokens": float(meter.output_tokens),
        "requests": float(meter.requests),
        "cached_records": float(len(cached)),
        "estimated_cost_usd": settings.estimated_cost_usd(meter.input_tokens, meter.output_tokens),
    }
    logger.info(
        "LLM descriptions done: %d request(s), %d input + %d output tokens, ~$%.4f",
        meter.requests,
        meter.input_tokens,
        meter.output_tokens,
        usage["estimated_cost_usd"],
    )
    return GenerationResult(descriptions=descriptions, usage=usage, records=ordered)
