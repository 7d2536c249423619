"""Side effects are never repeated: once a server-side tool has run, a later failure of the run
says what ran and answers `x-should-retry: false`, and nothing (client SDK, gateway) runs it again.

The real gateway under uvicorn, the official SDK with its retries on, the fake upstream
scripting a tool call and then a failure. `web_search` is answered by the tests' backend,
which counts its calls: the count is how many times the tool really ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from engine.errors import DeadlineExceeded
from steps.anthropic.errors import classify
from steps.openrouter.errors import UpstreamError
from steps.tools.effects import AfterSideEffects
from tests.pipelines.conftest import Gateway, start_gateway
from tests.steps.tools import agent_gateway
from tests.steps.tools.agent_gateway import Agent, start_agent
from tests.support.fake_openrouter import tool_mode

SEARCH = [{"type": "web_search_20250305", "name": "web_search"}]
ASK = {"model": "claude-sonnet-5-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Search the web for pipeline engines"}]}
NOTE = "after 1 server-side tool call had already run (web_search); not retried"


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    env = {"WEB_SEARCH_BACKEND": "tests.steps.tools.agent_gateway:fake_search", "UPSTREAM_RETRY_BACKOFF": "20ms", "ENGINE_REQUEST_DEADLINE": "5"}
    yield from start_gateway(env)


@pytest.fixture(autouse=True)
def _no_searches() -> None:
    agent_gateway.SEARCHES.clear()


def test_json_failure_after_a_search_is_not_retried(gw: Gateway) -> None:
    """The turn after a web_search fails (503, retried by the gateway's upstream policy only):
    the client gets 529 with what ran, `x-should-retry: false`, and the SDK does not send it again."""
    gw.fake.script(tool_mode("web_search", {"query": "pipeline engines"}), "503", "503", "503", "ok", "ok")
    client = gw.client(max_retries=3)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(**ASK, tools=SEARCH)
    r = caught.value.response
    assert r.status_code == 529 and r.headers["x-should-retry"] == "false" and "retry-after" not in r.headers
    assert r.json()["error"] == {"type": "overloaded_error", "message": f"Overloaded {NOTE}"}
    assert len(agent_gateway.SEARCHES) == 1
    # The first turn once, the failing turn three times (the upstream call's own retries): no re-run.
    assert len(gw.fake.requests) == 4


def ask(gw: Gateway, *, stream: bool = False, timeout: float = 30) -> httpx.Response:
    """POST the web-search request (what every test here sends) and return the answer."""
    body = {**ASK, "tools": SEARCH, **({"stream": True} if stream else {})}
    with httpx.Client(base_url=gw.url, timeout=timeout, headers={"x-api-key": "k"}) as http:
        return http.post("/v1/messages", json=body)


def test_upstream_unreachable_after_a_search(gw: Gateway) -> None:
    """A connection failure after the tool ran: 502 api_error, the note, no retry by the SDK."""
    gw.fake.script(tool_mode("web_search", {"query": "q"}), "reset_before_headers", "reset_before_headers", "reset_before_headers", "ok")
    r = ask(gw)
    assert r.status_code == 502 and r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["message"] == f"upstream unreachable {NOTE}"
    assert len(agent_gateway.SEARCHES) == 1


def test_a_stream_that_fails_after_a_search_says_what_ran(gw: Gateway) -> None:
    """After the commit point the failure is an SSE error event; its message names what ran."""
    gw.fake.script(tool_mode("web_search", {"query": "q"}), "cut_mid_stream")
    r = ask(gw, stream=True)
    assert r.status_code == 200
    assert "event: error" in r.text and NOTE in r.text
    assert "web_search_tool_result" in r.text  # the client saw the tool's result before the error
    assert len(agent_gateway.SEARCHES) == 1


def test_the_deadline_after_a_search_says_what_ran(gw: Gateway) -> None:
    """A JSON run whose next turn outlives the deadline: 504 with the note, not a retryable timeout."""
    gw.fake.script(tool_mode("web_search", {"query": "q"}), "stall_before_headers;seconds=30")
    r = ask(gw, timeout=60)
    assert r.status_code == 504 and r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["message"] == f"request deadline exceeded {NOTE}"
    assert len(agent_gateway.SEARCHES) == 1


def test_failures_before_any_tool_ran_stay_retryable(gw: Gateway) -> None:
    """Nothing ran yet: the usual answer, which the client may retry."""
    gw.fake.script("503", "503", "503")
    r = ask(gw)
    assert r.status_code == 529 and r.headers["x-should-retry"] == "true"
    assert r.json()["error"]["message"] == "Overloaded"
    assert agent_gateway.SEARCHES == []


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    yield from start_agent(tmp_path_factory.mktemp("effects"), {"UPSTREAM_RETRY_BACKOFF": "20ms"})


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_agent_names_the_tools_that_ran(agent: Agent, stream: bool) -> None:
    """On /agent: two calls ran (Write, Read); the next turn fails; the message lists them once each."""
    name = f"effects-{'sse' if stream else 'json'}.txt"
    agent.fake.clear()
    agent.fake.script(
        tool_mode(calls=[("Write", {"file_path": name, "content": "x\n"}), ("Read", {"file_path": name})]),
        "500", "500", "500", "ok",
    )
    note = "after 2 server-side tool calls had already run (Write, Read); not retried"
    body = {"model": "claude-sonnet-5-5", "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "write then read"}]}
    with httpx.Client(base_url=agent.gw.url, timeout=30, headers={"x-api-key": "k"}) as http:
        r = http.post("/agent/v1/messages", json=body)
    if stream:
        assert r.status_code == 200 and "event: error" in r.text and note in r.text
    else:
        assert r.status_code == 500 and r.headers["x-should-retry"] == "false"
        assert r.json()["error"] == {"type": "api_error", "message": f"Internal server error {note}"}
    assert (agent.ws / name).read_text() == "x\n"
    assert len(agent.fake.requests) == 4


class TestClassify:
    """The renderer's rule for the wrapped error, on its own."""

    def test_keeps_the_cause_status_and_drops_retry_after(self) -> None:
        """A 429 with Retry-After after a tool ran: still 429 rate_limit_error, but no retry hint."""
        cause = UpstreamError("slow down", status=429, retryable=True, retry_after=7)
        status, etype, message, headers = classify(AfterSideEffects(cause, ["Bash", "Bash", "Write"]))
        assert (status, etype) == (429, "rate_limit_error")
        assert message.endswith("after 3 server-side tool calls had already run (Bash, Write); not retried")
        assert headers["x-should-retry"] == "false" and "retry-after" not in headers

    def test_the_engine_never_retries_it(self) -> None:
        """Non-retryable, and of a kind no retry policy names by accident."""
        from engine.retry import matches
        from engine.spec import RetrySpec

        err = AfterSideEffects(DeadlineExceeded("late"), ["Read"])
        assert not err.retryable
        assert not matches(err, RetrySpec(on=["retryable", "timeout", "deadline", "status", "connect"]))


def test_the_tool_loop_step_refuses_a_retry_policy(tmp_path: Path) -> None:
    """tools.execute_sequence has side effects: `engine check` refuses a `retry` on it."""
    from engine.errors import SpecErrors
    from engine.executor import load_plans
    from tests.pipelines.conftest import PIPELINES

    text = (PIPELINES / "messages.yaml").read_text()
    text = text.replace("    uses: tools.execute_sequence", "    retry: {attempts: 2}\n    uses: tools.execute_sequence")
    for f in PIPELINES.glob("*.yaml"):
        (tmp_path / f.name).write_text(text if f.name == "messages.yaml" else f.read_text())
    with pytest.raises(SpecErrors, match="has side effects, so retrying it may repeat them"):
        load_plans([tmp_path])
