"""`openrouter.call`: one chat-completions request to an OpenAI-compatible router.

The step is deliberately thin: it sends the already-converted payload, turns every way the
upstream can fail into an `UpstreamError` (steps/openrouter/errors.py) and, for a stream,
returns a `ChunkStream` of parsed chunk dicts. It never retries (the engine's retry layer is the
only one, so the HTTP client is built with `retries=0`) and keeps no idle timer of its own (the
engine wraps streams with first-item and gap timeouts); the run's deadline, when there is one,
bounds the wait for the response headers (and, without streaming, for the whole body).

Error kinds raised (see UpstreamError): "status" (HTTP error status, retryable per
RETRYABLE_STATUSES), "connect" (refused, reset or closed before the response headers: the
stale-pooled-connection case; retryable), "timeout" (httpx connect/read/write/pool timeout;
retryable; or the run's deadline passing, not retryable), "protocol" (non-JSON body or an
invalid SSE data line; not retryable), "error_chunk" (a 200 whose JSON or a stream chunk holds
a top-level `error`; status from `error.code`, 502 when it is not a number), "cut" (the stream
or body broke or ended before a finish_reason; retryable only while nothing was yielded).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import orjson

from engine.registry import step
from engine.run import RunContext
from engine.types import Request
from steps.openrouter.errors import (
    UpstreamError,
    clip,
    error_fields,
    retry_after_from_headers,
    scrub,
    scrub_value,
    status_from_code,
)
from steps.openrouter.sse import DONE, SSEDecoder, SSEError

__all__ = ["ChunkStream", "call", "make_client"]

MAX_ERROR_BODY = 1024 * 1024  # bytes of an error (or non-SSE) body read before giving up
DONE_DRAIN_SECONDS = 0.5  # after [DONE], wait this long for the body's end to keep the connection
CLOSE_SECONDS = 5.0  # bound on closing the upstream response
LOG_LINE_BYTES = 200
INVALID_CHUNK = "upstream sent an invalid chunk"
INVALID_RESPONSE = "upstream sent an invalid response"
CUT = "upstream connection closed mid-stream"


def make_client(connect_timeout: float, read_timeout: float, pool_size: int) -> httpx.AsyncClient:
    """The pooled HTTP/1.1 client shared by every call with the same settings.

    No httpx retries (one retry layer: the engine's), no proxy or netrc from the environment,
    no redirects. `write` uses the read timeout (a stalled peer while sending a large body);
    `pool` the connect timeout (waiting for a free connection when all `pool_size` are busy).
    """
    limits = httpx.Limits(
        max_connections=pool_size, max_keepalive_connections=pool_size, keepalive_expiry=5.0
    )
    transport = httpx.AsyncHTTPTransport(
        http1=True, http2=False, limits=limits, retries=0, trust_env=False
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        ),
        trust_env=False,
        follow_redirects=False,
        headers={"user-agent": "engine-gateway"},
    )


@step("openrouter.call")
async def call(
    payload: dict,
    request: Request,
    ctx: RunContext,
    base_url: str = "https://openrouter.ai/api/v1",
    api_key: str = "",
    referer: str = "",
    title: str = "",
    connect_timeout: float = 10.0,
    read_timeout: float = 600.0,
    pool_size: int = 256,
) -> Any:
    """POST a chat-completions payload upstream; a dict, or a stream of chunk dicts.

    Returns the parsed response dict when `payload["stream"]` is falsy, else a `ChunkStream`
    (an AsyncIterator[dict] of parsed `chat.completion.chunk`s, without the `[DONE]` marker) once
    the upstream answered 200. Annotated `Any` because it is either: the registry would mark a
    step annotated AsyncIterator as always streaming. Every failure is an `UpstreamError`.
    Authorization is `Bearer {api_key}`, or the client's own key (`x-api-key`, or the bearer
    token of `authorization`) when `api_key` is empty.
    """
    key = api_key or _client_key(request)
    if not key:
        raise UpstreamError(
            "no API key: set OPENROUTER_API_KEY or send x-api-key",
            status=401,
            kind="status",
            retryable=False,
        )
    headers = {
        "authorization": f"Bearer {key}",
        "content-type": "application/json",
    }
    streaming = bool(payload.get("stream"))
    headers["accept"] = "text/event-stream" if streaming else "application/json"
    if referer:
        headers["http-referer"] = referer
    if title:
        headers["x-title"] = title
        headers["x-openrouter-title"] = title
    client: httpx.AsyncClient = await ctx.resource(
        f"openrouter.client:{connect_timeout}:{read_timeout}:{pool_size}",
        lambda: make_client(connect_timeout, read_timeout, pool_size),
    )
    url = base_url.rstrip("/") + "/chat/completions"
    try:
        body = orjson.dumps(payload)
    except TypeError as exc:
        raise UpstreamError(
            f"payload is not JSON-serialisable: {exc}", kind="protocol", retryable=False
        ) from exc
    req = client.build_request("POST", url, content=body, headers=headers)

    remaining = ctx.remaining()
    if remaining is not None and remaining <= 0:
        raise UpstreamError("deadline passed before the upstream call", kind="timeout", retryable=False)
    if not streaming:
        with _deadline(remaining):
            response = await _send(client, req, key)
            try:
                return await _read_json(response, key)
            finally:
                await _close(response)
    with _deadline(remaining):
        response = await _send(client, req, key)
    try:
        if response.status_code >= 400:
            with _deadline(ctx.remaining()):
                raise await _status_error(response, key)
        ctype = response.headers.get("content-type", "").lower()
        if "json" in ctype or "html" in ctype:
            # An error (or a whole completion) sent as plain JSON although we asked for a stream,
            # or an HTML error page from a proxy in between. Anything else is parsed as SSE.
            with _deadline(ctx.remaining()):
                parsed = await _read_json(response, key)
            await _close(response)
            return ChunkStream.of_completion(parsed)
    except BaseException:
        await _close(response)
        raise
    return ChunkStream(response, ctx, key)


class ChunkStream(AsyncIterator[dict]):
    """The parsed chunks of one upstream stream; owns (and always closes) the HTTP response.

    `aclose()` closes the upstream connection at once, even if iteration never started (an
    async generator would skip its `finally` then). Errors are `UpstreamError`s with
    `mid_stream` True once a chunk was yielded.
    """

    def __init__(self, response: httpx.Response | None, ctx: RunContext | None, key: str = "") -> None:
        self._response = response
        self._ctx = ctx
        self._key = key
        self.chunks = 0  # chunks yielded so far
        self.finished = False  # a finish_reason was seen
        self._gen = self._run() if response is not None else None
        self._items: list[dict] = []

    @classmethod
    def of_completion(cls, completion: dict) -> ChunkStream:
        """A one-chunk stream equivalent to a whole non-streamed completion."""
        stream = cls(None, None)
        stream._items = [_completion_as_chunk(completion)]
        return stream

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> dict:
        if self._gen is None:
            if self._items:
                self.chunks += 1
                return self._items.pop(0)
            raise StopAsyncIteration
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        try:
            if self._gen is not None:
                await self._gen.aclose()
        finally:
            if self._response is not None:
                await _close(self._response)

    async def __aenter__(self) -> ChunkStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _error(self, message: str, **kw: Any) -> UpstreamError:
        kw.setdefault("mid_stream", self.chunks > 0)
        return UpstreamError(message, **kw)

    async def _run(self) -> AsyncIterator[dict]:
        response = self._response
        assert response is not None
        decoder = SSEDecoder()
        loads = orjson.loads
        raw_iter = response.aiter_bytes()
        done = False
        try:
            try:
                async for raw in raw_iter:
                    try:
                        events = decoder.feed(raw)
                    except SSEError as exc:
                        self._warn(str(exc).encode())
                        raise self._error(INVALID_CHUNK, kind="protocol", retryable=False) from None
                    for data in events:
                        if data == DONE:
                            done = True
                            break
                        try:
                            chunk = loads(data)
                        except orjson.JSONDecodeError:
                            self._warn(data)
                            raise self._error(INVALID_CHUNK, kind="protocol", retryable=False) from None
                        if type(chunk) is not dict:
                            self._warn(data)
                            raise self._error(INVALID_CHUNK, kind="protocol", retryable=False)
                        if "error" in chunk:
                            raise self._chunk_error(chunk)
                        if not self.finished:
                            for choice in chunk.get("choices") or ():
                                if type(choice) is dict and choice.get("finish_reason"):
                                    self.finished = True
                        self.chunks += 1
                        yield chunk
                    if done:
                        break
                if not done:
                    for data in decoder.flush():
                        if data == DONE:
                            done = True
                            break
                        try:
                            chunk = loads(data)
                        except orjson.JSONDecodeError:
                            self._warn(data)
                            raise self._error(INVALID_CHUNK, kind="protocol", retryable=False) from None
                        if type(chunk) is dict and "error" in chunk:
                            raise self._chunk_error(chunk)
                        if type(chunk) is dict:
                            if any(
                                type(c) is dict and c.get("finish_reason")
                                for c in chunk.get("choices") or ()
                            ):
                                self.finished = True
                            self.chunks += 1
                            yield chunk
            except httpx.TimeoutException:
                raise self._error(
                    "upstream stream timed out waiting for data",
                    kind="timeout",
                    retryable=self.chunks == 0,
                ) from None
            except (httpx.TransportError, httpx.StreamError) as exc:
                # ReadError, RemoteProtocolError (incomplete chunked body), connection resets.
                if self.finished:
                    return  # everything that matters arrived; a cut after finish is harmless
                raise self._error(CUT, kind="cut", retryable=self.chunks == 0) from exc
            if not done and not self.finished:
                raise self._error(CUT, kind="cut", retryable=self.chunks == 0)
            if done:
                # Read the body's end so the connection goes back to the pool (bounded).
                with anyio.move_on_after(DONE_DRAIN_SECONDS):
                    try:
                        async for _ in raw_iter:
                            pass
                    except httpx.HTTPError:
                        pass
        finally:
            await _close(response)

    def _chunk_error(self, chunk: dict) -> UpstreamError:
        message, error_type, code = error_fields(chunk)
        status = status_from_code(code)
        return self._error(
            clip(scrub(message or "upstream reported an error mid-stream", self._key)),
            status=status,
            kind="error_chunk",
            error_type=error_type,
            body=scrub_value(chunk, self._key),
        )

    def _warn(self, line: bytes) -> None:
        if self._ctx is not None:
            self._ctx.log.warning(
                "openrouter.invalid_chunk",
                line=scrub(repr(bytes(line[:LOG_LINE_BYTES])), self._key),
                length=len(line),
                chunks=self.chunks,
            )


def _client_key(request: Request | None) -> str:
    if request is None:
        return ""
    headers = request.headers
    key = (headers.get("x-api-key") or "").strip()
    if key:
        return key
    auth = (headers.get("authorization") or "").strip()
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return ""


class _deadline:
    """`anyio.fail_after(seconds)` (or nothing when None) that raises a timeout UpstreamError."""

    __slots__ = ("_scope", "_seconds")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._scope: Any = None

    def __enter__(self) -> _deadline:
        if self._seconds is not None:
            self._scope = anyio.fail_after(max(self._seconds, 0.0))
            self._scope.__enter__()
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        if self._scope is None:
            return False
        try:
            return bool(self._scope.__exit__(et, ev, tb))
        except TimeoutError:
            raise UpstreamError(
                "run deadline passed while waiting for the upstream",
                kind="timeout",
                retryable=False,
            ) from None


async def _send(client: httpx.AsyncClient, req: httpx.Request, key: str) -> httpx.Response:
    """Send and wait for the response headers; map transport failures to UpstreamError."""
    try:
        return await client.send(req, stream=True)
    except httpx.TimeoutException as exc:
        raise UpstreamError(
            f"upstream timed out ({type(exc).__name__})", kind="timeout", retryable=True
        ) from exc
    except httpx.ConnectError as exc:
        raise UpstreamError(
            clip(scrub(f"upstream unreachable: {exc}", key)), kind="connect", retryable=True
        ) from exc
    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.CloseError) as exc:
        # Typically a pooled keep-alive connection the server had already closed or reset.
        detail = str(exc) or type(exc).__name__
        raise UpstreamError(
            clip(scrub(f"upstream closed the connection before responding ({detail})", key)),
            kind="connect",
            retryable=True,
        ) from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise UpstreamError(f"bad upstream base_url: {exc}", kind="connect", retryable=False) from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(
            clip(scrub(f"upstream request failed: {type(exc).__name__}: {exc}", key)),
            kind="connect",
            retryable=True,
        ) from exc


async def _read_body(response: httpx.Response, limit: int | None = None) -> bytes:
    """The (decoded) body; a transport failure while reading it is a retryable "cut"."""
    try:
        if limit is None:
            return await response.aread()
        parts: list[bytes] = []
        size = 0
        async for part in response.aiter_bytes():
            parts.append(part)
            size += len(part)
            if size >= limit:
                break
        return b"".join(parts)[:limit]
    except httpx.TimeoutException as exc:
        raise UpstreamError("upstream timed out sending the body", kind="timeout", retryable=True) from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(
            "upstream connection closed while sending the body", kind="cut", retryable=True
        ) from exc


async def _status_error(response: httpx.Response, key: str) -> UpstreamError:
    """The UpstreamError for an HTTP error status, from its (bounded) body and headers."""
    status = response.status_code
    retry_after = retry_after_from_headers(response.headers)
    try:
        raw = await _read_body(response, MAX_ERROR_BODY)
    except UpstreamError:
        raw = b""
    body: Any
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    message, error_type, _ = error_fields(body)
    if message is None:
        text = raw.decode("utf-8", "replace").strip()
        message = text or f"upstream returned HTTP {status}"
    if body is None and raw:
        body = raw.decode("utf-8", "replace")[:1000]
    return UpstreamError(
        clip(scrub(message, key)),
        status=status,
        kind="status",
        retry_after=retry_after,
        error_type=error_type,
        body=scrub_value(body, key),
    )


async def _read_json(response: httpx.Response, key: str) -> dict:
    """A 2xx JSON body as a dict; error statuses, non-JSON bodies and `{"error":...}` raise."""
    if response.status_code >= 400:
        raise await _status_error(response, key)
    raw = await _read_body(response)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamError(INVALID_RESPONSE, kind="protocol", status=None, retryable=False,
                            body=scrub(raw[:1000].decode("utf-8", "replace"), key))
    if "error" in parsed and parsed["error"] is not None:
        message, error_type, code = error_fields(parsed)
        raise UpstreamError(
            clip(scrub(message or "upstream reported an error", key)),
            status=status_from_code(code),
            kind="error_chunk",
            error_type=error_type,
            retry_after=retry_after_from_headers(response.headers),
            body=scrub_value(parsed, key),
        )
    return parsed


async def _close(response: httpx.Response) -> None:
    """Close the response (and with it, if unfinished, the connection), even when cancelled."""
    if response.is_closed:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_SECONDS):
        try:
            await response.aclose()
        except Exception:  # closing a broken connection may fail; it is gone either way
            pass


def _completion_as_chunk(completion: dict) -> dict:
    """A non-streamed `chat.completion` rewritten as one equivalent `chat.completion.chunk`."""
    choices = []
    for i, choice in enumerate(completion.get("choices") or ()):
        if not isinstance(choice, dict):
            continue
        delta = dict(choice.get("message") or {})
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            delta["tool_calls"] = [
                {"index": j, **c} if isinstance(c, dict) and "index" not in c else c
                for j, c in enumerate(calls)
            ]
        choices.append({
            "index": choice.get("index", i),
            "delta": delta,
            "finish_reason": choice.get("finish_reason"),
            "native_finish_reason": choice.get("native_finish_reason"),
        })
    chunk = {k: v for k, v in completion.items() if k not in ("choices", "object")}
    chunk["object"] = "chat.completion.chunk"
    chunk["choices"] = choices
    return chunk
