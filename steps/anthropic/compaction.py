"""Compaction for any model: a summarising sub-call whose answer becomes the API's `compaction` block.

The API compacts a conversation when a `compact_*` context edit's trigger is reached, or when
the request carries the top-level `compaction: {type: "summarize"}`: it summarises the
conversation, returns the summary as a `compaction` block (the client sends it back and the
API reads the conversation from it on), and then either goes on answering from the compacted
context, or stops there with `stop_reason: "compaction"` (`pause_after_compaction`, or the
top-level field). The gateway does the same with the upstream it has:

- pipelines/compact.yaml asks the upstream for the summary: `compaction_request` turns the
  request into a summarisation request (the conversation, then the summarisation prompt or the
  client's `instructions` as the last user turn; no tool may be called), pipelines/turn.yaml
  answers it, `compaction_block` makes the block (`content: null` when the summary is empty:
  the API's failed compaction, which clients send back and the server ignores);
- `apply_compaction` gives the main turn the compacted context: the summary as the first user
  turn, as anthropic.clean reads a compaction block from the history (steps/anthropic/blocks.py);
  so this answer and the client's next request see the same context;
- `context_reply` puts the block first in the reply (JSON, or a stream: a `compaction`
  content block with one `compaction_delta`, later blocks renumbered), and the applied context
  edits in `context_management.applied_edits` (the message, or the stream's `message_delta`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from engine import streams
from engine.registry import step
from engine.run import RunContext
from steps.anthropic.blocks import COMPACTION_PREFIX
from steps.tools.tool_search import split

PROMPT = (
    "Write a summary of the conversation so far that will replace it: the conversation will "
    "continue from your summary alone. Keep what is needed to go on without asking again: the "
    "user's goals and their latest request, decisions made and why, facts and results found "
    "(file paths, names, figures, errors, tool outcomes), what has been done and what remains, "
    "and the next step. Be complete but concise; write the summary only, with no preamble."
)
MAX_TOKENS = 8192


@step("anthropic.compaction_request", blocking=False)
def compaction_request(body: dict, instructions: str | None = None, max_tokens: int = MAX_TOKENS) -> dict:
    """The request that asks the model to summarise `body`'s conversation (for pipelines/compact.yaml).

    Same model, system prompt and tools (the history's tool calls need their declarations),
    `tool_choice: none`, no thinking, not streamed; the summarisation prompt (or the client's
    `instructions`, which replace it as the API does) is the last user turn."""
    prompt = {"type": "text", "text": instructions if instructions and instructions.strip() else PROMPT}
    messages = list(body.get("messages") or ())
    last = messages[-1] if messages else None
    if type(last) is dict and last.get("role") == "user":
        content = last.get("content")
        blocks = [{"type": "text", "text": content}] if type(content) is str else list(content or ())
        messages[-1] = {**last, "content": [*blocks, prompt]}
    else:
        messages.append({"role": "user", "content": [prompt]})
    out: dict[str, Any] = {"model": body.get("model"), "max_tokens": max_tokens, "messages": messages, "stream": False}
    for key in ("system", "metadata"):
        if body.get(key) is not None:
            out[key] = body[key]
    tools, _deferred = split(body.get("tools"), messages)
    if tools:
        out["tools"] = tools  # deferred tools the conversation never loaded are not needed
        out["tool_choice"] = {"type": "none"}
    return out


@step("anthropic.compaction_block", blocking=False)
def compaction_block(message: dict) -> dict:
    """The summarising turn's answer → `{"block": compaction block, "usage": its usage}`."""
    text = "\n\n".join(
        b["text"] for b in message.get("content") or () if type(b) is dict and b.get("type") == "text" and type(b.get("text")) is str
    ).strip()
    return {"block": {"type": "compaction", "content": text or None}, "usage": message.get("usage") or {}}


@step("anthropic.apply_compaction", blocking=False)
def apply_compaction(body: dict, compaction: dict | None = None) -> dict:
    """`body` with its conversation replaced by the compaction summary (unchanged without one)."""
    block = (compaction or {}).get("block") or {}
    summary = block.get("content")
    if type(summary) is not str:
        return body
    return {**body, "messages": [{"role": "user", "content": [{"type": "text", "text": COMPACTION_PREFIX + summary}]}]}


@step("anthropic.context_reply", blocking=False)
def context_reply(message: Any, body: dict, ctx: RunContext, context: dict | None = None, compaction: dict | None = None) -> Any:
    """The reply with the compaction block first and `context_management.applied_edits` reported.

    `message` is the answer (a Message dict or a stream of events), or None when nothing was
    sampled after the compaction: then the reply is the block alone, `stop_reason: compaction`.
    Without a compaction or context edits the message passes through untouched."""
    applied = (context or {}).get("applied")
    report = {"applied_edits": applied} if applied is not None else None
    block = (compaction or {}).get("block")
    if block is None and report is None:
        return message
    if message is None:
        message = _compaction_only(body, ctx, compaction or {})
        if body.get("stream"):
            return _events(message, report)
    summary = _iteration("compaction", (compaction or {}).get("usage")) if block is not None else None
    if isinstance(message, dict):
        out = {**message}
        if block is not None and not (out.get("content") and out["content"][0] is block):
            out["content"] = [block, *(out.get("content") or ())]
            out["usage"] = _with_iterations(out.get("usage"), summary)
        if report is not None:
            out["context_management"] = report
        return out
    return _wrap(message, block, report, summary)


def _iteration(kind: str, usage: Any) -> dict:
    """One `usage.iterations` entry: the compaction call's tokens, or the answer's."""
    usage = usage if isinstance(usage, dict) else {}
    return {"type": kind, **{k: int(usage.get(k) or 0) for k in _TOKENS}}


_TOKENS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _with_iterations(usage: Any, summary: dict | None) -> Any:
    """`usage` with `iterations`: the compaction call first (its tokens are not in the totals,
    as the API counts them), then the answer."""
    if summary is None or not isinstance(usage, dict):
        return usage
    return {**usage, "iterations": [summary, _iteration("message", usage)]}


def _compaction_only(body: dict, ctx: RunContext, compaction: dict) -> dict:
    usage = compaction.get("usage") or {}
    return {
        "id": ctx.new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [compaction.get("block") or {"type": "compaction", "content": None}],
        "stop_reason": "compaction",
        "stop_sequence": None,
        "usage": {
            "input_tokens": int(usage.get("input_tokens") or 0),
            "output_tokens": max(1, int(usage.get("output_tokens") or 0)),
            "cache_creation_input_tokens": int(usage.get("cache_creation_input_tokens") or 0),
            "cache_read_input_tokens": int(usage.get("cache_read_input_tokens") or 0),
            "iterations": [_iteration("compaction", usage)],  # the only call: its tokens are the totals too
        },
    }


def _block_events(block: dict, index: int) -> list[dict]:
    return [
        {"type": "content_block_start", "index": index, "content_block": {"type": "compaction", "content": None}},
        {"type": "content_block_delta", "index": index, "delta": {"type": "compaction_delta", "content": block.get("content")}},
        {"type": "content_block_stop", "index": index},
    ]


async def _events(message: dict, report: dict | None) -> AsyncIterator[dict]:
    """A compaction-only message as the stream the API sends for it."""
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    yield {"type": "message_start", "message": start}
    for ev in _block_events(message["content"][0], 0):
        yield ev
    delta: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": "compaction", "stop_sequence": None},
                             "usage": {"output_tokens": message["usage"]["output_tokens"]}}
    if report is not None:
        delta["context_management"] = report
    yield delta
    yield {"type": "message_stop"}


async def _wrap(events: Any, block: dict | None, report: dict | None, summary: dict | None) -> AsyncIterator[list[dict]]:
    """The answer's stream with the compaction block first (indices shifted) and the report added."""
    shift = 1 if block is not None else 0
    try:
        async for batch in events:  # the answer's events come in batches (engine/streams.py): so do ours
            out: list[dict] = []
            for ev in streams.elements(batch):
                kind = ev.get("type")
                if kind == "message_start":
                    out.append(ev)
                    if block is not None:
                        out += _block_events(block, 0)
                elif shift and kind in ("content_block_start", "content_block_delta", "content_block_stop"):
                    out.append({**ev, "index": ev["index"] + shift})
                elif kind == "message_delta" and (report is not None or summary is not None):
                    ev = {**ev, "usage": _with_iterations(ev.get("usage"), summary)}
                    if report is not None:
                        ev["context_management"] = report
                    out.append(ev)
                else:
                    out.append(ev)
            if out:
                yield out
    finally:
        await streams.close(events)
