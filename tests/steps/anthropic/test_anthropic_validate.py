"""anthropic.validate: Anthropic-style 400s naming the JSON path (RELIABILITY §3 rows 12-19)."""

from __future__ import annotations

from typing import Any

import pytest

from steps.anthropic.errors import AnthropicError
from steps.anthropic.validate import validate, validate_count_tokens


def _body(**overrides: Any) -> dict:
    body: dict[str, Any] = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


def _error(body: dict, fn=validate) -> AnthropicError:
    with pytest.raises(AnthropicError) as info:
        fn(body=body)
    err = info.value
    assert err.status == 400
    assert err.error_type == "invalid_request_error"
    return err


def test_valid_body_is_returned_unchanged():
    """A valid body comes back as the very same dict."""
    body = _body()
    assert validate(body=body) is body


def test_max_tokens_missing():
    """Row 12: a missing max_tokens is `max_tokens: Field required`."""
    assert _error(_body(max_tokens=_DROP)).message == "max_tokens: Field required"


@pytest.mark.parametrize("value", [0, -1, "10", 10**12, True, 1.5, None])
def test_max_tokens_bad_values(value):
    """Row 12: max_tokens 0, -1, "10", 10^12 (over the 10^9 cap), true, 1.5 or null is 400 naming max_tokens."""
    assert _error(_body(max_tokens=value)).message.startswith("max_tokens: ")


def test_max_tokens_string_is_not_coerced():
    """A string max_tokens is refused as not an integer (strict types)."""
    assert _error(_body(max_tokens="10")).message == "max_tokens: Input should be a valid integer"


@pytest.mark.parametrize("value", [_DROP, [], "x", {}])
def test_messages_missing_empty_or_not_array(value):
    """Row 13: messages missing, [] or not an array is 400 naming `messages`."""
    assert _error(_body(messages=value)).message.startswith("messages: ")


@pytest.mark.parametrize("role", ["tool", "", 123, None])
def test_bad_role(role):
    """Row 14: role "tool", "", 123 or null is 400 naming `messages.0.role`."""
    assert _error(_body(messages=[{"role": role, "content": "x"}])).message.startswith("messages.0.role: ")


def test_bad_role_in_later_message_names_its_index():
    """The index in the path is the index of the offending message."""
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "tool", "content": "c"}]
    assert _error(_body(messages=msgs)).message.startswith("messages.2.role: ")


def test_unknown_block_type_is_accepted():
    """A block type newer than this code is never refused (issue 16; it overrides RELIABILITY
    row 15): anthropic.clean drops it before validation, and validate alone accepts it too."""
    body = _body(messages=[{"role": "user", "content": [{"type": "foo"}, {"type": "text", "text": "hi"}]}])
    assert validate(body=body) is body


@pytest.mark.parametrize("block", [{"type": 5}, {"type": None}, [], "text"])
def test_block_with_no_string_type_is_refused(block):
    """What is not a block at all (no string `type`) is still 400 naming `messages.0.content.0`."""
    err = _error(_body(messages=[{"role": "user", "content": [block]}]))
    assert err.message.startswith("messages.0.content.0")


def test_block_without_type():
    """A block without `type` is `...content.0.type: Field required`."""
    err = _error(_body(messages=[{"role": "user", "content": [{"text": "x"}]}]))
    assert err.message == "messages.0.content.0.type: Field required"


def test_block_missing_field_path_has_no_union_tag():
    """A text block without `text` names `messages.0.content.1.text`, not an internal union tag."""
    content = [{"type": "text", "text": "a"}, {"type": "text"}]
    assert _error(_body(messages=[{"role": "user", "content": content}])).message == (
        "messages.0.content.1.text: Field required"
    )


def test_content_not_string_or_list():
    """A content that is a number is 400 naming `messages.0.content`."""
    assert _error(_body(messages=[{"role": "user", "content": 5}])).message.startswith("messages.0.content: ")


def test_tool_result_without_tool_use():
    """Row 16: a tool_result matching no tool_use is Anthropic's 'unexpected `tool_use_id`' 400."""
    msgs = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]}]
    err = _error(_body(messages=msgs))
    assert err.message == (
        "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_x. "
        "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
    )


def test_tool_result_matching_an_older_turn_is_refused():
    """A tool_result must answer the previous assistant turn, not an earlier one."""
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "X", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
    ]
    assert "unexpected `tool_use_id`" in _error(_body(messages=msgs)).message


def test_tool_result_matching_previous_turn_is_accepted():
    """A tool_result answering a tool_use of the previous assistant message passes."""
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "X", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "r"}]}]},
    ]
    assert validate(body=_body(messages=msgs))


def test_unknown_fields_are_ignored_everywhere():
    """Row 17: unknown top-level, message, block and tool fields are accepted."""
    body = _body(
        foo=1,
        context_management={"edits": []},
        messages=[{"role": "user", "content": [{"type": "text", "text": "x", "zzz": 1}], "extra": True}],
        tools=[{"name": "t", "input_schema": {}, "defer_loading": True, "new_field": 1}],
        metadata={"user_id": "u", "other": 2},
    )
    assert validate(body=body) is body


@pytest.mark.parametrize(
    ("field", "value"),
    [("stream", "true"), ("model", 5), ("system", 5), ("stream", 1), ("temperature", "0.5")],
)
def test_wrong_scalar_types_name_the_field(field, value):
    """Row 18: stream "true", model 5, system 5 (and similar) are 400 naming the field."""
    assert _error(_body(**{field: value})).message.startswith(f"{field}: ")


def test_bad_tool_name_names_tool_index():
    """Row 19: tool name `bad name!` is 400 naming `tools.N.name`."""
    tools = [{"name": "ok", "input_schema": {}}] * 3 + [{"name": "bad name!", "input_schema": {}}]
    assert _error(_body(tools=tools)).message.startswith("tools.3.name: ")


def test_tool_name_too_long_is_refused():
    """A custom tool name longer than 64 characters is refused."""
    assert _error(_body(tools=[{"name": "a" * 65, "input_schema": {}}])).message.startswith("tools.0.name: ")


def test_server_tool_is_accepted():
    """A versioned server tool (web_search_20250305) passes without input_schema."""
    body = _body(tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}])
    assert validate(body=body) is body


def test_tool_choice_tool_requires_name():
    """tool_choice {type: tool} without a name is 400 naming `tool_choice.name`."""
    tools = [{"name": "t", "input_schema": {}}]
    assert _error(_body(tools=tools, tool_choice={"type": "tool"})).message == "tool_choice.name: Field required"


def test_thinking_enabled_requires_budget():
    """thinking {type: enabled} without budget_tokens is 400."""
    assert _error(_body(thinking={"type": "enabled"})).message.startswith("thinking.budget_tokens: ")


def test_unknown_thinking_type_is_accepted():
    """A thinking type newer than this code is accepted, like any other new beta value."""
    body = _body(thinking={"type": "something_new"})
    assert validate(body=body) is body


def test_system_role_message_is_accepted_without_clean():
    """A Claude Code `role: system` message passes validate even when clean did not run."""
    msgs = [{"role": "user", "content": "a"}, {"role": "system", "content": "env"}]
    assert validate(body=_body(messages=msgs))


def test_count_tokens_does_not_require_max_tokens():
    """validate_count_tokens accepts a body without max_tokens."""
    body = _body(max_tokens=_DROP)
    assert validate_count_tokens(body=body) is body


def test_count_tokens_ignores_bad_max_tokens():
    """validate_count_tokens ignores a max_tokens that would be invalid for /v1/messages."""
    assert validate_count_tokens(body=_body(max_tokens="x"))


def test_count_tokens_reports_same_errors_otherwise():
    """Row 22: count_tokens gives the same answers for the same bad bodies."""
    err = _error(_body(messages=[{"role": "tool", "content": "x"}]), validate_count_tokens)
    assert err.message.startswith("messages.0.role: ")
