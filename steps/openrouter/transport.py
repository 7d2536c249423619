"""The upstream HTTP transport: httpx's API over aiohttp's connection handling.

httpx-aiohttp maps every aiohttp connection error to `httpx.ConnectTimeout`, including a peer
that closed or reset a pooled keep-alive connection, or cut a stream half way. The upstream
step tells those apart (a reset before the response is a retryable connect failure; a cut
stream is `cut`), so this transport restores the distinction httpx's own transport makes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


def _remap(exc: httpx.TransportError) -> httpx.TransportError:
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(str(cause) or "server disconnected")
    if isinstance(cause, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(cause))
    if isinstance(cause, aiohttp.ClientOSError):
        return httpx.ReadError(str(cause) or "connection reset")
    return exc


class _Body(httpx.AsyncByteStream):
    """The response body read straight from aiohttp, keeping what arrived before a cut.

    aiohttp's StreamReader raises a stored exception before handing out data it had already
    buffered, so when an upstream closes mid-stream the last chunks it sent would be lost;
    Anthropic clients must see exactly what the upstream sent before the error. On a payload
    error we hand out that buffer first (aiohttp keeps it in `_buffer`; pinned by uv.lock and
    covered by the cut-stream tests), then raise.
    """

    def __init__(self, response: aiohttp.ClientResponse, inner: httpx.AsyncByteStream) -> None:
        self.response = response
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self.response.content
        while True:
            try:
                chunk = await content.readany()
            except aiohttp.ClientPayloadError as exc:
                buffered = getattr(content, "_buffer", None)
                if buffered:
                    leftover = b"".join(buffered)
                    buffered.clear()
                    yield leftover
                raise httpx.ReadError(str(exc) or "upstream connection closed mid-stream") from exc
            except aiohttp.ServerDisconnectedError as exc:
                raise httpx.RemoteProtocolError(str(exc) or "server disconnected") from exc
            except aiohttp.ClientOSError as exc:
                raise httpx.ReadError(str(exc) or "connection reset") from exc
            except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
                raise httpx.ReadTimeout(str(exc) or "read timed out") from exc
            except aiohttp.ClientConnectionError as exc:  # closed under us: abort() or the pool
                raise httpx.ReadError(str(exc) or "connection closed") from exc
            if not chunk:
                return
            yield chunk

    def abort(self) -> None:
        """Drop the connection now (sync: an idle watchdog's timer calls it); a pending read fails."""
        self.response.close()

    async def aclose(self) -> None:
        await self.inner.aclose()


class UpstreamTransport(AiohttpTransport):
    """AiohttpTransport with connection errors classified as httpx's transport would."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as exc:
            raise _remap(exc) from exc.__cause__
        inner = response.stream
        body = _Body(inner._aiohttp_response, inner)  # type: ignore[attr-defined,arg-type]
        response.stream = body
        # httpx's client wraps `response.stream` in its own BoundAsyncStream, which hides
        # `abort`; the extensions dict is passed through untouched.
        response.extensions["abort"] = body.abort
        response.extensions["raw_body"] = body  # read without httpx's layers when not encoded
        return response


class UpstreamClient:
    """The pooled upstream client: httpx's API, with the hot POST sent straight to its transport.

    `http` is a plain `httpx.AsyncClient` for the occasional request (the model listing, the
    key check). `post` is the per-request path: measured on the benchmark, `AsyncClient.send`
    (URL parsing and merging with ipaddress checks, the cookie jar, auth and redirect flows
    this gateway never uses) cost about a fifth of a JSON request's server CPU. `post` keeps
    httpx's `Request`/`Response` types and exceptions, and reuses the parsed URL.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, timeout: httpx.Timeout, headers: dict[str, str]) -> None:
        self.transport = transport
        self.http = httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False, follow_redirects=False, headers=headers)
        self._timeout = timeout.as_dict()
        self._headers = headers
        self._urls: dict[str, httpx.URL] = {}

    async def post(self, url: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST and return once the response headers are in; the body is read by the caller."""
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = httpx.URL(url)
            if len(self._urls) < 64:  # one per base_url in practice; never grow without bound
                self._urls[url] = parsed
        request = httpx.Request("POST", parsed, content=content, headers={**self._headers, **headers}, extensions={"timeout": self._timeout})
        response = await self.transport.handle_async_request(request)
        response.request = request
        return response

    async def aclose(self) -> None:
        await self.http.aclose()  # closes the transport (and its pool) too
