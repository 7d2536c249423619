"""RELIABILITY §1: upstream faults before the commit point (retries, timeouts, fallback,
circuit breaking, the deadline), end to end: the official SDK or raw httpx → the gateway under
uvicorn → the fake OpenRouter on loopback as the fault injector. Timers are test values."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from engine.capture import CaptureWriter
from engine.capture_reader import Captured, read_captures

from tests.pipelines.conftest import Gateway
from tests.pipelines.faults import ASK, OK_TEXT, body, captured_logs, gateway_with, post, sse, without_pings
from tests.support.servers import free_port

FAST = {"UPSTREAM_RETRY_BACKOFF": "0.05", "OPENROUTER_MODELS_FETCH": "false"}


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    with gateway_with(FAST) as g:
        yield g


def assert_error(r, status: int, error_type: str, retry: bool) -> dict:  # noqa: ANN001
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    data = r.json()
    assert data["type"] == "error" and data["error"]["type"] == error_type
    assert data["request_id"] == r.headers["request-id"]
    assert r.headers["x-should-retry"] == ("true" if retry else "false")
    return data["error"]


# --- §1.1, §1.2: Retry-After --------------------------------------------------------------------


def test_429_retry_after_is_waited_then_answered_and_logged(gw: Gateway) -> None:
    """§1.1: a 429 with `retry-after: 1` is waited (≥ 1.0 s between the two upstream requests),
    retried once, and logged as `step.retry` with reason 429 and delay 1 s."""
    gw.fake.script("429;retry_after=1", "ok")
    with captured_logs() as sink:
        msg = gw.client().messages.create(model="claude-opus-5-5", max_tokens=64, messages=ASK)
    assert msg.content[0].text == OK_TEXT
    first, second = gw.fake.requests
    assert second.at - first.at >= 1.0
    (retry,) = sink.lines("step.retry", step="call")
    assert retry["next_attempt"] == 2 and retry["delay_s"] == 1.0
    assert retry["reason"].startswith("status=429")


def test_429_retry_after_beyond_60s_is_returned_at_once(gw: Gateway) -> None:
    """§1.2: `retry-after: 120` is more than anyone waits: one upstream request, 429 with 60."""
    gw.fake.script("429;retry_after=120")
    r = post(gw, body())
    assert_error(r, 429, "rate_limit_error", retry=True)
    assert r.headers["retry-after"] == "60"
    assert len(gw.fake.requests) == 1


# --- §1.3, §1.4: statuses -------------------------------------------------------------------------


def test_503_always_is_three_jittered_attempts_then_529(gw: Gateway) -> None:
    """§1.3: an upstream that always answers 503 gets exactly 3 requests (2 retries) with
    backoff gaps within the cap, then 529 overloaded_error with x-should-retry: true; over
    20 runs the gaps differ (full jitter). Backoff is 50 ms here (UPSTREAM_RETRY_BACKOFF)."""
    gw.fake.default_mode = "503"
    gaps = []
    for _ in range(20):
        gw.fake.clear()
        r = post(gw, body())
        assert_error(r, 529, "overloaded_error", retry=True)
        reqs = gw.fake.requests
        assert len(reqs) == 3
        for n, (a, b) in enumerate(zip(reqs, reqs[1:]), start=1):
            gap = b.at - a.at
            assert 0 < gap <= 0.05 * 2 ** (n - 1) + 0.5  # the ceiling, plus loopback slack
            gaps.append(gap)
    assert len({round(g, 4) for g in gaps}) > 10


def test_the_access_line_tells_attempts_and_the_last_upstream_status(gw: Gateway) -> None:
    """Issue 15.5: `attempts` counts every upstream request (the engine's retries included)
    and `upstream_status` is the last answer's status, for a run that failed and one that
    recovered; both come from openrouter.call's facts through turn.yaml's and messages.yaml's
    `access:` declarations."""
    gw.fake.default_mode = "503"
    try:
        with captured_logs() as sink:
            failed = post(gw, body())
            sink.wait_for("request", request_id=failed.headers["request-id"])
    finally:
        gw.fake.default_mode = "ok"
    assert failed.status_code == 529
    (line,) = sink.lines("request", request_id=failed.headers["request-id"])
    assert line["attempts"] == 3 and line["upstream_status"] == 503 and line["outcome"] == "error"
    assert line["route"] == "default" and "model" not in line  # no model answered
    gw.fake.script("429;retry_after=0", "ok")
    with captured_logs() as sink:
        ok = post(gw, body())
        sink.wait_for("request", request_id=ok.headers["request-id"])
    (line,) = sink.lines("request", request_id=ok.headers["request-id"])
    assert ok.status_code == 200 and ok.headers["x-upstream-model"] == "test/big"
    assert line["attempts"] == 2 and line["upstream_status"] == 200 and line["model"] == "test/big"
    assert set(line["usage"]) == {"test/big"}


def test_500_then_ok_is_retried(gw: Gateway) -> None:
    """§1.4: a 500 is retried; the second answer reaches the client."""
    gw.fake.script("500", "ok")
    msg = gw.client().messages.create(model="claude-opus-5-5", max_tokens=64, messages=ASK)
    assert msg.content[0].text == OK_TEXT and len(gw.fake.requests) == 2


@pytest.mark.parametrize(
    ("mode", "status", "error_type", "message"),
    [
        ("400", 400, "invalid_request_error", "Invalid request: the fake upstream rejected this request"),
        ("401", 401, "authentication_error", "No auth credentials found"),
        ("402", 402, "billing_error", "Insufficient credits. Add more using https://openrouter.ai/credits"),
        ("403", 403, "permission_error", "Input was flagged by moderation"),
        ("404", 404, "not_found_error", "No endpoints found for fake/model."),
        ("413", 413, "request_too_large", "Request payload too large"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_4xx_is_not_retried_and_keeps_the_upstream_message(gw: Gateway, mode: str, status: int, error_type: str, message: str, stream: bool) -> None:
    """§1.4: upstream 4xx → one request, the mapped status and type, x-should-retry: false,
    the upstream's message kept (4xx messages are the client's to read)."""
    gw.fake.script(mode)
    r = post(gw, body(stream=stream))
    assert assert_error(r, status, error_type, retry=False)["message"] == message
    assert len(gw.fake.requests) == 1


@pytest.mark.parametrize(("mode", "status", "error_type", "message"), [
    ("500", 500, "api_error", "Internal server error"),
    ("502", 502, "api_error", "upstream error"),
    ("503", 529, "overloaded_error", "Overloaded"),
    ("529", 529, "overloaded_error", "Overloaded"),
    ("504", 504, "timeout_error", "upstream request timed out"),
    ("408", 504, "timeout_error", "upstream request timed out"),
])
def test_5xx_messages_are_masked(gw: Gateway, mode: str, status: int, error_type: str, message: str) -> None:
    """§1 table: 5xx (and 408) map to Anthropic's status and type with a fixed message (the
    upstream's 5xx text is not the client's business) and x-should-retry: true."""
    gw.fake.default_mode = mode
    r = post(gw, body())
    assert assert_error(r, status, error_type, retry=True)["message"] == message
    assert len(gw.fake.requests) == 3


# --- §1.5, §1.6, §1.7: connections --------------------------------------------------------------


def test_reset_before_headers_then_ok(gw: Gateway) -> None:
    """§1.5: a TCP reset before the response headers is retried on a fresh connection."""
    gw.fake.script("reset_before_headers", "ok")
    msg = gw.client().messages.create(model="claude-opus-5-5", max_tokens=64, messages=ASK)
    assert msg.content[0].text == OK_TEXT
    # The fake records "ok" just after its last byte, which the client may read first.
    assert gw.fake.wait_for(lambda: [r.outcome for r in gw.fake.requests] == ["reset", "ok"]), [r.outcome for r in gw.fake.requests]


def test_close_before_headers_on_a_reused_connection_then_ok(gw: Gateway) -> None:
    """§1.5: the stale pooled keep-alive connection: the upstream closes a reused connection
    before answering; the retry goes out on a new connection and the client gets a 200."""
    client = gw.client()
    client.messages.create(model="claude-opus-5-5", max_tokens=64, messages=ASK)
    gw.fake.script("close_before_headers", "ok")
    msg = client.messages.create(model="claude-opus-5-5", max_tokens=64, messages=ASK)
    assert msg.content[0].text == OK_TEXT
    warm, closed, retried = gw.fake.requests
    assert closed.connection_id == warm.connection_id  # the failure hit the pooled connection
    assert gw.fake.wait_for(lambda: closed.outcome == "closed" and retried.outcome == "ok")  # set after the last byte
    assert retried.connection_id != closed.connection_id


def test_upstream_port_closed_is_three_connect_attempts_then_502() -> None:
    """§1.6: nothing listens upstream: 3 connect attempts (2 retries), then 502 api_error
    "upstream unreachable" with x-should-retry: true."""
    env = {**FAST, "OPENROUTER_BASE_URL": f"http://127.0.0.1:{free_port()}/api/v1"}
    with gateway_with(env) as g, captured_logs() as sink:
        t0 = time.monotonic()
        r = post(g, body())
        elapsed = time.monotonic() - t0
    assert assert_error(r, 502, "api_error", retry=True)["message"] == "upstream unreachable"
    retries = sink.lines("step.retry", step="call")
    assert [line["reason"].split(":")[0] for line in retries] == ["connect", "connect"]
    (end,) = sink.lines("step.end", step="call")
    assert end["attempts"] == 3 and end["outcome"] == "error"
    assert elapsed < 3 * 10 + 0.05 + 0.1 + 5  # 3 × connect timeout + backoff ceilings (+ slack)


@pytest.mark.parametrize("stream", [False, True])
def test_stall_before_headers_is_cut_at_the_first_byte_timeout(stream: bool) -> None:
    """§1.7: an upstream that never answers is abandoned at the first-byte timeout (1 s
    here): the fake sees the connection closed (`peer_closed`) after ≥ 1 s. A timed-out first
    byte moves to the next candidate, never to the same model again (issue 15 item 4: it would
    time out again), so with no fallback the client gets 504 timeout_error after one try."""
    with gateway_with({**FAST, "UPSTREAM_TIMEOUT": "1"}) as g:
        g.fake.default_mode = "stall_before_headers;seconds=30"
        r = post(g, body(stream=stream))
        assert_error(r, 504, "timeout_error", retry=True)
        reqs = g.fake.requests
        assert len(reqs) == 1
        assert g.fake.wait_for(lambda: all(q.outcome == "peer_closed" for q in g.fake.requests))
        assert all(q.finished_at - q.at >= 0.9 for q in reqs)  # type: ignore[operator]


# --- §1.9: invalid answers ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["error_200", "html"])
@pytest.mark.parametrize("stream", [False, True])
def test_error_in_a_200_or_html_is_502_never_200(gw: Gateway, mode: str, stream: bool) -> None:
    """§1.9: a 200 carrying `{"error":{"code":502}}`, or an HTML page, is 502 api_error."""
    gw.fake.default_mode = mode
    r = post(gw, body(stream=stream))
    assert_error(r, 502, "api_error", retry=True)


def test_empty_answer_has_no_empty_text_block(gw: Gateway) -> None:
    """§1.9: an empty upstream answer is a 200 with `content: []`, never an empty text block
    (Claude Code persists it and later gets 400s); streamed, no content block at all."""
    gw.fake.script("empty", "empty")
    r = post(gw, body())
    assert r.status_code == 200 and r.json()["content"] == []
    s = post(gw, body(stream=True))
    names = [n for n, _ in without_pings(sse(s.text))]
    assert names == ["message_start", "message_delta", "message_stop"]


# --- §1.10: fallback ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fb() -> Iterator[Gateway]:
    with gateway_with({**FAST, "ROUTER_FALLBACK_MODELS": "test/fallback"}) as g:
        yield g


@pytest.mark.parametrize("mode", ["503", "404", "context_length"])
@pytest.mark.parametrize("stream", [False, True])
def test_fallback_serves_when_the_routed_model_fails(fb: Gateway, mode: str, stream: bool) -> None:
    """§1.10: A answers 503, 404 or a context-length 400 → B serves before anything was sent;
    `x-upstream-model` and the access log's `model` name B, its `fallback` field "A->B"."""
    fb.fake.clear()
    fb.fake.model_modes = {"test/big": mode}
    try:
        with captured_logs() as sink:
            r = post(fb, body(stream=stream))
            sink.wait_for("request", request_id=r.headers["request-id"])
    finally:
        fb.fake.model_modes = {}
    assert r.status_code == 200 and r.headers["x-upstream-model"] == "test/fallback"
    assert [q.json["model"] for q in fb.fake.requests] == ["test/big", "test/fallback"]
    (line,) = sink.lines("request", request_id=r.headers["request-id"])
    assert line["model"] == "test/fallback" and line["fallback"] == "test/big->test/fallback"
    assert line["attempts"] == 2 and line["upstream_status"] == 200
    if not stream:
        assert r.json()["model"] == "claude-opus-5-5"  # README: the id the client asked for


def test_each_attempt_is_in_the_trace_and_the_capture(fb: Gateway, tmp_path: Path) -> None:
    """§1.10: the engine runs the call over its candidates, and each attempt is recorded: the
    capture holds one `turn.call` entry per model tried (the first with its 503), the trace a
    `fallback:503` entry before the call's own `ok`."""
    fb.fake.model_modes = {"test/big": "503"}
    fb.engine.capture = writer = CaptureWriter(tmp_path, fsync=None)
    try:
        r = post(fb, body())
        assert r.status_code == 200 and r.headers["x-upstream-model"] == "test/fallback"
        assert fb.fake.wait_for(lambda: writer.written == 1)
    finally:
        fb.engine.capture = None
        fb.fake.model_modes = {}
        writer.close()
    (item,) = [i for i in read_captures([tmp_path]) if isinstance(i, Captured)]
    calls = [c for c in item.record["calls"] if c["step"] == "call"]
    assert [c["input"]["payload"]["model"] for c in calls] == ["test/big", "test/fallback"]
    assert calls[0]["error"]["attrs"]["status"] == 503 and "output" in calls[1]
    trace = [(t["outcome"], t["attempts"]) for t in item.record["trace"] if t["step"] == "call"]
    assert trace == [("fallback:503", 1), ("ok", 2)]


@pytest.mark.parametrize(("mode", "status"), [("400", 400), ("401", 401)])
def test_no_fallback_on_client_errors(fb: Gateway, mode: str, status: int) -> None:
    """§1.10: A answers a plain 400 or 401 → the client's problem: no fallback."""
    fb.fake.clear()
    fb.fake.model_modes = {"test/big": mode}
    try:
        r = post(fb, body())
    finally:
        fb.fake.model_modes = {}
    assert r.status_code == status
    assert [q.json["model"] for q in fb.fake.requests] == ["test/big"]


# --- §1.11: circuit breaker ---------------------------------------------------------------------

COOL = {**FAST, "UPSTREAM_COOLDOWN": "1", "UPSTREAM_COOLDOWN_FAILURES": "3"}


def test_cooldown_without_fallback_still_tries_the_last_candidate() -> None:
    """§1.11 with panic mode (Envoy's outlier detection): 3 consecutive failures of A open its
    breaker, but a request with no fallback left still tries A (the breaker steers traffic to
    a fallback, it never turns a request away), and A's success closes the breaker."""
    with gateway_with(COOL) as g:
        g.fake.model_modes = {"test/big": "503"}
        assert_error(post(g, body()), 529, "overloaded_error", retry=True)
        assert len(g.fake.requests) == 3
        g.fake.model_modes = {}
        assert post(g, body()).status_code == 200  # the open model, tried anyway
        assert post(g, body()).status_code == 200
        assert len(g.fake.requests) == 5


def test_a_stream_that_fails_before_its_first_chunk_counts_against_the_breaker() -> None:
    """§1.11: a 200 whose stream breaks before any chunk is a failure of that model: three of
    them open its breaker (a stream succeeds at its first chunk, not at its headers), so the
    next stream goes straight to the fallback."""
    with gateway_with({**COOL, "ROUTER_FALLBACK_MODELS": "test/fallback"}) as g:
        g.fake.model_modes = {"test/big": "cut_mid_stream;after=0"}
        for _ in range(3):
            r = post(g, body(stream=True))
            assert r.status_code == 200 and r.headers["x-upstream-model"] == "test/fallback"
        g.fake.clear()
        with captured_logs() as sink:
            r = post(g, body(stream=True))
            sink.wait_for("request", request_id=r.headers["request-id"])
        assert r.headers["x-upstream-model"] == "test/fallback"
        assert [q.json["model"] for q in g.fake.requests] == ["test/fallback"]  # none to the open model
        (line,) = sink.lines("request", request_id=r.headers["request-id"])
        assert line["cooled"] == ["test/big"] and line["attempts"] == 1  # the breaker's decision, in the access line
        g.fake.model_modes = {}


def test_a_silent_model_falls_back_at_its_first_byte_timeout_and_opens_its_breaker() -> None:
    """§1.7 with §1.10/§1.11: a model that never answers is abandoned at the first-byte timeout
    (0.5 s here) like any other failure: the request falls back to the next model, and three
    such timeouts open the silent model's breaker, so later requests skip it."""
    with gateway_with({**COOL, "UPSTREAM_TIMEOUT": "0.5", "ROUTER_FALLBACK_MODELS": "test/fallback"}) as g:
        g.fake.model_modes = {"test/big": "stall_before_headers;seconds=30"}
        models = lambda: [q.json["model"] for q in g.fake.requests]  # noqa: E731
        for stream in (False, True, False):
            r = post(g, body(stream=stream))
            assert r.status_code == 200 and r.headers["x-upstream-model"] == "test/fallback"
        assert models() == ["test/big", "test/fallback"] * 3
        g.fake.clear()
        assert post(g, body()).status_code == 200
        assert models() == ["test/fallback"]  # the silent model is cooling down
        g.fake.model_modes = {}


def test_cooldown_with_fallback_skips_the_failing_model() -> None:
    """§1.11: with A→B, A's 3rd consecutive failure opens its breaker: the next requests go
    straight to B (none to A); after the cooldown (3 s here) one probe tries A; a failed probe shuts it
    again, a good one brings it back."""
    with gateway_with({**COOL, "UPSTREAM_COOLDOWN": "3", "ROUTER_FALLBACK_MODELS": "test/fallback"}) as g:  # 3 s: room for a slow machine
        g.fake.model_modes = {"test/big": "503"}
        models = lambda: [q.json["model"] for q in g.fake.requests]  # noqa: E731
        for _ in range(3):
            assert post(g, body()).status_code == 200
        assert models() == ["test/big", "test/fallback"] * 3
        g.fake.clear()
        r = post(g, body(stream=True))
        assert r.status_code == 200 and r.headers["x-upstream-model"] == "test/fallback"
        assert models() == ["test/fallback"]
        time.sleep(3.1)
        g.fake.clear()
        assert post(g, body()).status_code == 200  # probe fails over to B ...
        assert post(g, body()).status_code == 200  # ... and A is shut again
        assert models() == ["test/big", "test/fallback", "test/fallback"]
        g.fake.model_modes = {}
        time.sleep(3.1)
        g.fake.clear()
        r = post(g, body())
        assert r.headers["x-upstream-model"] == "test/big"
        assert post(g, body()).headers["x-upstream-model"] == "test/big"
        assert models() == ["test/big", "test/big"]


# --- §1.14: the deadline --------------------------------------------------------------------------


def test_retry_after_that_would_cross_the_deadline_is_not_waited() -> None:
    """§1.14: deadline 5 s, `429;retry_after=4` twice: the first wait fits (4 s), the second
    would cross the deadline, so the second 429 goes to the client at once: 2 upstream
    requests, none after, answered well before 8 s."""
    with gateway_with({**FAST, "ENGINE_REQUEST_DEADLINE": "5"}) as g:
        g.fake.script("429;retry_after=4", "429;retry_after=4")
        t0 = time.monotonic()
        r = post(g, body())
        elapsed = time.monotonic() - t0
        assert_error(r, 429, "rate_limit_error", retry=True)
        assert r.headers["retry-after"] == "4"
        first, second = g.fake.requests
        assert second.at - first.at >= 4.0
        time.sleep(0.2)
        assert len(g.fake.requests) == 2
    assert elapsed < 7.5


def test_sdk_sees_the_mapped_classes(gw: Gateway) -> None:
    """The official SDK raises its own class for the gateway's answers (no SDK retries here)."""
    gw.fake.default_mode = "503"
    with pytest.raises(anthropic.InternalServerError) as info:
        gw.client().messages.create(model="claude-opus-5-5", max_tokens=64, messages=ASK)
    assert info.value.status_code == 529


def test_breaker_state_machine() -> None:
    """The breaker on its own (engine/breakers.py), with a hand-driven clock:
    closed → open after N consecutive failures → one probe after the cooldown → closed on
    success, open again on failure; a probe without a verdict frees the slot."""
    from engine.breakers import Breaker
    from engine.spec import BreakerSpec

    now = [0.0]
    b = Breaker(BreakerSpec(failures=3, cooldown=5), clock=lambda: now[0])
    assert b.allow("a") and not b.failed("a") and not b.failed("a")
    b.succeeded("a")  # a success resets the count: failures must be consecutive
    assert [b.failed("a") for _ in range(3)] == [False, False, True]
    assert not b.allow("a") and b.remaining("a") == 5 and b.allow("b")
    assert b.state() == {"a": {"failures": 3, "open_s": 5.0, "probing": False}}
    now[0] = 5.0
    assert b.allow("a") and not b.allow("a")  # one probe at a time
    b.release("a")  # the probe was cancelled: the next request probes
    assert b.allow("a")
    assert b.failed("a") and not b.allow("a")  # a failed probe re-opens at once
    now[0] = 10.0
    assert b.allow("a")
    b.succeeded("a")
    assert b.allow("a") and b.allow("a") and b.remaining("a") == 0 and b.state() == {}
