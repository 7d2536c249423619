"""The floor for the gateway benchmark: a conversion-free forwarder (starlette + aiohttp).

    python -m benchmarks.forwarder PORT UPSTREAM_URL

Every POST, whatever its path, is sent unchanged to UPSTREAM_URL (a chat/completions URL) on
one pooled aiohttp session, and the answer comes back unchanged: a JSON answer whole, an
event stream chunk by chunk as aiohttp reads it. It converts nothing, checks nothing and logs
nothing, so what the gateway spends above it on the same load is the price of the conversion,
the policy and the observability. Served by uvicorn with the settings `engine serve` uses.
A benchmark tool, not a product: no error handling beyond passing the upstream's status on.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def create_app(upstream: str) -> Starlette:
    session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2048))
        yield
        await session.close()

    async def forward(request: Request) -> Response:
        assert session is not None
        body = await request.body()
        upstream_response = await session.post(upstream, data=body, headers={"content-type": "application/json"})
        content_type = upstream_response.headers.get("content-type", "application/json")
        if content_type.startswith("text/event-stream"):
            return StreamingResponse(upstream_response.content.iter_any(), status_code=upstream_response.status, media_type=content_type, background=BackgroundTask(upstream_response.release))
        data = await upstream_response.read()
        upstream_response.release()
        return Response(data, status_code=upstream_response.status, media_type=content_type)

    return Starlette(routes=[Route("/{path:path}", forward, methods=["POST"])], lifespan=lifespan)


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(create_app(upstream), host="127.0.0.1", port=port, log_level="warning", access_log=False)
