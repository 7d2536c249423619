"""anthropic.tool_changes and the newer-block conversions of anthropic.clean, step by step."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import structlog
from structlog.testing import capture_logs

from steps.anthropic.clean import clean
from steps.anthropic.tool_changes import tool_changes, tool_key
from steps.anthropic.validate import validate

A = {"name": "alpha", "input_schema": {"type": "object"}}
B = {"name": "beta", "input_schema": {"type": "object"}, "defer_loading": True}
WEB = {"type": "web_search_20250305", "name": "web_search"}


@pytest.fixture
def debug_logs() -> Iterator[list[dict]]:
    """Log lines at every level (the suite logs warnings only), captured."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**saved)


def _body(messages: list, **extra) -> dict:
    return {"model": "m", "max_tokens": 5, "messages": messages, **extra}


def _names(body: dict) -> list[str]:
    return [t.get("name") for t in body.get("tools") or ()]


def _change(kind: str, name: str) -> dict:
    return {"type": kind, "tool": {"type": "tool_reference", "name": name}}


def test_no_system_messages_and_no_changes_is_the_same_body() -> None:
    body = _body([{"role": "user", "content": "hi"}], tools=[A])
    assert tool_changes(body=body) is body


def test_malformed_shapes_are_left_for_validate() -> None:
    for body in (_body("not a list"), _body([{"role": "system", "content": []}], tools="x")):
        assert tool_changes(body=body) is body


def test_removal_then_readdition_by_reference_loads_a_deferred_tool() -> None:
    body = _body(
        [
            {"role": "user", "content": "a"},
            {"role": "system", "content": [_change("tool_removal", "alpha")]},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "system", "content": [_change("tool_addition", "beta")]},
        ],
        tools=[A, B],
    )
    out = tool_changes(body=body)
    assert out["tools"] == [{"name": "beta", "input_schema": {"type": "object"}}]  # defer_loading gone
    assert body["tools"] == [A, B] and "defer_loading" in B  # the input is not mutated


def test_inline_definition_replaces_and_server_tools_count_too() -> None:
    redefined = {"name": "alpha", "description": "v2", "input_schema": {"type": "object"}}
    messages = [
        {"role": "user", "content": "a"},
        {"role": "system", "content": [
            {"type": "tool_addition", "tool": {"type": "tool_definition", "definition": redefined}},
            {"type": "tool_addition", "tool": {"type": "tool_definition", "definition": WEB}},
        ]},
    ]  # fmt: skip
    out = tool_changes(body=_body(messages, tools=[A]))
    assert out["tools"] == [redefined, WEB]


def test_mcp_and_unknown_references_are_ignored_and_logged(debug_logs: list[dict]) -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "system", "content": [
            {"type": "tool_addition", "tool": {"type": "mcp_tool_reference", "server_name": "s", "name": "n"}},
            {"type": "tool_removal", "tool": {"type": "teleport_reference"}},
            _change("tool_addition", "never-declared"),
        ]},
    ]  # fmt: skip
    out = tool_changes(body=_body(messages, tools=[A]))
    assert out["tools"] == [A]
    (line,) = [x for x in debug_logs if x["event"] == "anthropic.tool_changes_ignored"]
    assert line["kinds"] == ["mcp_tool_reference", "teleport_reference", "tool_reference:unknown"]


def test_clear_at_drops_the_message_once_a_user_message_follows() -> None:
    cleared = {"role": "system", "clear_at": "next_user_message", "content": [{"type": "text", "text": "x"}, _change("tool_removal", "alpha")]}
    kept = {**cleared, "clear_at": "never"}
    out = tool_changes(body=_body([{"role": "user", "content": "a"}, cleared, {"role": "user", "content": "b"}], tools=[A]))
    assert cleared not in out["messages"] and out["tools"] == [A]
    out = tool_changes(body=_body([{"role": "user", "content": "a"}, kept, {"role": "user", "content": "b"}], tools=[A]))
    assert kept in out["messages"] and "tools" in out and out["tools"] == []


def test_a_failed_compaction_changes_nothing() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "compaction", "content": None, "tool_changes": [_change("tool_removal", "alpha")]}]},
    ]
    assert tool_changes(body=_body(messages, tools=[A])).get("tools", [A]) == [A]


def test_toolsets_are_keyed_by_family() -> None:
    assert tool_key({"type": "browser_toolset_20260801"}) == "#browser"
    assert tool_key({"type": "mcp_toolset", "mcp_server_name": "x"}) == "#mcp"
    assert tool_key({"name": "Bash"}) == "Bash"


def test_betas_are_logged_at_debug(debug_logs: list[dict]) -> None:
    request = SimpleNamespace(headers={"anthropic-beta": "mid-conversation-tool-changes-2026-07-01, compact-2026-01-12"})
    tool_changes(body=_body([{"role": "user", "content": "hi"}]), request=request)
    assert {"event": "anthropic.betas", "log_level": "debug", "betas": ["mid-conversation-tool-changes-2026-07-01", "compact-2026-01-12"]} in debug_logs


# -- clean: newer blocks and model tags ------------------------------------------------------------


def test_unknown_blocks_are_dropped_with_a_debug_line(debug_logs: list[dict]) -> None:
    body = _body([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "hologram"}, {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "weird"}]}]}])
    out = clean(body=body)
    assert out["messages"][0]["content"][0] == {"type": "text", "text": "hi"}
    assert out["messages"][0]["content"][1] == {"type": "tool_result", "tool_use_id": "t"}
    dropped = {t for x in debug_logs if x["event"] == "anthropic.dropped_blocks" for t in x["types"]}
    assert dropped == {"hologram", "weird"}


def test_unknown_system_blocks_are_dropped_not_refused() -> None:
    body = _body([{"role": "user", "content": "hi"}], system=[{"type": "text", "text": "rules"}, {"type": "future_system_block"}])
    assert validate(body=clean(body=body))["system"] == [{"type": "text", "text": "rules"}]


def test_system_message_without_content_is_dropped() -> None:
    body = _body([{"role": "user", "content": "hi"}, {"role": "system", "output_config": {"effort": "low"}}])
    out = validate(body=clean(body=tool_changes(body=body)))
    assert out["messages"] == [{"role": "user", "content": "hi"}]
    assert out["output_config"] == {"effort": "low"}


def test_an_mcp_result_without_its_call_becomes_text() -> None:
    body = _body([
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "mcp_tool_result", "tool_use_id": "nope", "content": "orphan output"}]},
        {"role": "user", "content": "b"},
    ])  # fmt: skip
    out = validate(body=clean(body=body))
    assert out["messages"][1]["content"] == [{"type": "text", "text": "(MCP tool result)\norphan output"}]


def test_an_mcp_result_in_the_next_user_turn_answers_the_call() -> None:
    body = _body([
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "mcp_tool_use", "id": "m1", "name": "n", "server_name": "s", "input": {}}]},
        {"role": "user", "content": [{"type": "mcp_tool_result", "tool_use_id": "m1", "is_error": True, "content": "denied"}]},
    ])  # fmt: skip
    out = validate(body=clean(body=body))
    assert out["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "m1", "content": "denied", "is_error": True}]


@pytest.mark.parametrize(
    ("model", "stripped", "effort"),
    [
        ("google/gemini-2.5-pro[1m]", "google/gemini-2.5-pro", None),
        ("claude-opus-4-6[2M]", "claude-opus-4-6", None),
        ("sonnet[1m][xhigh]", "sonnet", "xhigh"),
        ("openai/gpt-5:max", "openai/gpt-5", "max"),
        ("openai/o3-mini-high", "openai/o3-mini-high", None),  # a real id, not a tag
        ("qwen/qwen3:free", "qwen/qwen3:free", None),
        ("[1m]", "[1m]", None),
    ],
)
def test_model_tags(model: str, stripped: str, effort: str | None) -> None:
    out = clean(body=_body([{"role": "user", "content": "hi"}], model=model))
    assert out["model"] == stripped
    assert (out.get("output_config") or {}).get("effort") == effort


def test_an_effort_tag_never_overrides_the_request_effort() -> None:
    out = clean(body=_body([{"role": "user", "content": "hi"}], model="opus[high]", output_config={"effort": "low"}))
    assert out["model"] == "opus" and out["output_config"] == {"effort": "low"}
