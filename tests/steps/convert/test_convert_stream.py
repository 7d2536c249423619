"""convert.stream: OpenAI chat completion chunks → Anthropic stream events."""

from __future__ import annotations

import re
import time
from typing import Any

import anyio
import orjson
import pytest

from engine.run import RunContext
from steps.convert.stream import convert_stream
from steps.convert.thinking import decode
from steps.openrouter.errors import UpstreamError

BODY = {"model": "claude-opus-5-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def ctx() -> RunContext:
    return RunContext(request_id="req_test", pipeline="test", engine=None)


class Chunks:
    """An async iterator over chunk dicts that can fail at a position and records aclose."""

    def __init__(self, chunks: list[dict], fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.pos = 0
        self.closed = False

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> dict:
        if self.fail_at is not None and self.pos == self.fail_at:
            raise UpstreamError("stream cut", kind="cut")
        if self.pos >= len(self.chunks):
            raise StopAsyncIteration
        self.pos += 1
        return self.chunks[self.pos - 1]

    async def aclose(self) -> None:
        self.closed = True


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> dict:
    c: dict[str, Any] = {"id": "gen-1", "object": "chat.completion.chunk", "model": "x/y"}
    c["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else []
    if usage is not None:
        c["usage"] = usage
    return c


def tc(index: int, id: str | None = None, name: str | None = None, args: str | None = None) -> dict:
    call: dict[str, Any] = {"index": index, "function": {}}
    if id is not None:
        call["id"] = id
        call["type"] = "function"
    if name is not None:
        call["function"]["name"] = name
    if args is not None:
        call["function"]["arguments"] = args
    return call


def run(chunks: list[dict] | Chunks, body: dict = BODY, estimate: int = 0) -> list[dict]:
    source = chunks if isinstance(chunks, Chunks) else Chunks(chunks)

    async def collect() -> list[dict]:
        return [e async for batch in convert_stream(source, body, "x/y", ctx(), estimate) for e in batch]

    return anyio.run(collect)


def validate(events: list[dict]) -> dict:
    """Check the Anthropic stream grammar and invariants (§3.4); return the assembled message."""
    assert events[0]["type"] == "message_start", "message_start must come first"
    start = events[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert isinstance(start["usage"]["input_tokens"], int) and isinstance(start["usage"]["output_tokens"], int)
    assert [e["type"] for e in events[-2:]] == ["message_delta", "message_stop"], "must end delta, stop"
    message = {"content": [], "stop_reason": None}
    open_index = None
    buffers: dict[int, str] = {}
    for event in events[1:-2]:
        kind = event["type"]
        assert kind in {"content_block_start", "content_block_delta", "content_block_stop", "ping"}, kind
        if kind == "content_block_start":
            assert open_index is None, "block started before the previous one stopped"
            assert event["index"] == len(message["content"]), "indices must be consecutive from 0"
            block = dict(event["content_block"])
            if block["type"] == "text":
                assert block == {"type": "text", "text": ""}
            elif block["type"] == "thinking":
                assert block == {"type": "thinking", "thinking": "", "signature": ""}
            elif block["type"] == "tool_use":
                assert block["input"] == {} and TOOL_ID.match(block["id"]) and block["name"]
                buffers[event["index"]] = ""
            message["content"].append(block)
            open_index = event["index"]
        elif kind == "content_block_delta":
            assert event["index"] == open_index, "delta for a block that is not open"
            block, delta = message["content"][open_index], event["delta"]
            expected = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}[block["type"]]
            if delta["type"] == "signature_delta":
                assert block["type"] == "thinking"
                block["signature"] = delta["signature"]
                continue
            assert delta["type"] == expected, f"{delta['type']} in a {block['type']} block"
            if expected == "text_delta":
                assert delta["text"]
                block["text"] += delta["text"]
            elif expected == "thinking_delta":
                block["thinking"] += delta["thinking"]
            else:
                buffers[open_index] += delta["partial_json"]
        elif kind == "content_block_stop":
            assert event["index"] == open_index, "stop for a block that is not open"
            block = message["content"][open_index]
            if block["type"] == "text":
                assert block["text"].strip(), "empty text block"
            if block["type"] == "tool_use":
                raw = buffers[open_index]
                block["input"] = orjson.loads(raw) if raw else {}
                assert isinstance(block["input"], dict), "tool input must be an object"
            open_index = None
    assert open_index is None, "a block was left open"
    final = events[-2]
    assert final["delta"]["stop_reason"] is not None
    assert isinstance(final["usage"]["output_tokens"], int) and final["usage"]["output_tokens"] > 0
    message["stop_reason"] = final["delta"]["stop_reason"]
    message["stop_sequence"] = final["delta"]["stop_sequence"]
    message["usage"] = final["usage"]
    ids = [b["id"] for b in message["content"] if b["type"] == "tool_use"]
    assert len(ids) == len(set(ids)), "duplicate tool ids"
    return message


def sdk_accumulate(events: list[dict]) -> Any:
    """Feed the events through the official anthropic SDK's stream accumulator."""
    from anthropic.lib.streaming._messages import accumulate_event

    snapshot = None
    bufs: dict[int, bytes] = {}
    for event in events:
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=bufs)  # type: ignore[arg-type]
    return snapshot


def test_text_only_stream() -> None:
    """Plain text chunks become one text block with end_turn and the upstream usage."""
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": w}) for w in ["Hel", "lo", " world"]]
    chunks += [chunk(finish="stop"), chunk(choices=False, usage={"prompt_tokens": 12, "completion_tokens": 3})]
    events = run(chunks, estimate=9)
    msg = validate(events)
    assert events[0]["message"]["usage"] == {
        "input_tokens": 9, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
    }  # fmt: skip
    assert events[0]["message"]["model"] == "claude-opus-5-5"
    assert msg["content"] == [{"type": "text", "text": "Hello world"}]
    assert msg["stop_reason"] == "end_turn"
    assert msg["usage"] == {"input_tokens": 12, "output_tokens": 3, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    snap = sdk_accumulate(events)
    assert snap.content[0].text == "Hello world" and snap.stop_reason == "end_turn"


def test_text_then_tool_call_with_split_arguments() -> None:
    """Arguments split across many chunks concatenate to exactly the upstream object."""
    args = orjson.dumps({"command": "ls -la /tmp", "description": "List \"files\"", "n": [1, 2, {"x": None}]}).decode()
    chunks = [chunk({"content": "Let me look."}), chunk({"tool_calls": [tc(0, "toolu_01abc", "Bash", "")]})]
    chunks += [chunk({"tool_calls": [tc(0, args=args[i : i + 3])]}) for i in range(0, len(args), 3)]
    chunks += [chunk(finish="tool_calls")]
    events = run(chunks)
    msg = validate(events)
    assert msg["content"][0] == {"type": "text", "text": "Let me look."}
    tool = msg["content"][1]
    assert (tool["id"], tool["name"], tool["input"]) == ("toolu_01abc", "Bash", orjson.loads(args))
    assert msg["stop_reason"] == "tool_use"
    assert sdk_accumulate(events).content[1].input == orjson.loads(args)


def test_two_parallel_tool_calls() -> None:
    """Two tool calls in sequence become two tool_use blocks in order with their own inputs."""
    chunks = [
        chunk({"tool_calls": [tc(0, "call_a", "Read", "")]}),
        chunk({"tool_calls": [tc(0, args='{"file_path"')]}),
        chunk({"tool_calls": [tc(0, args=': "/a"}')]}),
        chunk({"tool_calls": [tc(1, "call_b", "Read", "")]}),
        chunk({"tool_calls": [tc(1, args='{"file_path": "/b"}')]}),
        chunk(finish="tool_calls"),
    ]
    msg = validate(run(chunks))
    assert [(b["id"], b["input"]) for b in msg["content"]] == [("call_a", {"file_path": "/a"}), ("call_b", {"file_path": "/b"})]


def test_headers_first_then_arguments() -> None:
    """Calls whose headers all come before their arguments still get complete inputs."""
    chunks = [
        chunk({"tool_calls": [tc(0, "call_a", "Read", "")]}),
        chunk({"tool_calls": [tc(1, "call_b", "Write", "")]}),
        chunk({"tool_calls": [tc(0, args='{"p": 1}')]}),
        chunk({"tool_calls": [tc(1, args='{"p": 2}')]}),
        chunk(finish="tool_calls"),
    ]
    msg = validate(run(chunks))
    assert [(b["name"], b["input"]) for b in msg["content"]] == [("Read", {"p": 1}), ("Write", {"p": 2})]


def test_whole_call_in_one_chunk() -> None:
    """A tool call delivered whole in one chunk (Ollama style) streams correctly."""
    chunks = [chunk({"tool_calls": [tc(0, "call_1", "Bash", '{"command": "pwd"}')]}, finish="tool_calls")]
    msg = validate(run(chunks))
    assert msg["content"] == [{"type": "tool_use", "id": "call_1", "name": "Bash", "input": {"command": "pwd"}}]


def test_content_tool_calls_and_finish_in_one_chunk() -> None:
    """Content, two tool calls and finish_reason in a single chunk produce three ordered blocks."""
    chunks = [
        chunk(
            {"content": "Running both.", "tool_calls": [tc(0, "c1", "A", '{"x":1}'), tc(1, "c2", "B", "{}")]},
            finish="tool_calls",
        )
    ]
    msg = validate(run(chunks))
    assert [b["type"] for b in msg["content"]] == ["text", "tool_use", "tool_use"]
    assert msg["content"][1]["input"] == {"x": 1} and msg["content"][2]["input"] == {}
    assert msg["stop_reason"] == "tool_use"


def test_tool_without_arguments_gets_empty_object() -> None:
    """A tool call that never sends arguments ends with input {}."""
    msg = validate(run([chunk({"tool_calls": [tc(0, "c1", "Noop")]}), chunk(finish="tool_calls")]))
    assert msg["content"] == [{"type": "tool_use", "id": "c1", "name": "Noop", "input": {}}]


def test_invalid_and_duplicate_tool_ids_replaced() -> None:
    """Numeric, pattern-breaking and repeated upstream ids become fresh toolu_ ids."""
    chunks = [
        chunk({"tool_calls": [tc(0, "0", "A", "{}")]}),
        chunk({"tool_calls": [tc(1, "functions.Bash:1", "B", "{}")]}),
        chunk({"tool_calls": [tc(2, "same", "C", "{}")]}),
        chunk({"tool_calls": [tc(3, "same", "D", "{}")]}),
        chunk(finish="tool_calls"),
    ]
    ids = [b["id"] for b in validate(run(chunks))["content"]]
    assert ids[0].startswith("toolu_") and ids[1].startswith("toolu_")
    assert ids[2] == "same" and ids[3].startswith("toolu_")


def test_truncated_arguments_closed_at_length() -> None:
    """Arguments cut by the output cap are closed so the input parses, and stop_reason is max_tokens."""
    chunks = [chunk({"tool_calls": [tc(0, "c1", "Write", '{"file_path": "/a", "content": "hel')]}), chunk(finish="length")]
    msg = validate(run(chunks))
    assert msg["content"][0]["input"] == {"file_path": "/a", "content": "hel"}
    assert msg["stop_reason"] == "max_tokens"


def test_usage_in_final_empty_choices_chunk_with_cache() -> None:
    """Usage from a trailing choices:[] chunk is mapped with cache reads and writes split out."""
    usage = {"prompt_tokens": 1000, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 700, "cache_write_tokens": 200}}
    msg = validate(run([chunk({"content": "ok"}), chunk(finish="stop"), chunk(choices=False, usage=usage)]))
    assert msg["usage"] == {"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 700, "cache_creation_input_tokens": 200}


def test_no_usage_uses_estimates() -> None:
    """Without upstream usage the input estimate and a chars/4 output estimate are reported."""
    msg = validate(run([chunk({"content": "x" * 400}), chunk(finish="stop")], estimate=321))
    assert msg["usage"]["input_tokens"] == 321 and msg["usage"]["output_tokens"] == 100


def test_reasoning_then_text() -> None:
    """Reasoning deltas become a thinking block closed before the text block."""
    chunks = [
        chunk({"reasoning": "Think"}),
        chunk({"reasoning": "ing."}),
        chunk({"reasoning_content": None, "content": "Answer"}),
        chunk(finish="stop"),
    ]
    events = run(chunks)
    msg = validate(events)
    sig = msg["content"][0]["signature"]
    assert msg["content"] == [{"type": "thinking", "thinking": "Thinking.", "signature": sig}, {"type": "text", "text": "Answer"}]
    assert decode(sig) == {"v": 1, "m": "x/y", "y": "x", "f": "text", "t": "Thinking."}
    snap = sdk_accumulate(events)
    assert snap.content[0].thinking == "Thinking." and snap.content[1].text == "Answer"


def test_reasoning_content_alias() -> None:
    """DeepSeek-style reasoning_content is read like reasoning."""
    msg = validate(run([chunk({"reasoning_content": "hmm"}), chunk({"content": "ok"}), chunk(finish="stop")]))
    assert msg["content"][0]["thinking"] == "hmm" and decode(msg["content"][0]["signature"])["t"] == "hmm"


def test_empty_content_never_opens_a_block() -> None:
    """Empty content strings produce no text block at all."""
    events = run([chunk({"role": "assistant", "content": ""}), chunk({"content": ""}), chunk(finish="stop")])
    msg = validate(events)
    assert msg["content"] == [] and msg["stop_reason"] == "end_turn"


def test_nothing_at_all_still_ends_properly() -> None:
    """An upstream that ends with no chunk at all still gets message_delta(end_turn) and message_stop."""
    events = run([])
    assert [e["type"] for e in events] == ["message_start", "message_delta", "message_stop"]
    assert validate(events)["stop_reason"] == "end_turn"


def test_iterator_error_propagates_without_further_events() -> None:
    """An exception from the upstream iterator propagates and nothing is emitted after it; the iterator is closed."""
    source = Chunks([chunk({"content": "partial"}), chunk({"content": " more"}), chunk(finish="stop")], fail_at=2)
    seen: list[dict] = []

    async def collect() -> None:
        async for batch in convert_stream(source, BODY, "x/y", ctx()):
            seen.extend(batch)

    with pytest.raises(UpstreamError):
        anyio.run(collect)
    assert [e["type"] for e in seen] == ["message_start", "content_block_start", "content_block_delta", "content_block_delta"]
    assert source.closed


def test_finish_reason_error_raises() -> None:
    """A chunk with finish_reason 'error' raises UpstreamError(kind='error_chunk') with its status."""
    bad = chunk({"content": ""}, finish="error")
    bad["error"] = {"code": 503, "message": "provider overloaded", "metadata": {"error_type": "provider_overloaded"}}
    with pytest.raises(UpstreamError) as info:
        run([chunk({"content": "hi"}), bad])
    assert info.value.kind == "error_chunk" and info.value.status == 503 and info.value.retryable


def test_stop_sequence_detected() -> None:
    """Text ending with one of the request's stop_sequences reports stop_sequence and the string."""
    body = BODY | {"stop_sequences": ["</done>"]}
    msg = validate(run([chunk({"content": "ok </do"}), chunk({"content": "ne>"}), chunk(finish="stop")], body=body))
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("stop_sequence", "</done>")


def test_content_filter_is_refusal() -> None:
    """finish_reason content_filter becomes stop_reason refusal with stop_details."""
    events = run([chunk({"content": "I can't"}), chunk(finish="content_filter")])
    assert validate(events)["stop_reason"] == "refusal"
    assert events[-2]["delta"]["stop_details"]["type"] == "refusal"


def test_consumer_closing_early_closes_upstream() -> None:
    """When the consumer stops early, the upstream iterator is closed too."""
    source = Chunks([chunk({"content": "a"}), chunk({"content": "b"})])

    async def take_two() -> None:
        gen = convert_stream(source, BODY, "x/y", ctx())
        await gen.__anext__()
        await gen.__anext__()
        await gen.aclose()

    anyio.run(take_two)
    assert source.closed


def test_stream_speed_per_chunk() -> None:
    """A 200-chunk text stream converts in well under 15 µs per chunk (measured figure printed)."""
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": f"word{i} "}) for i in range(198)]
    chunks += [chunk(finish="stop", usage={"prompt_tokens": 10, "completion_tokens": 200})]

    async def measure() -> float:
        best = float("inf")
        for _ in range(30):
            source = Chunks(chunks)
            start = time.perf_counter()
            async for _ in convert_stream(source, BODY, "x/y", ctx()):
                pass
            best = min(best, time.perf_counter() - start)
        return best

    per_chunk_us = anyio.run(measure) / len(chunks) * 1e6
    print(f"convert.stream: {per_chunk_us:.2f} µs/chunk (200-chunk text stream, incl. the test iterator)")
    assert per_chunk_us < 15


def test_reasoning_details_only() -> None:
    """Reasoning sent only as reasoning_details text still becomes a thinking block."""
    chunks = [chunk({"reasoning_details": [{"type": "reasoning.text", "text": "step", "index": 0}]}), chunk({"content": "ok"}), chunk(finish="stop")]
    block = validate(run(chunks))["content"][0]
    assert block["thinking"] == "step"
    assert decode(block["signature"])["d"] == [{"type": "reasoning.text", "text": "step", "index": 0}]


def test_arguments_before_name_are_buffered() -> None:
    """Argument fragments that arrive before the call's name are emitted once the block starts."""
    chunks = [
        chunk({"tool_calls": [tc(0, "c1", None, '{"a"')]}),
        chunk({"tool_calls": [tc(0, None, "Edit", ": 1}")]}),
        chunk(finish="tool_calls"),
    ]
    assert validate(run(chunks))["content"] == [{"type": "tool_use", "id": "c1", "name": "Edit", "input": {"a": 1}}]


def test_double_encoded_arguments_normalized() -> None:
    """Arguments streamed as a JSON string holding JSON are held and sent once as the object."""
    args = orjson.dumps(orjson.dumps({"a": [1, 2]}).decode()).decode()
    chunks = [chunk({"tool_calls": [tc(0, "c1", "X", args[:5])]}), chunk({"tool_calls": [tc(0, args=args[5:])]}), chunk(finish="tool_calls")]
    assert validate(run(chunks))["content"][0]["input"] == {"a": [1, 2]}


def test_missing_tool_index_continues_last_call() -> None:
    """Fragments without an index continue the last call; a new id starts a new one."""
    chunks = [
        chunk({"tool_calls": [{"id": "c1", "function": {"name": "A", "arguments": '{"x":'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": "1}"}}]}),
        chunk({"tool_calls": [{"id": "c2", "function": {"name": "B", "arguments": "{}"}}]}),
        chunk(finish="tool_calls"),
    ]
    msg = validate(run(chunks))
    assert [(b["id"], b["input"]) for b in msg["content"]] == [("c1", {"x": 1}), ("c2", {})]


def test_interleaved_arguments_raise() -> None:
    """Arguments for a call whose block already closed raise instead of producing a corrupt input."""
    chunks = [
        chunk({"tool_calls": [tc(0, "c1", "A", '{"x":')]}),
        chunk({"tool_calls": [tc(1, "c2", "B", '{"y": 2}')]}),
        chunk({"tool_calls": [tc(0, args="1}")]}),
    ]
    with pytest.raises(UpstreamError) as info:
        run(chunks)
    assert info.value.kind == "protocol"


def test_invalid_tool_json_raises() -> None:
    """Tool arguments that cannot be closed into an object raise a protocol error before the block stops."""
    with pytest.raises(UpstreamError):
        run([chunk({"tool_calls": [tc(0, "c1", "A", '{"x": 1}}')]}), chunk(finish="tool_calls")])


# --- batches -----------------------------------------------------------------------------------


def _batched(chunks: list[dict], sizes: list[int], body: dict = BODY) -> list[list[dict]]:
    """convert_stream's batches when the chunks arrive in batches of the given sizes."""
    batches, at = [], 0
    for n in sizes:
        batches.append(chunks[at : at + n])
        at += n
    source = Chunks(batches)  # type: ignore[arg-type]

    async def collect() -> list[list[dict]]:
        return [b async for b in convert_stream(source, body, "x/y", ctx())]

    return anyio.run(collect)


def test_message_start_goes_alone_when_the_first_batch_makes_no_event() -> None:
    """A first batch with nothing to show (a keepalive marker) still commits the response:
    message_start goes up on its own, before the upstream's next batch is waited for."""
    keepalive = {"object": "gateway.keepalive", "choices": []}
    batches = _batched([keepalive, chunk({"content": "hi"}), chunk(finish="stop")], [1, 2])
    assert [[e["type"] for e in b] for b in batches] == [
        ["message_start"],
        ["content_block_start", "content_block_delta"],
        ["content_block_stop", "message_delta", "message_stop"],
    ]


def _without_id(events: list[dict]) -> list[dict]:
    return [{**e, "message": {**e["message"], "id": None}} if e["type"] == "message_start" else e for e in events]


def test_batches_make_the_same_events_as_single_chunks() -> None:
    """Chunks fed as batches (one per network read) give exactly the events fed one by one,
    one list per batch that made any event (message_start with the first one's)."""
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning": "think"}),
        chunk({"content": "Hello"}),
        chunk({"content": " world"}),
        chunk({"tool_calls": [tc(0, id="call_1", name="Read", args='{"pa')]}),
        chunk({"tool_calls": [tc(0, args='th": "/x"}')]}),
        chunk({"content": "after"}),
        chunk(finish="tool_calls", usage={"prompt_tokens": 3, "completion_tokens": 5}),
    ]
    single = _without_id(run(chunks))
    for sizes in ([8], [1, 3, 4], [2, 2, 2, 2], [5, 3]):
        batches = _batched(chunks, sizes)
        assert batches[0][0]["type"] == "message_start" and len(batches) <= len(sizes) + 1
        assert all(batches)  # no empty batch goes up
        assert _without_id([e for b in batches for e in b]) == single


def test_a_failure_inside_a_batch_hands_on_the_events_before_it() -> None:
    """A chunk that fails (finish_reason error) in the middle of a batch: the events of the
    chunks before it go up first, then the error; nothing after it."""
    bad = chunk({"content": "lost"}, finish="error")
    source = Chunks([[chunk({"content": "a"}), chunk({"content": "b"}), bad, chunk({"content": "c"})]])  # type: ignore[list-item]
    seen: list[list[dict]] = []

    async def collect() -> None:
        async for batch in convert_stream(source, BODY, "x/y", ctx()):
            seen.append(batch)

    with pytest.raises(UpstreamError):
        anyio.run(collect)
    assert [[e["type"] for e in b] for b in seen] == [["message_start", "content_block_start", "content_block_delta", "content_block_delta"]]
    assert "".join(e["delta"]["text"] for e in seen[0][2:]) == "ab"
    assert source.closed
