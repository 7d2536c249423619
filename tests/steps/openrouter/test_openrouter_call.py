"""`openrouter.call` against the fake upstream over real loopback httpx."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import anyio
import orjson
import pytest

from engine.errors import StepTimeout
from engine.registry import resolve
from engine.run import Resources, RunContext
from engine.types import Request
from steps.openrouter.errors import UpstreamError
from steps.openrouter.upstream import ChunkStream, call
from tests.support.fake_openrouter import FakeOpenRouter, drip_text
from tests.support.servers import free_port, serve_asgi

CLIENT_KEY = "sk-client-0123456789abcdef"


class LogRecorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _rec(self, level: str) -> Callable[..., None]:
        return lambda event, **kw: self.records.append((level, event, kw))

    def __getattr__(self, level: str) -> Callable[..., None]:
        return self._rec(level)


@pytest.fixture(scope="module")
def fake() -> Any:
    with FakeOpenRouter() as f:
        yield f


@pytest.fixture(autouse=True)
def _fresh(fake: FakeOpenRouter) -> None:
    fake.clear()
    fake.default_mode = "ok"


def run(body: Callable[[RunContext], Awaitable[Any]], *, deadline_in: float | None = None,
        log: Any = None) -> Any:
    async def main() -> Any:
        resources = Resources()
        ctx = RunContext(request_id="req_test", pipeline="test",
                         engine=SimpleNamespace(resources=resources), log=log)  # type: ignore[arg-type]
        if deadline_in is not None:
            ctx.deadline = anyio.current_time() + deadline_in
        try:
            return await body(ctx)
        finally:
            await resources.aclose()

    return anyio.run(main)


def req(headers: dict[str, str] | None = None) -> Request:
    return Request("POST", "/v1/messages", {"x-api-key": CLIENT_KEY} if headers is None else headers, {})


def payload(text: str = "hello there", *, stream: bool = False, **kw: Any) -> dict:
    p = {"model": "fake/model", "messages": [{"role": "user", "content": text}], **kw}
    if stream:
        p["stream"] = True
    return p


async def collect(stream: Any) -> list[dict]:
    return [c async for batch in stream for c in batch]  # one batch (list) per network read


def text_of(chunks: list[dict]) -> str:
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])


def content_chunks(chunks: list[dict]) -> list[dict]:
    return [c for c in chunks if c["choices"] and (c["choices"][0]["delta"].get("content")
                                                    or c["choices"][0]["delta"].get("tool_calls"))]


def call_error(fake: FakeOpenRouter, mode: str, *, stream: bool, **kw: Any) -> tuple[UpstreamError, list[dict]]:
    fake.script(mode)
    got: list[dict] = []

    async def body(ctx: RunContext) -> UpstreamError:
        try:
            out = await call(payload(stream=stream), req(), ctx, base_url=fake.base_url, **kw)
            if stream:
                async for c in out:
                    got.extend(c)  # c: the chunks of one read
        except UpstreamError as exc:
            return exc
        raise AssertionError(f"{mode}: no UpstreamError")

    return run(body), got


# --- registration ------------------------------------------------------------------------------


def test_registered_as_non_streaming_step() -> None:
    info = resolve("openrouter.call")
    assert info.fn is call
    assert not info.streams  # returns a dict or a stream: annotated Any
    assert info.wants_context == "ctx"
    assert {"payload", "request", "base_url", "api_key"} <= set(info.params)


# --- success -----------------------------------------------------------------------------------


def test_ok_non_stream(fake: FakeOpenRouter) -> None:
    p = payload("what is up")
    out = run(lambda ctx: call(p, req(), ctx, base_url=fake.base_url, referer="https://x.test", title="T"))
    assert out["object"] == "chat.completion"
    msg = out["choices"][0]["message"]
    assert msg["content"].startswith("Hello! I am the fake upstream.")
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    (r,) = fake.requests
    assert r.method == "POST" and r.path == "/api/v1/chat/completions"
    assert r.json == p
    assert r.headers["authorization"] == f"Bearer {CLIENT_KEY}"
    assert r.headers["content-type"] == "application/json"
    assert r.headers["http-referer"] == "https://x.test"
    assert r.headers["x-title"] == "T" and r.headers["x-openrouter-title"] == "T"
    assert fake.wait_for(lambda: r.outcome == "ok")  # set just after the last byte is written


def test_ok_stream(fake: FakeOpenRouter) -> None:
    async def body(ctx: RunContext) -> list[dict]:
        s = await call(payload("tell me things", stream=True), req(), ctx, base_url=fake.base_url)
        assert isinstance(s, ChunkStream)
        return await collect(s)

    chunks = run(body)
    assert all(isinstance(c, dict) and c["object"] == "chat.completion.chunk" for c in chunks)
    assert len(content_chunks(chunks)) >= 12
    assert text_of(chunks).startswith("Hello! I am the fake upstream. You said: tell me things.")
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert fake.wait_for(lambda: fake.requests[0].outcome == "ok")


def test_streams_reuse_the_keep_alive_connection(fake: FakeOpenRouter) -> None:
    async def body(ctx: RunContext) -> None:
        for _ in range(3):
            await collect(await call(payload(stream=True), req(), ctx, base_url=fake.base_url))
        await call(payload(), req(), ctx, base_url=fake.base_url)

    run(body)
    assert len({r.connection_id for r in fake.requests}) == 1


def test_comments_are_skipped(fake: FakeOpenRouter) -> None:
    fake.script("comments;seconds=1")
    t0 = time.monotonic()
    chunks = run(lambda ctx: _stream_all(ctx, fake))
    assert time.monotonic() - t0 >= 0.9
    assert text_of(chunks).startswith("Hello! I am the fake upstream.")


async def _stream_all(ctx: RunContext, fake: FakeOpenRouter, p: dict | None = None, **kw: Any) -> list[dict]:
    return await collect(await call(p or payload(stream=True), req(), ctx, base_url=fake.base_url, **kw))


def test_tool_call_arguments_split_across_chunks_arrive_intact(fake: FakeOpenRouter) -> None:
    args = {"path": "/tmp/some/long/path.txt", "lines": [1, 2, 3], "note": "ünïcode ✓"}
    p = payload(f"please [[tool:Read {orjson.dumps(args).decode()}]]", stream=True)
    chunks = run(lambda ctx: _stream_all(ctx, fake, p))
    frags = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert len(frags) > 3
    assert frags[0]["id"].startswith("call_") and frags[0]["function"]["name"] == "Read"
    assert all("id" not in f for f in frags[1:])
    assert orjson.loads("".join(f["function"].get("arguments", "") for f in frags)) == args
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"


def test_text_mode_exact(fake: FakeOpenRouter) -> None:
    fake.script("text=Line%20one%3B%0A%20two%20%20")
    chunks = run(lambda ctx: _stream_all(ctx, fake))
    assert text_of(chunks) == "Line one;\n two  "


def test_empty_stream(fake: FakeOpenRouter) -> None:
    fake.script("empty")
    chunks = run(lambda ctx: _stream_all(ctx, fake))
    assert text_of(chunks) == "" and content_chunks(chunks) == []
    assert chunks[-1]["usage"]


# --- error statuses ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("mode", "status", "error_type", "retry_after"),
    [
        ("400", 400, "invalid_request", None),
        ("401", 401, "authentication", None),
        ("402", 402, "payment_required", None),
        ("403", 403, "permission_denied", None),
        ("404", 404, "not_found", None),
        ("413", 413, "payload_too_large", None),
        ("429;retry_after=1", 429, "rate_limit_exceeded", 1.0),
        ("status=500", 500, "server", None),
        ("502", 502, "provider_unavailable", None),
        ("503;retry_after=7", 503, "provider_overloaded", 7.0),
    ],
)
def test_error_statuses(fake: FakeOpenRouter, stream: bool, mode: str, status: int, error_type: str,
                        retry_after: float | None) -> None:
    exc, _ = call_error(fake, mode, stream=stream)
    assert (exc.status, exc.kind, exc.error_type, exc.retry_after) == (status, "status", error_type, retry_after)
    assert exc.retryable == (status in (429, 500, 502, 503))
    assert exc.message and not exc.mid_stream
    assert exc.body["error"]["code"] == status
    assert len(fake.requests) == 1


def test_retry_after_http_date(fake: FakeOpenRouter) -> None:
    exc, _ = call_error(fake, "429;retry_after_date=5", stream=False)
    assert exc.retry_after is not None and 2 <= exc.retry_after <= 6


def test_context_length_message_kept(fake: FakeOpenRouter) -> None:
    exc, _ = call_error(fake, "context_length", stream=True)
    assert exc.status == 400 and exc.error_type == "context_length_exceeded" and not exc.retryable
    assert "maximum context length is 200000 tokens" in exc.message
    assert "you requested about 263390 tokens" in exc.message


def test_error_message_scrubbed_and_clipped(fake: FakeOpenRouter) -> None:
    exc, _ = call_error(fake, f"400;message=bad key {CLIENT_KEY} " + "x" * 3000, stream=False)
    assert CLIENT_KEY not in exc.message and CLIENT_KEY not in orjson.dumps(exc.body).decode()
    assert len(exc.message) <= 1000


@pytest.mark.parametrize("stream", [False, True])
def test_error_200_and_html(fake: FakeOpenRouter, stream: bool) -> None:
    exc, _ = call_error(fake, "error_200", stream=stream)
    assert (exc.kind, exc.status, exc.retryable) == ("error_chunk", 502, True)
    assert exc.message == "Provider returned error"
    exc, _ = call_error(fake, "html", stream=stream)
    assert (exc.kind, exc.status, exc.retryable) == ("protocol", None, False)
    assert exc.message == "upstream sent an invalid response"


# --- broken connections ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reset_before_headers", "close_before_headers"])
def test_broken_before_headers_is_retryable_connect(fake: FakeOpenRouter, mode: str) -> None:
    fake.script("ok", mode, "ok")

    async def body(ctx: RunContext) -> UpstreamError:
        await call(payload(), req(), ctx, base_url=fake.base_url)  # pools a connection
        with pytest.raises(UpstreamError) as ei:
            await call(payload(), req(), ctx, base_url=fake.base_url)
        await call(payload(), req(), ctx, base_url=fake.base_url)
        return ei.value

    exc = run(body)
    assert (exc.kind, exc.status, exc.retryable) == ("connect", None, True)
    first, second, third = fake.requests
    assert first.connection_id == second.connection_id  # the failure hit the reused connection
    assert fake.wait_for(lambda: third.outcome == "ok")


def test_connection_refused_is_connect() -> None:
    base = f"http://127.0.0.1:{free_port()}/api/v1"

    async def body(ctx: RunContext) -> UpstreamError:
        with pytest.raises(UpstreamError) as ei:
            await call(payload(), req(), ctx, base_url=base)
        return ei.value

    exc = run(body)
    assert (exc.kind, exc.retryable) == ("connect", True)


def test_first_byte_timeout(fake: FakeOpenRouter) -> None:
    exc, _ = call_error(fake, "stall_before_headers", stream=True, read_timeout=0.5)
    assert (exc.kind, exc.retryable) == ("timeout", True)
    assert fake.wait_for(lambda: fake.requests[0].outcome == "peer_closed")


def test_deadline_already_passed(fake: FakeOpenRouter) -> None:
    async def body(ctx: RunContext) -> UpstreamError:
        with pytest.raises(UpstreamError) as ei:
            await call(payload(), req(), ctx, base_url=fake.base_url)
        return ei.value

    assert run(body, deadline_in=-1).kind == "timeout"
    assert fake.requests == []


# --- mid-stream failures -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cut_mid_stream;after=3", "reset_mid_stream;after=3",
                                  "cut_mid_stream;after=3;framing=close"])
def test_cut_mid_stream(fake: FakeOpenRouter, mode: str) -> None:
    exc, got = call_error(fake, mode, stream=True)
    assert (exc.kind, exc.status, exc.mid_stream, exc.retryable) == ("cut", None, True, False)
    assert exc.message == "upstream connection closed mid-stream"
    assert len(content_chunks(got)) == 3
    assert text_of(got) == "Hello! I am"


def test_cut_before_content(fake: FakeOpenRouter) -> None:
    # after=0 still yields the role chunk first, so this is mid-stream for UpstreamError
    exc, got = call_error(fake, "cut_mid_stream;after=0", stream=True)
    assert exc.kind == "cut" and len(content_chunks(got)) == 0


def test_non_stream_body_cut(fake: FakeOpenRouter) -> None:
    exc, _ = call_error(fake, "cut_mid_stream", stream=False)
    assert (exc.kind, exc.retryable) == ("cut", True)


@pytest.mark.parametrize(("code", "status"), [("429", 429), ("502", 502), ("503", 503), ("server_error", 502)])
def test_error_chunk(fake: FakeOpenRouter, code: str, status: int) -> None:
    exc, got = call_error(fake, f"error_chunk;code={code};after=2", stream=True)
    assert (exc.kind, exc.status, exc.mid_stream) == ("error_chunk", status, True)
    assert exc.message == "Provider error mid-generation"
    assert exc.error_type
    assert len(content_chunks(got)) == 2


@pytest.mark.parametrize("bad", ["truncated", "garbage", "utf8"])
def test_malformed_chunk(fake: FakeOpenRouter, bad: str) -> None:
    fake.script(f"malformed_chunk;bad={bad};after=2")
    log = LogRecorder()
    got: list[dict] = []

    async def body(ctx: RunContext) -> UpstreamError:
        with pytest.raises(UpstreamError) as ei:
            async for c in await call(payload(stream=True), req(), ctx, base_url=fake.base_url):
                got.extend(c)  # c: the chunks of one read
        return ei.value

    exc = run(body, log=log)
    assert (exc.kind, exc.message, exc.retryable, exc.mid_stream) == (
        "protocol", "upstream sent an invalid chunk", False, True)
    assert len(content_chunks(got)) == 2
    ((level, event, kw),) = log.records
    assert level == "warning" and event == "openrouter.invalid_chunk"
    assert 0 < len(kw["line"]) <= 200 + 10  # repr of at most 200 bytes


def test_nodata_line_ignored(fake: FakeOpenRouter) -> None:
    fake.script("malformed_chunk;bad=nodata;after=2")
    chunks = run(lambda ctx: _stream_all(ctx, fake))
    assert text_of(chunks).startswith("Hello! I am the fake upstream.")
    assert chunks[-1]["usage"]


def test_no_done_completes(fake: FakeOpenRouter) -> None:
    fake.script("no_done")
    chunks = run(lambda ctx: _stream_all(ctx, fake))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert text_of(chunks).startswith("Hello!")


def test_stall_mid_stream_read_timeout(fake: FakeOpenRouter) -> None:
    exc, got = call_error(fake, "stall_mid_stream;after=2", stream=True, read_timeout=0.4)
    assert (exc.kind, exc.mid_stream, exc.retryable) == ("timeout", True, False)
    assert len(content_chunks(got)) == 2
    assert fake.wait_for(lambda: fake.requests[0].outcome == "peer_closed")


def test_stream_times_its_own_idle_gaps(fake: FakeOpenRouter) -> None:
    """The engine's idle-timeout hook is taken (no cancel scope per item): a silent upstream is
    aborted by the stream's watchdog, which raises StepTimeout and closes the connection."""
    fake.script("stall_mid_stream;after=2;seconds=30")

    async def body(ctx: RunContext) -> tuple[bool, list[dict], BaseException]:
        s = await call(payload(stream=True), req(), ctx, base_url=fake.base_url)
        took = s.enforce_idle_timeout(0.3)
        got: list[dict] = []
        try:
            async for c in s:
                got.extend(c)  # c: the chunks of one read
        except BaseException as exc:  # noqa: BLE001 - the error is what is checked
            return took, got, exc
        finally:
            await s.aclose()
        raise AssertionError("the stall did not end the stream")

    took, got, exc = run(body)
    assert took is True
    assert isinstance(exc, StepTimeout) and "0.3 s" in str(exc)
    assert len(content_chunks(got)) == 2
    assert fake.wait_for(lambda: fake.requests[0].outcome == "peer_closed")


def test_slow_drip_completes(fake: FakeOpenRouter) -> None:
    fake.script("slow_drip;delay_ms=20;chunks=10")
    chunks = run(lambda ctx: _stream_all(ctx, fake))
    assert text_of(chunks) == drip_text(10)


# --- closing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("read_first", [2, 0])
def test_aclose_closes_upstream_connection(fake: FakeOpenRouter, read_first: int) -> None:
    fake.script("slow_drip;delay_ms=100;chunks=100")

    async def body(ctx: RunContext) -> float:
        s = await call(payload(stream=True), req(), ctx, base_url=fake.base_url)
        for _ in range(read_first):
            await s.__anext__()
        await s.aclose()
        return time.monotonic()

    closed_at = run(body)
    assert fake.wait_for(lambda: fake.requests[0].outcome == "peer_closed")
    assert fake.requests[0].finished_at - closed_at < 1.0  # type: ignore[operator]
    assert fake.wait_for(lambda: fake.active_requests == 0)


def test_resources_close_the_pool(fake: FakeOpenRouter) -> None:
    run(lambda ctx: call(payload(), req(), ctx, base_url=fake.base_url))
    assert fake.wait_for(lambda: fake.open_connections == 0)


# --- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "api_key", "sent"),
    [
        ({"x-api-key": CLIENT_KEY}, "", CLIENT_KEY),
        ({"authorization": f"Bearer {CLIENT_KEY}"}, "", CLIENT_KEY),
        ({"x-api-key": CLIENT_KEY}, "sk-or-server-key", "sk-or-server-key"),
        ({}, "sk-or-server-key", "sk-or-server-key"),
    ],
)
def test_keys(fake: FakeOpenRouter, headers: dict[str, str], api_key: str, sent: str) -> None:
    run(lambda ctx: call(payload(), req(headers), ctx, base_url=fake.base_url, api_key=api_key))
    assert fake.requests[0].headers["authorization"] == f"Bearer {sent}"


@pytest.mark.parametrize("headers", [{}, {"authorization": "Basic abc"}, {"x-api-key": " "}])
def test_missing_key(fake: FakeOpenRouter, headers: dict[str, str]) -> None:
    async def body(ctx: RunContext) -> UpstreamError:
        with pytest.raises(UpstreamError) as ei:
            await call(payload(), req(headers), ctx, base_url=fake.base_url)
        return ei.value

    exc = run(body)
    assert (exc.status, exc.kind, exc.retryable) == (401, "status", False)
    assert exc.message == "no API key: send x-api-key, or give provider 'default' an api_key (OPENROUTER_API_KEY for the shipped one)"
    assert fake.requests == []


# --- other servers (real uvicorn) ---------------------------------------------------------------


async def _app(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path.startswith("/json"):  # ignores stream:true and answers a whole completion
        body = orjson.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "F", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 1}})
        ctype = b"application/json"
    else:  # CRLF framing, an id field, data without a space, [DONE] without a blank line
        body = (b": hi\r\n\r\nid: 1\r\ndata:{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A\"},"
                b"\"finish_reason\":null}]}\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{},"
                b"\"finish_reason\":\"stop\"}]}\r\n\r\ndata: [DONE]\r\n")
        ctype = b"text/event-stream"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype)]})
    await send({"type": "http.response.body", "body": body})


def test_other_servers_sse_dialects_and_json_answer_to_stream() -> None:
    with serve_asgi(_app) as base:
        sse = run(lambda ctx: _collect_from(ctx, base + "/sse"))
        assert text_of(sse) == "A" and sse[-1]["choices"][0]["finish_reason"] == "stop"
        (one,) = run(lambda ctx: _collect_from(ctx, base + "/json"))
        assert one["object"] == "chat.completion.chunk"
        assert one["choices"][0]["delta"]["tool_calls"][0] == {
            "index": 0, "id": "c1", "type": "function", "function": {"name": "F", "arguments": "{}"}}
        assert one["choices"][0]["finish_reason"] == "tool_calls" and one["usage"] == {"prompt_tokens": 1}


async def _collect_from(ctx: RunContext, base: str) -> list[dict]:
    return await collect(await call(payload(stream=True), req(), ctx, base_url=base))


# --- batches: the chunks of one network read travel together ------------------------------------


class _OneRead:
    """An upstream response whose whole body arrives in one read (no network: the batch unit)."""

    status_code = 200
    headers: dict[str, str] = {}

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.is_closed = False

    async def aiter_bytes(self) -> Any:
        yield self.body

    def close(self) -> None:
        self.is_closed = True

    def at_eof(self) -> bool:
        return True


def _sse(*chunks: dict) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)


def _text(text: str, finish: str | None = None) -> dict:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


def test_one_read_is_one_batch_with_the_held_chunks_first() -> None:
    """A read's chunks come as one list; the role-only chunk held before the first meaningful one leads it."""
    role = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    body = b": OPENROUTER PROCESSING\n\n" + _sse(role, _text("a"), _text("b"), _text("", "stop")) + b"data: [DONE]\n\n"
    response = _OneRead(body)

    async def main() -> list[Any]:
        return [batch async for batch in ChunkStream(response, None)]  # type: ignore[arg-type]

    batches = anyio.run(main)
    assert len(batches) == 1 and [text_of([c]) for c in batches[0]] == ["", "a", "b", ""]
    assert response.is_closed


@pytest.mark.parametrize("bad", [b'{"error": {"code": 503, "message": "overloaded"}}', b"{not json"])
def test_a_failure_inside_a_read_hands_on_the_chunks_before_it_first(bad: bytes) -> None:
    """Cut-stream semantics with batches: what came before the failure in the same read is
    yielded, then the error is raised, as a mid-stream error."""
    response = _OneRead(_sse(_text("a"), _text("b")) + b"data: " + bad + b"\n\n" + _sse(_text("c")))
    got: list[list[dict]] = []

    async def main() -> UpstreamError:
        with pytest.raises(UpstreamError) as ei:
            async for batch in ChunkStream(response, None):  # type: ignore[arg-type]
                got.append(batch)
        return ei.value

    exc = anyio.run(main)
    assert [text_of(b) for b in got] == ["ab"]
    assert exc.mid_stream and exc.kind in ("error_chunk", "protocol")
    assert response.is_closed
