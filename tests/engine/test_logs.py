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
