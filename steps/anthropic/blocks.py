"""Content blocks of newer clients, turned into blocks every later step knows, or dropped.

A session that started on Anthropic's API, or a client one release newer than the gateway,
sends blocks this code was not written for; a 400 on them would end the session (issue 16).
anthropic.clean runs `convert_history` over the messages first:

- `compaction`: the API reads the conversation from its last compaction block on, so the
  messages before it are dropped (system-role ones kept: they are instructions, not turns) and
  the summary becomes a user text block (a failed compaction, `content: null`, is a no-op).
- `mcp_tool_use` / `mcp_tool_result` (the API's MCP connector, run server-side) become a
  `tool_use` and its `tool_result`: an assistant turn holding both is split into assistant,
  user (the result), assistant, as the tool loop would have written it. A result whose call is
  not in the turn before becomes text.
- `fallback` (the boundary of a server-side model fallback) and `mcp_tool_listing` carry
  nothing the model reads: dropped, the blocks around them kept.
- Any other type that is not in `KNOWN` is dropped, except a `*_tool_result` that names its
  call: a newer server tool's result, which the converter renders as text with the others.

Every dropped type is logged (names only) at debug. The input is never mutated.
"""

from __future__ import annotations

from typing import Any

import structlog

from steps.anthropic.models import BLOCK_TYPES

_log = structlog.get_logger("steps.anthropic")

KNOWN = frozenset(BLOCK_TYPES) | {"tool_addition", "tool_removal"}
"""Types later steps handle themselves (tool changes are anthropic.tool_changes' and clean's)."""

TOOL_RESULT_CONTENT = frozenset({"text", "image", "document", "search_result", "tool_reference"})
"""Block types a `tool_result` may hold; anything else inside one is dropped."""

COMPACTION_PREFIX = "Summary of the earlier conversation:\n\n"


def is_known(block: dict) -> bool:
    """A type later steps handle, or not a type at all (validate refuses that)."""
    t = block.get("type")
    if type(t) is not str:
        return True
    return t in KNOWN or (t.endswith("_tool_result") and t != "mcp_tool_result" and "tool_use_id" in block)


def _needs_work(messages: list) -> bool:
    for m in messages:
        content = m.get("content") if type(m) is dict else None
        if type(content) is list:
            for b in content:
                if type(b) is dict and type(b.get("type")) is str and not is_known(b):
                    return True
    return False


def convert_history(messages: list) -> list | None:
    """`messages` with newer blocks converted or dropped, or None when there was nothing to do.

    Shapes it does not understand (a message that is not an object, content that is not a
    list) are passed through for clean and validate to judge.
    """
    if not _needs_work(messages):
        return None
    dropped: set[str] = set()
    messages = _from_last_compaction(messages)
    out: list = []
    calls: set[str] = set()  # ids of MCP calls (now tool_use) the next result may answer
    for m in messages:
        content = m.get("content") if type(m) is dict else None
        if type(content) is not list or not any(type(b) is dict and not is_known(b) for b in content):
            out.append(m)
            if type(m) is dict and m.get("role") == "assistant":
                calls = set()
            continue
        if m.get("role") == "assistant":
            calls = set()
        out.extend(_convert_message(m, content, calls, dropped))
    if dropped:
        _log.debug("anthropic.dropped_blocks", types=sorted(dropped)[:20])
    return out


def _from_last_compaction(messages: list) -> list:
    """The conversation from the last compaction summary on (system-role messages kept)."""
    at = None
    for i in range(len(messages) - 1, -1, -1):
        content = messages[i].get("content") if type(messages[i]) is dict else None
        if type(content) is list:
            for j in range(len(content) - 1, -1, -1):
                b = content[j]
                if type(b) is dict and b.get("type") == "compaction" and _summary(b) is not None:
                    at = (i, j)
                    break
        if at is not None:
            break
    if at is None:
        return messages
    i, j = at
    m = messages[i]
    block = m["content"][j]
    text: dict[str, Any] = {"type": "text", "text": COMPACTION_PREFIX + _summary(block)}  # type: ignore[operator]
    if block.get("cache_control") is not None:
        text["cache_control"] = block["cache_control"]
    kept = [x for x in messages[:i] if type(x) is dict and x.get("role") == "system"]
    rest = m["content"][j + 1 :]
    if m.get("role") == "assistant":
        kept.append({"role": "user", "content": [text]})
        if rest:
            kept.append({**m, "content": rest})
    else:
        kept.append({**m, "content": [text, *rest]})
    return kept + messages[i + 1 :]


def _summary(block: dict) -> str | None:
    content = block.get("content")
    return content if type(content) is str and content.strip() else None


def _convert_message(m: dict, content: list, calls: set[str], dropped: set[str]) -> list[dict]:
    """One message → one or more: an assistant turn is split where an MCP result answers a call."""
    role = m.get("role")
    out: list[dict] = []
    segment: list = []
    for b in content:
        if type(b) is not dict or is_known(b):
            segment.append(b)
            continue
        t = b.get("type")
        if t == "mcp_tool_use":
            call_id = b.get("id")
            use: dict[str, Any] = {"type": "tool_use", "id": call_id, "name": b.get("name"), "input": b.get("input") or {}}
            if b.get("cache_control") is not None:
                use["cache_control"] = b["cache_control"]
            segment.append(use)
            if type(call_id) is str:
                calls.add(call_id)
        elif t == "mcp_tool_result":
            result = _mcp_result(b)
            call_id = b.get("tool_use_id")
            if call_id in calls and role == "assistant":
                if segment:
                    out.append({**m, "content": segment})
                    segment = []
                out.append({"role": "user", "content": [result]})
            elif call_id in calls and role == "user":
                segment.append(result)
            else:
                text = _result_text(b)
                if text:
                    segment.append({"type": "text", "text": f"(MCP tool result)\n{text}"})
            calls.discard(call_id)  # type: ignore[arg-type]
        elif t == "compaction":
            continue  # an earlier or failed compaction: the last one was applied already
        else:
            dropped.add(str(t)[:64])
    if segment:
        out.append({**m, "content": segment})
    return out


def _mcp_result(b: dict) -> dict:
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": b.get("tool_use_id")}
    content = b.get("content")
    if type(content) is str:
        result["content"] = content
    elif type(content) is list:
        result["content"] = [x for x in content if type(x) is dict and x.get("type") in TOOL_RESULT_CONTENT]
    if b.get("is_error") is True:
        result["is_error"] = True
    if b.get("cache_control") is not None:
        result["cache_control"] = b["cache_control"]
    return result


def _result_text(b: dict) -> str:
    content = b.get("content")
    if type(content) is str:
        return content
    if type(content) is list:
        return "\n".join(x["text"] for x in content if type(x) is dict and type(x.get("text")) is str)
    return ""
