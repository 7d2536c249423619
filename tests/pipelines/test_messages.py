"""POST /v1/messages end to end: the official SDK against the gateway against a fake OpenRouter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.fixtures import claude_code_cases
from tests.pipelines.conftest import FIXTURES, Gateway, start_gateway


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_create_returns_a_message(gateway: Gateway) -> None:
    """A non-streaming create returns an Anthropic Message with text and usage."""
    msg = gateway.client().messages.create(model="claude-sonnet-5-5", max_tokens=256, messages=ask("Hello there"))
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == "claude-sonnet-5-5"
    assert msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text" and msg.content[0].text.startswith("Hello! I am the fake upstream.")
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    upstream = gateway.fake.requests[0]
    assert upstream.json["model"] == "test/big" and upstream.json["max_tokens"] == 256
    assert upstream.json["messages"] == [{"role": "user", "content": "Hello there"}]


def test_stream_text_and_final_message(gateway: Gateway) -> None:
    """Streaming yields many text deltas that add up to the final message's text."""
    with gateway.client().messages.stream(model="claude-haiku-5-5", max_tokens=256, messages=ask("Say something long")) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(deltas) >= 10
    assert "".join(deltas) == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert gateway.fake.requests[0].json["model"] == "test/small"
    assert gateway.fake.requests[0].json["stream"] is True


def test_raw_event_grammar(gateway: Gateway) -> None:
    """The SSE stream follows Anthropic's grammar exactly: event names, indices, order, no [DONE]."""
    with gateway.http() as http:
        r = http.post("/v1/messages?beta=true", json={"model": "claude-opus-5-5", "max_tokens": 100, "stream": True, "messages": ask("hi")}, headers={"x-api-key": "k"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["request-id"].startswith("req_")
    events = []
    for block in r.text.strip().split("\n\n"):
        lines = block.split("\n")
        name = lines[0].removeprefix("event: ")
        data = json.loads(lines[1].removeprefix("data: "))
        assert data["type"] == name
        events.append(data)
    names = [e["type"] for e in events if e["type"] != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert events[0]["message"]["content"] == [] and isinstance(events[0]["message"]["usage"]["input_tokens"], int)
    assert "[DONE]" not in r.text
    starts = [e["index"] for e in events if e["type"] == "content_block_start"]
    assert starts == list(range(len(starts)))


def test_tool_use_streamed_input_assembles_exactly(gateway: Gateway) -> None:
    """A tool call whose arguments arrive in fragments becomes a tool_use with the exact input."""
    args = {"location": "San Francisco, CA", "unit": "celsius", "days": [1, 2, 3], "note": "quote \" and ünïcode"}
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]
    prompt = f"[[tool:get_weather {json.dumps(args)}]]"
    with gateway.client().messages.stream(model="claude-sonnet-5-5", max_tokens=256, tools=tools, messages=ask(prompt)) as stream:
        final = stream.get_final_message()
    tool = next(b for b in final.content if b.type == "tool_use")
    assert tool.name == "get_weather" and tool.input == args
    assert final.stop_reason == "tool_use"
    upstream_tools = gateway.fake.requests[0].json["tools"]
    assert upstream_tools[0]["function"]["name"] == "get_weather"


def test_tool_round_trip(gateway: Gateway) -> None:
    """The client's tool_result goes upstream as a tool message with the same id, and the turn continues."""
    client = gateway.client()
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    first = client.messages.create(model="claude-sonnet-5-5", max_tokens=256, tools=tools, messages=ask('[[tool:get_weather {"location": "Paris"}]]'))
    tool = next(b for b in first.content if b.type == "tool_use")
    history = ask('[[tool:get_weather {"location": "Paris"}]]') + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "Sunny, 21 C"}]},
    ]
    second = client.messages.create(model="claude-sonnet-5-5", max_tokens=256, tools=tools, messages=history)
    assert second.content[0].text.startswith("Done")
    sent = gateway.fake.requests[1].json["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": tool.id, "content": "Sunny, 21 C"}
    assert sent[-2]["tool_calls"][0]["id"] == tool.id


def test_count_tokens_answered_locally(gateway: Gateway) -> None:
    """count_tokens answers from a local estimate, without calling the upstream."""
    body = json.loads((FIXTURES / "count_tokens.json").read_text())
    result = gateway.client().messages.count_tokens(model=body["model"], messages=body["messages"], tools=body["tools"])
    assert result.input_tokens > 100
    assert gateway.fake.requests == []


def test_count_tokens_counts_the_request_the_upstream_would_get(gateway: Gateway) -> None:
    """count_tokens counts what a Messages request would send: deferred tools left out until
    loaded, context edits made (with the count before them, as Anthropic reports it), tool
    removals applied. (Claude Code's /context asks it; counting deferred MCP schemas would show
    a context far fuller than the model's.)"""
    client = gateway.client()
    weather = {"name": "get_weather", "description": "Weather for a city.", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    big = [{"name": f"mcp_tool_{i}", "description": "An MCP tool. " * 40, "input_schema": {"type": "object", "properties": {"q": {"type": "string", "description": "x" * 400}}}} for i in range(20)]
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    plain = client.beta.messages.count_tokens(model="claude-sonnet-5-5", messages=messages, tools=[weather]).input_tokens
    loaded = client.beta.messages.count_tokens(model="claude-sonnet-5-5", messages=messages, tools=[weather, *big]).input_tokens
    deferred = client.beta.messages.count_tokens(
        model="claude-sonnet-5-5", messages=messages, tools=[weather, *({**t, "defer_loading": True} for t in big)], betas=["advanced-tool-use-2025-11-20"]
    ).input_tokens
    assert loaded > plain * 5  # the 20 schemas count when they are sent
    assert deferred == plain, (plain, deferred, loaded)  # and not while they are deferred

    history: list[dict] = [{"role": "user", "content": "Read the files."}]
    for i in range(6):  # six tool uses, each answered with 4,000 characters
        history.append({"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{i}", "name": "get_weather", "input": {"city": f"c{i}"}}]})
        history.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": "r" * 4000}]})
    edits = {"edits": [{"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens", "value": 1000}, "keep": {"type": "tool_uses", "value": 1}}]}
    counted = client.beta.messages.count_tokens(
        model="claude-sonnet-5-5", messages=history, tools=[weather], context_management=edits, betas=["context-management-2025-06-27"]
    )
    whole = client.beta.messages.count_tokens(model="claude-sonnet-5-5", messages=history, tools=[weather]).input_tokens
    assert counted.context_management is not None and counted.context_management.original_input_tokens == whole
    assert counted.input_tokens < whole / 2  # five of six 4,000-character results cleared
    assert gateway.fake.requests == []


LISTING = [  # the fake upstream's GET /models (the gateway reads it once an hour: one listing for the module)
    {"id": "test/big", "context_length": 131072, "top_provider": {"max_completion_tokens": 8192}},
    {"id": "test/small", "context_length": 64000},
    {"id": "openai/gpt-4o", "context_length": 128000, "top_provider": {"max_completion_tokens": 16384}},
]


@pytest.fixture(name="listed", scope="module")
def _listed() -> Iterator[Gateway]:
    """A gateway whose upstream lists LISTING from its first request on (listings are cached)."""
    for gw in start_gateway({}):
        gw.fake.models = LISTING
        yield gw


def test_models_list(listed: Gateway) -> None:
    """models.list pages every model the gateway answers to: the Claude-named ids that Claude
    Code's discovery keeps first, then the configured upstream models, each with its window
    from the upstream's own listing (or null when nothing knows it)."""
    models = list(listed.client().models.list(limit=2))  # the SDK follows has_more / after_id
    ids = [m.id for m in models]
    assert ids[:3] == ["claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5"] and "test/big" in ids and "test/small" in ids
    assert len(ids) == len(set(ids))
    opus = next(m for m in models if m.id == "claude-opus-5-5")
    assert (opus.max_input_tokens, opus.max_tokens, opus.lifecycle) == (131072, 8192, "active")


def test_models_retrieve_any_id(listed: Gateway) -> None:
    """GET /v1/models/{id}, which Claude Code reads to size its context for a model it does not
    know (ANTHROPIC_MODEL=openai/gpt-4o): the id as a request would map it, with its window."""
    client = listed.client()
    other = client.models.retrieve("openai/gpt-4o")
    assert (other.id, other.max_input_tokens, other.max_tokens) == ("openai/gpt-4o", 128000, 16384)
    haiku = client.models.retrieve("claude-haiku-4-5-20251001")  # a dated Claude id maps to SMALL_MODEL
    assert (haiku.id, haiku.max_input_tokens) == ("claude-haiku-4-5-20251001", 64000)
    with listed.http() as http:
        assert http.get("/v1/models", params={"limit": "x"}).json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("mode", "status", "error_type", "sdk_class"),
    [
        ("400", 400, "invalid_request_error", anthropic.BadRequestError),
        ("401", 401, "authentication_error", anthropic.AuthenticationError),
        ("402", 402, "billing_error", anthropic.APIStatusError),
        ("403", 403, "permission_error", anthropic.PermissionDeniedError),
        ("404", 404, "not_found_error", anthropic.NotFoundError),
        ("413", 413, "request_too_large", anthropic.APIStatusError),
        ("429;retry_after=1", 429, "rate_limit_error", anthropic.RateLimitError),
        ("500", 500, "api_error", anthropic.InternalServerError),
        ("503", 529, "overloaded_error", anthropic.InternalServerError),
        ("html", 502, "api_error", anthropic.InternalServerError),
    ],
)
def test_upstream_errors_become_anthropic_errors(gateway: Gateway, mode: str, status: int, error_type: str, sdk_class: type) -> None:
    """Each upstream error status reaches the SDK as the matching Anthropic status, type and class."""
    gateway.fake.default_mode = mode
    try:
        with pytest.raises(sdk_class) as info:
            gateway.client().messages.create(model="claude-sonnet-5-5", max_tokens=50, messages=ask("hi"))
    finally:
        gateway.fake.default_mode = "ok"
    err = info.value
    assert err.status_code == status
    assert err.body["type"] == "error" and err.body["error"]["type"] == error_type
    assert err.body["request_id"] == err.response.headers["request-id"]


def test_error_mid_stream_becomes_sse_error_event(gateway: Gateway) -> None:
    """An upstream cut after text has streamed arrives as an `error` event, which the SDK raises."""
    gateway.fake.script("cut_mid_stream;after=3")
    got = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with gateway.client().messages.stream(model="claude-sonnet-5-5", max_tokens=50, messages=ask("hi")) as stream:
            for text in stream.text_stream:
                got.append(text)
    assert len(got) == 3
    assert "mid-stream" in str(info.value)


def test_bad_request_never_reaches_upstream(gateway: Gateway) -> None:
    """A request without max_tokens is a 400 naming the field, and nothing goes upstream."""
    with gateway.http() as http:
        r = http.post("/v1/messages", json={"model": "m", "messages": ask("hi")})
    assert r.status_code == 400
    assert r.json()["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}
    assert r.headers["x-should-retry"] == "false"
    assert gateway.fake.requests == []


def test_client_keys_forwarded(gateway: Gateway) -> None:
    """With no upstream key configured, the client's x-api-key or bearer token goes upstream as Bearer."""
    gateway.client(api_key="sk-ant-from-x-api-key").messages.create(model="m/x", max_tokens=5, messages=ask("a"))
    anthropic.Anthropic(base_url=gateway.url, auth_token="bearer-token-123", max_retries=0).messages.create(model="m/x", max_tokens=5, messages=ask("b"))
    auth = [r.headers["authorization"] for r in gateway.fake.requests]
    assert auth == ["Bearer sk-ant-from-x-api-key", "Bearer bearer-token-123"]


def test_health_warmup_and_unknown_routes(gateway: Gateway) -> None:
    """GET /health, HEAD / and HEAD /api/hello answer 200; unknown routes get Anthropic JSON errors."""
    with gateway.http() as http:
        assert http.get("/health").json()["status"] == "ok"
        assert http.head("/").status_code == 200
        assert http.head("/api/hello").status_code == 200
        missing = http.post("/v1/nope", json={})
        wrong = http.get("/v1/messages")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert wrong.status_code == 405 and wrong.json()["type"] == "error"


FIXTURE_FILES = ["first_turn", "tool_result_turn", "thinking_tool_result_turn", "small_model_call", "interactive_first_turn", "custom_model_turn", "sonnet45_turn"]


RELEASE_CASES = claude_code_cases(FIXTURE_FILES)


@pytest.mark.parametrize("path", [p for _, p in RELEASE_CASES], ids=[i for i, _ in RELEASE_CASES])
def test_claude_code_fixture_produces_valid_upstream_request(gateway: Gateway, path: Path) -> None:
    """Every real Claude Code request (every recorded release) goes through and reaches the upstream as a valid chat request."""
    body = path.read_bytes()
    meta = json.loads((path.parent / "requests_meta.json").read_text())[path.stem]
    headers = {k: v for k, v in meta["headers"].items() if k.lower() not in {"host", "content-length", "connection", "accept-encoding"}}
    headers["x-api-key"] = "sk-ant-test"
    with gateway.http() as http:
        r = http.post("/v1/messages?beta=true", content=body, headers=headers)
    assert r.status_code == 200, r.text[:500]
    sent = gateway.fake.requests[0].json
    original = json.loads(body)
    assert sent["stream"] is original.get("stream", False)
    assert "tools" not in sent or sent["tools"]
    roles = [m["role"] for m in sent["messages"]]
    assert roles[0] == "system" and "system" not in roles[1:]
    for i, m in enumerate(sent["messages"]):
        assert m.get("content") not in ("", []) or m.get("tool_calls"), f"empty message {i}"
        for call in m.get("tool_calls") or []:
            answered = [x for x in sent["messages"][i + 1 :] if x["role"] == "tool" and x["tool_call_id"] == call["id"]]
            assert answered, f"tool call {call['id']} unanswered"
    assert not {"context_management", "output_config", "thinking", "safeguards", "metadata"} & set(sent)


def test_ping_while_upstream_is_silent(gateway: Gateway) -> None:
    """While the upstream is slow between chunks, the client gets `ping` events (interval 0.2 s here)."""
    gateway.fake.script("slow_drip;delay_ms=500;chunks=4")
    with gateway.http() as http:
        r = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 100, "stream": True, "messages": ask("hi")})
    names = [line.removeprefix("event: ") for line in r.text.splitlines() if line.startswith("event: ")]
    assert names.count("ping") >= 3
    assert names[0] == "message_start" and names[-1] == "message_stop"
    text_deltas = [line for line in r.text.splitlines() if '"text_delta"' in line]
    assert len(text_deltas) == 4


def test_rate_limit_retried_then_answered(gateway: Gateway) -> None:
    """A 429 with Retry-After is waited for and retried before anything reaches the client."""
    gateway.fake.script("429;retry_after=1", "ok")
    msg = gateway.client().messages.create(model="claude-opus-5-5", max_tokens=20, messages=ask("hi"))
    assert msg.content[0].text.startswith("Hello!")
    first, second = gateway.fake.requests
    assert second.at - first.at >= 1.0


def test_rate_limit_passes_retry_after_on(gateway: Gateway) -> None:
    """When retrying cannot fit, the 429 reaches the client with retry-after capped at 60."""
    gateway.fake.script("429;retry_after=120")
    with gateway.http() as http:
        r = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 20, "messages": ask("hi")})
    assert r.status_code == 429 and r.headers["retry-after"] == "60"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert len(gateway.fake.requests) == 1


def test_no_key_anywhere_is_a_clear_authentication_error(gateway: Gateway) -> None:
    """With no OPENROUTER_API_KEY and no client key, the answer is a 401 saying how to fix it."""
    import httpx

    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        r = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": ask("hi")})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert "OPENROUTER_API_KEY" in r.json()["error"]["message"]
    assert gateway.fake.requests == []


def test_300_tools_and_a_2_mb_history_arrive_whole(gateway: Gateway) -> None:
    """A long agent session near the context limit (300 tools, ~2 MB of history) goes through:
    every tool and every turn reaches the upstream, converted (the benchmark times this size)."""
    text = "lorem ipsum dolor sit amet " * 40
    tools = [{"name": f"tool_{i}", "description": f"Tool {i}", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}} for i in range(300)]
    messages: list[dict] = [{"role": "user", "content": "Start."}]
    for i in range(700):
        tid = f"toolu_{i:06d}"
        messages.append({"role": "assistant", "content": [{"type": "text", "text": text}, {"type": "tool_use", "id": tid, "name": f"tool_{i % 300}", "input": {"path": f"/f{i}"}}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid, "content": text * 2}]})
    messages.append({"role": "user", "content": "Continue."})
    assert len(json.dumps(messages)) > 2_000_000
    msg = gateway.client().messages.create(model="claude-sonnet-5-5", max_tokens=64, tools=tools, messages=messages)
    assert msg.type == "message"
    sent = gateway.fake.requests[0].json
    assert [t["function"]["name"] for t in sent["tools"]] == [f"tool_{i}" for i in range(300)]
    calls = [c["id"] for m in sent["messages"] if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    results = [m["tool_call_id"] for m in sent["messages"] if m["role"] == "tool"]
    assert len(calls) == len(results) == 700 and len(set(calls)) == 700
    assert sent["messages"][-1] == {"role": "user", "content": "Continue."}
