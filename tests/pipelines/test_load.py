"""Load and soak, bounded and on loopback: the gateway as its own process, measured from /proc.

Figures (memory, descriptors) are asserted only as *flatness* between rounds, never as
timings; the benchmark command reports speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.pipelines.conftest import PIPELINES, REPO
from tests.support.fake_openrouter import FakeOpenRouter, drip_text
from tests.support.servers import free_port, wait_healthy


class ServedGateway:
    def __init__(self, url: str, proc: subprocess.Popen[str], fake: FakeOpenRouter) -> None:
        self.url, self.proc, self.fake = url, proc, fake

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


@pytest.fixture(scope="module")
def served() -> Iterator[ServedGateway]:
    """`engine serve` in its own process against the fake upstream."""
    with FakeOpenRouter() as fake:
        port = free_port()
        env = {**os.environ, "OPENROUTER_BASE_URL": fake.base_url, "BIG_MODEL": "test/big", "ENGINE_LOG_LEVEL": "warning", "ENGINE_LOG_FORMAT": "json", "PING_INTERVAL": "30"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--port", str(port), "--pipelines", str(PIPELINES)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            yield ServedGateway(url, proc, fake)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def stream_text(client: httpx.AsyncClient) -> str:
    body = {"model": "claude-opus-5-5", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    text = []
    async with client.stream("POST", "/v1/messages", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and '"text_delta"' in line:
                import json

                text.append(json.loads(line[6:])["delta"]["text"])
    return "".join(text)


def test_256_concurrent_streams_five_rounds(served: ServedGateway) -> None:
    """256 concurrent slow streams, 5 rounds after a warm-up: every text exact; memory and descriptors flat."""
    served.fake.default_mode = "slow_drip;delay_ms=20;chunks=50"
    expected = drip_text(50)
    rss: list[int] = []

    async def round_() -> list[str]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=served.url, headers={"x-api-key": "k"}, timeout=60, limits=limits) as client:
            texts: list[str] = []

            async def one() -> None:
                texts.append(await stream_text(client))

            async with anyio.create_task_group() as tg:
                for _ in range(256):
                    tg.start_soon(one)
            return texts

    try:
        anyio.run(round_)  # warm-up: the upstream pool and caches fill once, and that is not a leak
        base_fds = served.fds()  # steady state: the upstream pool's keep-alive connections included
        for _ in range(5):
            texts = anyio.run(round_)
            assert len(texts) == 256 and all(t == expected for t in texts)
            rss.append(served.rss_kb())
    finally:
        served.fake.default_mode = "ok"
    print(f"\nRSS after each round (KiB): {rss}; fds before {base_fds}, after {served.fds()}")
    assert rss[-1] <= rss[0] * 1.10
    assert served.fake.wait_for(lambda: served.fake.active_requests == 0)
    # Client sockets close a moment after the client does: poll (bounded) rather than sample once.
    assert served.fake.wait_for(lambda: served.fds() <= base_fds + 10), (base_fds, served.fds())


def test_10000_requests_reuse_upstream_connections(served: ServedGateway) -> None:
    """10,000 JSON requests at concurrency 32: keep-alive to the upstream, descriptors stable."""
    served.fake.clear()
    before = served.fds()

    async def go() -> list[int]:
        statuses: list[int] = []
        body = {"model": "claude-opus-5-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(base_url=served.url, headers={"x-api-key": "k"}, timeout=60) as client:

            async def worker(n: int) -> None:
                for _ in range(n):
                    statuses.append((await client.post("/v1/messages", json=body)).status_code)

            async with anyio.create_task_group() as tg:
                for _ in range(32):
                    tg.start_soon(worker, 10_000 // 32 + 1)
        return statuses

    statuses = anyio.run(go)
    assert len(statuses) >= 10_000 and set(statuses) == {200}
    connections = {r.connection_id for r in served.fake.requests}
    assert len(served.fake.requests) / len(connections) > 10
    print(f"\n{len(served.fake.requests)} upstream requests over {len(connections)} connections; fds {before} -> {served.fds()}")
    assert served.fds() <= before + 40
