"""A local stand-in for the Anthropic Messages API, for tests that drive the real SDK over HTTP.

A real ``ThreadingHTTPServer`` on 127.0.0.1 (random port) answers ``POST /v1/messages``. Each test
scripts it: a global FIFO of replies, FIFOs per prompt substring (for concurrent runs, where the
order of requests across classes is not fixed), and a default reply when the queues are empty (a
valid ``submit_descriptions`` answer built from the request). Every request is recorded with its
headers and JSON body.

    server = FakeMessagesServer()
    server.enqueue(status_reply(429, headers={"retry-after": "0"}))    # then the default answer
    client = anthropic.Anthropic(api_key="...", base_url=server.url)
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: A fake key that must reach the server and nothing else (deliberately not shaped like a real key).
SENTINEL_KEY = "test-sentinel-key-0000"

_IDS = itertools.count(1)
_CLASS_LINE = re.compile(r'Class name: "(.*?)"')


@dataclass
class Reply:
    """One scripted HTTP answer: status, JSON (dict) or raw (bytes) body, headers, delay before it."""

    status: int = 200
    body: dict[str, Any] | bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or the raw text when not JSON

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def prompt(self) -> str:
        """The text of the first user turn."""
        return content_text(self.messages[0]["content"]) if self.messages else ""


def content_text(content: Any) -> str:
    """All text in a message's content (a string or a list of blocks, tool_result contents included)."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif block.get("type") == "tool_result":
            parts.append(content_text(block.get("content", "")))
    return "\n".join(parts)


def message_body(
    content: list[dict[str, Any]],
    stop_reason: str,
    model: str = "claude-test",
    input_tokens: int = 100,
    output_tokens: int = 50,
) -> dict[str, Any]:
    return {
        "id": f"msg_test_{next(_IDS):04d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def tool_reply(descriptions: Any, **kwargs: Any) -> Reply:
    """A forced-tool answer: ``submit_descriptions`` called with ``{"descriptions": descriptions}``."""
    block = {
        "type": "tool_use",
        "id": f"toolu_test_{next(_IDS):04d}",
        "name": "submit_descriptions",
        "input": {"descriptions": descriptions},
    }
    return Reply(body=message_body([block], "tool_use", **kwargs))


def refusal_reply() -> Reply:
    return Reply(body=message_body([], "refusal", output_tokens=0))


def text_reply(text: str) -> Reply:
    """A plain text answer without the tool call."""
    return Reply(body=message_body([{"type": "text", "text": text}], "end_turn"))


def status_reply(status: int, headers: dict[str, str] | None = None, error_type: str = "api_error") -> Reply:
    body = {"type": "error", "error": {"type": error_type, "message": f"scripted HTTP {status}"}}
    return Reply(status=status, body=body, headers=dict(headers or {}))


def malformed_reply() -> Reply:
    return Reply(body=b'{"id": "msg_broken", "type": "mess')


def valid_descriptions(class_name: str, n: int) -> list[str]:
    return [f"a photo of a {class_name} with cue number {i}" for i in range(1, n + 1)]


def auto_answer(body: Any) -> Reply:
    """A valid answer for the request: N from the tool schema, the class from the default prompt."""
    try:
        schema = body["tools"][0]["input_schema"]["properties"]["descriptions"]
        n = int(schema["maxItems"])
        first = body["messages"][0]["content"]
        match = _CLASS_LINE.search(content_text(first))
        assert match, "prompt has no 'Class name: \"…\"' line"
    except Exception as err:  # a test bug: make it visible as a non-retried 400
        return status_reply(400, error_type=f"fake_server_cannot_auto_answer: {err}")
    return tool_reply(valid_descriptions(match.group(1), n))


class FakeMessagesServer:
    """The scripted server; use as a context manager or call :meth:`close`."""

    def __init__(self, default: Callable[[Any], Reply] | None = auto_answer) -> None:
        self.default = default
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Reply] = deque()
        self._per_prompt: list[tuple[str, deque[Reply]]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-messages", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def enqueue(self, *replies: Reply) -> None:
        """Replies for the next requests, whatever they ask (FIFO)."""
        with self._lock:
            self._queue.extend(replies)

    def enqueue_for(self, prompt_substring: str, *replies: Reply) -> None:
        """Replies for the next requests whose first user turn contains ``prompt_substring`` (FIFO)."""
        with self._lock:
            self._per_prompt.append((prompt_substring, deque(replies)))

    def requests_matching(self, prompt_substring: str) -> list[RecordedRequest]:
        return [request for request in self.requests if prompt_substring in request.prompt]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeMessagesServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            for substring, queue in self._per_prompt:
                if queue and substring in request.prompt:
                    return queue.popleft()
            if self._queue:
                return self._queue.popleft()
        if self.default is None:
            return status_reply(500, error_type="fake_server_has_no_reply")
        return self.default(request.body)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                request = RecordedRequest("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if self.path.split("?")[0] != "/v1/messages":
                    self._send(status_reply(404, error_type="not_found_error"))
                    return
                self._send(server._next_reply(request))

            def _send(self, reply: Reply) -> None:
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", f"req_test_{next(_IDS):04d}")
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
