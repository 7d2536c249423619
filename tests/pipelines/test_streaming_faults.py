"""RELIABILITY §2 (streaming failures) and §6.8 (captures of failed runs), end to end: the
official SDK or raw httpx → the gateway under uvicorn → the fake OpenRouter on loopback.

The commit point (README "Failure policy") is the first meaningful upstream chunk: before it
a failure is retried and answered with a real status; after it, one SSE `error` event ends
the stream. Timers are test values."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import anyio
import httpx
import pytest

from engine.capture import CaptureWriter
from engine.executor import Engine
from engine.replay import Captured, read_captures, replay_one
from tests.pipelines.conftest import PIPELINES, REPO, Gateway
from tests.pipelines.faults import ASK, OK_TEXT, body, captured_logs, gateway_with, post, sse, texts, without_pings
from tests.support.fake_openrouter import FakeOpenRouter, drip_text
from tests.support.servers import free_port, wait_healthy

FAST = {"UPSTREAM_RETRY_BACKOFF": "0.05", "OPENROUTER_MODELS_FETCH": "false", "UPSTREAM_IDLE_TIMEOUT": "1"}
CUT_MESSAGE = "upstream connection closed mid-stream"


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    with gateway_with(FAST) as g:
        yield g


def stream(gw: Gateway) -> tuple[httpx.Response, list[tuple[str, dict]]]:
    r = post(gw, body(stream=True))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    return r, without_pings(sse(r.text))


def assert_ends_with_error(events: list[tuple[str, dict]], error_type: str, message: str | None = None) -> None:
    """The stream's last event is one `error` (nothing after it: no block stop, no message_stop)."""
    name, data = events[-1]
    assert name == "error" and data["type"] == "error" and data["error"]["type"] == error_type
    if message is not None:
        assert data["error"]["message"] == message
    names = [n for n, _ in events]
    assert names.count("error") == 1 and "message_stop" not in names and "message_delta" not in names


# --- §2.1, §2.3: the upstream connection breaks mid-stream ---------------------------------------


@pytest.mark.parametrize("mode", ["cut_mid_stream;after=3", "reset_mid_stream;after=3"])
def test_cut_mid_stream_is_three_deltas_then_one_error_event(gw: Gateway, mode: str) -> None:
    """§2.1/§2.3: message_start, content_block_start, exactly the 3 upstream text deltas (no
    duplicates), then `error` api_error "upstream connection closed mid-stream", then EOF;
    one upstream request; the access log names the outcome."""
    gw.fake.script(mode)
    with captured_logs() as sink:
        r, events = stream(gw)
        sink.wait_for("request", request_id=r.headers["request-id"])
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert texts(events) == ["Hello!", " I", " am"]
    assert names[2:] == ["content_block_delta"] * 3 + ["error"]
    assert_ends_with_error(events, "api_error", CUT_MESSAGE)
    assert r.text.endswith("\n\n")
    assert len(gw.fake.requests) == 1
    (line,) = sink.lines("request", request_id=r.headers["request-id"])
    assert line["outcome"] == "upstream_cut" and line["status"] == 200


@pytest.mark.parametrize("mode", ["cut_mid_stream;after=3", "reset_mid_stream;after=3"])
def test_sdk_raises_on_the_error_event(gw: Gateway, mode: str) -> None:
    """§2.1: the SDK yields the 3 texts, then raises APIStatusError for the error event."""
    gw.fake.script(mode)
    got = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with gw.client().messages.stream(model="claude-opus-5-5", max_tokens=64, messages=ASK) as s:
            got.extend(s.text_stream)
    assert got == ["Hello!", " I", " am"]
    assert CUT_MESSAGE in str(info.value)


# --- §2.4, §2.5: error chunks ---------------------------------------------------------------------


@pytest.mark.parametrize(("code", "error_type", "message"), [
    ("429", "rate_limit_error", "Provider error mid-generation"),  # 4xx: the upstream's words
    ("502", "api_error", "upstream error"),  # 5xx: masked
    ("503", "overloaded_error", "Overloaded"),
])
def test_error_chunk_after_content_is_an_error_event(gw: Gateway, code: str, error_type: str, message: str) -> None:
    """§2.4: an error chunk after content → the mapped error event; never retried."""
    gw.fake.script(f"error_chunk;code={code};after=3")
    _, events = stream(gw)
    assert texts(events) == ["Hello!", " I", " am"]
    assert_ends_with_error(events, error_type, message)
    assert len(gw.fake.requests) == 1


def test_error_chunk_before_content_is_retried_into_one_clean_stream(gw: Gateway) -> None:
    """§2.5: an error chunk before any content (after OpenRouter's role-only chunk) is before
    the commit point: retried, and the client sees one clean stream with one message_start."""
    gw.fake.script("error_chunk;code=502;after=0", "ok")
    _, events = stream(gw)
    names = [n for n, _ in events]
    assert names.count("message_start") == 1 and names[-1] == "message_stop" and "error" not in names
    assert "".join(texts(events)) == OK_TEXT
    assert len(gw.fake.requests) == 2


def test_error_chunk_before_content_every_time_is_a_real_status(gw: Gateway) -> None:
    """§2.5: when every attempt fails before content, the client gets a real status, not a 200."""
    gw.fake.default_mode = "error_chunk;code=503;after=0"
    r = post(gw, body(stream=True))
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
    assert len(gw.fake.requests) == 3


# --- §2.6: malformed chunks -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["truncated", "garbage", "utf8"])
def test_malformed_chunk_is_an_error_event_and_a_short_warning(gw: Gateway, bad: str) -> None:
    """§2.6: a data line that is not a JSON chunk → `error` api_error "upstream sent an
    invalid chunk" (never skipped silently) and a warning with at most 200 bytes of it."""
    gw.fake.script(f"malformed_chunk;bad={bad};after=3")
    with captured_logs() as sink:
        _, events = stream(gw)
    assert texts(events) == ["Hello!", " I", " am"]
    assert_ends_with_error(events, "api_error", "upstream sent an invalid chunk")
    (warning,) = sink.lines("openrouter.invalid_chunk")
    assert warning["level"] == "warning"
    assert len(ast.literal_eval(warning["line"])) <= 200


def test_line_without_a_field_name_is_ignored(gw: Gateway) -> None:
    """§2.6: `bad=nodata` (a line with no field name) is ignored, per SSE: the answer is whole."""
    gw.fake.script("malformed_chunk;bad=nodata;after=3")
    _, events = stream(gw)
    assert "".join(texts(events)) == OK_TEXT and events[-1][0] == "message_stop"


# --- §2.7: the end of the stream ------------------------------------------------------------------


def test_no_done_after_finish_is_a_normal_end(gw: Gateway) -> None:
    """§2.7: finish_reason, then EOF without `[DONE]` → message_delta + message_stop."""
    gw.fake.script("no_done")
    _, events = stream(gw)
    assert [n for n, _ in events[-2:]] == ["message_delta", "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert "".join(texts(events)) == OK_TEXT


@pytest.mark.parametrize("mode", ["clean_eof;after=3", "clean_eof;after=3;framing=close", "cut_mid_stream;after=3;framing=close"])
def test_eof_before_finish_is_an_error_event(gw: Gateway, mode: str) -> None:
    """§2.7: a body that ends (cleanly or not) before any finish_reason → error event."""
    gw.fake.script(mode)
    _, events = stream(gw)
    assert texts(events) == ["Hello!", " I", " am"]
    assert_ends_with_error(events, "api_error", CUT_MESSAGE)


def test_eof_before_any_content_is_retried(gw: Gateway) -> None:
    """§2.7 + commit point: an upstream that ends before any content has committed nothing:
    retried; every attempt failing that way is a real 502, not a 200 with an error event."""
    gw.fake.script("clean_eof;after=0", "ok")
    _, events = stream(gw)
    assert "".join(texts(events)) == OK_TEXT and len(gw.fake.requests) == 2
    gw.fake.clear()
    gw.fake.default_mode = "clean_eof;after=0"
    r = post(gw, body(stream=True))
    assert r.status_code == 502 and r.json()["error"] == {"type": "api_error", "message": "upstream connection closed"}
    assert len(gw.fake.requests) == 3


# --- §2.8, §2.10: silence and slowness ------------------------------------------------------------


def test_stall_mid_stream_closes_upstream_and_ends_with_timeout_error(gw: Gateway) -> None:
    """§2.8: the upstream falls silent mid-stream; at the idle limit (1 s here) the upstream
    connection is really closed (`peer_closed`) and the client gets `error` timeout_error
    (pinned: a silent upstream is a timeout, not an overload), then EOF."""
    gw.fake.script("stall_mid_stream;after=3;seconds=30")
    with captured_logs() as sink:
        r, events = stream(gw)
        sink.wait_for("request", request_id=r.headers["request-id"])
    assert texts(events) == ["Hello!", " I", " am"]
    assert_ends_with_error(events, "timeout_error", "upstream request timed out")
    assert gw.fake.wait_for(lambda: gw.fake.requests[0].outcome == "peer_closed")
    (line,) = sink.lines("request", request_id=r.headers["request-id"])
    assert line["outcome"] == "upstream_timeout"


def test_slow_drip_longer_than_every_timeout_completes() -> None:
    """§2.10: chunks 100 ms apart for 6 s (the reference's 200 ms × 150 = 30 s, shortened)
    outlast the first-byte timeout (2 s), the deadline (3 s) and, in total, the idle limit
    (1 s): none fires, the text is exact."""
    env = {**FAST, "UPSTREAM_TIMEOUT": "2", "ENGINE_REQUEST_DEADLINE": "3"}
    with gateway_with(env) as g:
        g.fake.script("slow_drip;delay_ms=100;chunks=60")
        _, events = stream(g)
    assert "".join(texts(events)) == drip_text(60) and events[-1][0] == "message_stop"


@pytest.mark.parametrize("streaming", [False, True])
def test_the_run_deadline_bounds_a_stalled_upstream(streaming: bool) -> None:
    """An upstream that never sends its headers is bounded by the run's deadline (the engine's
    one scope around the run; openrouter.call sets none of its own): 504 timeout_error, and the
    upstream connection is closed."""
    env = {**FAST, "UPSTREAM_TIMEOUT": "60", "ENGINE_REQUEST_DEADLINE": "1"}
    with gateway_with(env) as g:
        g.fake.script("stall_before_headers")
        r = post(g, body(stream=streaming))
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
        assert r.json()["error"]["message"].startswith("request deadline exceeded")
        assert g.fake.wait_for(lambda: g.fake.requests[0].outcome == "peer_closed")


# --- §2.11: client disconnect ---------------------------------------------------------------------


def read_until_first_text_then_hang_up(gw: Gateway) -> str:
    with httpx.Client(base_url=gw.url, headers={"x-api-key": "k"}, timeout=30) as http:
        with http.stream("POST", "/v1/messages", json=body(stream=True)) as r:
            for line in r.iter_lines():
                if "text_delta" in line:
                    return r.headers["request-id"]
    raise AssertionError("no text delta")


def test_client_disconnect_cancels_upstream_logs_once_and_is_captured(gw: Gateway, tmp_path: Path) -> None:
    """§2.11: the client hangs up after the first text delta → the upstream connection is
    closed at once (`peer_closed`: OpenRouter stops billing); one INFO line
    outcome=client_disconnected without a traceback; the capture holds the run with its
    partial output and that outcome."""
    gw.engine.capture = writer = CaptureWriter(tmp_path, fsync=None)
    try:
        gw.fake.script("slow_drip;delay_ms=200;chunks=150")
        with captured_logs() as sink:
            rid = read_until_first_text_then_hang_up(gw)
            assert gw.fake.wait_for(lambda: gw.fake.requests[0].outcome == "peer_closed")
            assert gw.fake.wait_for(lambda: writer.written == 1)
            sink.wait_for("request", request_id=rid)
    finally:
        gw.engine.capture = None
        writer.close()
    (line,) = sink.lines("request", request_id=rid)
    assert line["level"] == "info" and line["outcome"] == "client_disconnected"
    assert "exception" not in line and "Traceback" not in sink.text
    (item,) = [i for i in read_captures([tmp_path]) if isinstance(i, Captured)]
    record = item.record
    assert record["outcome"] == "client_disconnected"
    sent = "".join(text for _, text in record["output"]["stream"])
    assert "message_start" in sent and "text_delta" in sent and "message_stop" not in sent
    assert 0 < len([c for c in record["calls"] if c["step"] == "call"][0]["items"]) < 150  # the upstream chunks read before the hang-up


# --- §2.14: many disconnects, under python -X dev -------------------------------------------------

DISCONNECTS = 50  # the reference's 200, shortened: each round waits for the first delta


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_many_disconnects_leak_nothing_under_dev_mode(tmp_path: Path) -> None:
    """§2.14: 50 × (stream, hang up after the first text delta) against `engine serve` under
    `python -X dev` → the fake's active requests back to 0, the server's fds back to
    baseline (±5), one client_disconnected line each, and no "Task was destroyed but it is
    pending", "Task exception was never retrieved", unclosed-resource warning or traceback."""
    with FakeOpenRouter() as fake:
        port = free_port()
        env = {
            **os.environ, "OPENROUTER_BASE_URL": fake.base_url, "BIG_MODEL": "test/big", "PING_INTERVAL": "0.2",
            "OPENROUTER_MODELS_FETCH": "false", "ENGINE_LOG_FORMAT": "json", "ENGINE_LOG_LEVEL": "info",
            "PYTHONASYNCIODEBUG": "1",
        }
        env.pop("ENGINE_CAPTURE_DIR", None)
        err = (tmp_path / "stderr").open("w+")
        proc = subprocess.Popen([sys.executable, "-X", "dev", "-m", "engine", "serve", "--port", str(port)],
                                cwd=REPO, env=env, stdout=err, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc)
            g = Gateway(url, fake, None)  # type: ignore[arg-type]
            fake.default_mode = "slow_drip;delay_ms=20;chunks=200"
            read_until_first_text_then_hang_up(g)  # warm-up: pools, imports
            assert fake.wait_for(lambda: fake.active_requests == 0)
            baseline = fd_count(proc.pid)
            for _ in range(DISCONNECTS):
                read_until_first_text_then_hang_up(g)
            assert fake.wait_for(lambda: fake.active_requests == 0)
            assert fake.wait_for(lambda: fd_count(proc.pid) <= baseline + 5), (fd_count(proc.pid), baseline)
            assert all(r.outcome == "peer_closed" for r in fake.requests)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        err.seek(0)
        output = err.read()
    lines = [json.loads(x) for x in output.splitlines() if x.startswith("{")]
    requests = [x for x in lines if x.get("event") == "request" and x.get("pipeline") == "messages"]
    assert [x["outcome"] for x in requests] == ["client_disconnected"] * (DISCONNECTS + 1)
    for bad in ("Task was destroyed", "never retrieved", "nclosed", "ResourceWarning", "Traceback"):
        assert bad not in output, output[-3000:]


# --- §2.15, §2.16 ---------------------------------------------------------------------------------


def test_non_streaming_client_gets_a_real_status_when_the_upstream_cuts(gw: Gateway) -> None:
    """§2.15: a non-streaming request whose upstream body breaks: nothing was committed, so
    it is retried and then answered with a real 5xx and a JSON error body."""
    gw.fake.default_mode = "cut_mid_stream"
    r = post(gw, body())
    assert r.status_code == 502 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == {"type": "api_error", "message": "upstream connection closed"}
    assert r.headers["x-should-retry"] == "true" and len(gw.fake.requests) == 3


def test_long_thinking_commits_and_pings_until_the_first_delta() -> None:
    """§2.16: the upstream sends only `: OPENROUTER PROCESSING` comments for 10 s, then the
    answer. With commit_after 0.5 s, the response commits on the comments (message_start),
    the client gets ≥ 8 pings (interval 1 s) before the first delta, then the whole answer;
    neither the first-byte timeout (3 s) nor the idle limit (2 s) fires on a live upstream."""
    env = {**FAST, "PING_INTERVAL": "1", "UPSTREAM_COMMIT_AFTER": "0.5", "UPSTREAM_TIMEOUT": "3", "UPSTREAM_IDLE_TIMEOUT": "2"}
    with gateway_with(env) as g:
        g.fake.script("comments;seconds=10")
        r = post(g, body(stream=True))
        assert len(g.fake.requests) == 1
    events = sse(r.text)
    names = [n for n, _ in events]
    assert names[0] == "message_start"
    first_delta = names.index("content_block_delta")
    assert names[:first_delta].count("ping") >= 8
    assert "".join(texts(events)) == OK_TEXT and names[-1] == "message_stop"


def test_without_commit_after_a_silent_stretch_is_a_first_byte_timeout() -> None:
    """§2.16, the other side of the policy: comments before the first chunk do not commit
    when commit_after is longer than the first-byte timeout; the attempt times out before
    anything is sent, so the client gets a real 504."""
    env = {**FAST, "UPSTREAM_COMMIT_AFTER": "30", "UPSTREAM_TIMEOUT": "1", "ENGINE_REQUEST_DEADLINE": "2.5"}
    with gateway_with(env) as g:
        g.fake.default_mode = "comments;seconds=10"
        r = post(g, body(stream=True))
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
        assert g.fake.wait_for(lambda: all(q.outcome == "peer_closed" for q in g.fake.requests))


# --- §6.8: failed, cut and disconnected runs in captures ------------------------------------------


def replay(path: Path, env: dict[str, str]) -> list:
    engine = Engine.load([PIPELINES], env=env)

    async def go() -> list:
        out = [await replay_one(engine, i) for i in read_captures([path]) if isinstance(i, Captured)]
        await engine.aclose()
        return out

    return anyio.run(go)


def capture_runs(tmp_path: Path, *actions: str) -> tuple[list[dict], dict[str, str]]:
    """Run each action ("failed", "cut", "disconnected") against a capturing gateway."""
    env = {**FAST, "UPSTREAM_COOLDOWN": "0"}
    with gateway_with(env) as g:
        g.engine.capture = writer = CaptureWriter(tmp_path, fsync=None)
        full_env = {"OPENROUTER_BASE_URL": g.fake.base_url, "BIG_MODEL": "test/big", "SMALL_MODEL": "test/small",
                    "UPSTREAM_IDLE_TIMEOUT": "1", "PING_INTERVAL": "0.2", **env}
        for action in actions:
            if action == "failed":
                g.fake.script("503", "503", "503")
                assert post(g, body()).status_code == 529
            elif action == "cut":
                g.fake.script("cut_mid_stream;after=3")
                assert post(g, body(stream=True)).status_code == 200
            elif action == "disconnected":
                g.fake.script("slow_drip;delay_ms=200;chunks=150")
                read_until_first_text_then_hang_up(g)
        assert g.fake.wait_for(lambda: writer.written == len(actions))
        g.engine.capture = None
        writer.close()
    return [i.record for i in read_captures([tmp_path]) if isinstance(i, Captured)], full_env


def test_failed_and_cut_runs_are_captured_with_what_the_client_got(tmp_path: Path) -> None:
    """§6.8: a run that failed (three 503s → 529) and a stream cut mid-way are captured with
    their outcome and what the client got (status and body; the partial stream and its
    error event); the cut run replays offline to the same output."""
    records, env = capture_runs(tmp_path, "cut", "failed")
    cut, failed = records
    assert failed["outcome"] == "error" and failed["output"]["status"] == 529
    assert failed["output"]["body"]["error"]["type"] == "overloaded_error"
    assert [c.get("error", {}).get("attrs", {}).get("status") for c in failed["calls"] if c["step"] == "call"] == [503, 503, 503]
    sent = "".join(text for _, text in cut["output"]["stream"])
    assert sent.count("text_delta") == 3 and CUT_MESSAGE in sent and "message_stop" not in sent
    assert [c for c in cut["calls"] if c["step"] == "call"][0]["end"] == "error"
    first = replay(tmp_path, env)[0]
    assert first.captured.record["request_id"] == cut["request_id"]
    assert first.same, first.changes


def test_failed_run_replays_the_same(tmp_path: Path) -> None:
    """§6.8: a run whose upstream failed every attempt replays to the same 529."""
    _, env = capture_runs(tmp_path, "failed")
    (result,) = replay(tmp_path, env)
    assert result.same, result.changes


def test_cut_run_is_captured_with_its_outcome(tmp_path: Path) -> None:
    """§6.8: the capture of a stream cut mid-way says so in its outcome."""
    (cut,), _ = capture_runs(tmp_path, "cut")
    assert cut["outcome"] == "upstream_cut"


def test_disconnected_run_replays_without_a_false_difference(tmp_path: Path) -> None:
    """§6.8: a run the client abandoned replays as the same (its recorded output is partial)."""
    records, env = capture_runs(tmp_path, "disconnected")
    assert records[0]["outcome"] == "client_disconnected"
    (result,) = replay(tmp_path, env)
    assert result.skipped and "disconnected" in result.skipped


def test_keepalives_only_after_the_commit_end_at_the_first_content_timeout() -> None:
    """Issue 15 item 4: an upstream that sends only keepalive comments, once they committed the
    response, is bounded by the first-content timeout: an SSE timeout_error ends the stream
    (comments alone would keep the idle timer alive for ever)."""
    env = {**FAST, "PING_INTERVAL": "0.5", "UPSTREAM_COMMIT_AFTER": "0.5", "UPSTREAM_FIRST_CONTENT_TIMEOUT": "2", "UPSTREAM_TIMEOUT": "30"}
    with gateway_with(env) as g:
        g.fake.default_mode = "comments;seconds=20"
        r = post(g, body(stream=True))
        assert r.status_code == 200 and len(g.fake.requests) == 1
    events = sse(r.text)
    assert events[0][0] == "message_start"
    assert events[-1] == ("error", {"type": "error", "error": {"type": "timeout_error", "message": "upstream request timed out"}, "request_id": r.headers["request-id"]})
    assert not texts(events)


def test_keepalives_only_before_the_commit_move_to_the_next_candidate() -> None:
    """Before the commit point the same bound is a first-byte timeout: the next candidate answers."""
    env = {**FAST, "UPSTREAM_COMMIT_AFTER": "30", "UPSTREAM_FIRST_CONTENT_TIMEOUT": "1", "UPSTREAM_TIMEOUT": "30", "ROUTER_FALLBACK_MODELS": "test/fallback"}
    with gateway_with(env) as g:
        g.fake.model_modes = {"test/big": "comments;seconds=20"}
        r = post(g, body(stream=True))
        assert r.status_code == 200 and r.headers["x-upstream-model"] == "test/fallback"
        assert [q.json["model"] for q in g.fake.requests] == ["test/big", "test/fallback"]
        assert "".join(texts(sse(r.text))) == OK_TEXT
        g.fake.model_modes = {}
