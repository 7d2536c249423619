"""One conversion for both answers: upstream chunks → Anthropic events, folded into a Message
when the client asked for JSON (PROTOCOL.md §3.4, §7.3-§7.6).

There is one converter, the stream's (steps/convert/stream.py). A JSON answer from the
upstream (`stream: false`, or a server that answered a stream request with a whole body) is
rewritten as the one chunk that says the same (`completion_as_chunk`), and a JSON request's
events are folded into the Message the client gets (`fold`): a thinking, text or tool_use block
per block the events opened, the stop reason and the final usage from `message_delta`. Folding
holds tool arguments whole instead of streaming them, so they get the full repair (trailing
garbage, a truncated object, double encoding) that a stream, already sent, cannot.

A JSON request is sent upstream as JSON (not always streamed and folded), by measurement
(benchmarks/gateway.py --quick, two runs each, a 2-core machine under a load of about 3.5):
server CPU per JSON request at c=1/16/64 was 1.25-1.35/1.04-1.06/1.05-1.10 ms with the former
separate converter, 1.30/1.01-1.05/1.05-1.15 ms folded from the one chunk, and 1.40-1.45/
1.14-1.18/1.15-1.20 ms when the upstream streamed the same 7-token answer to be folded (added
p50 latency at c=1: 1.20-1.26, 1.21-1.22 and 1.35-1.36 ms). Streaming costs per chunk (about
14 us each), so the gap grows with the answer; one chunk costs what the old converter did.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson

from engine.registry import step
from engine.run import RunContext
from engine.streams import is_stream
from engine.types import Facts
from steps.convert.response import REFUSAL_DETAILS, error_from
from steps.convert.stream import _StreamConverter, events_of
from steps.openrouter.errors import UpstreamError
from steps.openrouter.profiles import Prices, Profile
from steps.openrouter.upstream import completion_as_chunk

__all__ = ["chunk_of_completion", "convert_answer", "fold", "message_of_completion"]


@step("convert.answer", facts=("usage",))
async def convert_answer(
    answer: Any,
    body: dict,
    model: str,
    ctx: RunContext,
    input_tokens_estimate: int = 0,
    profiles: dict[str, Profile] | None = None,
    prices: dict[str, Prices] | None = None,
    calibration: dict[str, float] | None = None,
    answered: str | None = None,
    facts: Facts | None = None,
) -> Any:
    """The upstream answer as the client asked for it: Anthropic events, or one Message folded from them.

    `answer` is a completion dict or a stream of chunks; the result is a stream of Anthropic
    events (in batches, as convert.stream makes them) when `body.stream`, else the one
    Message those events describe.

    See convert.stream for the events: the same converter makes both, so a JSON answer and a
    stream never disagree. Claude Code falls back to non-streaming after a broken stream and
    then needs a real Message, so anything that is not a usable completion (HTML, `{"error":
    ...}` with a 200, `finish_reason: "error"`, no choices) raises UpstreamError for the error
    renderer instead of producing a half-message. Annotated `Any` because it is either.
    The usage and its cost are told as the fact `usage` (under `answered`, openrouter.call's
    `model` fact, else `model`); `calibration` (`anthropic.calibration`) scales the estimate.
    """
    streaming = bool(body.get("stream"))
    whole = not streaming and not is_stream(answer)  # a whole completion folded: tool arguments held and repaired
    conv = _StreamConverter(body, model, ctx, input_tokens_estimate, profiles, prices, calibration, answered, facts, whole=whole)
    if whole:
        return message_of_completion(answer, conv)
    if not is_stream(answer):
        answer = _one(chunk_of_completion(answer))
    elif not streaming:
        return fold([e async for batch in events_of(answer, conv) for e in batch])
    return events_of(answer, conv)


def message_of_completion(completion: Any, conv: _StreamConverter) -> dict:
    """A non-streamed chat completion as an Anthropic Message: its one chunk through the
    stream converter (`conv`, made with `whole=True`), folded. Synchronous: no event loop turn
    for a whole answer."""
    chunk = chunk_of_completion(completion)
    events = [conv.start()]
    events += conv.feed(chunk)
    events += conv.finish()
    return fold(events)


def chunk_of_completion(completion: Any) -> dict:
    """The one `chat.completion.chunk` that says what a whole completion says; an unusable
    completion raises the UpstreamError a client should see (502)."""
    if not isinstance(completion, dict):
        raise UpstreamError(
            f"upstream returned a non-JSON-object body ({type(completion).__name__})", status=502, kind="protocol", body=completion
        )
    if completion.get("error"):
        raise error_from(completion["error"], completion)
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("upstream completion has no choices", status=502, kind="protocol", body=completion)
    choice = choices[0]
    if choice.get("error"):
        raise error_from(choice["error"], completion)
    if choice.get("finish_reason") == "error":
        raise UpstreamError("upstream reported finish_reason 'error'", status=502, kind="error_chunk", body=completion)
    message = choice.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), list):  # some servers answer with text parts
        parts = message["content"]
        text = "".join(p.get("text") or "" for p in parts if isinstance(p, dict) and p.get("type") == "text")
        completion = {**completion, "choices": [{**choice, "message": {**message, "content": text}}, *choices[1:]]}
    return completion_as_chunk(completion)


def fold(events: Iterable[dict]) -> dict:
    """The Message a sequence of Anthropic stream events describes.

    Blocks keep the events' order; a text block with nothing but whitespace is left out (a
    Message never carries one: Claude Code persists it and later gets 400s).
    """
    message: dict[str, Any] = {}
    blocks: dict[int, dict] = {}
    json_parts: dict[int, list[str]] = {}
    final: dict[str, Any] = {}
    for event in events:
        kind = event["type"]
        if kind == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            dtype = delta["type"]
            if dtype == "text_delta":
                block["text"] += delta["text"]
            elif dtype == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif dtype == "signature_delta":
                block["signature"] = delta["signature"]
            elif dtype == "input_json_delta":
                json_parts[event["index"]].append(delta["partial_json"])
        elif kind == "content_block_start":
            block = blocks[event["index"]] = dict(event["content_block"])
            if block["type"] == "tool_use":
                json_parts[event["index"]] = []
        elif kind == "content_block_stop":
            index = event["index"]
            if index in json_parts:
                text = "".join(json_parts.pop(index))
                blocks[index]["input"] = orjson.loads(text) if text else {}
        elif kind == "message_start":
            message = event["message"]
        elif kind == "message_delta":
            final = event
    delta = final.get("delta") or {}
    stop_reason = delta.get("stop_reason")
    content = [b for _, b in sorted(blocks.items()) if not (b["type"] == "text" and (not b["text"] or b["text"].isspace()))]
    return {
        "id": message.get("id"),
        "type": "message",
        "role": "assistant",
        "model": message.get("model"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": delta.get("stop_sequence"),
        "stop_details": delta.get("stop_details") or (dict(REFUSAL_DETAILS) if stop_reason == "refusal" else None),
        "usage": final.get("usage") or message.get("usage"),
    }


async def _one(chunk: dict) -> AsyncIterator[list[dict]]:
    yield [chunk]

