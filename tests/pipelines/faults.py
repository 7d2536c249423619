"""Helpers shared by the fault tests (test_faults.py, test_streaming_faults.py)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from engine import logs
from tests.pipelines.conftest import Gateway, start_gateway

ASK = [{"role": "user", "content": "hi"}]
OK_TEXT = "Hello! I am the fake upstream. You said: hi. That is all I have to say about it, thank you for asking."


def body(stream: bool = False, model: str = "claude-opus-5-5", **kw: Any) -> dict:
    return {"model": model, "max_tokens": 64, "stream": stream, "messages": ASK, **kw}


@contextlib.contextmanager
def gateway_with(env: dict[str, str]) -> Iterator[Gateway]:
    """A gateway of its own (small timers via env), shut down even when the test fails."""
    gen = start_gateway(env)
    try:
        yield next(gen)
    finally:
        gen.close()


def post(gw: Gateway, payload: dict, **kw: Any) -> httpx.Response:
    with httpx.Client(base_url=gw.url, timeout=30, headers={"x-api-key": "sk-ant-test-client-key"}) as http:
        return http.post("/v1/messages", json=payload, **kw)


def sse(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of every event of an SSE body, pings included, in order."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = "", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
        out.append((name, json.loads(data) if data else {}))
    return out


def without_pings(events: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    return [e for e in events if e[0] != "ping"]


def texts(events: list[tuple[str, dict]]) -> list[str]:
    return [d["delta"]["text"] for n, d in events if n == "content_block_delta" and d["delta"]["type"] == "text_delta"]


class LogSink:
    """Every log line (JSON, info and up) written while it is installed, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        with self._lock:
            self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)

    def wait_for(self, event: str, timeout: float = 60.0, **match: Any) -> list[dict]:
        """The matching lines once there is one (a stream's access line follows its last byte)."""
        end = time.monotonic() + timeout
        while not (found := self.lines(event, **match)) and time.monotonic() < end:
            time.sleep(0.01)
        return found

    def lines(self, event: str | None = None, **match: Any) -> list[dict]:
        out = []
        for raw in self.text.splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if event is not None and line.get("event") != event:
                continue
            if all(line.get(k) == v for k, v in match.items()):
                out.append(line)
        return out


@contextlib.contextmanager
def captured_logs() -> Iterator[LogSink]:
    sink = LogSink()
    logs.configure("json", "info", stream=sink, cache=False)
    try:
        yield sink
    finally:
        logs.configure("console", "warning", cache=False)  # tests/conftest.py's setting
