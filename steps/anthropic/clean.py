"""Normalise the parts of an Anthropic request that upstreams reject or that clients get wrong.

What it does, and why (PROTOCOL §1.3, §1.5, §7.1, §7.2):

1. `role: "system"` messages and `mid_conv_system` blocks move into the top-level `system`, as
   text blocks appended in order, `cache_control` kept. Claude Code puts the environment, cwd,
   agents and skills there; dropping them would blind the model. Position is lost (lossy point).
2. Empty and whitespace-only text blocks are dropped (also inside `tool_result.content` and the
   top-level system), and so is a message whose string content is blank. The real API 400s on
   them and Claude Code persists them, so every later turn would fail.
3. `tool_addition` / `tool_removal` blocks (a Claude Code beta) are dropped: no upstream has them.
4. Messages left empty are dropped, and consecutive same-role messages are merged (the real API
   merges them too; OpenAI-style upstreams want strict alternation).
5. Orphan `tool_use` blocks in *history* are dropped: a tool_use in an assistant turn that is
   followed by a user turn with no `tool_result` for its id (an interrupted tool call). Every
   upstream rejects an unanswered call, and the conversation has moved on, so nothing is lost
   that the model still needs. A tool_use in the *final* message is kept: the conversation ends
   there and the client may not have answered it yet (prefill / continuation).
   The converse is not repaired: a `tool_result` whose id matches no tool_use in the previous
   assistant turn is the client's error, and anthropic.validate answers it with Anthropic's 400
   (RELIABILITY §3 row 16). Dropping a tool_use never creates such a tool_result, because only
   unanswered tool_use blocks are dropped.
6. `tools: []` is dropped, and `tool_choice` when no tools remain: upstreams reject both.
7. Blocks of newer clients are converted or dropped first (steps/anthropic/blocks.py: compaction
   summaries, MCP calls and results, fallback markers, unknown types), and so are block types
   a `tool_result` or the top-level `system` cannot hold: never a 400 (issue 16).
8. The model id loses the tags a client appends to it: Claude Code's context-size tag (`[1m]`,
   `[2m]`) and an effort tag (`[high]`, `:high`, any effort level), which becomes
   `output_config.effort` unless the request sets one. No upstream knows those ids.

It runs before anthropic.validate, so it must survive any JSON: if `messages` or `system` has a
shape it does not understand (wrong role, content neither string nor list, a block that is not
an object), it leaves the whole body as it is, so validate reports the error at the original path.
The input is never mutated: changed dicts and lists are shallow copies; unchanged ones are shared.
"""

from __future__ import annotations

import re
from typing import Any

import structlog

from engine.registry import step
from steps.anthropic.blocks import TOOL_RESULT_CONTENT, convert_history

_log = structlog.get_logger("steps.anthropic")

_DROPPED_BLOCKS = frozenset({"tool_addition", "tool_removal"})
_SYSTEM_CONTENT = frozenset({"text"})

EFFORTS = ("minimal", "low", "medium", "high", "xhigh", "max")
_MODEL_TAG = re.compile(r"(?:\[(\d+m|" + "|".join(EFFORTS) + r")\]|:(" + "|".join(EFFORTS) + r"))$", re.IGNORECASE)
"""A trailing `[1m]` / `[2m]` (Claude Code's context-size tags), `[high]` or `:high`."""


class _Malformed(Exception):
    """Internal: a shape clean does not touch; validate will report it."""


def _blank(text: Any) -> bool:
    return type(text) is str and (not text or text.isspace())


def _text_blocks(content: Any) -> list[dict]:
    """Non-blank text blocks of a system message / mid_conv_system content (blocks kept as is).

    A system message may have no content at all (it can carry only an `output_config`)."""
    if content is None:
        return []
    if type(content) is str:
        return [] if _blank(content) else [{"type": "text", "text": content}]
    if type(content) is not list:
        raise _Malformed
    out = []
    for b in content:
        if type(b) is not dict:
            raise _Malformed
        if b.get("type") == "text":
            if not _blank(b.get("text")):
                out.append(b)
        # other block types in a system message have no place in a system prompt: dropped
    return out


def _clean_inner(blocks: list, allowed: frozenset[str]) -> list:
    """tool_result.content or system: drop blank text blocks and block types it cannot hold;
    returns the same list when nothing changed."""
    new = None
    for i, b in enumerate(blocks):
        if type(b) is dict:
            t = b.get("type")
            drop = t == "text" and _blank(b.get("text"))
            if not drop and type(t) is str and t not in allowed:
                _log.debug("anthropic.dropped_blocks", types=[t[:64]])
                drop = True
            if drop:
                if new is None:
                    new = blocks[:i]
                continue
        if new is not None:
            new.append(b)
    return blocks if new is None else new


def _clean_blocks(blocks: list, system_add: list) -> list:
    """A message's block list with blank text, tool_addition/removal and mid_conv_system removed."""
    new = None
    for i, b in enumerate(blocks):
        if type(b) is not dict:
            raise _Malformed
        t = b.get("type")
        keep = b
        if t == "text":
            if _blank(b.get("text")):
                keep = None
        elif t == "tool_result":
            inner = b.get("content")
            if type(inner) is list and inner:
                cleaned = _clean_inner(inner, TOOL_RESULT_CONTENT)
                if cleaned is not inner:
                    keep = {**b, "content": cleaned}
                    if not cleaned:
                        del keep["content"]
        elif type(t) is str and t in _DROPPED_BLOCKS:
            keep = None
        elif t == "mid_conv_system":
            system_add.extend(_text_blocks(b.get("content")))
            keep = None
        if keep is not b and new is None:
            new = blocks[:i]
        if new is not None and keep is not None:
            new.append(keep)
    return blocks if new is None else new


def _as_blocks(content: Any) -> list:
    return [{"type": "text", "text": content}] if type(content) is str else content


def _compact(messages: list[dict]) -> list[dict]:
    """Merge consecutive same-role messages (copies; the inputs are not touched)."""
    out: list[dict] = []
    for m in messages:
        if out and out[-1]["role"] == m["role"]:
            prev = out[-1]
            out[-1] = {**prev, "content": _as_blocks(prev["content"]) + _as_blocks(m["content"])}
        else:
            out.append(m)
    return out


def _drop_orphan_tool_uses(messages: list[dict]) -> list[dict] | None:
    """Drop unanswered tool_use blocks from every assistant turn but the last message.

    Expects alternating roles. Returns None when nothing changed.
    """
    changed = False
    out = list(messages)
    last = len(out) - 1
    for i in range(last):
        m = out[i]
        if m["role"] != "assistant":
            continue
        content = m["content"]
        if type(content) is not list:
            continue
        ids = [b.get("id") for b in content if b.get("type") == "tool_use"]
        if not ids or any(type(x) is not str for x in ids):
            continue  # nothing to do, or malformed ids: validate reports those at their path
        nxt = out[i + 1]["content"]
        answered = (
            {
                r
                for b in nxt
                if type(b) is dict and b.get("type") == "tool_result" and type(r := b.get("tool_use_id")) is str
            }
            if type(nxt) is list
            else set()
        )
        if all(x in answered for x in ids):
            continue
        kept = [b for b in content if not (b.get("type") == "tool_use" and b.get("id") not in answered)]
        out[i] = {**m, "content": kept}
        changed = True
    if not changed:
        return None
    return _compact([m for m in out if m["content"]])


def _clean_system(system: Any, system_add: list) -> tuple[Any, bool]:
    """(new system, changed). Blank text blocks dropped, system-message text appended."""
    if system is None:
        blocks: list = []
        changed = False
    elif type(system) is str:
        if not system_add:
            return (None, True) if _blank(system) else (system, False)
        blocks = [] if _blank(system) else [{"type": "text", "text": system}]
        changed = True
    elif type(system) is list:
        blocks = _clean_inner(system, _SYSTEM_CONTENT)
        changed = blocks is not system
    else:
        raise _Malformed
    if system_add:
        blocks = blocks + system_add
        changed = True
    if not blocks:
        return None, changed or system is not None
    return blocks, changed


def _clean_tools(body: dict, out: dict) -> None:
    tools = body.get("tools")
    if type(tools) is list and not tools:
        out.pop("tools", None)
        tools = None
    if tools is None and "tool_choice" in body:
        out.pop("tool_choice", None)


def _strip_model_tags(body: dict) -> dict | None:
    """A copy of `body` with the model's context-size and effort tags removed, or None."""
    model = body.get("model")
    if type(model) is not str or not model.endswith(("]", *(":" + e for e in EFFORTS))):
        return None
    effort = None
    stripped = model
    while (m := _MODEL_TAG.search(stripped)) is not None and m.start() > 0:
        tag = (m.group(1) or m.group(2)).lower()
        if tag in EFFORTS and effort is None:
            effort = tag
        stripped = stripped[: m.start()]
    if stripped == model:
        return None
    out = {**body, "model": stripped}
    config = body.get("output_config")
    if effort is not None and (config is None or (type(config) is dict and config.get("effort") is None)):
        out["output_config"] = {**(config or {}), "effort": effort}
    _log.debug("anthropic.model_tags_stripped", model=stripped, effort=effort)
    return out


@step("anthropic.clean", blocking=False)
def clean(body: dict) -> dict:
    """Normalise a Messages request: merge system messages, drop empty blocks and orphan tool calls.

    Converts newer clients' blocks (compaction, MCP calls and results) and drops the ones with
    nothing for the model (fallback markers, unknown types); moves `role:"system"` messages
    (and mid_conv_system blocks) into `system`; drops blank text blocks, tool_addition/
    tool_removal, `tools: []` and a tool_choice without tools; drops unanswered tool_use blocks
    from history (never from the final message); drops messages left empty and merges same-role
    neighbours; strips `[1m]` and effort tags from the model id. A tool_result with no matching
    tool_use is left for anthropic.validate to reject. Leaves malformed bodies untouched for
    validate to report.
    """
    messages = body.get("messages")
    out: dict | None = _strip_model_tags(body)
    system_add: list = []
    try:
        if type(messages) is list:
            new_messages: list = []
            converted = convert_history(messages)
            changed = converted is not None
            if converted is not None:
                messages = converted
            for m in messages:
                if type(m) is not dict:
                    raise _Malformed
                role = m.get("role")
                content = m.get("content")
                if role == "system":
                    system_add.extend(_text_blocks(content))
                    changed = True
                    continue
                if role != "user" and role != "assistant":
                    raise _Malformed
                if type(content) is str:
                    if _blank(content):
                        changed = True
                        continue
                elif type(content) is list:
                    cleaned = _clean_blocks(content, system_add)
                    if cleaned is not content:
                        changed = True
                        if not cleaned:
                            continue
                        m = {**m, "content": cleaned}
                    elif not content:
                        changed = True
                        continue
                else:
                    raise _Malformed
                if new_messages and new_messages[-1]["role"] == role:
                    prev = new_messages[-1]
                    new_messages[-1] = {**prev, "content": _as_blocks(prev["content"]) + _as_blocks(m["content"])}
                    changed = True
                else:
                    new_messages.append(m)
            pruned = _drop_orphan_tool_uses(new_messages)
            if pruned is not None:
                new_messages = pruned
                changed = True
            if changed:
                out = {**(out or body), "messages": new_messages}
        system, sys_changed = _clean_system(body.get("system"), system_add)
    except _Malformed:
        return body
    if sys_changed:
        out = out if out is not None else {**body}
        if system is None:
            out.pop("system", None)
        else:
            out["system"] = system
    tools = body.get("tools")
    if (type(tools) is list and not tools) or (tools is None and "tool_choice" in body):
        out = out if out is not None else {**body}
        _clean_tools(body, out)
    return body if out is None else out
