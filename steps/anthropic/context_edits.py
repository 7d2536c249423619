"""Context editing (`context_management.edits`, beta `context-management-2025-06-27`) for any model.

The API edits a long conversation before the model reads it; no OpenAI-style upstream knows
the field, so the gateway applies the edits to the request before conversion, in the order
given, and reports what it cleared in the reply's `context_management.applied_edits`
(anthropic.context_reply). Token figures are the local estimate (steps/anthropic/tokens.py).

- `clear_tool_uses_20250919`: once `trigger` is exceeded (input tokens, default 100,000, or a
  number of tool uses), the oldest tool uses are cleared, all but the last `keep` (default 3):
  a `tool_result`'s content becomes a short placeholder (its `tool_reference` blocks stay, so
  a tool a search loaded stays loaded), and with `clear_tool_inputs` (true, or a list of tool
  names) the `tool_use`'s input becomes `{}`. Uses of `exclude_tools` are never cleared. With
  `clear_at_least`, nothing is cleared unless at least that many tokens would be.
- `clear_thinking_20251015`: thinking blocks of all but the last `keep` assistant turns that
  have them (default 1; `"all"` or `{type: all}` keeps every one) are removed. A turn that
  holds nothing but thinking keeps it (an empty assistant turn is invalid everywhere).
- `compact_*`: decided here (its `trigger`, default 150,000 input tokens), carried out by
  pipelines/compact.yaml (steps/anthropic/compaction.py). The top-level `compaction` field
  (`{type: "summarize"}`) always compacts, and nothing is sampled after the block.

Malformed edits are skipped with a debug line, never refused. The input is never mutated.
"""

from __future__ import annotations

from typing import Any

import structlog

from engine.registry import step
from steps.anthropic.tokens import estimate_tokens

_log = structlog.get_logger("steps.anthropic")

CLEARED = "[This tool result was cleared to save context.]"
TOOL_USES_TRIGGER = 100_000
TOOL_USES_KEEP = 3
COMPACT_TRIGGER = 150_000


@step("anthropic.context_edits", blocking=False)
def context_edits(body: dict) -> dict:
    """Apply `context_management` edits (clear_tool_uses, clear_thinking); decide on compaction.

    Returns `{"body", "applied", "compact", "pause"}`: the edited request; the applied edits
    the reply reports (None when the request asked for no context editing); `{"instructions"}`
    when the conversation is to be compacted first (else None); `pause`: true when nothing is
    sampled after the compaction (the top-level `compaction` field, `pause_after_compaction`).
    """
    edits = _edits(body.get("context_management"))
    summarize = body.get("compaction")
    if type(summarize) is dict and summarize.get("type") == "summarize":
        return {"body": body, "applied": None, "compact": {"instructions": _instructions(summarize)}, "pause": True}
    if edits is None:
        return {"body": body, "applied": None, "compact": None, "pause": False}
    applied: list[dict] = []
    compact = None
    pause = False
    for edit in edits:
        kind = edit.get("type") if type(edit) is dict else None
        if type(kind) is not str:
            continue
        if kind.startswith("clear_tool_uses_"):
            body, report = _clear_tool_uses(body, edit)
        elif kind.startswith("clear_thinking_"):
            body, report = _clear_thinking(body, edit)
        elif kind.startswith("compact_"):
            if compact is None and estimate_tokens(body) >= _value(edit.get("trigger"), "input_tokens", COMPACT_TRIGGER):
                compact = {"instructions": _instructions(edit)}
                pause = edit.get("pause_after_compaction") is True
            continue
        else:
            _log.debug("anthropic.context_edit_ignored", type=kind[:64])
            continue
        if report is not None:
            applied.append({"type": kind, **report})
    return {"body": body, "applied": applied, "compact": compact, "pause": pause}


def _edits(config: Any) -> list | None:
    if type(config) is not dict:
        return None
    edits = config.get("edits")
    return edits if type(edits) is list and edits else None


def _instructions(edit: dict) -> str | None:
    text = edit.get("instructions")
    return text if type(text) is str and text.strip() else None


def _value(spec: Any, kind: str, default: int) -> int:
    """`{type: kind, value: n}` → n; anything else → default."""
    if type(spec) is dict and spec.get("type") == kind and type(spec.get("value")) is int and spec["value"] >= 0:
        return spec["value"]
    return default


# -- clear_tool_uses ------------------------------------------------------------------------


def _tool_uses(messages: list) -> list[tuple[int, int, dict]]:
    """(message index, block index, tool_use) of every client tool use, in order."""
    out = []
    for i, m in enumerate(messages):
        if m.get("role") == "assistant" and type(m.get("content")) is list:
            for j, b in enumerate(m["content"]):
                if type(b) is dict and b.get("type") == "tool_use":
                    out.append((i, j, b))
    return out


def _clear_tool_uses(body: dict, edit: dict) -> tuple[dict, dict | None]:
    messages = body["messages"]
    uses = _tool_uses(messages)
    trigger = edit.get("trigger")
    if type(trigger) is dict and trigger.get("type") == "tool_uses":
        if len(uses) <= _value(trigger, "tool_uses", 0):
            return body, None
    elif estimate_tokens(body) <= _value(trigger, "input_tokens", TOOL_USES_TRIGGER):
        return body, None
    keep = _value(edit.get("keep"), "tool_uses", TOOL_USES_KEEP)
    exclude = set(edit.get("exclude_tools") or ()) if type(edit.get("exclude_tools")) is list else set()
    inputs = edit.get("clear_tool_inputs")
    clear_inputs = (lambda name: True) if inputs is True else (lambda name: name in inputs) if type(inputs) is list else (lambda name: False)
    candidates = [u for u in uses if u[2].get("name") not in exclude]
    targets = candidates[: max(0, len(candidates) - keep)]
    if not targets:
        return body, None
    ids = {u[2].get("id") for u in targets}
    new = list(messages)
    copied: set[int] = set()

    def content(i: int) -> list:
        if i not in copied:
            new[i] = {**new[i], "content": list(new[i]["content"])}
            copied.add(i)
        return new[i]["content"]

    for i, j, use in targets:
        if clear_inputs(use.get("name")) and use.get("input"):
            content(i)[j] = {**use, "input": {}}
    for i, m in enumerate(messages):
        if m.get("role") != "user" or type(m.get("content")) is not list:
            continue
        for j, b in enumerate(m["content"]):
            if type(b) is dict and b.get("type") == "tool_result" and b.get("tool_use_id") in ids:
                content(i)[j] = _cleared_result(b)
    out = {**body, "messages": new}
    saved = estimate_tokens(body) - estimate_tokens(out)
    if edit.get("clear_at_least") is not None and saved < _value(edit["clear_at_least"], "input_tokens", 0):
        return body, None  # not worth breaking the prompt cache for
    return out, {"cleared_tool_uses": len(targets), "cleared_input_tokens": max(0, saved)}


def _cleared_result(block: dict) -> dict:
    content = block.get("content")
    refs = [b for b in content if type(b) is dict and b.get("type") == "tool_reference"] if type(content) is list else []
    out = {k: v for k, v in block.items() if k != "content"}
    out["content"] = [{"type": "text", "text": CLEARED}, *refs]
    return out


# -- clear_thinking -------------------------------------------------------------------------


def _keep_turns(keep: Any) -> int | None:
    """How many thinking turns to keep; None = all."""
    if keep == "all" or (type(keep) is dict and keep.get("type") == "all"):
        return None
    return _value(keep, "thinking_turns", 1)


def _has_thinking(m: dict) -> bool:
    content = m.get("content")
    return m.get("role") == "assistant" and type(content) is list and any(
        type(b) is dict and b.get("type") in ("thinking", "redacted_thinking") for b in content
    )


def _clear_thinking(body: dict, edit: dict) -> tuple[dict, dict | None]:
    keep = _keep_turns(edit.get("keep"))
    if keep is None:
        return body, None
    messages = body["messages"]
    turns = [i for i, m in enumerate(messages) if _has_thinking(m)]
    targets = turns[: max(0, len(turns) - keep)]
    new = list(messages)
    cleared = 0
    for i in targets:
        rest = [b for b in messages[i]["content"] if not (type(b) is dict and b.get("type") in ("thinking", "redacted_thinking"))]
        if rest:
            new[i] = {**messages[i], "content": rest}
            cleared += 1
    if not cleared:
        return body, None
    out = {**body, "messages": new}
    return out, {"cleared_thinking_turns": cleared, "cleared_input_tokens": max(0, estimate_tokens(body) - estimate_tokens(out))}
