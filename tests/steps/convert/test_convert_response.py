"""A JSON answer: an OpenAI chat completion → Anthropic Message, folded from the stream
converter's events (steps/convert/answer.py)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from engine.run import RunContext
from steps.convert.answer import message_of_completion as convert_response
from steps.convert.stream import _StreamConverter
from steps.convert.response import repair_json
from steps.convert.thinking import decode
from steps.openrouter.errors import UpstreamError

BODY = {"model": "claude-opus-5-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


def ctx() -> RunContext:
    return RunContext(request_id="req_test", pipeline="test", engine=None)


def completion(message: dict, finish: str | None = "stop", usage: dict | None = None, **choice: Any) -> dict:
    out: dict[str, Any] = {
        "id": "gen-1",
        "object": "chat.completion",
        "model": "openai/gpt-x",
        "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", **message}, **choice}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def convert(c: Any, body: dict = BODY, estimate: int = 0) -> dict:
    return convert_response(c, _StreamConverter(body, "openai/gpt-x", ctx(), estimate, whole=True))


def test_text_response() -> None:
    """A plain answer becomes one text block, end_turn, the requested model id and mapped usage."""
    usage = {"prompt_tokens": 10339, "completion_tokens": 60, "prompt_tokens_details": {"cached_tokens": 10318, "cache_write_tokens": 0}}
    msg = convert(completion({"content": "Hi there"}, usage=usage))
    assert msg["id"].startswith("msg_") and msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["model"] == "claude-opus-5-5"
    assert msg["content"] == [{"type": "text", "text": "Hi there"}]
    assert (msg["stop_reason"], msg["stop_sequence"], msg["stop_details"]) == ("end_turn", None, None)
    assert msg["usage"] == {"input_tokens": 21, "output_tokens": 60, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10318}


def test_validates_with_sdk_message_model() -> None:
    """The result validates as the official SDK's Message type."""
    from anthropic.types import Message

    c = completion(
        {"content": "Let me.", "reasoning": "why", "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "Bash", "arguments": '{"c":1}'}}]},
        finish="tool_calls",
    )
    Message.model_validate(convert(c))


def test_tool_calls_and_stop_reason() -> None:
    """Tool calls become tool_use blocks after the text, with parsed input and stop_reason tool_use."""
    c = completion(
        {"content": None, "tool_calls": [
            {"id": "toolu_01", "type": "function", "function": {"name": "Bash", "arguments": '{"command":"ls"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "Noop", "arguments": ""}},
        ]},
        finish="tool_calls",
    )  # fmt: skip
    msg = convert(c)
    assert msg["content"] == [
        {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "ls"}},
        {"type": "tool_use", "id": "call_2", "name": "Noop", "input": {}},
    ]
    assert msg["stop_reason"] == "tool_use"


def test_gemini_stop_with_tool_calls_is_tool_use() -> None:
    """finish_reason stop with tool calls present still means tool_use."""
    c = completion({"tool_calls": [{"id": "a", "type": "function", "function": {"name": "X", "arguments": "{}"}}]}, finish="stop")
    assert convert(c)["stop_reason"] == "tool_use"


def test_bad_tool_ids_replaced() -> None:
    """Numeric, pattern-breaking and duplicate tool call ids are replaced with toolu_ ids."""
    calls = [
        {"id": i, "type": "function", "function": {"name": "X", "arguments": "{}"}}
        for i in ["0", "functions.Bash:0", "ok_id", "ok_id", None]
    ]
    ids = [b["id"] for b in convert(completion({"tool_calls": calls}, finish="tool_calls"))["content"]]
    assert ids[2] == "ok_id"
    assert all(ids[i].startswith("toolu_") for i in (0, 1, 3, 4))
    assert len(set(ids)) == 5


def test_truncated_arguments_repaired() -> None:
    """Truncated tool arguments are repaired into the object they began."""
    c = completion({"tool_calls": [{"id": "a", "type": "function", "function": {"name": "W", "arguments": '{"path": "/x", "text": "hel'}}]}, finish="length")
    msg = convert(c)
    assert msg["content"][0]["input"] == {"path": "/x", "text": "hel"}
    assert msg["stop_reason"] == "max_tokens"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1, "b": [1, 2', {"a": 1, "b": [1, 2]}),
        ('{"a": 1, "b":', {"a": 1}),
        ('{"a": 1, "b": tru', {"a": 1}),
        ('{"a": {"c": "x\\', {"a": {"c": "x\\"}}),
        ('{"a": 1}{"a": 1}', {"a": 1}),
        ("not json", None),
    ],
)
def test_repair_json(text: str, expected: dict | None) -> None:
    """repair_json recovers truncated objects or returns None."""
    assert repair_json(text) == expected


def test_unrepairable_arguments_raise() -> None:
    """Arguments that cannot become an object raise UpstreamError(kind='protocol')."""
    c = completion({"tool_calls": [{"id": "a", "type": "function", "function": {"name": "W", "arguments": "[1, 2]"}}]})
    with pytest.raises(UpstreamError) as info:
        convert(c)
    assert info.value.kind == "protocol"


def test_double_encoded_arguments() -> None:
    """Arguments sent as a JSON string holding JSON are decoded once more."""
    args = orjson.dumps(orjson.dumps({"a": 1}).decode()).decode()
    c = completion({"tool_calls": [{"id": "a", "type": "function", "function": {"name": "W", "arguments": args}}]})
    assert convert(c)["content"][0]["input"] == {"a": 1}


def test_reasoning_becomes_thinking_block_first() -> None:
    """Non-empty reasoning becomes a leading thinking block signed with a gateway token."""
    msg = convert(completion({"content": "42", "reasoning": "compute"}))
    sig = msg["content"][0]["signature"]
    assert msg["content"] == [{"type": "thinking", "thinking": "compute", "signature": sig}, {"type": "text", "text": "42"}]
    assert decode(sig) == {"v": 1, "m": "openai/gpt-x", "y": "openai", "f": "text", "t": "compute"}


def test_empty_and_whitespace_content_omitted() -> None:
    """Empty or whitespace-only content never becomes a text block."""
    assert convert(completion({"content": "  \n"}))["content"] == []
    assert convert(completion({"content": ""}))["content"] == []


def test_refusal() -> None:
    """A refusal becomes text and stop_reason refusal with stop_details."""
    msg = convert(completion({"content": None, "refusal": "I can't help with that."}))
    assert msg["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert msg["stop_reason"] == "refusal" and msg["stop_details"]["type"] == "refusal"


@pytest.mark.parametrize(("finish", "stop_reason"), [("length", "max_tokens"), ("content_filter", "refusal"), (None, "end_turn")])
def test_finish_reason_mapping(finish: str | None, stop_reason: str) -> None:
    """finish_reason maps to the Anthropic stop_reason."""
    assert convert(completion({"content": "x"}, finish=finish))["stop_reason"] == stop_reason


def test_stop_sequence_detected() -> None:
    """Text ending with a requested stop sequence reports stop_sequence and the string."""
    body = BODY | {"stop_sequences": ["END", "</x>"]}
    msg = convert(completion({"content": "done </x>"}), body=body)
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("stop_sequence", "</x>")


def test_vllm_named_stop_sequence() -> None:
    """vLLM's choice.stop_reason naming a requested stop string reports it."""
    body = BODY | {"stop_sequences": ["END"]}
    msg = convert(completion({"content": "done"}, stop_reason="END"), body=body)
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("stop_sequence", "END")


def test_missing_usage_estimated() -> None:
    """Without usage the input estimate and a non-zero chars/4 output estimate are used."""
    msg = convert(completion({"content": "abcdefgh"}), estimate=77)
    assert msg["usage"] == {"input_tokens": 77, "output_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    assert convert(completion({"content": "a"}))["usage"]["output_tokens"] == 1


def test_top_level_error_with_200_raises() -> None:
    """A {"error": ...} body raises UpstreamError with the status from error.code."""
    with pytest.raises(UpstreamError) as info:
        convert({"error": {"code": 429, "message": "Rate limited", "metadata": {"error_type": "rate_limit_exceeded"}}})
    err = info.value
    assert (err.status, err.kind, err.retryable, err.error_type) == (429, "error_chunk", True, "rate_limit_exceeded")
    assert "Rate limited" in str(err)


def test_choice_error_raises() -> None:
    """A choice carrying an error (finish_reason error) raises UpstreamError."""
    c = completion({"content": "partial"}, finish="error", error={"code": 502, "message": "provider died"})
    with pytest.raises(UpstreamError) as info:
        convert(c)
    assert info.value.status == 502 and info.value.kind == "error_chunk"


def test_finish_error_without_details_raises() -> None:
    """finish_reason error alone raises a retryable UpstreamError."""
    with pytest.raises(UpstreamError) as info:
        convert(completion({"content": "x"}, finish="error"))
    assert info.value.retryable


@pytest.mark.parametrize("garbage", ["<html>502 Bad Gateway</html>", None, [], {"choices": []}, {"foo": 1}])
def test_garbage_raises_protocol_error(garbage: Any) -> None:
    """A body that is not a completion with choices raises UpstreamError(kind='protocol', status 502)."""
    with pytest.raises(UpstreamError) as info:
        convert(garbage)
    assert info.value.kind == "protocol" and info.value.status == 502


def test_response_conversion_speed() -> None:
    """A typical tool-call completion converts in far under 1 ms (measured figure printed)."""
    c = completion(
        {"content": "I'll run it.", "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "Bash", "arguments": '{"command": "ls -la"}'}}]},
        finish="tool_calls",
        usage={"prompt_tokens": 100, "completion_tokens": 20},
    )
    context = ctx()
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        convert_response(c, _StreamConverter(BODY, "m", context, 0, whole=True))
    per_call_us = (time.perf_counter() - start) / n * 1e6
    print(f"convert.response: {per_call_us:.1f} µs/call")
    assert per_call_us < 1000
