"""Server-held threads: the SDK's tool runner (threads on by default) runs through the gateway.

The gateway declines `thread` with the `error.details.error_code` the SDK recovers from
(steps/anthropic/threads.py), so the runner falls back to plain requests and finishes its
tool loop; a raw request sees each refusal as the API words it.
"""

from __future__ import annotations

import json

import anthropic
import pytest

from tests.pipelines.conftest import Gateway

TOOL_PROMPT = 'Look it up: [[tool:lookup {"key": "colour"}]]'


def _requires_threads(client: anthropic.Anthropic) -> None:
    if not getattr(client, "_supports_message_threads", False):
        pytest.fail(f"anthropic {anthropic.__version__} has no message threads: the dev pin must be a release that has them")


def test_tool_runner_with_threads_finishes_both_turns(gateway: Gateway) -> None:
    sent: list[dict] = []
    http_client = anthropic.DefaultHttpxClient(event_hooks={"request": [lambda request: sent.append(json.loads(request.content or b"{}"))]})
    client = gateway.client(http_client=http_client)
    _requires_threads(client)
    looked_up: list[str] = []

    @anthropic.beta_tool
    def lookup(key: str) -> str:
        """Look a key up.

        Args:
            key: the key
        """
        looked_up.append(key)
        return "blue"

    runner = client.beta.messages.tool_runner(model="claude-sonnet-4-5", max_tokens=200, tools=[lookup], messages=[{"role": "user", "content": TOOL_PROMPT}])
    messages = list(runner)
    assert looked_up == ["colour"]
    assert messages[-1].stop_reason == "end_turn"
    assert messages[-1].content[0].text.startswith("Done")
    # The upstream saw the tool call's result in the second turn, with the whole history.
    second = [r.json for r in gateway.fake.requests if r.path.endswith("/chat/completions")][-1]
    assert second["messages"][-1]["role"] == "tool" and "blue" in json.dumps(second["messages"][-1])
    assert any(m["role"] == "user" and "lookup" in json.dumps(m) for m in second["messages"])
    # The runner asked for a thread, was declined, and went on without one.
    assert sent[0].get("thread") == {"type": "create"}
    assert all("thread" not in body for body in sent[1:]) and len(sent) == 3


def test_thread_create_is_declined_with_thread_unsupported_request(gateway: Gateway) -> None:
    with gateway.http() as http:
        r = http.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 50, "thread": {"type": "create"}, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["details"] == {"error_code": "thread_unsupported_request", "unsupported": []}
    assert r.headers["x-should-retry"] == "false"
    assert not [q for q in gateway.fake.requests if q.path.endswith("/chat/completions")]


def test_thread_continue_is_thread_not_found(gateway: Gateway) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "thread": {"type": "continue", "previous_message_id": "msg_0123"},
        "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "blue"}]}],
    }
    with gateway.http() as http:
        r = http.post("/v1/messages", json=body)
    assert r.status_code == 404
    assert r.json()["error"]["details"] == {"error_code": "thread_not_found"}
    client = gateway.client()
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.beta.messages.create(**body)
    assert caught.value.body["error"]["details"]["error_code"] == "thread_not_found"
