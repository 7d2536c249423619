"""`openrouter.call`: one chat-completions request to an OpenAI-compatible upstream (any provider).

The step is deliberately thin: it sends the already-converted payload, turns every way the
upstream can fail into an `UpstreamError` (steps/openrouter/errors.py) and, for a stream,
returns a `ChunkStream` of parsed chunk dicts, handed on as one batch (a list) per network
read so the layers above resume once per read, not once per chunk. It never retries (the
engine's retry layer is the only one, so the HTTP client is built with `retries=0`). The
engine bounds the first chunk with the step's timeout and hands the gap timeout to the stream
(`enforce_idle_timeout`, a watchdog timer); the run's deadline, when there is one, is the
engine's one cancel scope around the run, which bounds the wait for the response headers (and,
without streaming, for the whole body): the step sets no scope of its own for it, and only
refuses to start once the deadline has passed.

Error kinds raised (see UpstreamError): "status" (an HTTP error status), "connect" (refused,
reset or closed before the response headers: the stale-pooled-connection case), "timeout"
(httpx connect/read/write/pool timeout, or the run's deadline passed before the call), "protocol" (non-JSON
body or an invalid SSE data line), "error_chunk" (a 200 whose JSON or a stream chunk holds a
top-level `error`; status from `error.code`, 502 when it is not a number), "cut" (the stream or
body broke or ended before a finish_reason; retryable only while nothing was yielded). What
each means — retried, fallen back from, counted by the breaker, shown as which status — is
the error's `failure`, classified once (steps/providers/failures.py).

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
from engine.types import Facts, Request
from steps.openrouter.errors import (
    UpstreamError,
    clip,
    error_fields,
    retry_after_from_headers,
    scrub,
    scrub_value,
    status_from_code,
)
from steps.providers.config import Provider, Providers, Target, single
from steps.providers.failures import ContextOverflow
from steps.openrouter.sse import DONE, SSEDecoder, SSEError

if TYPE_CHECKING:  # httpx and aiohttp load with the first call, not with `engine check`
    from steps.openrouter.transport import UpstreamClient, UpstreamResponse

__all__ = ["KEEPALIVE_OBJECT", "ChunkStream", "call", "completion_as_chunk", "is_keepalive"]

CALL_FACTS = ("model", "attempts", "upstream_status", "fallback", "fallbacks", "cooled")
"""What `openrouter.call` tells besides its answer (`${{ facts.call.model }}`, ...)."""
MAX_ERROR_BODY = 1024 * 1024  # bytes of an error (or non-SSE) body read before giving up
DONE_DRAIN_SECONDS = 0.5  # after [DONE], wait this long for the body's end to keep the connection
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


@step("openrouter.call", sends=("payload", "base_url", "referer", "title"), facts=CALL_FACTS)
async def call(
    payload: dict | None,
    request: Request,
    ctx: RunContext,
    providers: Providers | None = None,
    target: dict | None = None,
    base_url: str = "https://openrouter.ai/api/v1",
    api_key: str = "",
    referer: str = "",
    title: str = "",
    connect_timeout: float = 10.0,
    read_timeout: float = 600.0,
    pool_size: int = 256,
    profiles: dict | None = None,
    input_tokens: int = 0,
    commit_after: float | None = None,
    first_content_timeout: float | None = None,
    calibration: dict[str, float] | None = None,
    facts: Facts | None = None,
) -> Any:
    """POST one chat-completions payload to one upstream; a dict, or a stream of chunk dicts.

    `providers` (providers.load) are the declared upstreams and `target` (one of
    openrouter.candidates' list) names the provider and model this attempt goes to; without
    `target` the payload's model is resolved against `providers`. Without `providers`,
    `base_url` and `api_key` (the client's own key when empty) with `referer`/`title` headers
    make one OpenRouter-dialect provider. The payload is adapted to its provider's dialect
    (steps/providers/dialects.py) just before it is sent.

    The policy around the call is the engine's, declared in pipelines/turn.yaml: the
    candidates (the routed model, then its fallbacks: `candidates:`), each attempt's timeout
    (`timeout:`, to a JSON answer or a stream's first chunk), the retries (`retry:`) and the
    circuit breaker (`breaker:`). This step only says what a failure means: every failure is an
    `UpstreamError` whose classification (steps/providers/failures.py) tells the engine whether
    it is retryable, whether another candidate may succeed (`fallback`) and whether it speaks
    of the model's health (`about_candidate`).

    The step's facts (one `Facts` for all the engine's attempts of the step) tell the story of
    the attempts: `attempts` (upstream requests made, fallbacks and retries included),
    `upstream_status` (the last answer's HTTP status; absent when none came), the `model` that
    answered (the access line, `x-upstream-model`, the converters) and, after a fallback,
    `fallback` ("first->answered") and `fallbacks` (how many models were passed); the engine
    adds `cooled` (the candidates its breaker skipped). A context overflow whose numbers the
    upstream did not state gets them from `profiles` and `input_tokens` (scaled by
    `calibration`, the `anthropic.calibration` output), so the renderer can word it the way
    Claude Code's auto-compaction expects.

    `commit_after` (seconds; None = never) is the commit-after-hold policy of the module
    docstring. `first_content_timeout` (seconds; None = none) bounds a stream that shows it is
    alive (keepalive comments) but sends nothing meaningful: before the commit point that is a
    failure like a timed-out first byte (the next candidate, or 504); after it (the keepalives
    committed the response) an SSE `timeout_error` ends the stream.

    Returns the parsed response dict when `payload["stream"]` is falsy, else a `ChunkStream`
    (an AsyncIterator of lists of parsed `chat.completion.chunk`s, one list per network read,
    without the `[DONE]` marker) once
    the upstream answered 200. Annotated `Any` because it is either: the registry would mark a
    step annotated AsyncIterator as always streaming. Every failure is an `UpstreamError`.
    """
    if providers is None:
        headers = {"http-referer": referer} if referer else {}
        if title:
            headers.update({"x-title": title, "x-openrouter-title": title})
        providers = single(base_url, api_key, headers)
    if not isinstance(payload, dict):
        raise UpstreamError("no upstream payload to send", kind="protocol", retryable=False)
    told = facts if facts is not None else Facts()
    told["attempts"] = told.get("attempts", 0) + 1
    told.pop("upstream_status", None)  # no answer yet (a timeout or a refused connection leaves none)
    transport = _Transport(connect_timeout, read_timeout, pool_size, commit_after, first_content_timeout)
    goal = _target(providers, payload, target)
    try:
        result = await _call_one(payload, request, ctx, providers.get(goal.provider), transport)
    except UpstreamError as exc:
        if exc.status is not None:
            told["upstream_status"] = exc.status
        raise _with_context_figures(exc, payload, profiles, input_tokens, calibration) from None
    shown = providers.shown(goal)
    told["model"] = shown
    told["upstream_status"] = 200
    index = target.get("index") if isinstance(target, dict) else None
    if isinstance(index, int) and index > 0:
        told["fallbacks"] = index
        told["fallback"] = f"{target.get('first') or '?'}->{shown}"  # type: ignore[union-attr]
    else:
        told.pop("fallback", None)  # this attempt's story, not a previous attempt's
        told.pop("fallbacks", None)
    return result


@dataclass(frozen=True, slots=True)
class _Transport:
    """How one call talks to any upstream (the step's connection parameters)."""

    connect_timeout: float
    read_timeout: float
    pool_size: int
    commit_after: float | None
    first_content_timeout: float | None = None


def _target(providers: Providers, payload: dict, target: dict | None) -> Target:
    """Where the payload goes: the candidate's provider, else by resolving its model."""
    if isinstance(target, dict) and target.get("provider") in providers.providers:
        return Target(target["provider"], str(target.get("model") or payload.get("model")), str(target.get("ref") or payload.get("model")))
    return providers.resolve(str(payload.get("model") or ""))


def _with_context_figures(
    exc: UpstreamError, payload: dict, profiles: dict | None, input_tokens: int, calibration: dict[str, float] | None = None
) -> UpstreamError:
    """Give a context overflow the numbers its message or body did not state.

    The model's window comes from its profile and the prompt's size from the (calibrated)
    estimate, so an upstream that says only "the input length exceeds the context length"
    (Ollama) still reaches the client as `prompt is too long: N tokens > M maximum`.
    """
    if exc.failure.category != "context_overflow":
        return exc
    known = exc.context or ContextOverflow(None, None)
    if known.complete:
        return exc
    model = payload.get("model") if isinstance(payload.get("model"), str) else ""
    profile = (profiles or {}).get(model)
    limit = known.limit or getattr(profile, "context_length", None)
    prompt = known.input_tokens
    if prompt is None and input_tokens and model:
        from steps.anthropic.tokens import corrected

        prompt = corrected(calibration, model, input_tokens)
    max_tokens = payload.get("max_tokens") or payload.get("max_completion_tokens")
    output = known.output_tokens or (max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None)
    exc.context = ContextOverflow(prompt or None, limit, output)  # the output budget counts against the window too
    return exc


async def _call_one(payload: dict, request: Request, ctx: RunContext, provider: Provider, transport: _Transport) -> Any:
    key = provider.key_for(_client_key(request))
    if not key and provider.forward_client_key:
        raise UpstreamError(
            f"no API key: send x-api-key, or give provider '{provider.name}' an api_key (OPENROUTER_API_KEY for the shipped one)",
            status=401,
            kind="status",
            retryable=False,
        )
    headers = {"content-type": "application/json", **provider.headers}
    if key:
        headers["authorization"] = f"Bearer {key}"
    payload = provider.speaks.adapt(payload)
    streaming = bool(payload.get("stream"))
    headers["accept"] = "text/event-stream" if streaming else "application/json"
    client: UpstreamClient = await ctx.resource(
        f"openrouter.client:{transport.connect_timeout}:{transport.read_timeout}:{transport.pool_size}",
        lambda: _client(transport),
    )
    url = provider.base_url + "/chat/completions"
    try:
        body = orjson.dumps(payload)
    except TypeError as exc:
        raise UpstreamError(
            f"payload is not JSON-serialisable: {exc}", kind="protocol", retryable=False
        ) from exc

    remaining = ctx.remaining()
    if remaining is not None and remaining <= 0:
        raise UpstreamError("deadline passed before the upstream call", kind="timeout", retryable=False)
    # From here on the run's deadline (the engine's scope around the whole run) bounds every wait.
    response = await _send(client, url, body, headers, key)
    if not streaming:
        try:
            return await _read_json(response, key)
        finally:
            _close(response)
    try:
        if response.status_code >= 400:
            raise await _status_error(response, key)
        ctype = response.headers.get("content-type", "").lower()
        if "json" in ctype or "html" in ctype:
            # An error (or a whole completion) sent as plain JSON although we asked for a stream,
            # or an HTML error page from a proxy in between. Anything else is parsed as SSE.
            parsed = await _read_json(response, key)
            _close(response)
            return ChunkStream.of_completion(parsed)
    except BaseException:
        _close(response)
        raise
    return ChunkStream(response, ctx, key, commit_after=transport.commit_after, first_content=transport.first_content_timeout)


class ChunkStream(AsyncIterator[list[dict]]):
    """The parsed chunks of one upstream stream; owns (and always closes) the HTTP response.

    Each item is a batch: the chunks of one network read, in order (engine/streams.py). A
    failure in the middle of a read (an error chunk, an invalid line) first hands on the
    chunks before it, then raises, so the client sees what the upstream sent before the error.

    `aclose()` closes the upstream connection at once, even if iteration never started (an
    async generator would skip its `finally` then). Errors are `UpstreamError`s with
    `mid_stream` True once a chunk was yielded. Chunks without meaning are held back until
    the first meaningful one; `commit_after` makes comment-only stretches yield `keepalive()`
    markers (module docstring).
    """

    def __init__(
        self,
        response: UpstreamResponse | None,
        ctx: RunContext | None,
        key: str = "",
        commit_after: float | None = None,
        first_content: float | None = None,
    ) -> None:
        self._response = response
        self._ctx = ctx
        self._key = key
        self.commit_after = commit_after if commit_after and commit_after > 0 else None
        self.first_content = first_content if first_content and first_content > 0 else None
        self.chunks = 0  # items produced so far (keepalive markers included)
        self.keepalives = 0  # keepalive markers yielded so far
        self.finished = False  # a finish_reason was seen
        self._gen = self._run() if response is not None else None
        self._ready: list[dict] = []  # handed out before reading on: of_completion's chunk
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
        stream._ready = [[completion_as_chunk(completion)]]
        stream.chunks = 1
        return stream

    def __aiter__(self) -> ChunkStream:
        return self

    def __anext__(self) -> Awaitable[list[dict]]:
        # The generator's own awaitable, not a coroutine wrapping it: one frame less for every
        # chunk (each frame between the event loop and the read costs on every resumption).
        if self._ready or self._gen is None:
            return self._take_ready()
        return self._gen.__anext__()

    async def _take_ready(self) -> list[dict]:
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
                _close(self._response)

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

    async def _run(self) -> AsyncIterator[list[dict]]:
        import httpx  # loaded by the transport already; imported here to keep it out of `engine check`

        response = self._response
        assert response is not None
        decoder = SSEDecoder()
        parse = self._parse  # the slow path: an invalid line or an error chunk
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        raw_iter = response.aiter_bytes()
        done = False
        held: list[dict] = []  # chunks without meaning, before the first meaningful one
        hold = self.commit_after
        clock = time.monotonic
        last = clock()  # when the last item was yielded (or the stream began)
        content_by = None if self.first_content is None else last + self.first_content  # None: met, or no bound
        try:
            try:
                async for raw in raw_iter:
                    now = self._last_item = clock()  # bytes arrived: items follow, or a keepalive does
                    if content_by is not None and now >= content_by:
                        raise self._error(
                            f"upstream sent only keepalives for {self.first_content:g} s",
                            kind="timeout",
                            error_type="first_byte_timeout",
                        )
                    try:
                        events = decoder.feed(raw)
                    except SSEError as exc:
                        self._warn(str(exc).encode())
                        raise self._error(INVALID_CHUNK, kind="protocol", retryable=False) from None
                    batch: list[dict] = []  # this read's chunks: one item for every layer above
                    for data in events:
                        if data == DONE:
                            done = True
                            break
                        try:
                            chunk = loads(data)
                        except JSONDecodeError:
                            chunk = None
                        if type(chunk) is not dict or "error" in chunk:
                            try:
                                parse(data)  # raises the error this line is (and logs an invalid one)
                            except UpstreamError:
                                if batch:  # what the upstream sent before the failure reaches the client first
                                    yield batch
                                raise
                        if not self.finished:
                            for choice in chunk.get("choices") or ():
                                if type(choice) is dict and choice.get("finish_reason"):
                                    self.finished = True
                        if self.chunks == 0 and not is_meaningful(chunk):
                            held.append(chunk)
                            continue
                        if held:
                            batch += held
                            self.chunks += len(held)
                            held.clear()
                        self.chunks += 1  # counted now: an error later in this read is mid-stream
                        batch.append(chunk)
                    if batch:
                        content_by = None
                        yield batch
                        if hold is not None:
                            last = clock()
                    if done:
                        break
                    if not batch and hold is not None and clock() - last >= hold:
                        # Bytes arrived (a keepalive comment, or held chunks) but nothing to
                        # show for `hold` seconds: tell the engine the upstream is alive.
                        self.chunks += 1
                        self.keepalives += 1
                        yield [keepalive()]
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
            if held:  # the stream ended with nothing meaningful (or a last unterminated event)
                self.chunks += len(held)
                rest, held = held, []
                yield rest
            if done and not response.at_eof():
                # Read the body's end so the connection goes back to the pool (bounded). Usually
                # it came with [DONE], and there is nothing to wait for (and no scope to set up).
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
            _close(response)

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


def _client(transport: Any) -> UpstreamClient:
    """The pooled upstream client (aiohttp is imported only when a call is really made)."""
    from steps.openrouter.transport import UpstreamClient

    return UpstreamClient(transport.connect_timeout, transport.read_timeout, transport.pool_size)


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


def _close(response: UpstreamResponse) -> None:
    """Close the response (and with it, if unfinished, the connection). Synchronous, so a
    cancelled caller closes it all the same, with no shield and no bound to set up."""
    if response.is_closed:
        return
    try:
        response.close()
    except Exception:  # closing a broken connection may fail; it is gone either way
        pass


def completion_as_chunk(completion: dict) -> dict:
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
        rest = {k: v for k, v in choice.items() if k != "message"}  # finish_reason and a server's stop fields
        choices.append({**rest, "index": choice.get("index", i), "delta": delta, "finish_reason": choice.get("finish_reason")})
    chunk = {k: v for k, v in completion.items() if k not in ("choices", "object")}
    chunk["object"] = "chat.completion.chunk"
    chunk["choices"] = choices
    return chunk
