"""Tool search for any model (issue 16 item 5), through a real gateway with the SDK as client.

Deferred tools (`defer_loading: true`) stay out of the upstream request until a
`tool_reference` loads them; the API's tool-search server tools are answered by the gateway
over the deferred tools and return `tool_search_tool_result` blocks as the API does; Claude
Code's own deferral (its ToolSearch client tool) keeps working. The upstream request sizes
with and without deferral are printed (`pytest -s`) for 40 deferred tools.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures import CLAUDE_CODE
from tests.pipelines.conftest import Gateway
from tests.support.fake_openrouter import tool_mode

BETAS = ["advanced-tool-use-2025-11-20"]
SERVICES = ["github", "slack", "sentry", "grafana", "jira", "linear", "notion", "stripe"]
ACTIONS = ["create", "list", "update", "delete", "search"]


def mcp_tools() -> list[dict]:
    """40 MCP-like tools with realistic schemas (a few hundred bytes to a kilobyte each)."""
    tools = []
    for service in SERVICES:
        for action in ACTIONS:
            props = {
                f"{service}_id": {"type": "string", "description": f"The {service} object identifier to {action}."},
                "fields": {"type": "array", "items": {"type": "string"}, "description": "Fields to return in the answer."},
                "page_size": {"type": "integer", "minimum": 1, "maximum": 100, "description": "How many objects per page."},
                "cursor": {"type": "string", "description": "Opaque cursor from a previous page, to continue listing."},
                "filter": {"type": "object", "description": "Filters as key/value pairs.", "additionalProperties": {"type": "string"}},
            }
            tools.append({
                "name": f"mcp__{service}__{action}_item",
                "description": f"{action.capitalize()} an item in {service.capitalize()} through its MCP server. "
                               f"Use it when the user asks to {action} {service} objects; returns JSON.",
                "input_schema": {"type": "object", "properties": props, "required": [f"{service}_id"], "additionalProperties": False},
                "defer_loading": True,
            })
    tools.append({"name": "get_weather", "description": "Current weather for a city.", "defer_loading": True,
                  "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}})
    return tools


def _names(sent: dict) -> set[str]:
    return {t["function"]["name"] for t in sent.get("tools") or ()}


def _ask(gw: Gateway, tools: list[dict], messages: list[dict] | None = None, stream: bool = False) -> Any:
    args = {"model": "claude-sonnet-4-5", "max_tokens": 200, "betas": BETAS, "tools": tools,
            "messages": messages or [{"role": "user", "content": "What is the weather in Paris?"}]}
    if stream:
        with gw.client().beta.messages.stream(**args) as s:
            return s.get_final_message()
    return gw.client().beta.messages.create(**args)


@pytest.mark.parametrize(("variant", "stream"), [("regex", False), ("bm25", False), ("regex", True)], ids=["regex", "bm25", "regex-sse"])
def test_search_finds_a_deferred_tool_and_offers_it(gateway: Gateway, variant: str, stream: bool) -> None:
    """The search runs on the gateway; the deferred schemas never go upstream until found; the
    found tool is offered in the next turn and in every later request that carries the result."""
    search = {"type": f"tool_search_tool_{variant}_20251119", "name": f"tool_search_tool_{variant}"}
    tools = [search, *mcp_tools()]
    args = {"pattern": "(?i)weather"} if variant == "regex" else {"query": "weather in a city"}
    gateway.fake.script(tool_mode(f"tool_search_tool_{variant}", args), tool_mode("get_weather", {"city": "Paris"}))
    msg = _ask(gateway, tools, stream=stream)
    assert [b.type for b in msg.content] == ["server_tool_use", "tool_search_tool_result", "tool_use"]
    use, result, call = msg.content
    assert use.name == f"tool_search_tool_{variant}" and use.input == args
    assert result.tool_use_id == use.id
    assert result.content.type == "tool_search_tool_search_result"
    found = [r.tool_name for r in result.content.tool_references]
    assert found[0] == "get_weather" and len(found) <= 5  # best match first, the default limit
    assert call.name == "get_weather" and msg.stop_reason == "tool_use"

    first, second = (r.json for r in gateway.fake.requests)
    assert _names(first) == {f"tool_search_tool_{variant}"}  # no deferred schema went upstream
    assert "mcp__github__create_item" not in gateway.fake.requests[0].body.decode()
    assert "41 tools" in first["tools"][0]["function"]["description"]
    assert _names(second) == {f"tool_search_tool_{variant}", *found}

    # The client answers the call with the whole history: the found tool stays loaded.
    gateway.fake.clear()
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"}]},
    ]
    done = _ask(gateway, tools, history)
    assert done.stop_reason == "end_turn"
    (third,) = (r.json for r in gateway.fake.requests)
    assert _names(third) == {f"tool_search_tool_{variant}", *found}
    tool_texts = [m["content"] for m in third["messages"] if m["role"] == "tool"]
    assert any("get_weather" in t for t in tool_texts) and any("18 C" in t for t in tool_texts)


def test_bad_pattern_is_a_search_error_not_a_failure(gateway: Gateway) -> None:
    tools = [{"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"}, *mcp_tools()]
    gateway.fake.script(tool_mode("tool_search_tool_regex", {"pattern": "(unclosed"}), "ok")
    msg = _ask(gateway, tools)
    assert [b.type for b in msg.content][:2] == ["server_tool_use", "tool_search_tool_result"]
    assert msg.content[1].content.type == "tool_search_tool_result_error"
    assert msg.content[1].content.error_code == "invalid_tool_input"
    assert msg.stop_reason == "end_turn"


def test_client_side_search_result_loads_the_tool(gateway: Gateway) -> None:
    """A client's own search (no server tool): a tool_reference in a tool_result loads the tool."""
    finder = {"name": "find_tools", "description": "Find tools", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
    tools = [finder, *mcp_tools()]
    history = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "find_tools", "input": {"q": "weather"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "tool_reference", "tool_name": "get_weather"}]}]},
    ]
    _ask(gateway, tools, history)
    assert _names(gateway.fake.requests[-1].json) == {"find_tools", "get_weather"}
    gateway.fake.clear()
    _ask(gateway, tools)
    assert _names(gateway.fake.requests[-1].json) == {"find_tools"}


def test_claude_codes_own_deferral_is_unchanged(gateway: Gateway) -> None:
    """Claude Code's first turn: every tool it loads goes upstream; only its deferred placeholder
    ("never call this tool") stays out. After its ToolSearch returns tool_reference blocks, the
    referenced deferred tool is offered."""
    body = json.loads((CLAUDE_CODE.parent / "claude-code-2.1.332" / "first_turn.json").read_text())
    body["stream"] = False
    loaded = {t["name"] for t in body["tools"] if not t.get("defer_loading")}
    with gateway.http() as http:
        r = http.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text
    assert _names(gateway.fake.requests[-1].json) == loaded

    mcp = {"name": "mcp__github__list_issues", "description": "List issues", "defer_loading": True,
           "input_schema": {"type": "object", "properties": {"repo": {"type": "string"}}}}
    body["tools"].append(mcp)
    body["messages"] += [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_ts", "name": "ToolSearch", "input": {"query": "select:mcp__github__list_issues"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_ts",
                                      "content": [{"type": "tool_reference", "tool_name": "mcp__github__list_issues"}]}]},
    ]
    gateway.fake.clear()
    with gateway.http() as http:
        r = http.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text
    assert _names(gateway.fake.requests[-1].json) == loaded | {"mcp__github__list_issues"}


def test_upstream_bytes_with_and_without_deferral(gateway: Gateway) -> None:
    """The figure issue 16 asks for: one SDK request with 40 deferred tools (+1) and a search tool,
    against the same tools loaded up front (what the gateway sent before)."""
    search = {"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"}
    deferred = [search, *mcp_tools()]
    eager = [search, *({k: v for k, v in t.items() if k != "defer_loading"} for t in mcp_tools())]
    sizes = {}
    for label, tools in (("all tools loaded", eager), ("deferred", deferred)):
        gateway.fake.clear()
        _ask(gateway, tools)
        sizes[label] = len(gateway.fake.requests[-1].body)
    client_bytes = len(json.dumps({"tools": deferred}))
    print(f"\nupstream request bytes, 41 tools + tool search ({client_bytes} B of tools from the client): "
          f"all loaded {sizes['all tools loaded']} B, deferred {sizes['deferred']} B "
          f"({100 * sizes['deferred'] / sizes['all tools loaded']:.0f}%)")
    assert sizes["deferred"] < sizes["all tools loaded"]
