"""Context editing and compaction for any model (issue 16 item 6), through a real gateway with
the SDK as client: `context_management` edits applied before conversion and reported in
`context_management.applied_edits`; `compact_*` and the top-level `compaction` answered by a
summarising sub-call (pipelines/compact.yaml) that returns a `compaction` block."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from steps.anthropic.compaction import PROMPT
from steps.anthropic.context_edits import CLEARED
from tests.pipelines.conftest import Gateway

BETAS = ["context-management-2025-06-27", "compact-2026-01-12"]
TOOL = {"name": "lookup", "description": "Look a word up", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
KEEP = {"name": "memory", "description": "Notes", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}


def tool_history(n: int) -> list[dict]:
    """A conversation with n tool uses (every third one of `memory`), each answered."""
    messages: list[dict] = [{"role": "user", "content": "Look up some words."}]
    for i in range(n):
        name = "memory" if i % 3 == 2 else "lookup"
        messages.append({"role": "assistant", "content": [
            {"type": "thinking", "thinking": f"thought {i}", "signature": "sig"},
            {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {"q": f"word {i}"}}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": f"result {i} " * 50}]})
    return messages


def _create(gw: Gateway, messages: list[dict], stream: bool = False, **kw: Any) -> Any:
    args = {"model": "claude-sonnet-4-5", "max_tokens": 300, "betas": BETAS, "messages": messages, **kw}
    if stream:
        with gw.client().beta.messages.stream(**args) as s:
            return s.get_final_message()
    return gw.client().beta.messages.create(**args)


def _tool_texts(sent: dict) -> list[str]:
    return [m["content"] for m in sent["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_clear_tool_uses_clears_the_oldest_results_and_reports_it(gateway: Gateway, stream: bool) -> None:
    edit = {"type": "clear_tool_uses_20250919", "trigger": {"type": "tool_uses", "value": 4},
            "keep": {"type": "tool_uses", "value": 2}, "exclude_tools": ["memory"], "clear_tool_inputs": True}
    msg = _create(gateway, tool_history(7), stream, tools=[TOOL, KEEP], context_management={"edits": [edit]})
    # 7 uses, 2 of them `memory` (excluded): 5 candidates, the last 2 kept, 3 cleared.
    (applied,) = msg.context_management.applied_edits
    assert applied.type == "clear_tool_uses_20250919" and applied.cleared_tool_uses == 3
    assert applied.cleared_input_tokens > 0
    sent = gateway.fake.requests[-1].json
    texts = _tool_texts(sent)
    assert [CLEARED in t for t in texts] == [True, True, False, True, False, False, False]
    assert "result 2" in texts[2] and "result 6" in texts[6]
    calls = [c for m in sent["messages"] if m.get("tool_calls") for c in m["tool_calls"]]
    assert [c["function"]["arguments"] for c in calls][:2] == ["{}", "{}"]  # clear_tool_inputs
    assert calls[2]["function"]["arguments"] == '{"q":"word 2"}'


def test_edits_below_their_trigger_change_nothing(gateway: Gateway) -> None:
    edits = [{"type": "clear_tool_uses_20250919"}, {"type": "clear_thinking_20251015", "keep": "all"}]
    msg = _create(gateway, tool_history(3), tools=[TOOL, KEEP], context_management={"edits": edits})
    assert msg.context_management.applied_edits == []
    assert not any(CLEARED in t for t in _tool_texts(gateway.fake.requests[-1].json))


def test_clear_at_least_holds_back_a_small_clearing(gateway: Gateway) -> None:
    edit = {"type": "clear_tool_uses_20250919", "trigger": {"type": "tool_uses", "value": 1},
            "keep": {"type": "tool_uses", "value": 2}, "clear_at_least": {"type": "input_tokens", "value": 100_000}}
    msg = _create(gateway, tool_history(4), tools=[TOOL, KEEP], context_management={"edits": [edit]})
    assert msg.context_management.applied_edits == []


def test_clear_thinking_keeps_the_last_turns(gateway: Gateway) -> None:
    edit = {"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 1}}
    msg = _create(gateway, tool_history(4), tools=[TOOL, KEEP], context_management={"edits": [edit]},
                  thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2048)
    (applied,) = msg.context_management.applied_edits
    assert applied.type == "clear_thinking_20251015" and applied.cleared_thinking_turns == 3


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_compaction_trigger_summarises_then_answers(gateway: Gateway, stream: bool) -> None:
    gateway.fake.script("text=" + quote("SUMMARY: the user looked up seven words."), "ok")
    edit = {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 1000}}
    msg = _create(gateway, tool_history(7), stream, tools=[TOOL, KEEP], context_management={"edits": [edit]})
    assert [b.type for b in msg.content] == ["compaction", "text"]
    assert msg.content[0].content == "SUMMARY: the user looked up seven words."
    assert msg.stop_reason == "end_turn" and msg.context_management.applied_edits == []
    assert [i.type for i in msg.usage.iterations] == ["compaction", "message"]
    assert msg.usage.iterations[0].output_tokens > 0  # the summary's tokens, apart from the totals
    summarise, answer = (r.json for r in gateway.fake.requests)
    assert summarise["messages"][-1]["content"] == PROMPT and summarise.get("tool_choice") == "none"
    assert len(answer["messages"]) == 1 and "SUMMARY: the user looked up" in answer["messages"][0]["content"]

    # The client sends the block back: the next request reads the conversation from it on.
    gateway.fake.clear()
    follow = [*tool_history(7), {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
              {"role": "user", "content": "And now?"}]
    _create(gateway, follow, tools=[TOOL, KEEP])
    sent = gateway.fake.requests[-1].json
    assert "seven words" in str(sent["messages"][0]["content"]) and not _tool_texts(sent)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_pause_after_compaction_returns_the_block_alone(gateway: Gateway, stream: bool) -> None:
    gateway.fake.script("text=" + quote("Short summary."))
    edit = {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 1000},
            "pause_after_compaction": True, "instructions": "Summarise in one line."}
    msg = _create(gateway, tool_history(5), stream, tools=[TOOL, KEEP], context_management={"edits": [edit]})
    assert [b.type for b in msg.content] == ["compaction"] and msg.content[0].content == "Short summary."
    assert msg.stop_reason == "compaction"
    (only,) = (r.json for r in gateway.fake.requests)
    assert only["messages"][-1]["content"] == "Summarise in one line."


def test_below_the_compaction_trigger_nothing_is_summarised(gateway: Gateway) -> None:
    edit = {"type": "compact_20260112"}  # default trigger: 150,000 input tokens
    msg = _create(gateway, tool_history(2), tools=[TOOL, KEEP], context_management={"edits": [edit]})
    assert [b.type for b in msg.content] == ["text"] and len(gateway.fake.requests) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_summarize_request_returns_only_the_block(gateway: Gateway, stream: bool) -> None:
    """The top-level `compaction: {type: summarize}`: the block alone, stop_reason compaction."""
    gateway.fake.script("text=" + quote("Names: alpha, beta."))
    msg = _create(gateway, [{"role": "user", "content": "alpha"}, {"role": "assistant", "content": "beta"}], stream,
                  compaction={"type": "summarize", "instructions": "Only the names."})
    assert [b.type for b in msg.content] == ["compaction"] and msg.content[0].content == "Names: alpha, beta."
    assert msg.stop_reason == "compaction" and msg.usage.output_tokens >= 1
    assert [i.type for i in msg.usage.iterations] == ["compaction"]
    (only,) = (r.json for r in gateway.fake.requests)
    assert only["messages"][-1] == {"role": "user", "content": "Only the names."}


def test_empty_summary_is_a_failed_compaction(gateway: Gateway) -> None:
    gateway.fake.script("empty")
    msg = _create(gateway, [{"role": "user", "content": "alpha"}], compaction={"type": "summarize"})
    assert msg.content[0].type == "compaction" and msg.content[0].content is None
