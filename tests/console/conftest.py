"""A real gateway with the web console on: the repo's pipelines under uvicorn on loopback, a
fake OpenRouter upstream, as in tests/pipelines/conftest.py, plus `create_app(console=True)`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.executor import Engine
from engine.http import create_app
from tests.support.fake_openrouter import FakeOpenRouter
from tests.support.servers import serve_asgi

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "pipelines"
FAST = {"UPSTREAM_RETRY_BACKOFF": "0.01", "OPENROUTER_MODELS_FETCH": "false", "UPSTREAM_COOLDOWN": "0", "PING_INTERVAL": "0.2"}


@dataclass
class ConsoleGateway:
    url: str
    fake: FakeOpenRouter
    engine: Engine

    def http(self, **kw: Any) -> httpx.Client:
        kw.setdefault("headers", {"x-api-key": "sk-ant-test-client-key"})
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def message(self, client: httpx.Client, request_id: str, *, stream: bool = False, text: str = "Hello console", model: str = "claude-sonnet-4-5") -> httpx.Response:
        body = {"model": model, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": text}]}
        return client.post("/v1/messages", json=body, headers={"x-request-id": request_id})


@contextmanager
def console_gateway(env: dict[str, str] | None = None, **app: Any) -> Iterator[ConsoleGateway]:
    with FakeOpenRouter() as fake:
        full_env = {"OPENROUTER_BASE_URL": fake.base_url, "BIG_MODEL": "test/big", "SMALL_MODEL": "test/small", **FAST, **(env or {})}
        engine = Engine.load([PIPELINES], env=full_env)
        capture = app.pop("capture", None)
        if capture is not None:
            from engine.capture import CaptureWriter

            engine.capture = CaptureWriter(capture, fsync=None)
        with serve_asgi(create_app(engine, console=True, **app)) as url:
            yield ConsoleGateway(url, fake, engine)


@pytest.fixture(scope="module")
def gw() -> Iterator[ConsoleGateway]:
    with console_gateway() as g:
        yield g


@pytest.fixture(autouse=True)
def _fresh_fake(request: pytest.FixtureRequest) -> None:
    if "gw" in request.fixturenames:
        g = request.getfixturevalue("gw")
        g.fake.clear()
        g.fake.default_mode = "ok"
