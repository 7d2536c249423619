"""steps/tools/tool_search.py on its own: what is deferred, what a search finds, how it fails."""

from __future__ import annotations

from steps.tools import tool_search


def tool(name: str, description: str = "", deferred: bool = True, **props: str) -> dict:
    schema = {"type": "object", "properties": {k: {"type": "string", "description": v} for k, v in props.items()}}
    out = {"name": name, "description": description, "input_schema": schema}
    if deferred:
        out["defer_loading"] = True
    return out


CATALOG = [
    tool("get_weather", "Current weather and forecast for a city.", city="City name"),
    tool("slack_send", "Send a message to a Slack channel.", channel="Channel id"),
    tool("github_list_issues", "List the issues of a GitHub repository.", repo="owner/name"),
    tool("getCustomerData", "Look up a customer record.", customer_id="Customer id"),
]


def test_split_keeps_undeferred_and_referenced_tools() -> None:
    plain = tool("Read", deferred=False)
    messages = [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "slack_send", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": [{"type": "tool_reference", "tool_name": "get_weather"}]}]},
        {"role": "assistant", "content": [{"type": "tool_search_tool_result", "tool_use_id": "s1",
                                           "content": {"type": "tool_search_tool_search_result",
                                                       "tool_references": [{"type": "tool_reference", "tool_name": "getCustomerData"}]}}]},
    ]
    offered, deferred = tool_search.split([plain, *CATALOG], messages)
    assert [t["name"] for t in offered] == ["Read", "get_weather", "slack_send", "getCustomerData"]
    assert [t["name"] for t in deferred] == ["github_list_issues"]
    offered, deferred = tool_search.split([plain, *CATALOG], [], {"type": "tool", "name": "github_list_issues"})
    assert [t["name"] for t in offered] == ["Read", "github_list_issues"]


def test_split_without_deferred_tools_is_the_same_list() -> None:
    tools = [tool("Read", deferred=False)]
    assert tool_search.split(tools, [])[0] is tools


def test_regex_searches_names_descriptions_and_parameters() -> None:
    assert tool_search.regex_search("(?i)slack", CATALOG, 5) == ["slack_send"]
    assert tool_search.regex_search("get_.*", CATALOG, 5) == ["get_weather"]
    assert tool_search.regex_search("owner/name", CATALOG, 5) == ["github_list_issues"]
    assert tool_search.regex_search(".", CATALOG, 2) == ["get_weather", "slack_send"]


def test_regex_failures_are_search_errors() -> None:
    result, found = tool_search.run("tool_search_regex", {"pattern": "(x"}, CATALOG)
    assert found == [] and result.is_error
    assert result.block["content"] == {"type": "tool_search_tool_result_error", "error_code": "invalid_tool_input",
                                       "error_message": result.block["content"]["error_message"]}
    result, _ = tool_search.run("tool_search_regex", {"pattern": "a" * 201}, CATALOG)
    assert result.block["content"]["error_code"] == "invalid_tool_input"
    slow = [tool("x", "x" * 5000)]
    result, _ = tool_search.run("tool_search_regex", {"pattern": r"(?:(x+x+)+y)"}, slow)
    assert result.block["content"]["error_code"] == "execution_time_exceeded"


def test_bm25_ranks_by_the_words_of_the_query() -> None:
    assert tool_search.bm25_search("send a slack message", CATALOG, 1) == ["slack_send"]
    assert tool_search.bm25_search("customer data", CATALOG, 5)[0] == "getCustomerData"
    assert tool_search.bm25_search("weather forecast", CATALOG, 5) == ["get_weather"]
    assert tool_search.bm25_search("zebra", CATALOG, 5) == []
    assert tool_search.tokens("getCustomerData mcp__slack_send") == ["get", "customer", "data", "mcp", "slack", "send"]


def test_result_shape_and_history_text() -> None:
    result, found = tool_search.run("tool_search_bm25", {"query": "github issues", "limit": 1}, CATALOG)
    assert found == ["github_list_issues"]
    assert result.block == {"type": "tool_search_tool_result", "content": {
        "type": "tool_search_tool_search_result",
        "tool_references": [{"type": "tool_reference", "tool_name": "github_list_issues"}]}}
    assert tool_search.result_text(result.block) == ("Tools found, callable from now on: github_list_issues.", False)
