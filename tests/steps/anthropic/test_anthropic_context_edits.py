"""anthropic.context_edits and the compaction steps on their own (no engine, no server)."""

from __future__ import annotations

import copy

from steps.anthropic.compaction import PROMPT, apply_compaction, compaction_block, compaction_request
from steps.anthropic.context_edits import CLEARED, context_edits


def history(n: int, name: str = "lookup") -> list[dict]:
    messages: list[dict] = [{"role": "user", "content": "go"}]
    for i in range(n):
        messages.append({"role": "assistant", "content": [
            {"type": "thinking", "thinking": f"t{i}", "signature": "s"},
            {"type": "tool_use", "id": f"t{i}", "name": name, "input": {"q": i}}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}", "content": f"r{i} " * 20}]})
    return messages


def body(messages: list[dict], *edits: dict, **extra: object) -> dict:
    return {"model": "m", "max_tokens": 10, "messages": messages, "context_management": {"edits": list(edits)}, **extra}


def results(b: dict) -> list:
    return [blk["content"] for m in b["messages"] if m["role"] == "user" and isinstance(m["content"], list) for blk in m["content"]]


def test_no_context_management_passes_the_body_through() -> None:
    b = {"model": "m", "messages": history(2)}
    out = context_edits(b)
    assert out == {"body": b, "applied": None, "compact": None, "pause": False} and out["body"] is b


def test_clear_tool_uses_keeps_the_last_and_never_mutates() -> None:
    b = body(history(5), {"type": "clear_tool_uses_20250919", "trigger": {"type": "tool_uses", "value": 3},
                          "keep": {"type": "tool_uses", "value": 1}, "clear_tool_inputs": ["other"]})
    before = copy.deepcopy(b)
    out = context_edits(b)
    assert b == before
    assert [r[0]["text"] == CLEARED if isinstance(r, list) else False for r in results(out["body"])] == [True] * 4 + [False]
    assert out["applied"][0]["cleared_tool_uses"] == 4
    uses = [blk for m in out["body"]["messages"] if m["role"] == "assistant" for blk in m["content"] if blk["type"] == "tool_use"]
    assert all(u["input"] for u in uses)  # clear_tool_inputs names another tool


def test_the_default_trigger_is_a_token_count() -> None:
    out = context_edits(body(history(5), {"type": "clear_tool_uses_20250919"}))
    assert out["applied"] == [] and out["body"]["messages"] == history(5)
    out = context_edits(body(history(5), {"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens", "value": 10}}))
    assert out["applied"][0]["cleared_tool_uses"] == 2  # default keep: 3


def test_a_cleared_result_keeps_its_tool_references() -> None:
    messages = history(2)
    messages[2]["content"][0]["content"] = [{"type": "text", "text": "found"}, {"type": "tool_reference", "tool_name": "x"}]
    out = context_edits(body(messages, {"type": "clear_tool_uses_20250919", "trigger": {"type": "tool_uses", "value": 0},
                                        "keep": {"type": "tool_uses", "value": 1}}))
    assert results(out["body"])[0] == [{"type": "text", "text": CLEARED}, {"type": "tool_reference", "tool_name": "x"}]


def test_clear_thinking_counts_turns_and_keeps_thinking_only_turns() -> None:
    messages = history(3)
    messages.insert(1, {"role": "assistant", "content": [{"type": "thinking", "thinking": "alone", "signature": "s"}]})
    out = context_edits(body(messages, {"type": "clear_thinking_20251015"}))
    assert out["applied"] == [{"type": "clear_thinking_20251015", "cleared_thinking_turns": 2,
                               "cleared_input_tokens": out["applied"][0]["cleared_input_tokens"]}]
    kinds = [[blk["type"] for blk in m["content"]] for m in out["body"]["messages"] if m["role"] == "assistant"]
    assert kinds == [["thinking"], ["tool_use"], ["tool_use"], ["thinking", "tool_use"]]
    assert context_edits(body(messages, {"type": "clear_thinking_20251015", "keep": {"type": "all"}}))["applied"] == []


def test_malformed_and_unknown_edits_are_skipped() -> None:
    out = context_edits(body(history(1), "nonsense", {"type": 3}, {"type": "clear_everything_20990101"}))  # type: ignore[arg-type]
    assert out["applied"] == [] and out["compact"] is None


def test_compaction_is_decided_by_its_trigger_or_the_summarize_field() -> None:
    edit = {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 5}, "instructions": "brief"}
    assert context_edits(body(history(1), edit))["compact"] == {"instructions": "brief"}
    assert context_edits(body(history(1), {"type": "compact_20260112"}))["compact"] is None
    out = context_edits({"model": "m", "messages": history(1), "compaction": {"type": "summarize", "instructions": "  "}})
    assert out["compact"] == {"instructions": None} and out["pause"] is True


def test_the_summarising_request_and_its_block() -> None:
    tools = [{"name": "lookup", "input_schema": {}}, {"name": "later", "input_schema": {}, "defer_loading": True}]
    req = compaction_request({"model": "m", "system": "sys", "messages": history(1), "tools": tools, "thinking": {"type": "enabled"}})
    assert req["messages"][-1]["content"][-1] == {"type": "text", "text": PROMPT}
    assert req["tools"] == tools[:1] and req["tool_choice"] == {"type": "none"} and "thinking" not in req
    assert req["stream"] is False and req["system"] == "sys"
    req = compaction_request({"model": "m", "messages": [{"role": "assistant", "content": "hi"}]}, instructions="names only")
    assert req["messages"][-1] == {"role": "user", "content": [{"type": "text", "text": "names only"}]}
    block = compaction_block({"content": [{"type": "text", "text": " the summary "}], "usage": {"output_tokens": 3}})
    assert block == {"block": {"type": "compaction", "content": "the summary"}, "usage": {"output_tokens": 3}}
    assert compaction_block({"content": []})["block"]["content"] is None
    compacted = apply_compaction({"model": "m", "messages": history(2)}, block)
    assert len(compacted["messages"]) == 1 and compacted["messages"][0]["content"][0]["text"].endswith("the summary")
    failed = {"block": {"type": "compaction", "content": None}}
    original = {"model": "m", "messages": history(1)}
    assert apply_compaction(original, failed) is original and apply_compaction(original, None) is original
