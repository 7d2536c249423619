"""OpenAI/OpenRouter stream chunks → Anthropic stream events (PROTOCOL.md §3.4, §7.4).

The state machine keeps the invariants strict clients (Claude Code's TS SDK, the Python
SDK) depend on: `message_start` once and first, blocks with consecutive indices each closed
before the next opens, never an empty text block, tool input that parses as an object by
its `content_block_stop`, and always `message_delta` + `message_stop` at the end, unless the
upstream fails, in which case the error propagates and nothing more is emitted.

Events travel in batches (a list per upstream network read), not one by one. The per-chunk
path is a handful of dict lookups and one event dict per delta; everything
rarer (block switches, tool bookkeeping, validation) lives in methods off that path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from engine import streams
from engine.registry import step
from engine.run import RunContext
from engine.types import Facts
from steps.anthropic.tokens import corrected
from steps.convert.response import (
    REFUSAL_DETAILS,
    answered_model,
    close_json,
    display_omitted,
    error_from,
    family_for,
    learn,
    map_usage,
    parse_arguments,
    stop_reason_for,
    tool_id,
)
from steps.convert.metering import meter
from steps.convert.thinking import Reasoning
from steps.openrouter.errors import UpstreamError
from steps.openrouter.profiles import Prices, Profile

_NONE, _TEXT, _THINKING, _TOOL = 0, 1, 2, 3
_UNDECIDED, _STREAMING, _HOLDING = 0, 1, 2
_NO_EVENTS: list[dict] = []  # returned (never mutated) when a chunk produces nothing


@step("convert.stream", facts=("usage",))
async def convert_stream(
    chunks: AsyncIterator[list[dict]],
    body: dict,
    model: str,
    ctx: RunContext,
    input_tokens_estimate: int = 0,
    profiles: dict[str, Profile] | None = None,
    prices: dict[str, Prices] | None = None,
    calibration: dict[str, float] | None = None,
    answered: str | None = None,
    facts: Facts | None = None,
) -> AsyncIterator[list[dict]]:
    """Translate parsed chat completion chunks into Anthropic stream events, incrementally.

    Batch in, batch out (engine/streams.py): each item of `chunks` is a list of chunks (one
    network read; a lone chunk dict is taken as a batch of one), and each item yielded is the
    list of events they make, so the layers above resume once per read. `message_start` goes
    up with the first batch's events (one write less), or alone when that batch makes none (a
    keepalive marker commits the response with it); a later batch that makes no event yields
    nothing.

    Emits `message_start` (input estimate; the real usage goes in `message_delta`), then
    text / thinking / tool_use blocks as the upstream produces them, then the stop reason
    and final usage. An upstream that ends without any content still gets a proper end
    (Claude Code then retries non-streaming); an upstream error, or `finish_reason:
    "error"`, propagates at once with no further event so the SSE encoder can send
    `event: error` last. The upstream iterator is always closed. Reasoning streams as a
    thinking block (thinking_delta, then one signature_delta carrying the gateway token just
    before its content_block_stop); reasoning details that arrive with no thinking block open
    (encrypted only, or a signature after the text started) become a redacted_thinking block.
    The final usage and its cost are told as the fact `usage` (under `answered`, openrouter.call's
    `model` fact, else `model`) for the access line and metrics; a stream that ends early (cut,
    client gone) after some output tells its estimate, since it was billed.
    `calibration` (`anthropic.calibration`) scales the input estimate `message_start` carries.
    """
    conv = _StreamConverter(body, model, ctx, input_tokens_estimate, profiles, prices, calibration, answered, facts)
    async for out in events_of(chunks, conv):
        yield out


async def events_of(chunks: AsyncIterator[list[dict]], conv: _StreamConverter) -> AsyncIterator[list[dict]]:
    """`convert_stream` with its converter made: convert.answer makes its own (the same
    settings serve a stream and a folded answer) and iterates this directly."""
    try:
        feed_all = conv.feed_all
        first: list[dict] | None = [conv.start()]  # goes up with the first batch's events
        async for item in chunks:
            if first is not None:
                out, first = first, None
            else:
                out = []
            try:
                feed_all(streams.elements(item), out)  # a lone chunk: a capture recorded before batches
            except Exception:
                if out:  # the events of the chunks before the failing one reach the client first
                    yield out
                raise
            if out:
                yield out
        if first is not None:  # the upstream sent nothing at all
            yield first
        yield conv.finish()
    finally:
        if not conv.metered and conv.chars:
            conv.meter(None)
        try:
            await streams.close(chunks)
        except Exception as exc:  # closing must not mask the real outcome
            conv.ctx.log.warning("convert.stream: closing the upstream failed", error=repr(exc))


class _Tool:
    """One upstream tool call (keyed by its upstream index) and its Anthropic block."""

    __slots__ = ("raw_id", "name", "index", "closed", "parts", "buffer", "mode")

    def __init__(self) -> None:
        self.raw_id: str | None = None
        self.name: str | None = None
        self.index = -1  # block index once started
        self.closed = False
        self.parts: list[str] = []  # argument fragments fed to the open block
        self.buffer: list[str] = []  # fragments that arrived before the block started
        self.mode = _UNDECIDED  # streaming once args start with "{", holding otherwise


class _StreamConverter:
    __slots__ = (
        "ctx", "model", "estimate", "open", "open_tool", "index", "tools", "pending", "seen_ids",
        "last_key", "finish_reason", "finish_choice", "usage", "saw_tool", "refused", "chars",
        "stops", "tail", "tail_len", "answered", "family", "omitted", "thought", "late", "raw_estimate",
        "prices", "metered", "facts", "whole",
    )  # fmt: skip

    def __init__(
        self,
        body: dict,
        model: str,
        ctx: RunContext,
        estimate: int,
        profiles: dict[str, Profile] | None = None,
        prices: dict[str, Prices] | None = None,
        calibration: dict[str, float] | None = None,
        answered: str | None = None,
        facts: Facts | None = None,
        whole: bool = False,
    ) -> None:
        self.ctx = ctx
        self.whole = whole  # folding a whole answer: tool arguments held and repaired, never streamed
        self.prices = prices
        self.metered = False
        self.model = body.get("model") or model
        self.answered = answered_model(answered, model)
        self.facts = facts
        self.family = family_for(self.answered, profiles)
        self.omitted = display_omitted(body)
        self.thought: Reasoning | None = None  # reasoning of the open thinking block
        self.late: Reasoning | None = None  # details that came with no thinking block open
        self.raw_estimate = max(0, int(estimate or 0))
        self.estimate = corrected(calibration, self.answered, self.raw_estimate)
        self.open = _NONE
        self.open_tool: _Tool | None = None
        self.index = -1  # index of the open (or last) block
        self.tools: dict[Any, _Tool] = {}
        self.pending: list[_Tool] = []  # known tool calls whose block has not started
        self.seen_ids: set[str] = set()
        self.last_key: Any = None
        self.finish_reason: str | None = None
        self.finish_choice: dict | None = None
        self.usage: Any = None
        self.saw_tool = False
        self.refused = False
        self.chars = 0  # characters produced, for the output estimate
        stops = body.get("stop_sequences")
        self.stops = [s for s in stops if isinstance(s, str) and s] if stops else None
        self.tail = ""  # the last characters of text, only kept to detect a stop string
        self.tail_len = max(map(len, self.stops)) if self.stops else 0

    def start(self) -> dict:
        return {
            "type": "message_start",
            "message": {
                "id": self.ctx.new_id("msg_"),
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": self.estimate,
                    "output_tokens": 1,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            },
        }

    # -- per chunk ------------------------------------------------------------------------

    def feed_all(self, chunks: list[dict] | tuple[dict], out: list[dict]) -> None:
        """Feed a batch of chunks, appending their events to `out`.

        On a failure `out` holds the events of the chunks before the failing one, as if they
        had been fed one by one. The commonest chunk (more text for the open text block) is
        handled inline: a call and a list less per chunk, which is most of a stream.
        """
        feed = self.feed
        for chunk in chunks:
            choices = chunk.get("choices")
            if self.open == _TEXT and choices and "error" not in chunk:
                choice = choices[0]
                delta = choice.get("delta") if type(choice) is dict else None
                content = delta.get("content") if type(delta) is dict else None
                if (
                    content
                    and type(content) is str
                    and not choice.get("finish_reason")
                    and not (delta.get("reasoning") or delta.get("reasoning_content") or delta.get("reasoning_details"))
                    and "tool_calls" not in delta
                    and "refusal" not in delta
                ):
                    usage = chunk.get("usage")
                    if usage:
                        self.usage = usage
                    self.chars += len(content)
                    if self.tail_len:
                        self.tail = (self.tail + content)[-self.tail_len :]
                    out.append({"type": "content_block_delta", "index": self.index, "delta": {"type": "text_delta", "text": content}})
                    continue
            events = feed(chunk)
            if events:
                out += events

    def feed(self, chunk: dict) -> list[dict]:
        if "error" in chunk and chunk["error"]:
            raise error_from(chunk["error"], chunk)
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        choices = chunk.get("choices")
        if not choices:
            return _NO_EVENTS
        choice = choices[0]
        delta = choice.get("delta")
        out = _NO_EVENTS
        if delta:
            reasoning = delta.get("reasoning") or delta.get("reasoning_content") or delta.get("reasoning_details")
            content = delta.get("content")
            if content and self.open == _TEXT and not reasoning and isinstance(content, str):
                # the hot path: more text for the open text block
                self.chars += len(content)
                if self.tail_len:
                    self.tail = (self.tail + content)[-self.tail_len :]
                out = [{"type": "content_block_delta", "index": self.index, "delta": {"type": "text_delta", "text": content}}]
                if "tool_calls" in delta or "refusal" in delta:
                    self._rest(delta, out)
            else:
                out = []
                if reasoning:
                    self._reasoning(delta, out)
                if content and isinstance(content, str):
                    self._text(content, out)
                self._rest(delta, out)
        finish = choice.get("finish_reason")
        if finish:
            if finish == "error":
                err = choice.get("error")
                if err:
                    raise error_from(err, chunk)
                raise UpstreamError(
                    "upstream stream ended with finish_reason 'error'", status=502, kind="error_chunk", body=chunk
                )
            self.finish_reason = finish
            self.finish_choice = choice
        return out

    def _rest(self, delta: dict, out: list[dict]) -> None:
        refusal = delta.get("refusal")
        if refusal and isinstance(refusal, str):
            self.refused = True
            self._text(refusal, out)
        calls = delta.get("tool_calls")
        if calls:
            for call in calls:
                self._tool_fragment(call, out)

    # -- blocks ---------------------------------------------------------------------------

    def _text(self, text: str, out: list[dict]) -> None:
        if self.open != _TEXT:
            self._close_open(out, flush_pending=True)
            self.index += 1
            self.open = _TEXT
            out.append({"type": "content_block_start", "index": self.index, "content_block": {"type": "text", "text": ""}})
        self.chars += len(text)
        if self.tail_len:
            self.tail = (self.tail + text)[-self.tail_len :]
        out.append({"type": "content_block_delta", "index": self.index, "delta": {"type": "text_delta", "text": text}})

    def _reasoning(self, delta: dict, out: list[dict]) -> None:
        """Reasoning text or details: `reasoning_details` win when both carry the same text."""
        details = delta.get("reasoning_details")
        if self.open == _THINKING:
            thought = self.thought
        else:
            thought = Reasoning()
        if details:
            text = thought.add_details(details)
        else:
            text = delta.get("reasoning") or delta.get("reasoning_content")
            if not isinstance(text, str):
                return
            thought.add_text(text)
        if self.open != _THINKING:
            if not text:  # nothing to show: keep the details for a redacted_thinking block
                if self.late is None:
                    self.late = thought
                else:
                    self.late.add_details(thought.details)
                return
            self._close_open(out, flush_pending=True)
            if self.late is not None:  # earlier textless details open this block's token
                self.late.details.extend(thought.details)
                self.late.texts.extend(thought.texts)
                self.late.plain = self.late.plain or thought.plain
                thought, self.late = self.late, None
            self.thought = thought
            self.index += 1
            self.open = _THINKING
            out.append(
                {
                    "type": "content_block_start",
                    "index": self.index,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                }
            )
        if text:
            self.chars += len(text)
            if not self.omitted:
                out.append({"type": "content_block_delta", "index": self.index, "delta": {"type": "thinking_delta", "thinking": text}})

    def _close_open(self, out: list[dict], flush_pending: bool) -> None:
        """Close the open block; before a non-tool block, start and close waiting tool calls
        too, so blocks keep the upstream's order (calls are complete once text follows)."""
        if self.open == _TOOL:
            self._close_tool(self.open_tool, out)  # type: ignore[arg-type]
        elif self.open == _THINKING:
            token = self.thought.token(self.answered, self.family)  # type: ignore[union-attr]
            self.thought = None
            out.append({"type": "content_block_delta", "index": self.index, "delta": {"type": "signature_delta", "signature": token}})
            out.append({"type": "content_block_stop", "index": self.index})
        elif self.open != _NONE:
            out.append({"type": "content_block_stop", "index": self.index})
        self.open = _NONE
        if self.late is not None and self.late.details:
            late, self.late = self.late, None
            self.index += 1
            block = {"type": "redacted_thinking", "data": late.token(self.answered, self.family)}
            out.append({"type": "content_block_start", "index": self.index, "content_block": block})
            out.append({"type": "content_block_stop", "index": self.index})
        if flush_pending and self.pending:
            for tool in list(self.pending):
                if tool.name:
                    self._start_tool(tool, out)
                    self._close_tool(tool, out)
                    self.open = _NONE

    # -- tool calls -----------------------------------------------------------------------

    def _tool_fragment(self, call: dict, out: list[dict]) -> None:
        key = call.get("index")
        raw_id = call.get("id")
        if key is None:  # some servers omit the index: the id, else the last call, decides
            key = raw_id if raw_id else self.last_key if self.last_key is not None else 0
        tool = self.tools.get(key)
        if tool is None:
            tool = self.tools[key] = _Tool()
            self.pending.append(tool)
        self.last_key = key
        if raw_id and tool.raw_id is None:
            tool.raw_id = raw_id
        fn = call.get("function")
        args: Any = None
        if fn:
            name = fn.get("name")
            if name and not tool.name:
                tool.name = name
            args = fn.get("arguments")
            if args is not None and not isinstance(args, str):
                args = orjson.dumps(args).decode()  # a provider sent the object itself
        if tool is self.open_tool and self.open == _TOOL:
            if args:
                self._tool_args(tool, args, out)
            return
        if tool.closed:
            if args:
                raise UpstreamError(
                    "upstream interleaved the arguments of parallel tool calls; cannot stream them",
                    status=502,
                    kind="protocol",
                )
            return
        if args:
            tool.buffer.append(args)
        if not tool.name:
            return  # start once the name is known
        current = self.open_tool if self.open == _TOOL else None
        if current is not None and not current.parts:
            # The open call has no arguments yet: some servers send every call's header
            # first, then the arguments; keep it open and let this one wait its turn.
            return
        self._start_tool(tool, out)

    def _start_tool(self, tool: _Tool, out: list[dict]) -> None:
        self._close_open(out, flush_pending=False)
        self.pending.remove(tool)
        tool.index = self.index = self.index + 1
        self.open = _TOOL
        self.open_tool = tool
        self.saw_tool = True
        out.append(
            {
                "type": "content_block_start",
                "index": tool.index,
                "content_block": {
                    "type": "tool_use",
                    "id": tool_id(tool.raw_id, self.seen_ids, self.ctx),
                    "name": tool.name,
                    "input": {},
                },
            }
        )
        if tool.buffer:
            buffered, tool.buffer = tool.buffer, []
            for args in buffered:
                self._tool_args(tool, args, out)

    def _tool_args(self, tool: _Tool, args: str, out: list[dict]) -> None:
        tool.parts.append(args)
        self.chars += len(args)
        if self.whole:
            tool.mode = _HOLDING  # nothing is streamed: the whole text gets the full repair at the end
            return
        if tool.mode == _STREAMING:
            out.append({"type": "content_block_delta", "index": tool.index, "delta": {"type": "input_json_delta", "partial_json": args}})
        elif tool.mode == _UNDECIDED and not args.isspace():
            if args.lstrip()[0] == "{":
                tool.mode = _STREAMING
                held = "".join(tool.parts)
                out.append({"type": "content_block_delta", "index": tool.index, "delta": {"type": "input_json_delta", "partial_json": held}})
            else:
                tool.mode = _HOLDING  # not an object (double-encoded?): normalize at the end

    def _close_tool(self, tool: _Tool, out: list[dict]) -> None:
        """Make sure the block's input parses as an object before its stop (§3.4 item 6)."""
        if tool.mode == _STREAMING:
            text = "".join(tool.parts)
            if _loads_object(text) is None:
                suffix = close_json(text.rstrip())
                if suffix is None or _loads_object(text.rstrip() + suffix) is None:
                    raise UpstreamError(
                        f"tool call arguments are not valid JSON: {text[:200]!r}", status=502, kind="protocol"
                    )
                out.append({"type": "content_block_delta", "index": tool.index, "delta": {"type": "input_json_delta", "partial_json": suffix}})
        elif tool.mode == _HOLDING:
            value = parse_arguments("".join(tool.parts))
            out.append(
                {
                    "type": "content_block_delta",
                    "index": tool.index,
                    "delta": {"type": "input_json_delta", "partial_json": orjson.dumps(value).decode()},
                }
            )
        out.append({"type": "content_block_stop", "index": tool.index})
        tool.closed = True
        if self.open_tool is tool:
            self.open_tool = None

    # -- end ------------------------------------------------------------------------------

    def finish(self) -> list[dict]:
        out: list[dict] = []
        self._close_open(out, flush_pending=False)
        for tool in list(self.pending):
            if not tool.name:
                raise UpstreamError("upstream tool call has no name", status=502, kind="protocol")
            self._start_tool(tool, out)
            self._close_tool(tool, out)
            self.open = _NONE
        stop_reason, stop_sequence = stop_reason_for(
            self.finish_reason, self.saw_tool, self.refused, self.tail, self.finish_choice, self.stops
        )
        usage = map_usage(self.usage)
        learn(self.ctx, self.answered, self.raw_estimate, self.usage)
        if usage is None:
            usage = {
                "input_tokens": self.estimate,
                "output_tokens": max(1, self.chars // 4),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            }
        elif usage["output_tokens"] < 1:
            usage["output_tokens"] = max(1, self.chars // 4)
        self.meter(usage)
        delta: dict[str, Any] = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        if stop_reason == "refusal":
            delta["stop_details"] = dict(REFUSAL_DETAILS)
        out.append({"type": "message_delta", "delta": delta, "usage": usage})
        out.append({"type": "message_stop"})
        return out


    def meter(self, usage: dict | None) -> None:
        """Report the turn's usage once: the final one, else (an early end) the estimate."""
        self.metered = True
        if usage is None:
            usage = map_usage(self.usage) or {"input_tokens": self.estimate, "output_tokens": max(1, self.chars // 4)}
        if self.facts is not None:
            self.facts["usage"] = meter(self.answered, usage, self.usage, self.prices)


def _loads_object(text: str) -> dict | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
