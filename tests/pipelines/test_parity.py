"""Claude Code parity end to end: thinking round trip, images, caching, profiles, routing, fallback.

The fake upstream runs in strict mode: it answers 400 to what real providers reject (tools: [],
unanswered tool calls, reasoning of another family or with a bad signature, Gemini-rejected
schema keywords, cache_control where not honoured...), so "no rejection" here means the
gateway sent every provider what it takes.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.pipelines.conftest import FIXTURES, Gateway, start_gateway
from steps.convert.thinking import decode

ANTHROPIC = "anthropic/claude-sonnet-4.5"
GEMINI = "google/gemini-2.5-pro"
FALLBACK = "deepseek/deepseek-chat"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
LISTING = [
    {"id": ANTHROPIC, "context_length": 200000, "top_provider": {"max_completion_tokens": 64000},
     "supported_parameters": ["max_tokens", "reasoning", "tools", "tool_choice", "stop", "temperature", "response_format"],
     "architecture": {"input_modalities": ["text", "image"]}},
    {"id": GEMINI, "context_length": 1048576, "top_provider": {"max_completion_tokens": 65536},
     "supported_parameters": ["max_tokens", "reasoning", "tools", "response_format", "structured_outputs"],
     "architecture": {"input_modalities": ["text", "image", "file"]}},
]  # fmt: skip


@pytest.fixture(scope="module")
def parity() -> Iterator[Gateway]:
    env = {"BIG_MODEL": ANTHROPIC, "SMALL_MODEL": ANTHROPIC, "ROUTER_FALLBACK_MODELS": FALLBACK}
    for gw in start_gateway(env):
        gw.fake.models = LISTING
        gw.fake.strict = True
        gw.fake.max_output = {ANTHROPIC: 64000}
        yield gw


@pytest.fixture(autouse=True)
def _fresh(parity: Gateway) -> None:
    parity.fake.clear()
    parity.fake.rejections.clear()


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def post(gw: Gateway, body: dict) -> httpx.Response:
    with gw.http() as http:
        return http.post("/v1/messages?beta=true", json=body)


SDK_KEYS = {"model", "max_tokens", "messages", "system", "tools", "metadata", "thinking"}


def sdk_create(gw: Gateway, body: dict):
    """messages.create with the official SDK; Claude Code's extra fields go as extra_body."""
    known = {k: v for k, v in body.items() if k in SDK_KEYS}
    extra = {k: v for k, v in body.items() if k not in SDK_KEYS and k != "stream"}
    return gw.client().messages.create(**known, extra_body=extra, timeout=60)


def sse_message(r: httpx.Response) -> dict:
    """Assemble the Message from an SSE body (checks signature_delta comes right before the stop)."""
    blocks: list[dict] = []
    message: dict = {}
    last_delta: dict[int, str] = {}
    for frame in r.text.strip().split("\n\n"):
        data = json.loads(frame.split("\n")[1].removeprefix("data: "))
        kind = data["type"]
        if kind == "message_start":
            message = data["message"]
        elif kind == "content_block_start":
            blocks.append(dict(data["content_block"]))
        elif kind == "content_block_delta":
            block, delta = blocks[data["index"]], data["delta"]
            last_delta[data["index"]] = delta["type"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                block["_json"] = block.get("_json", "") + delta["partial_json"]
        elif kind == "content_block_stop":
            block = blocks[data["index"]]
            if block["type"] == "thinking":
                assert last_delta[data["index"]] == "signature_delta"
            if block["type"] == "tool_use":
                block["input"] = json.loads(block.pop("_json", "{}") or "{}")
        elif kind == "message_delta":
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["usage"] = data["usage"]
        elif kind == "error":
            raise AssertionError(data)
    message["content"] = blocks
    return message


def test_claude_code_session_with_thinking_image_tools_and_model_switch(parity: Gateway) -> None:
    """A multi-turn Claude Code-style session crosses families with no upstream 400."""
    body = load("thinking_tool_result_turn")
    body["model"] = "claude-opus-5-5"
    first_user = body["messages"][0]
    env_msg = body["messages"][1]
    body["messages"] = [first_user, env_msg]
    body["messages"][0] = copy.deepcopy(first_user)
    body["messages"][0]["content"].append({"type": "text", "text": '[[tool:Bash {"command": "ls", "description": "list"}]]'})

    # turn 1: anthropic, thinking (display omitted) + a tool call
    r = post(parity, body)
    assert r.status_code == 200 and r.headers["x-upstream-model"] == ANTHROPIC
    turn1 = sse_message(r)
    assert turn1["model"] == "claude-opus-5-5"
    kinds = [b["type"] for b in turn1["content"]]
    assert kinds[0] == "thinking" and "tool_use" in kinds
    assert turn1["content"][0]["thinking"] == ""  # omitted, signature kept
    token = decode(turn1["content"][0]["signature"])
    assert token["y"] == "anthropic" and token["d"][0]["signature"].startswith("sig-")
    up1 = parity.fake.requests[-1].json
    assert up1["reasoning"] == {"effort": "medium"} and up1["max_tokens"] == 64000  # clamped from 128000

    # turn 2: the tool result carries an image; the thinking goes back as signed reasoning_details
    tool = next(b for b in turn1["content"] if b["type"] == "tool_use")
    body["messages"] += [
        {"role": "assistant", "content": turn1["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool["id"], "content": [
            {"type": "text", "text": "file.png"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]},
    ]  # fmt: skip
    turn2 = sse_message(post(parity, body))
    up2 = parity.fake.requests[-1].json
    assistant = next(m for m in up2["messages"] if m["role"] == "assistant")
    assert assistant["reasoning_details"][0]["signature"] == token["d"][0]["signature"]
    assert any(isinstance(m["content"], list) and m["content"][0]["type"] == "image_url" for m in up2["messages"] if m["role"] == "user")

    # turn 3: the user switches to Gemini mid-session: anthropic reasoning dropped, schemas cleaned
    body["messages"] += [{"role": "assistant", "content": turn2["content"]}, {"role": "user", "content": "Now summarise."}]
    body["model"] = GEMINI
    r3 = post(parity, body)
    assert r3.status_code == 200 and r3.headers["x-upstream-model"] == GEMINI
    turn3 = sse_message(r3)
    up3 = parity.fake.requests[-1].json
    assert not any("reasoning_details" in m for m in up3["messages"])
    assert "$schema" not in json.dumps(up3["tools"])
    assert "$schema" in json.dumps(body["tools"])  # the request itself is untouched
    assert decode(turn3["content"][0]["signature"] if turn3["content"][0]["type"] == "thinking" else turn3["content"][0]["data"])["y"] == "google"

    # turn 4: back to Claude: its own reasoning restored, Gemini's dropped
    body["messages"] += [{"role": "assistant", "content": turn3["content"]}, {"role": "user", "content": "Thanks, and again?"}]
    body["model"] = "claude-opus-5-5"
    assert post(parity, body).status_code == 200
    up4 = parity.fake.requests[-1].json
    formats = {d["format"] for m in up4["messages"] for d in m.get("reasoning_details") or ()}
    assert formats == {"anthropic-claude-v1"}
    assert parity.fake.rejections == []
    assert all(rec.status in (200, None) or rec.status < 400 for rec in parity.fake.requests)


def test_title_call_on_gemini_has_no_tools_and_a_clean_schema(parity: Gateway) -> None:
    """small_model_call.json (tools: [], output_config.format) on Gemini: no tools key, schema cleaned."""
    body = load("small_model_call") | {"model": GEMINI}
    r = post(parity, body)
    assert r.status_code == 200, r.text
    up = parity.fake.requests[-1].json
    assert "tools" not in up and "tool_choice" not in up
    assert up["response_format"]["json_schema"]["schema"] == {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
    assert parity.fake.rejections == []


def test_sonnet45_budget_thinking(parity: Gateway) -> None:
    """sonnet45_turn.json: thinking.enabled budget 31999 → reasoning.max_tokens below max_tokens."""
    r = post(parity, load("sonnet45_turn"))
    assert r.status_code == 200
    up = parity.fake.requests[-1].json
    assert up["reasoning"] == {"max_tokens": 31999} and up["max_tokens"] == 32000
    assert parity.fake.rejections == []


def test_cache_usage_maps_back_and_is_stripped_for_other_models(parity: Gateway) -> None:
    """cache_control reaches Anthropic models (≤ 4), cached tokens come back as cache_read/creation."""
    body = load("first_turn")
    first = sdk_create(parity, body)
    second = sdk_create(parity, body)
    assert first.usage.cache_creation_input_tokens > 0 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens > 0
    up = parity.fake.requests[-1].json
    prompt = second.usage.input_tokens + second.usage.cache_read_input_tokens + second.usage.cache_creation_input_tokens
    assert prompt == len(parity.fake.requests[-1].body) // 4  # input_tokens excludes the cached part
    assert 0 < json.dumps(up).count("cache_control") <= 4
    sdk_create(parity, dict(body, model="openai/gpt-5"))
    assert "cache_control" not in json.dumps(parity.fake.requests[-1].json)
    assert parity.fake.rejections == []


def test_the_requests_own_fallbacks_join_the_candidates(parity: Gateway) -> None:
    """The request `fallbacks` field (server-side fallback, SDK 2.17): each entry's model goes
    through the model map and is tried before the operator's fallbacks."""
    parity.fake.script("503")
    parity.fake.script("503")
    body = {"model": "claude-opus-5-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], "fallbacks": [{"model": "openai/gpt-4o-mini", "max_tokens": 50}]}
    msg = parity.client().beta.messages.create(**body)
    assert msg.model == "claude-opus-5-5"
    assert [r.json["model"] for r in parity.fake.requests] == [ANTHROPIC, "openai/gpt-4o-mini", FALLBACK]


def test_fallback_model_answers_after_a_503(parity: Gateway) -> None:
    """A 503 from the routed model falls back to the next one before any byte is sent."""
    parity.fake.script("503")
    msg = parity.client().messages.create(model="claude-opus-5-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    assert msg.model == "claude-opus-5-5"
    assert [r.json["model"] for r in parity.fake.requests] == [ANTHROPIC, FALLBACK]
    with parity.http() as http:
        parity.fake.script("503")
        r = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.headers["x-upstream-model"] == FALLBACK


def test_bad_request_does_not_fall_back(parity: Gateway) -> None:
    """A plain 400 is the client's problem: no fallback, the upstream text kept."""
    parity.fake.script("400")
    r = post(parity, {"model": "claude-opus-5-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and len(parity.fake.requests) == 1


def test_bare_context_error_gets_the_profile_limit(parity: Gateway) -> None:
    """A context-length error without figures, on every candidate, is worded with the last one's profile limit."""
    parity.fake.script("context_length;bare=1", "context_length;bare=1")
    r = post(parity, {"model": "claude-opus-5-5", "max_tokens": 1000, "messages": [{"role": "user", "content": "x " * 400}]})
    assert r.status_code == 400
    assert [q.json["model"] for q in parity.fake.requests] == [ANTHROPIC, FALLBACK]  # context errors fall back
    message = r.json()["error"]["message"]
    assert message.startswith("input length and `max_tokens` exceed context limit: ")
    assert message.endswith("+ 1000 > 163840, decrease input length or `max_tokens` and try again")  # deepseek's profile


def test_count_tokens_is_calibrated_by_real_usage(parity: Gateway) -> None:
    """After a few answered requests, count_tokens tracks the upstream's prompt_tokens closely.

    The uncalibrated figure is the estimate itself (the gateway's may already be calibrated by
    earlier tests that share it)."""
    from steps.anthropic.tokens import count_tokens

    body = load("first_turn")
    body.pop("stream")
    raw = count_tokens(body)["input_tokens"]
    with parity.http() as http:
        for _ in range(6):
            sdk_create(parity, body)
        actual = len(parity.fake.requests[-1].body) // 4
        calibrated = http.post("/v1/messages/count_tokens", json=body).json()["input_tokens"]
    before, after = abs(raw - actual) / actual, abs(calibrated - actual) / actual
    print(f"count_tokens error vs upstream usage: uncalibrated {before:.1%}, calibrated {after:.1%}")
    assert after < 0.05 and after < before
