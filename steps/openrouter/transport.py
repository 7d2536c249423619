"""The upstream HTTP client: aiohttp's connection handling, speaking httpx's exception vocabulary.

Chosen on the benchmark (README "Performance"). httpx with its own transport spent more CPU per
request than the whole Anthropic <-> OpenAI conversion (pool readability checks, anyio socket
attributes on every request). httpx over aiohttp (httpx-aiohttp) fixed the connection cost,
but httpx's request and response models (header normalisation, URL parsing with ipaddress
checks, the cookie jar, four generator layers per body chunk) were still about a tenth of a
JSON request's server CPU. So the per-request POST goes straight to an aiohttp session.

The rest of the upstream code keeps speaking httpx's exceptions (`httpx.ConnectError`,
`ReadTimeout`, `RemoteProtocolError`...), which say what failed better than aiohttp's: a reset
of a pooled keep-alive connection before the response is a retryable connect failure, a cut
stream is a read error. The occasional request (the model listing) uses a plain
`httpx.AsyncClient`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping

import aiohttp
import certifi
import httpx
from yarl import URL

USER_AGENT = "engine-gateway"


def transport_error(exc: BaseException) -> httpx.TransportError:
    """The httpx exception that says what an aiohttp failure means for the caller."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(detail)  # connecting, or waiting for a free pooled connection
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return httpx.ReadTimeout(detail)
    if isinstance(exc, aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(detail)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.ConnectError(f"invalid URL: {detail}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(detail)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(detail)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(detail)
    if isinstance(exc, aiohttp.ClientResponseError):  # a malformed status line or headers
        return httpx.RemoteProtocolError(detail)
    return httpx.ReadError(detail)  # resets, closed connections (abort), other OS errors


class UpstreamResponse:
    """One upstream response: status, headers, and the body as it arrives.

    Closing it before the body ended closes the connection (the upstream stops generating and
    billing); a fully read body gives the connection back to the pool.
    """

    __slots__ = ("_response", "headers", "is_closed", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers  # case-insensitive
        self.is_closed = False

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's bytes (decompressed) as they arrive; failures as httpx exceptions.

        aiohttp's StreamReader raises a stored exception before handing out data it had
        already buffered, so when an upstream closes mid-stream the last chunks it sent would
        be lost; Anthropic clients must see exactly what the upstream sent before the error.
        On a payload error the buffer goes out first (aiohttp keeps it in `_buffer`; pinned by
        uv.lock and covered by the cut-stream tests), then the error.
        """
        content = self._response.content
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
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise transport_error(exc) from exc
            if not chunk:
                return
            yield chunk

    def at_eof(self) -> bool:
        """Whether the whole body has arrived and been read (nothing left to drain)."""
        return self._response.content.at_eof()

    async def aread(self) -> bytes:
        return b"".join([part async for part in self.aiter_bytes()])

    def abort(self) -> None:
        """Drop the connection now (sync: an idle watchdog's timer calls it); a pending read fails."""
        self._response.close()

    def close(self) -> None:
        """Synchronous: releasing or closing an aiohttp response never waits."""
        if self.is_closed:
            return
        self.is_closed = True
        if self._response.content.at_eof():
            self._response.release()  # read to the end: the connection goes back to the pool
        else:
            self._response.close()

    async def aclose(self) -> None:
        self.close()


class UpstreamClient:
    """The pooled upstream client, one per setting of the call step, shared by every run.

    HTTP/1.1 keep-alive; no retries (one retry layer: the engine's), no redirects, no proxy or
    netrc from the environment. `connect_timeout` also bounds the wait for a free connection
    when all `pool_size` are busy; `read_timeout` each read."""

    def __init__(self, connect_timeout: float, read_timeout: float, pool_size: int) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    def _open(self) -> aiohttp.ClientSession:
        """The session, made on first use (it must be made inside the running event loop)."""
        tls = ssl.create_default_context(cafile=certifi.where())  # the trust store httpx uses
        connector = aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=5.0, ssl=tls)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # `connect` bounds the wait for a free pooled connection plus connecting; `sock_read`
            # each read (the response headers, then every body chunk).
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout, sock_connect=self._connect_timeout, sock_read=self._read_timeout),
            headers={"user-agent": USER_AGENT},
            trust_env=False,
        )
        return self._session

    async def post(self, url: str, content: bytes, headers: dict[str, str]) -> UpstreamResponse:
        """POST and return once the response headers are in; the body is read by the caller."""
        session = self._session or self._open()
        parsed = self._urls.get(url)
        if parsed is None:
            try:
                parsed = URL(url)
            except (ValueError, TypeError) as exc:
                raise httpx.InvalidURL(f"{url!r}: {exc}") from exc
            if parsed.scheme not in ("http", "https"):
                raise httpx.UnsupportedProtocol(f"the URL must start with http:// or https://, got {url!r}")
            if len(self._urls) < 64:  # one per base_url in practice; never grow without bound
                self._urls[url] = parsed
        try:
            response = await session.post(parsed, data=content, headers=headers, allow_redirects=False)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise transport_error(exc) from exc
        return UpstreamResponse(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
