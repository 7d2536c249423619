"""`openrouter.call`: one chat-completions request to an OpenAI-compatible router.

The step is deliberately thin: it sends the already-converted payload, turns every way the
upstream can fail into an `UpstreamError` (steps/openrouter/errors.py) and, for a stream,
returns a `ChunkStream` of parsed chunk dicts. It never retries (the engine's retry layer is the
only one, so the HTTP client is built with `retries=0`). The engine bounds the first chunk
with the step's timeout and hands the gap timeout to the stream (`enforce_idle_timeout`, a
watchdog timer); the run's deadline, when there is one, bounds the wait for the response
headers (and, without streaming, for the whole body).

Error kinds raised (see UpstreamError): "status" (HTTP error status, retryable per
RETRYABLE_STATUSES), "connect" (refused, reset or closed before the response headers: the
stale-pooled-connection case; retryable), "timeout" (httpx connect/read/write/pool timeout;
retryable; or the run's deadline passing, not retryable), "protocol" (non-JSON body or an
invalid SSE data line; not retryable), "error_chunk" (a 200 whose JSON or a stream chunk holds
a top-level `error`; status from `error.code`, 502 when it is not a number), "cut" (the stream
or body broke or ended before a finish_reason; retryable only while nothing was yielded),
"cooldown" (the model is cooling down after repeated failures and no fallback is left: a
529 that is not retried here; steps/openrouter/cooldown.py).

The commit point (README "Failure policy"): the engine primes a stream step by pulling its
first item inside the step's attempt, and the response starts once it has one. A
`ChunkStream` therefore holds back chunks that carry nothing (OpenRouter's role-only first
chunk, empty deltas) until the first meaningful one (content, reasoning, a tool call, a
finish_reason or usage): a failure before real content is a pre-commit failure, retried or
answered with a real status. With `commit_after` set, an upstream that shows it is alive
(comment lines such as `: OPENROUTER PROCESSING`, or held chunks) but has produced nothing
meaningful after that many seconds gets a `KEEPALIVE` item yielded, which commits the
response so the client sees `message_start` and pings while the model thinks; the same
marker is yielded for comment-only stretches later in the stream, so the engine's idle
timeout measures upstream silence, not thinking time. A silent upstream yields nothing and
is bounded by the first-item timeout. Converters ignore the marker (no `choices`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from engine.errors import StepTimeout
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
from steps.openrouter.cooldown import Cooldowns, cooldowns
from steps.openrouter.sse import DONE, SSEDecoder, SSEError

if TYPE_CHECKING:  # httpx and aiohttp load with the first call, not with `engine check`
    from steps.openrouter.transport import UpstreamClient, UpstreamResponse

__all__ = ["KEEPALIVE_OBJECT", "ChunkStream", "call", "is_keepalive"]

MAX_ERROR_BODY = 1024 * 1024  # bytes of an error (or non-SSE) body read before giving up
DONE_DRAIN_SECONDS = 0.5  # after [DONE], wait this long for the body's end to keep the connection
CLOSE_SECONDS = 5.0  # bound on closing the upstream response
LOG_LINE_BYTES = 200
INVALID_CHUNK = "upstream sent an invalid chunk"
INVALID_RESPONSE = "upstream sent an invalid response"
CUT = "upstream connection closed mid-stream"
KEEPALIVE_OBJECT = "gateway.keepalive"
"""`object` of the marker item a ChunkStream yields for upstream keepalive comments."""


def keepalive() -> dict:
    """A keepalive marker: a chunk-shaped dict with no choices, which converters ignore."""
    return {"object": KEEPALIVE_OBJECT, "choices": []}


def is_keepalive(chunk: Any) -> bool:
    return type(chunk) is dict and chunk.get("object") == KEEPALIVE_OBJECT


def is_meaningful(chunk: dict) -> bool:
    """Whether a chunk carries anything a client would see (or the end of the answer).

    Role-only and empty-content deltas are not meaningful: OpenRouter sends one before the
    model produced anything, and it must not commit the response (see the module docstring).
    """
    if chunk.get("usage"):
        return True
    choices = chunk.get("choices")
    if not choices:
        return False
    for choice in choices:
        if type(choice) is not dict:
            return True  # odd, but not ours to judge: let the converter see it
        if choice.get("finish_reason"):
            return True
        delta = choice.get("delta")
        if delta is None:
            delta = choice.get("message")
        if type(delta) is dict:
            for k, v in delta.items():
                if v and k != "role":
                    return True
        elif delta:
            return True
    return False


@step("openrouter.call", sends=("payload", "fallbacks", "base_url", "referer", "title"))
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
    profiles: dict | None = None,
    input_tokens: int = 0,
    fallbacks: list[dict] | None = None,
    commit_after: float | None = None,
    cooldown: float = 0.0,
    cooldown_failures: int = 3,
    first_byte_timeout: float | None = None,
) -> Any:
    """POST a chat-completions payload upstream; a dict, or a stream of chunk dicts.

    `fallbacks` (convert.requests: one payload per fallback model) are tried in order after
    `payload`, moving on when a model fails in a way another model may not (see
    `falls_back`: 404, 408, 429, 5xx, 529, timeouts, connection failures, bad responses,
    context-length 400s; never other 400s or 401/402/403) — for a stream, up to and including
    its first chunk, so nothing has reached the client yet. The model that answered goes to
    `ctx.attributes["model"]` (access log, `x-upstream-model`). A context-length error
    whose message lacks the figures gets them from `profiles` and `input_tokens`, so the
    error renderer can word it the way Claude Code's auto-compaction expects.

    `commit_after` (seconds; None = never) is the commit-after-hold policy of the module
    docstring. `cooldown` (seconds; 0 = off) and `cooldown_failures` are the circuit breaker:
    after that many consecutive failures of a model (steps/openrouter/cooldown.py), requests
    skip it for `cooldown` seconds, going to the next fallback or failing fast with 529
    overloaded_error; then one probe request may try it again.

    `first_byte_timeout` (seconds; None = none) bounds each model's wait for its response
    headers and first chunk (for a JSON answer, the whole body). It lives here rather than in
    the engine's step `timeout` so that a silent model is a failure like any other: it falls
    back to the next model, counts against the breaker, and the attempt is retried.

    Returns the parsed response dict when `payload["stream"]` is falsy, else a `ChunkStream`
    (an AsyncIterator[dict] of parsed `chat.completion.chunk`s, without the `[DONE]` marker) once
    the upstream answered 200. Annotated `Any` because it is either: the registry would mark a
    step annotated AsyncIterator as always streaming. Every failure is an `UpstreamError`.
    Authorization is `Bearer {api_key}`, or the client's own key (`x-api-key`, or the bearer
    token of `authorization`) when `api_key` is empty.
    """
    target = _Target(base_url, api_key, referer, title, connect_timeout, read_timeout, pool_size, commit_after, first_byte_timeout)
    breaker = await cooldowns(ctx) if cooldown and cooldown > 0 else None
    return await _call_candidates(
        [payload, *(fallbacks or ())], request, ctx, target, profiles, input_tokens, breaker, cooldown, cooldown_failures
    )


@dataclass(frozen=True, slots=True)
class _Target:
    """Where and how one call talks to the upstream (the step's connection parameters)."""

    base_url: str
    api_key: str
    referer: str
    title: str
    connect_timeout: float
    read_timeout: float
    pool_size: int
    commit_after: float | None
    first_byte_timeout: float | None


CONTEXT_ERROR_TYPES = frozenset({"context_length_exceeded", "max_tokens_exceeded", "token_limit_exceeded"})
_CONTEXT_WORDS = ("context length", "context window", "context_length", "too long", "too many tokens", "maximum context")


def is_context_error(exc: UpstreamError) -> bool:
    """A 400/413/422 saying the prompt (or prompt + max_tokens) does not fit the model."""
    if exc.status not in (400, 413, 422) and exc.kind != "error_chunk":
        return False
    if exc.error_type in CONTEXT_ERROR_TYPES:
        return True
    message = (exc.message or "").lower()
    return any(w in message for w in _CONTEXT_WORDS)


def falls_back(exc: UpstreamError) -> bool:
    """Whether another model may succeed where this one failed (a routing fallback applies)."""
    if exc.kind in ("connect", "timeout", "cut", "protocol"):
        return True
    status = exc.status
    if status is None:
        return exc.kind == "error_chunk"
    if status in (404, 408, 409, 429) or status >= 500:
        return True
    return is_context_error(exc)


def _answered(ctx: RunContext, payload: dict) -> None:
    model = payload.get("model")
    if isinstance(model, str):
        ctx.attributes["model"] = model


def _with_context_figures(
    exc: UpstreamError, payload: dict, profiles: dict | None, input_tokens: int, ctx: RunContext
) -> UpstreamError:
    """Give a bare context-length error the limit and token figures it lacks.

    `context_limit` / `input_tokens` / `max_tokens` are set on the error for renderers; when
    the upstream text has no "maximum context length is N tokens", OpenRouter's own wording
    with the profile's limit and the (calibrated) input estimate is appended, which
    steps/anthropic/errors.py already rewrites into Anthropic's words.
    """
    if not is_context_error(exc):
        return exc
    model = payload.get("model") if isinstance(payload.get("model"), str) else ""
    profile = (profiles or {}).get(model)
    limit = getattr(profile, "context_length", None)
    if input_tokens and model:
        from steps.anthropic.tokens import calibration

        input_tokens = calibration(ctx).correct(model, input_tokens)
    max_tokens = payload.get("max_tokens") if isinstance(payload.get("max_tokens"), int) else 0
    exc.context_limit = limit  # type: ignore[attr-defined]
    exc.input_tokens = input_tokens or None  # type: ignore[attr-defined]
    exc.max_tokens = max_tokens or None  # type: ignore[attr-defined]
    if limit and input_tokens and "maximum context length is" not in (exc.message or ""):
        asked = input_tokens + max_tokens
        exc.message = (
            f"{exc.message} (This endpoint's maximum context length is {limit} tokens. However, you "
            f"requested about {asked} tokens ({input_tokens} of text input, {max_tokens} in the output).)"
        )
        exc.args = (exc.message,)
    return exc


async def _call_candidates(
    payloads: list[dict],
    request: Request,
    ctx: RunContext,
    target: _Target,
    profiles: dict | None,
    input_tokens: int,
    breaker: Cooldowns | None = None,
    cooldown: float = 0.0,
    cooldown_failures: int = 3,
) -> Any:
    """Try each payload in order (the routed model, then its fallbacks) until one answers."""
    candidates = [p for p in payloads if isinstance(p, dict)]
    if not candidates:
        raise UpstreamError("no upstream model to call", kind="protocol", retryable=False)
    ctx.attributes.pop("fallback", None)  # this attempt's story, not a previous attempt's
    first_model = candidates[0].get("model")
    last_exc: UpstreamError | None = None
    skipped: list[str] = []
    for i, payload in enumerate(candidates):
        model = payload.get("model")
        key = f"{target.base_url}|{model}"
        if breaker is not None and not breaker.allow(key):
            skipped.append(str(model))
            ctx.log.info("openrouter.cooldown_skip", model=model, remaining_s=round(breaker.remaining(key), 3))
            continue
        settled = False
        try:
            with _deadline(target.first_byte_timeout, first_byte=True):
                result = await _call_one(payload, request, ctx, target)
                if isinstance(result, ChunkStream):
                    # Up to its first chunk a stream may still fail over to the next model,
                    # and only then has the model answered (for the circuit breaker too).
                    await result.peek()
        except UpstreamError as exc:
            exc = _with_context_figures(exc, payload, profiles, input_tokens, ctx)
            if breaker is not None:
                settled = True
                if counts_against(exc) and breaker.failed(key, cooldown_failures, cooldown):
                    ctx.log.warning("openrouter.cooldown", model=model, failures=cooldown_failures, seconds=cooldown)
                elif not counts_against(exc):
                    breaker.release(key)
            if not falls_back(exc):
                raise exc from None
            last_exc = exc
            if i < len(candidates) - 1:
                ctx.log.warning(
                    "openrouter.fallback",
                    model=model,
                    next_model=candidates[i + 1].get("model"),
                    status=exc.status,
                    kind=exc.kind,
                )
            continue
        finally:
            if breaker is not None and not settled:
                # Succeeded (settled below) or cancelled (a client disconnect, the engine's
                # timeout): a probe that never finished must not keep the model shut.
                breaker.release(key)
        if breaker is not None:
            breaker.succeeded(key)
        _answered(ctx, payload)
        if i:
            ctx.attributes["fallbacks"] = i
            ctx.attributes["fallback"] = f"{first_model}->{model}"
        return result
    if last_exc is not None:
        raise last_exc
    assert breaker is not None
    wait = min(breaker.remaining(f"{target.base_url}|{m}") for m in skipped) if skipped else None
    raise UpstreamError(
        f"Overloaded: {', '.join(skipped)} cooling down after repeated failures",
        status=529,
        kind="cooldown",
        retryable=False,  # failing fast is the point; the client's own retry waits retry-after
        retry_after=wait,
    )


def counts_against(exc: UpstreamError) -> bool:
    """Whether a failure says the model (or its provider) is unwell: counted by the breaker.

    Connection failures, upstream timeouts, broken or invalid answers, 408, 429 and 5xx
    count; client errors (4xx, context length) and our own deadline do not. A 404 does not
    either: OpenRouter's "No endpoints found that support image input" is about one request,
    not the model's health (it still falls back).
    """
    if exc.kind == "timeout":
        return exc.retryable  # not retryable: the run's own deadline passed
    if exc.kind in ("connect", "cut", "protocol"):
        return True
    if exc.kind == "cooldown":
        return False
    status = exc.status
    if status is None:
        return exc.kind == "error_chunk"
    return status in (408, 429) or status >= 500


async def _call_one(payload: dict, request: Request, ctx: RunContext, target: _Target) -> Any:
    key = target.api_key or _client_key(request)
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
    if target.referer:
        headers["http-referer"] = target.referer
    if target.title:
        headers["x-title"] = target.title
        headers["x-openrouter-title"] = target.title
    client: UpstreamClient = await ctx.resource(
        f"openrouter.client:{target.connect_timeout}:{target.read_timeout}:{target.pool_size}",
        lambda: _client(target),
    )
    url = target.base_url.rstrip("/") + "/chat/completions"
    try:
        body = orjson.dumps(payload)
    except TypeError as exc:
        raise UpstreamError(
            f"payload is not JSON-serialisable: {exc}", kind="protocol", retryable=False
        ) from exc

    remaining = ctx.remaining()
    if remaining is not None and remaining <= 0:
        raise UpstreamError("deadline passed before the upstream call", kind="timeout", retryable=False)
    if not streaming:
        with _deadline(remaining):
            response = await _send(client, url, body, headers, key)
            try:
                return await _read_json(response, key)
            finally:
                await _close(response)
    with _deadline(remaining):
        response = await _send(client, url, body, headers, key)
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
    return ChunkStream(response, ctx, key, commit_after=target.commit_after)


class ChunkStream(AsyncIterator[dict]):
    """The parsed chunks of one upstream stream; owns (and always closes) the HTTP response.

    `aclose()` closes the upstream connection at once, even if iteration never started (an
    async generator would skip its `finally` then). Errors are `UpstreamError`s with
    `mid_stream` True once a chunk was yielded. Chunks without meaning are held back until
    the first meaningful one; `commit_after` makes comment-only stretches yield `keepalive()`
    markers (module docstring).
    """

    def __init__(
        self, response: UpstreamResponse | None, ctx: RunContext | None, key: str = "", commit_after: float | None = None
    ) -> None:
        self._response = response
        self._ctx = ctx
        self._key = key
        self.commit_after = commit_after if commit_after and commit_after > 0 else None
        self.chunks = 0  # items produced so far (keepalive markers included; peeked or not)
        self.keepalives = 0  # keepalive markers yielded so far
        self.finished = False  # a finish_reason was seen
        self._gen = self._run() if response is not None else None
        self._ready: list[dict] = []  # handed out before reading on: peek()'s chunk, or of_completion's
        self._idle: float | None = None  # set by the engine through enforce_idle_timeout
        self._last_item = time.monotonic()
        self._idle_fired = False
        self._watchdog: asyncio.TimerHandle | None = None

    def enforce_idle_timeout(self, seconds: float) -> bool:
        """Time the gaps between items here (the engine's hook), instead of a cancel scope per item.

        A timer checks a few times per `seconds` whether bytes arrived (comments count: the
        upstream is not silent, as Claude Code counts every byte); when none did for
        `seconds`, it aborts the upstream connection, which wakes the pending read, and the
        stream raises StepTimeout. Per network read this costs one clock read. Only possible when the
        response can be aborted synchronously (the aiohttp transport); otherwise the engine
        keeps timing the gaps itself.
        """
        if self._gen is None or self._response is None:
            return False
        self._idle = seconds
        self._last_item = time.monotonic()
        self._arm(seconds)
        return True

    def _arm(self, delay: float) -> None:
        self._watchdog = asyncio.get_running_loop().call_later(max(delay, 0.01), self._check_idle)

    def _check_idle(self) -> None:
        idle = self._idle
        if idle is None or self._response is None or self._response.is_closed:
            return
        silent = time.monotonic() - self._last_item
        if silent >= idle:
            self._idle_fired = True
            self._response.abort()
            return
        self._arm(min(idle - silent, idle / 4) + 0.001)

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    @classmethod
    def of_completion(cls, completion: dict) -> ChunkStream:
        """A one-chunk stream equivalent to a whole non-streamed completion."""
        stream = cls(None, None)
        stream._ready = [_completion_as_chunk(completion)]
        stream.chunks = 1
        return stream

    def __aiter__(self) -> ChunkStream:
        return self

    def __anext__(self) -> Awaitable[dict]:
        # The generator's own awaitable, not a coroutine wrapping it: one frame less for every
        # chunk (each frame between the event loop and the read costs on every resumption).
        if self._ready or self._gen is None:
            return self._take_ready()
        return self._gen.__anext__()

    async def peek(self) -> None:
        """Read the first chunk now; iteration still starts with it. Closes the stream on failure."""
        try:
            self._ready.append(await self.__anext__())
        except StopAsyncIteration:
            pass
        except BaseException:
            await self.aclose()
            raise

    async def _take_ready(self) -> dict:
        if self._ready:
            return self._ready.pop(0)
        raise StopAsyncIteration

    def _idle_error(self) -> StepTimeout:
        self._disarm()
        return StepTimeout(f"the upstream sent nothing for {self._idle:g} s", retryable=False)

    async def aclose(self) -> None:
        self._disarm()
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

    def _parse(self, data: bytes) -> dict:
        """One data line as a chunk dict; an invalid line or an error chunk raises."""
        try:
            chunk = orjson.loads(data)
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
        return chunk

    async def _run(self) -> AsyncIterator[dict]:
        import httpx  # loaded by the transport already; imported here to keep it out of `engine check`

        response = self._response
        assert response is not None
        decoder = SSEDecoder()
        parse = self._parse
        raw_iter = response.aiter_bytes()
        done = False
        held: list[dict] = []  # chunks without meaning, before the first meaningful one
        hold = self.commit_after
        clock = time.monotonic
        last = clock()  # when the last item was yielded (or the stream began)
        try:
            try:
                async for raw in raw_iter:
                    self._last_item = clock()  # bytes arrived: items follow, or a keepalive does
                    try:
                        events = decoder.feed(raw)
                    except SSEError as exc:
                        self._warn(str(exc).encode())
                        raise self._error(INVALID_CHUNK, kind="protocol", retryable=False) from None
                    for data in events:
                        if data == DONE:
                            done = True
                            break
                        chunk = parse(data)
                        if self.chunks == 0 and not is_meaningful(chunk):
                            held.append(chunk)
                            continue
                        if held:
                            for h in held:
                                self.chunks += 1
                                yield h
                            held.clear()
                        self.chunks += 1
                        yield chunk
                        if hold is not None:
                            last = clock()
                    if done:
                        break
                    if hold is not None and clock() - last >= hold:
                        # Bytes arrived (a keepalive comment, or held chunks) but nothing to
                        # show for `hold` seconds: tell the engine the upstream is alive.
                        self.chunks += 1
                        self.keepalives += 1
                        yield keepalive()
                        last = clock()
                if not done:
                    for data in decoder.flush():
                        if data == DONE:
                            done = True
                            break
                        chunk = parse(data)
                        held.append(chunk)
            except httpx.TimeoutException:
                raise self._error(
                    "upstream stream timed out waiting for data",
                    kind="timeout",
                    retryable=self.chunks == 0,
                ) from None
            except (httpx.TransportError, httpx.StreamError) as exc:
                # ReadError, RemoteProtocolError (incomplete chunked body), connection resets.
                if not self.finished:
                    raise self._error(CUT, kind="cut", retryable=self.chunks == 0) from exc
                # everything that matters arrived; a cut after finish is harmless
            else:
                if not done and not self.finished:
                    raise self._error(CUT, kind="cut", retryable=self.chunks == 0)
            for h in held:  # the stream ended with nothing meaningful (or a last unterminated event)
                self.chunks += 1
                yield h
            held.clear()
            if done:
                # Read the body's end so the connection goes back to the pool (bounded).
                with anyio.move_on_after(DONE_DRAIN_SECONDS):
                    try:
                        async for _ in raw_iter:
                            pass
                    except httpx.HTTPError:
                        pass
        except UpstreamError as exc:
            if self._idle_fired:  # the watchdog aborted the connection: that is a timeout
                raise self._idle_error() from exc
            raise
        finally:
            self._disarm()
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
    """`anyio.fail_after(seconds)` (or nothing when None) that raises a timeout UpstreamError:
    by default the run's deadline (not retryable); `first_byte=True` an upstream that sent
    nothing in time (retryable, counted by the circuit breaker, falls back)."""

    __slots__ = ("_first_byte", "_scope", "_seconds")

    def __init__(self, seconds: float | None, first_byte: bool = False) -> None:
        self._seconds = seconds
        self._first_byte = first_byte
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
            if self._first_byte:
                raise UpstreamError(f"upstream sent nothing for {self._seconds:g} s", kind="timeout", retryable=True) from None
            raise UpstreamError("run deadline passed while waiting for the upstream", kind="timeout", retryable=False) from None


def _client(target: _Target) -> UpstreamClient:
    from steps.openrouter.transport import UpstreamClient

    return UpstreamClient(target.connect_timeout, target.read_timeout, target.pool_size)


async def _send(client: UpstreamClient, url: str, body: bytes, headers: dict[str, str], key: str) -> UpstreamResponse:
    """Send and wait for the response headers; map transport failures to UpstreamError."""
    import httpx

    try:
        return await client.post(url, body, headers)
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


async def _read_body(response: UpstreamResponse, limit: int | None = None) -> bytes:
    """The (decoded) body; a transport failure while reading it is a retryable "cut"."""
    import httpx

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


async def _status_error(response: UpstreamResponse, key: str) -> UpstreamError:
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


async def _read_json(response: UpstreamResponse, key: str) -> dict:
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


async def _close(response: UpstreamResponse) -> None:
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
