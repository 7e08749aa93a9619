"""Fixtures for the LLM descriptions tests: the local Messages-API server and settings pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from starft_pipeline.llm import LLMSettings
from tests.llm.fake_messages_server import FakeMessagesServer


@pytest.fixture(autouse=True)
def _hermetic_anthropic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real key, endpoint or profile from the environment can leak into a test."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_server() -> Iterator[FakeMessagesServer]:
    with FakeMessagesServer() as server:
        yield server


@pytest.fixture
def make_settings(fake_server: FakeMessagesServer) -> Callable[..., LLMSettings]:
    """Settings aimed at the fake server, small and fast; keyword arguments override."""

    def build(**overrides: Any) -> LLMSettings:
        params: dict[str, Any] = {
            "base_url": fake_server.url,
            "n_descriptions": 3,
            "confounder_types": ["background"],
            "max_concurrency": 1,
            "http_max_retries": 2,
            "timeout_s": 5.0,
            "max_validation_attempts": 3,
        }
        params.update(overrides)
        return LLMSettings.from_params(params)

    return build
