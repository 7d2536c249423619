"""Mid-conversation tool changes and the other beta fields of `role: "system"` messages.

Under the beta `mid-conversation-tool-changes-2026-07-01` (Claude Code announces it on every
request), a client changes the tools without touching `tools` (which would miss the prompt
cache): `role: "system"` messages carry `tool_addition` / `tool_removal` blocks, each naming a
`tool_reference` (a tool declared in `tools`, or defined inline earlier) or carrying a
`tool_definition` (a `tools` entry by value, beta `inline-tools-2026-09-15`). A `compaction`
block's `tool_changes` stand for those of the turns it summarised: they take the declared
`tools` to the set in effect at its end. No upstream knows any of this, so the set is worked
out here and sent as plain `tools`:

- the declared tools, changed by every addition and removal in message order up to the latest
  turn; a compaction (with a summary) restarts from the declared tools and its own changes;
- a `role: "system"` message with `clear_at: "next_user_message"` counts only until a later user
  message exists: after that the API no longer shows it, so neither its text nor its tool
  changes reach the model (the message is dropped here);
- a tool added back by reference loses `defer_loading` (the addition is what loads it);
- MCP references (`mcp_tool_reference`, `mcp_toolset_reference`) name tools run by the API's
  MCP connector, which no upstream has: ignored, logged at debug, like unknown tool kinds;
- `output_config.effort` of a system message in the final turn (after the last assistant
  message) is that turn's effort (beta `mid-conversation-output-config-2026-07-01`).

The shapes are parsed leniently (the SDK's types are the reference: `BetaSystemMessageParam`,
`BetaRequestToolAdditionBlockParam`, `BetaCompactionBlockParam`); what does not parse is left
in place for anthropic.clean and anthropic.validate to judge. The blocks themselves and the
system messages' text are anthropic.clean's, which runs next. The input is never mutated.
"""

from __future__ import annotations

import re
from typing import Any

import structlog

from engine.registry import step

_log = structlog.get_logger("steps.anthropic")

CHANGE_TYPES = frozenset({"tool_addition", "tool_removal"})


def tool_key(tool: dict) -> str:
    """What identifies a `tools` entry: its name, else its family as the API computes it for a
    toolset (`type` without the `_YYYYMMDD` date and the `_toolset` suffix)."""
    name = tool.get("name")
    if type(name) is str:
        return name
    kind = tool.get("type")
    return "#" + re.sub(r"_\d{8}$", "", kind if type(kind) is str else "custom").removesuffix("_toolset")


class _ToolSet:
    """The tools in effect, in order (declared first, additions after), by key."""

    def __init__(self, declared: list[dict]) -> None:
        self.declared = declared
        self.known: dict[str, dict] = {tool_key(t): t for t in declared}  # by reference
        self.offered: dict[str, dict] = dict(self.known)
        self.ignored: set[str] = set()

    def restart(self) -> None:
        self.offered = {tool_key(t): t for t in self.declared}

    def apply(self, change: Any) -> None:
        if type(change) is not dict or not _is_change(change):
            return
        tool = change.get("tool")
        kind = tool.get("type") if type(tool) is dict else None
        adding = change["type"] == "tool_addition"
        if kind == "tool_reference" and type(tool.get("name")) is str:  # type: ignore[union-attr]
            name = tool["name"]  # type: ignore[index]
            if not adding:
                self.offered.pop(name, None)
            elif name in self.known:
                definition = self.known[name]
                if "defer_loading" in definition:
                    definition = {k: v for k, v in definition.items() if k != "defer_loading"}
                self.offered[name] = definition
            else:
                self.ignored.add("tool_reference:unknown")
        elif kind == "tool_definition" and adding and type(tool.get("definition")) is dict:  # type: ignore[union-attr]
            definition = tool["definition"]  # type: ignore[index]
            key = tool_key(definition)
            self.known[key] = definition
            self.offered.pop(key, None)  # a redefinition moves to the end, like a new addition
            self.offered[key] = definition
        else:
            self.ignored.add(str(kind)[:64])

    def tools(self) -> list[dict]:
        return list(self.offered.values())


@step("anthropic.tool_changes", blocking=False)
def tool_changes(body: dict, request: Any = None) -> dict:
    """Apply mid-conversation tool changes to `tools`; drop system messages cleared by `clear_at`.

    The tools sent upstream are the declared ones as changed by every tool_addition /
    tool_removal (in system messages, and in a compaction block's tool_changes) up to the latest
    turn; a system message with `clear_at: next_user_message` is dropped once a later user
    message exists; a system message's `output_config.effort` in the final turn becomes the
    request's. Unparseable shapes are left for anthropic.validate.
    """
    _log_betas(request)
    messages = body.get("messages")
    tools = body.get("tools")
    if type(messages) is not list or not (tools is None or type(tools) is list):
        return body
    if not any(type(m) is dict and (m.get("role") == "system" or _has_changes(m.get("content"))) for m in messages):
        return body
    toolset = _ToolSet([t for t in tools or () if type(t) is dict])
    kept: list = []
    changed_tools = False
    effort: Any = None
    last_assistant = _last(messages, "assistant")
    last_user = _last(messages, "user")
    for i, m in enumerate(messages):
        if type(m) is not dict:
            kept.append(m)
            continue
        role = m.get("role")
        if role == "system":
            if m.get("clear_at") == "next_user_message" and i < last_user:
                continue
            config = m.get("output_config")
            if i > last_assistant and type(config) is dict and config.get("effort") is not None:
                effort = config["effort"]
        content = m.get("content")
        if type(content) is list:
            for b in content:
                if type(b) is not dict:
                    continue
                t = b.get("type")
                if _is_change(b):
                    toolset.apply(b)
                    changed_tools = True
                elif t == "compaction" and type(b.get("tool_changes")) is list and type(b.get("content")) is str:
                    toolset.restart()
                    for change in b["tool_changes"]:
                        toolset.apply(change)
                    changed_tools = True
        kept.append(m)
    out = {**body}
    if len(kept) != len(messages):
        out["messages"] = kept
    if changed_tools:
        final = toolset.tools()
        out["tools"] = final
        choice = body.get("tool_choice")
        if type(choice) is dict and choice.get("type") == "tool" and choice.get("name") not in {t.get("name") for t in final}:
            out.pop("tool_choice", None)  # it names a tool no longer offered: the model chooses
            _log.debug("anthropic.tool_choice_dropped", reason="tool removed")
        if toolset.ignored:
            _log.debug("anthropic.tool_changes_ignored", kinds=sorted(toolset.ignored)[:20])
    if effort is not None:
        config = body.get("output_config")
        out["output_config"] = {**(config if type(config) is dict else {}), "effort": effort}
    return out


def _last(messages: list, role: str) -> int:
    return max((i for i, m in enumerate(messages) if type(m) is dict and m.get("role") == role), default=-1)


def _is_change(block: dict) -> bool:
    t = block.get("type")
    return type(t) is str and t in CHANGE_TYPES


def _has_changes(content: Any) -> bool:
    return type(content) is list and any(
        type(b) is dict and (_is_change(b) or (b.get("type") == "compaction" and b.get("tool_changes"))) for b in content
    )


def _log_betas(request: Any) -> None:
    """The betas a client announces, at debug: the gateway acts on what they put in the body
    (the blocks and fields above, anthropic.clean's conversions); the header itself changes
    nothing."""
    headers = getattr(request, "headers", None)
    if headers is None:
        return
    value = headers.get("anthropic-beta")
    if value:
        _log.debug("anthropic.betas", betas=[b.strip()[:80] for b in str(value).split(",")[:40] if b.strip()])
