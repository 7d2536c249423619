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
    """Secret-named fields and key-looking values are masked before rendering."""
    log = structlog.get_logger("t")
    log.info("upstream", api_key="sk-or-CANARY4-123456", headers={"authorization": "Bearer CANARY2-abcdef"}, note="key sk-ant-CANARY1-zzzzzz here")
    text = json.dumps(lines())
    assert "CANARY" not in text
    assert "[REDACTED]" in text


def test_exception_tracebacks_have_no_locals(lines) -> None:
    """A logged exception does not render frame locals, where a key could sit."""
    log = structlog.get_logger("t")
    secret_local = "sk-or-CANARY4-local"  # noqa: F841
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    text = json.dumps(lines())
    assert "boom" in text and "CANARY4" not in text
