"""anthropic.estimate_input_tokens / count_tokens: the local token estimate."""

from __future__ import annotations

import time

import orjson

from steps.anthropic.tokens import IMAGE_TOKENS, count_tokens, estimate_input_tokens, estimate_tokens
from tests.fixtures import CLAUDE_CODE as FIXTURES



def _body(content, **extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def test_text_is_about_four_chars_per_token():
    """4000 ASCII characters estimate to about 1000 tokens."""
    assert 990 <= estimate_tokens(_body("a" * 4000)) <= 1010


def test_cjk_text_counts_about_one_token_per_character():
    """Non-ASCII text is counted by UTF-8 bytes, so CJK is not undercounted 4x."""
    assert estimate_tokens(_body("漢" * 1000)) >= 900


def test_image_has_fixed_cost():
    """An image costs a flat IMAGE_TOKENS regardless of its data size."""
    img = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 1_000_000}}
    n = estimate_tokens(_body([img]))
    assert IMAGE_TOKENS <= n < IMAGE_TOKENS + 20


def test_tools_are_counted():
    """Tool definitions add their JSON size plus the tool-use overhead."""
    tool = {"name": "t", "description": "d" * 3000, "input_schema": {"type": "object"}}
    assert estimate_tokens(_body("hi", tools=[tool])) - estimate_tokens(_body("hi")) > 1000


def test_system_is_counted():
    """A system prompt adds to the estimate."""
    assert estimate_tokens(_body("hi", system="s" * 400)) - estimate_tokens(_body("hi")) == 100


def test_tool_use_and_result_are_counted():
    """tool_use inputs and tool_result contents count."""
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "X", "input": {"cmd": "x" * 300}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "y" * 400}]},
    ]
    assert estimate_tokens({"messages": msgs}) > 200


def test_garbage_shapes_never_raise():
    """Odd shapes give a number, not an exception."""
    assert estimate_tokens({"messages": [5, {"content": [5, {"type": "zzz", "x": 1}]}], "system": 5, "tools": "x"}) >= 0


def test_count_tokens_shape():
    """count_tokens answers {"input_tokens": n}."""
    assert count_tokens(body=_body("abcd")) == {"input_tokens": estimate_input_tokens(body=_body("abcd"))}


def test_estimate_is_fast_on_fixture():
    """first_turn.json estimates in well under a millisecond (best of 200 runs)."""
    body = orjson.loads((FIXTURES / "first_turn.json").read_bytes())
    best = min(_timed(estimate_tokens, body) for _ in range(200))
    assert best < 0.001


def _timed(fn, arg) -> float:
    t = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t
