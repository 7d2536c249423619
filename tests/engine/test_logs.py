"""Log lines carry the run's context and never a secret."""

from __future__ import annotations

import io
import json
import textwrap

import anyio
import pytest
import structlog

from engine import logs
from engine.check import check
from engine.executor import Engine
from engine.loader import load_text


@pytest.fixture(name="lines")
def _lines():
    """Configure JSON logging at debug into a buffer; yields a function returning parsed lines."""
    buf = io.StringIO()
    logs.configure("json", "debug", stream=buf, cache=False)
    yield lambda: [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    structlog.reset_defaults()


PIPELINE = """
name: logged
steps:
  a: {uses: toy.const, with: {value: x}}
  b: {uses: toy.concat, with: {parts: ["${{ steps.a }}", "y"]}}
output: ${{ steps.b }}
"""


def _run(yaml_text: str, name: str) -> str:
    plans, errors = check([load_text(textwrap.dedent(yaml_text), "logged.yaml")])
    assert not errors
    engine = Engine(plans)

    async def go() -> str:
        ctx = engine.context(name, None, request_id="req_logtest")
        await engine.run(name, None, ctx=ctx)
        return ctx.request_id

    return anyio.run(go)


def test_sync_step_log_line_carries_run_context(lines) -> None:
    """A sync step running in a worker thread logs with request id, pipeline, step and attempt."""
    import tests.engine.toysteps  # noqa: F401

    _run(PIPELINE, "logged")
    concat = next(line for line in lines() if line["event"] == "concat")
    assert concat["request_id"] == "req_logtest"
    assert (concat["pipeline"], concat["step"], concat["attempt"]) == ("logged", "b", 1)
    assert not concat["thread"].startswith("MainThread")


def test_one_line_per_step_end(lines) -> None:
    """Each step's end is logged once with its duration and outcome."""
    import tests.engine.toysteps  # noqa: F401

    _run(PIPELINE, "logged")
    ends = [line for line in lines() if line["event"] == "step.end"]
    assert [e["step"] for e in ends] == ["a", "b"]
    assert all(e["outcome"] == "ok" and e["duration_ms"] >= 0 and e["request_id"] == "req_logtest" for e in ends)


def test_redaction_masks_secret_fields_and_values(lines) -> None:
    """Secret-named fields, bearer tokens and the key shapes a domain registered are masked."""
    logs.register_secret_values(r"toykey-[A-Za-z0-9]{6,}", marker="toykey-")
    logs.register_secret_names(r"x-toy-key")
    log = structlog.get_logger("t")
    log.info(
        "upstream",
        api_key="CANARY4-123456",
        headers={"authorization": "Bearer CANARY2-abcdef", "X-Toy-Key": "CANARY3"},
        note="key toykey-CANARY1zzzzzz here",
    )
    text = json.dumps(lines())
    assert "CANARY" not in text
    assert "[REDACTED]" in text


def test_secret_environment_variables_are_scrubbed_when_registered_and_when_configured(lines, monkeypatch) -> None:
    """A registered variable's value is scrubbed at once, and again after it changes and logs are configured."""
    monkeypatch.setenv("TOY_UPSTREAM_KEY", "CANARY6-first")
    logs.register_secret_env("TOY_UPSTREAM_KEY")
    monkeypatch.setenv("TOY_UPSTREAM_KEY", "CANARY7-second,CANARY8-third")
    logs.configure("json", "debug", stream=io.StringIO(), cache=False)
    assert logs.scrub("a CANARY6-first b CANARY7-second c CANARY8-third") == "a [REDACTED] b [REDACTED] c [REDACTED]"


def test_secret_names_are_whole_names() -> None:
    """`max_tokens` is not a token; any `*api-key` / `*_api_key` spelling is a key."""
    assert not logs.is_secret_name("max_tokens") and not logs.is_secret_name("tokens")
    assert all(logs.is_secret_name(n) for n in ("Authorization", "x-goog-api-key", "OPENAI_API_KEY", "apikey", "client_secret"))


def test_exception_tracebacks_have_no_locals(lines) -> None:
    """A logged exception does not render frame locals, where a key could sit."""
    log = structlog.get_logger("t")
    secret_local = "CANARY4-local"  # noqa: F841
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    text = json.dumps(lines())
    assert "boom" in text and "CANARY4" not in text


@pytest.mark.parametrize(
    "fields",
    [
        {"request_id": "req_1", "status": 200, "duration_ms": 1.5, "usage": {"m/x": {"input": 3, "cost_usd": None}}, "session": None},
        {"request_id": "req_2", "api_key": "CANARY9-abcdef", "nested": {"authorization": "Bearer CANARY9-ghijkl"}, "empty_token": ""},
        {"note": "sent Bearer CANARY9-mnopqr and eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc", "list": [{"token": "CANARY9-x"}, ("a", 1)]},
        {"note": "the registered key CANARY9-registered-\u00e9\"quoted\" is in here", "big": 2**70},
        {"step": "mine", "attempt": 7, "odd": {1: "non-string key"}},
    ],
)
def test_info_line_writes_what_structlog_writes(lines, fields) -> None:
    """`logs.info_line` (the access line's writer) gives the line structlog's processors give:
    same fields, order and redaction, with the run's scope and bound context variables."""
    logs.register_secret('CANARY9-registered-\u00e9"quoted"')
    log = structlog.get_logger("engine.access")

    class Unused:
        def info(self, *args: object, **kw: object) -> None:
            raise AssertionError("info_line went through the logger")

    token = logs.bind_scope(request_id="req_scope", pipeline="p", step="s", attempt=1)
    structlog.contextvars.bind_contextvars(bound="yes")
    try:
        log.info("request", **fields)
        logs.info_line(Unused(), "request", fields)
    finally:
        structlog.contextvars.unbind_contextvars("bound")
        logs.reset_scope(token)
    logs.info_line(Unused(), "request", fields)  # no scope, the context variable unbound
    log.info("request", **fields)
    first, second, third, fourth = lines()
    for a, b in ((first, second), (fourth, third)):
        a.pop("timestamp"), b.pop("timestamp")
        assert list(a.items()) == list(b.items())
    assert "CANARY9" not in json.dumps([first, second, third, fourth])
    assert first["bound"] == "yes" and "bound" not in third


def test_info_line_follows_a_swapped_configuration() -> None:
    """Under `capture_logs` (or any set-up other than `configure`'s JSON) it logs through the logger."""
    buf = io.StringIO()
    logs.configure("json", "info", stream=buf, cache=False)
    try:
        with structlog.testing.capture_logs() as captured:
            logs.info_line(structlog.get_logger("engine.access"), "request", {"status": 200})
        assert captured == [{"event": "request", "status": 200, "log_level": "info"}] and buf.getvalue() == ""
        logs.configure("json", "warning", stream=buf, cache=False)
        logs.info_line(structlog.get_logger("engine.access"), "request", {"status": 200})
        assert buf.getvalue() == ""  # below the level
    finally:
        structlog.reset_defaults()
