"""A real gateway for end-to-end tests: the repo's pipelines under uvicorn, a fake OpenRouter
upstream on loopback, both on 127.0.0.1. Clients are the official `anthropic` SDK and httpx."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import pytest

from engine.executor import Engine
from engine.http import create_app
from tests.support.fake_openrouter import FakeOpenRouter
from tests.support.servers import serve_asgi
from tests.fixtures import CLAUDE_CODE as FIXTURES

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "pipelines"


@dataclass
class Gateway:
    url: str
    fake: FakeOpenRouter
    engine: Engine

    def client(self, **kw) -> anthropic.Anthropic:
        kw.setdefault("api_key", "sk-ant-test-client-key")
        kw.setdefault("max_retries", 0)
        return anthropic.Anthropic(base_url=self.url, **kw)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers={"x-api-key": "sk-ant-test-client-key"})


def start_gateway(env: dict[str, str]) -> Iterator[Gateway]:
    with FakeOpenRouter() as fake:
        full_env = {"OPENROUTER_BASE_URL": fake.base_url, "BIG_MODEL": "test/big", "SMALL_MODEL": "test/small", "UPSTREAM_IDLE_TIMEOUT": "5", "PING_INTERVAL": "0.2", "UPSTREAM_COOLDOWN": "0", **env}
        engine = Engine.load([PIPELINES], env=full_env)
        with serve_asgi(create_app(engine)) as url:
            yield Gateway(url, fake, engine)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    """The gateway with no upstream key configured: clients' own keys are forwarded."""
    yield from start_gateway({})


def reset(gw: Gateway) -> None:
    """A module-scoped gateway's fake upstream back to its defaults, before each test."""
    gw.fake.clear()
    gw.fake.default_mode = "ok"
    gw.fake.model_modes = {}
    gw.fake.cost = 0


@pytest.fixture(autouse=True)
def _fresh_fake(request: pytest.FixtureRequest) -> None:
    """Every test that uses a shared gateway (`gateway`, or a module's `gw`) starts clean."""
    for name in ("gateway", "gw"):
        if name in request.fixturenames:
            reset(request.getfixturevalue(name))
