"""What newer clients send reaches the model (issue 16, items 1, 2 and 7), through a real gateway.

test_sdk_request_types.py shows nothing is refused; these show the meaning arrives: a
compaction summary as text in place of what it summarised, MCP calls and results as tool calls
and tool messages, mid-conversation tool changes in the upstream `tools`, `clear_at` honoured,
model tags stripped. The fake upstream is strict (it refuses what real providers refuse).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.pipelines.conftest import Gateway

TOOL_A = {"name": "alpha", "description": "A", "input_schema": {"type": "object", "properties": {}}}
TOOL_B = {"name": "beta", "description": "B", "input_schema": {"type": "object", "properties": {}}}
TOOL_C = {"name": "gamma", "description": "C", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
BETA = {"anthropic-beta": "mid-conversation-tool-changes-2026-07-01,inline-tools-2026-09-15"}


@pytest.fixture(scope="module")
def strict(gateway: Gateway) -> Gateway:
    gateway.fake.strict = True
    return gateway


def _upstream(gw: Gateway, messages: list[dict], **extra: Any) -> dict:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": messages, **extra}
    with gw.http() as http:
        r = http.post("/v1/messages", json=body, headers=BETA)
    assert r.status_code == 200, r.text
    return gw.fake.requests[-1].json


def _tool_names(sent: dict) -> list[str]:
    return [t["function"]["name"] for t in sent.get("tools") or ()]


def _texts(sent: dict) -> str:
    out = []
    for m in sent["messages"]:
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p.get("text") or "" for p in content)
    return "\n".join(out)


def _addition(tool: dict) -> dict:
    return {"type": "tool_addition", "tool": {"type": "tool_definition", "definition": tool}}


def _reference(kind: str, name: str) -> dict:
    return {"type": kind, "tool": {"type": "tool_reference", "name": name}}


# -- item 1: converted, not refused ---------------------------------------------------------------


def test_compaction_summary_replaces_what_it_summarised(strict: Gateway) -> None:
    messages = [
        {"role": "user", "content": "the long-gone first question"},
        {"role": "assistant", "content": "the long-gone first answer"},
        {"role": "user", "content": "compact, please"},
        {"role": "assistant", "content": [{"type": "compaction", "content": "We agreed the answer is 42.", "encrypted_content": "opaque"}]},
        {"role": "user", "content": "so what was the answer?"},
    ]
    sent = _upstream(strict, messages)
    text = _texts(sent)
    assert "We agreed the answer is 42." in text
    assert "long-gone" not in text
    assert [m["role"] for m in sent["messages"]] == ["user"]  # the summary and the question, one turn


def test_failed_compaction_is_a_no_op(strict: Gateway) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [{"type": "compaction", "content": None}, {"type": "text", "text": "kept"}]},
        {"role": "user", "content": "next"},
    ]
    text = _texts(_upstream(strict, messages))
    assert "first" in text and "kept" in text


def test_mcp_call_and_result_become_a_tool_call_and_its_result(strict: Gateway) -> None:
    messages = [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking the tracker."},
            {"type": "mcp_tool_use", "id": "mcptoolu_01", "name": "get_issue", "server_name": "tracker", "input": {"id": 7}},
            {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_01", "is_error": False, "content": [{"type": "text", "text": "Issue 7: crash on start"}]},
            {"type": "text", "text": "It is a crash."},
        ]},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip
    sent = _upstream(strict, messages)
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]
    call = sent["messages"][1]["tool_calls"][0]
    assert call["id"] == "mcptoolu_01" and call["function"] == {"name": "get_issue", "arguments": '{"id":7}'}
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "mcptoolu_01", "content": "Issue 7: crash on start"}
    assert sent["messages"][3]["content"] == "It is a crash."


def test_fallback_and_unknown_blocks_are_dropped_and_their_neighbours_kept(strict: Gateway) -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "before the hop"},
            {"type": "fallback", "from": {"model": "claude-opus-5"}, "to": {"model": "claude-sonnet-5"}, "trigger": None},
            {"type": "hologram_2031", "data": "?"},
            {"type": "text", "text": "after the hop"},
        ]},
        {"role": "user", "content": [{"type": "text", "text": "ok"}, {"type": "future_block"}]},
    ]  # fmt: skip
    sent = _upstream(strict, messages)
    assert sent["messages"][1] == {"role": "assistant", "content": "before the hop\n\nafter the hop"}
    assert sent["messages"][2] == {"role": "user", "content": "ok"}


def test_unknown_tool_types_are_dropped_and_custom_tools_kept(strict: Gateway) -> None:
    tools = [TOOL_A, {"type": "teleport_20310101", "name": "teleport"}, {"type": "mcp_toolset", "mcp_server_name": "tracker"}]
    assert _tool_names(_upstream(strict, [{"role": "user", "content": "hi"}], tools=tools)) == ["alpha"]


# -- item 2: mid-conversation tool changes ---------------------------------------------------------


def test_removed_tool_is_no_longer_offered_and_added_one_is(strict: Gateway) -> None:
    messages = [
        {"role": "user", "content": "start"},
        {"role": "system", "content": [_reference("tool_removal", "beta"), _addition(TOOL_C)]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "go on"},
    ]
    sent = _upstream(strict, messages, tools=[TOOL_A, TOOL_B])
    assert _tool_names(sent) == ["alpha", "gamma"]
    assert sent["tools"][1]["function"]["parameters"] == TOOL_C["input_schema"]


def test_changes_apply_in_order_up_to_the_latest_turn(strict: Gateway) -> None:
    messages = [
        {"role": "user", "content": "start"},
        {"role": "system", "content": [_reference("tool_removal", "alpha")]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "more"},
        {"role": "system", "content": [_reference("tool_addition", "alpha"), _reference("tool_removal", "beta")]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "go on"},
    ]
    assert _tool_names(_upstream(strict, messages, tools=[TOOL_A, TOOL_B])) == ["alpha"]


def test_all_tools_removed_sends_none_and_drops_tool_choice(strict: Gateway) -> None:
    messages = [
        {"role": "user", "content": "start"},
        {"role": "system", "content": [_reference("tool_removal", "alpha")]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "go on"},
    ]
    sent = _upstream(strict, messages, tools=[TOOL_A], tool_choice={"type": "tool", "name": "alpha"})
    assert "tools" not in sent and "tool_choice" not in sent


def test_clear_at_next_user_message(strict: Gateway) -> None:
    """A cleared system message (a later user message exists) counts no more: neither its text
    nor its tool changes; one in the final turn still counts."""
    messages = [
        {"role": "user", "content": "start"},
        {"role": "system", "clear_at": "next_user_message", "content": [{"type": "text", "text": "REMINDER-OLD"}, _addition(TOOL_B)]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "go on"},
        {"role": "system", "clear_at": "next_user_message", "content": [{"type": "text", "text": "REMINDER-NOW"}, _addition(TOOL_C)]},
    ]
    sent = _upstream(strict, messages, tools=[TOOL_A])
    assert _tool_names(sent) == ["alpha", "gamma"]
    system = sent["messages"][0]
    assert system["role"] == "system" and "REMINDER-NOW" in system["content"]
    assert "REMINDER-OLD" not in _texts(sent)


def test_system_message_text_without_changes_becomes_system_text(strict: Gateway) -> None:
    messages = [
        {"role": "user", "content": "start"},
        {"role": "system", "content": "The cwd is /src."},
        {"role": "system", "content": [_reference("tool_removal", "nothing-declared")]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "go on"},
    ]
    sent = _upstream(strict, messages, tools=[TOOL_A])
    assert sent["messages"][0] == {"role": "system", "content": "The cwd is /src."}
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert _tool_names(sent) == ["alpha"]


def test_compaction_tool_changes_set_the_tools_from_the_declared_ones(strict: Gateway) -> None:
    messages = [
        {"role": "user", "content": "start"},
        {"role": "system", "content": [_addition(TOOL_B)]},
        {"role": "assistant", "content": [{"type": "compaction", "content": "summary", "tool_changes": [
            _reference("tool_removal", "alpha"), _addition(TOOL_C)]}]},
        {"role": "user", "content": "go on"},
    ]  # fmt: skip
    assert _tool_names(_upstream(strict, messages, tools=[TOOL_A])) == ["gamma"]


def test_per_turn_effort_of_a_system_message(strict: Gateway) -> None:
    messages = [
        {"role": "user", "content": "think hard"},
        {"role": "system", "output_config": {"effort": "high"}},
    ]
    sent = _upstream(strict, messages, thinking={"type": "adaptive"})
    assert sent["reasoning"] == {"effort": "high"}


# -- item 7: model ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "upstream", "effort"),
    [
        ("google/gemini-2.5-pro[1m]", "google/gemini-2.5-pro", None),
        ("openai/gpt-5[1m][high]", "openai/gpt-5", "high"),
        ("openai/gpt-5:low", "openai/gpt-5", "low"),
        ("deepseek/deepseek-r1:free", "deepseek/deepseek-r1:free", None),
    ],
)
def test_model_tags_are_stripped_before_mapping(strict: Gateway, model: str, upstream: str, effort: str | None) -> None:
    body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], "thinking": {"type": "adaptive"}}
    with strict.http() as http:
        r = http.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text
    sent = strict.fake.requests[-1].json
    assert sent["model"] == upstream
    assert sent["reasoning"]["effort"] == (effort or "medium")


def test_claude_alias_with_context_tag_maps_like_the_alias(strict: Gateway) -> None:
    with strict.http() as http:
        r = http.post("/v1/messages", json={"model": "claude-opus-4-6[1m]", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert strict.fake.requests[-1].json["model"] == "test/big"


MCP_TOOL = {
    "name": "file_issue",
    "input_schema": {
        "type": "object",
        "properties": {"issue": {"$ref": "#/$defs/Issue"}, "due": {"type": ["string", "null"]}},
        "required": ["issue"],
        "$defs": {"Issue": {"type": "object", "properties": {"title": {"type": "string"}, "parent": {"$ref": "#/$defs/Issue"}}}},
    },
}
UNION_TOOL = {
    "name": "find",
    "input_schema": {"anyOf": [
        {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        {"type": "object", "properties": {"glob": {"type": "string"}}, "required": ["glob"]},
    ]},
}  # fmt: skip


def _parameters(gw: Gateway, model: str, tool: dict) -> dict:
    with gw.http() as http:
        r = http.post("/v1/messages", json={"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], "tools": [tool]})
    assert r.status_code == 200, r.text
    return gw.fake.requests[-1].json["tools"][0]["function"]["parameters"]


def test_gemini_gets_refs_inlined_and_nullable_types(strict: Gateway) -> None:
    params = _parameters(strict, "google/gemini-2.5-pro[1m]", MCP_TOOL)
    text = str(params)
    assert "$ref" not in text and "$defs" not in text
    issue = params["properties"]["issue"]
    assert issue["properties"]["title"] == {"type": "string"}
    assert issue["properties"]["parent"]["type"] == "string"  # the recursion, cut
    assert params["properties"]["due"] == {"type": "string", "nullable": True}


def test_openai_gets_an_object_at_the_top(strict: Gateway) -> None:
    params = _parameters(strict, "openai/gpt-4o", UNION_TOOL)
    assert params["type"] == "object" and "anyOf" not in params
    assert set(params["properties"]) == {"path", "glob"}


def test_anthropic_models_get_the_schema_unchanged(strict: Gateway) -> None:
    assert _parameters(strict, "anthropic/claude-sonnet-4.5", MCP_TOOL) == MCP_TOOL["input_schema"]
