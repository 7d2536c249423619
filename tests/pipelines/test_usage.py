"""Tokens and cost of every request: the access line, /metrics, the capture, GET /usage,
`engine usage` and `engine statusline`, through a real gateway and a fake upstream."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.capture import CaptureWriter
from tests.pipelines.conftest import REPO, Gateway, start_gateway
from tests.pipelines.faults import captured_logs

ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gw() -> Iterator[Gateway]:
    """A gateway of its own: its model listing (and so its prices) is read once per gateway."""
    yield from start_gateway({})


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def engine_cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=REPO, input=stdin, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_upstream_cost_and_tokens_reach_access_line_and_metrics(gw: Gateway) -> None:
    """OpenRouter's usage.cost and the token counts of a JSON answer land in the access line
    and in engine_tokens_total / engine_cost_usd_total, by upstream model."""
    gw.fake.cost = 0.0125
    with gw.http() as http:
        before = http.get("/metrics").text
        with captured_logs() as sink:
            r = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": ASK})
            assert r.status_code == 200
            (line,) = sink.wait_for("request", request_id=r.headers["request-id"])
        after = http.get("/metrics").text
    sent = r.json()["usage"]
    used = line["usage"]["test/big"]
    assert used == {
        "input": sent["input_tokens"],
        "output": sent["output_tokens"],
        "cache_read": 0,
        "cache_write": 0,
        "cost_usd": 0.0125,
    }
    for kind in ("input", "output"):
        grew = metric(after, "engine_tokens_total", model="test/big", kind=kind) - metric(before, "engine_tokens_total", model="test/big", kind=kind)
        assert grew == used[kind]
    assert metric(after, "engine_cost_usd_total", model="test/big") - metric(before, "engine_cost_usd_total", model="test/big") == pytest.approx(0.0125)


def test_cost_from_listing_prices_when_the_upstream_reports_none(gw: Gateway) -> None:
    """Without usage.cost, the cost is the tokens priced by the listing's `pricing`, streams too."""
    gw.fake.cost = None
    gw.fake.models = [{"id": "test/big", "context_length": 200000, "pricing": {"prompt": "0.000002", "completion": "0.00001"}}]
    with gw.http() as http, captured_logs() as sink:
        r = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": ASK, "stream": True})
        assert r.status_code == 200 and "message_stop" in r.text
        (line,) = sink.wait_for("request", request_id=r.headers["request-id"])
    used = line["usage"]["test/big"]
    final = [json.loads(d) for d in re.findall(r"^data: (.*)$", r.text, re.M) if '"message_delta"' in d][0]["usage"]
    assert (used["input"], used["output"]) == (final["input_tokens"], final["output_tokens"])
    assert used["cost_usd"] == pytest.approx((used["input"] * 2 + used["output"] * 10) / 1e6)


def test_profile_yaml_prices_apply_when_nothing_else_says(tmp_path: Path) -> None:
    """A model no listing prices is priced from the profile YAML's `price` (cache reads too)."""
    data = tmp_path / "profiles.yaml"
    data.write_text('rules:\n  - match: ["*"]\n  - match: ["test/*"]\n    price: {input: 4, output: 20, cache_read: 0.4}\n')
    for gw in start_gateway({"MODEL_PROFILES": str(data), "OPENROUTER_MODELS_FETCH": "false"}):
        gw.fake.cost = None
        with gw.http() as http, captured_logs() as sink:
            r = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": ASK})
            (line,) = sink.wait_for("request", request_id=r.headers["request-id"])
        used = line["usage"]["test/big"]
        assert used["cost_usd"] == pytest.approx((used["input"] * 4 + used["output"] * 20) / 1e6)


def test_unpriced_models_have_tokens_but_no_cost(gw: Gateway) -> None:
    """No reported cost and no price: tokens are still counted, the cost says unknown (null)."""
    gw.fake.cost = None
    with gw.http() as http, captured_logs() as sink:
        r = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": ASK})
        (line,) = sink.wait_for("request", request_id=r.headers["request-id"])
    assert line["usage"]["test/big"]["cost_usd"] is None and line["usage"]["test/big"]["output"] >= 1


def test_session_usage_endpoint_adds_up_a_claude_code_session(gw: Gateway) -> None:
    """Requests carrying x-claude-code-session-id add up under GET /usage?session=ID."""
    gw.fake.cost = 0.5
    session = str(uuid.uuid4())
    with gw.http() as http:
        for stream in (False, True):
            r = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": ASK, "stream": stream}, headers={"x-claude-code-session-id": session})
            assert r.status_code == 200
        assert gw.fake.wait_for(lambda: (http.get("/usage", params={"session": session}).json().get("total") or {}).get("requests") == 2, timeout=40)
        body = http.get("/usage", params={"session": session}).json()
        assert http.get("/usage", params={"session": "someone-else"}).status_code == 404
        assert http.get("/usage").status_code == 400
    assert body["total"]["cost_usd"] == pytest.approx(1.0)
    assert body["models"]["test/big"]["requests"] == 2 and body["total"]["tokens"]["output"] >= 2


def test_capture_records_usage_and_engine_usage_summarises_it(tmp_path: Path) -> None:
    """The capture record carries the request's usage; `engine usage DIR` adds it up by model
    and by day, and reads JSON access logs the same way."""
    captures = tmp_path / "captures"
    for gw in start_gateway({}):
        gw.engine.capture = CaptureWriter(str(captures))
        gw.fake.cost = 0.25
        with gw.http() as http, captured_logs() as sink:
            for model in ("claude-opus-5-5", "claude-haiku-5-5"):
                r = http.post("/v1/messages", json={"model": model, "max_tokens": 5, "messages": ASK})
                assert r.status_code == 200
                sink.wait_for("request", request_id=r.headers["request-id"])
            log_text = sink.text

        def records() -> list[dict]:
            return [json.loads(line) for f in captures.glob("*.jsonl") for line in f.read_text().splitlines() if line.endswith("}")]

        assert gw.fake.wait_for(lambda: len(records()) == 2, timeout=40)  # written after the access line
        gw.engine.capture.close()
    records = records()
    assert sorted(m for rec in records for m in rec["usage"]) == ["test/big", "test/small"]
    log = tmp_path / "access.log"
    log.write_text("not json at all\n" + log_text)
    for source in (captures, log):
        out = engine_cli("usage", str(source), "--format", "json")
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert set(summary["by_model"]) == {"test/big", "test/small"}
        assert summary["total"]["requests"] == 2 and summary["total"]["cost_usd"] == pytest.approx(0.5)
        assert len(summary["by_day"]) == 1
    text = engine_cli("usage", str(captures)).stdout
    assert "test/big" in text and "total" in text and "$0.5000" in text


def test_engine_usage_without_records_says_so(tmp_path: Path) -> None:
    """A file with no usage in it is not an error, but the command says what it found."""
    empty = tmp_path / "empty.log"
    empty.write_text('{"event": "step.end"}\n')
    out = engine_cli("usage", str(empty))
    assert out.returncode == 0 and "no requests with usage" in out.stdout
    missing = engine_cli("usage", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_statusline_prints_the_sessions_model_tokens_and_cost(gw: Gateway) -> None:
    """`engine statusline` reads Claude Code's JSON on stdin and prints the session's upstream
    model, tokens and cost from the gateway; unknown sessions and a dead gateway still print."""
    gw.fake.cost = 0.0123
    session = str(uuid.uuid4())
    with gw.http() as http:
        r = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": ASK}, headers={"x-claude-code-session-id": session})
        assert r.status_code == 200
        assert gw.fake.wait_for(lambda: http.get("/usage", params={"session": session}).status_code == 200, timeout=40)
    claude_code = {"session_id": session, "model": {"id": "claude-opus-5-5", "display_name": "Opus"}, "cost": {"total_cost_usd": 9.99}}
    out = engine_cli("statusline", "--url", gw.url, stdin=json.dumps(claude_code))
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert "test/big" in line and "$0.0123" in line and "9.99" not in line and "\n" not in line
    fresh = engine_cli("statusline", "--url", gw.url, stdin=json.dumps({**claude_code, "session_id": "new"}))
    assert fresh.returncode == 0 and "no requests yet" in fresh.stdout
    dead = engine_cli("statusline", "--url", "http://127.0.0.1:9", stdin=json.dumps(claude_code))
    assert dead.returncode == 0 and "unreachable" in dead.stdout


def test_a_stream_cut_midway_still_counts_what_it_used(gw: Gateway) -> None:
    """An upstream that dies mid-stream billed the output so far: the access line carries the
    gateway's estimate (input estimate, output from the characters streamed), priced if it can."""
    gw.fake.default_mode = "cut_mid_stream"
    with gw.http() as http, captured_logs() as sink:
        r = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 50, "messages": ASK, "stream": True})
        assert r.status_code == 200 and "event: error" in r.text
        (line,) = sink.wait_for("request", request_id=r.headers["request-id"])
    assert line["outcome"] == "upstream_cut"
    used = line["usage"]["test/big"]
    assert used["input"] > 0 and used["output"] >= 1 and used["cost_usd"] is None
