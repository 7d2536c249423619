"""StreamReply, the HTTP layer's stream writer, driven with a hand-made ASGI `send`/`receive`:
what happens when the client socket fails, and when the client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import structlog
from prometheus_client import REGISTRY

from engine.executor import Engine
from engine.http import StreamReply
from engine.types import Reply
from tests.engine.test_executor import make_engine

ONE_STEP = """
name: s
steps:
  v: {uses: toy.const, with: {value: 1}}
output: ${{ steps.v }}
"""


class Source:
    """An endless stream of items that records whether it was closed."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = False

    async def items(self) -> AsyncIterator[bytes]:
        try:
            while True:
                self.produced += 1
                yield b"event %d\n\n" % self.produced
                await asyncio.sleep(0.001)
        finally:
            self.closed = True


def requests(outcome: str) -> float:
    """engine_requests_total for this test pipeline's streams with `outcome` (the access line's)."""
    return REGISTRY.get_sample_value("engine_requests_total", {"pipeline": "s", "status": "200", "outcome": outcome}) or 0.0


def serve(engine: Engine, source: Source, send: Any, receive: Any) -> list[dict]:
    async def main() -> None:
        ctx = engine.context("s")
        reply = StreamReply(Reply(stream=source.items(), media_type="text/event-stream"), ctx, None)
        await reply({"type": "http"}, receive, send)

    with structlog.testing.capture_logs() as logged:
        asyncio.run(asyncio.wait_for(main(), 10))
    return logged


async def never() -> dict:
    await asyncio.Event().wait()
    return {}


def test_a_failing_client_socket_ends_the_stream_and_closes_the_source() -> None:
    engine = make_engine(ONE_STEP)
    source = Source()
    bodies: list[bytes] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            if len(bodies) == 3:
                raise OSError("connection reset by peer")
            bodies.append(message["body"])

    before = requests("error")
    logged = serve(engine, source, send, never)
    assert len(bodies) == 3 and source.closed
    (failure,) = [e for e in logged if e["event"] == "writing the stream failed"]
    assert "connection reset" in failure["error"]
    assert requests("error") == before + 1  # the access line's outcome


def test_a_client_disconnect_stops_producer_and_writer() -> None:
    engine = make_engine(ONE_STEP)
    source = Source()
    bodies: list[bytes] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])

    async def receive() -> dict:
        await asyncio.sleep(0.05)  # the client reads a while, then hangs up
        return {"type": "http.disconnect"}

    before = requests("client_disconnected")
    serve(engine, source, send, receive)
    assert bodies and source.closed
    assert not any(body == b"" for body in bodies)  # the body was never ended normally
    assert requests("client_disconnected") == before + 1
