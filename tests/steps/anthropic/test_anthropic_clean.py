"""anthropic.clean: normalisation of what upstreams reject, without touching the input."""

from __future__ import annotations

import copy
from typing import Any

from steps.anthropic.clean import clean


def _body(messages: list, **extra: Any) -> dict:
    return {"model": "m", "max_tokens": 10, "messages": messages, **extra}


def _tool_use(tid: str, name: str = "Bash") -> dict:
    return {"type": "tool_use", "id": tid, "name": name, "input": {}}


def _tool_result(tid: str, text: str = "ok") -> dict:
    return {"type": "tool_result", "tool_use_id": tid, "content": text}


def test_unchanged_body_is_returned_as_is():
    """A body with nothing to clean comes back as the same object."""
    body = _body([{"role": "user", "content": "hi"}])
    assert clean(body=body) is body


def test_input_is_not_mutated():
    """Cleaning never modifies the caller's dicts or lists."""
    body = _body(
        [
            {"role": "user", "content": [{"type": "text", "text": "  "}, {"type": "text", "text": "a"}]},
            {"role": "system", "content": "env"},
            {"role": "assistant", "content": [_tool_use("t1")]},
            {"role": "user", "content": "next"},
        ],
        system="sys",
        tools=[],
        tool_choice={"type": "auto"},
    )
    snapshot = copy.deepcopy(body)
    clean(body=body)
    assert body == snapshot


def test_blank_text_blocks_are_dropped():
    """Empty and whitespace-only text blocks are removed."""
    out = clean(body=_body([{"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": " \n"}, {"type": "text", "text": "a"}]}]))
    assert out["messages"][0]["content"] == [{"type": "text", "text": "a"}]


def test_blank_string_message_is_dropped_and_neighbours_merged():
    """A message whose string content is blank is dropped and the same-role messages around it merge."""
    out = clean(body=_body([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "b"}]))
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]


def test_blank_text_inside_tool_result_is_dropped():
    """A blank text block inside tool_result.content is removed too."""
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [_tool_use("t1")]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "r"}]}]},
    ]
    out = clean(body=_body(msgs))
    assert out["messages"][2]["content"][0]["content"] == [{"type": "text", "text": "r"}]


def test_system_messages_move_to_top_level_system():
    """`role: system` messages are appended to `system` as text blocks, cache_control kept."""
    cc = {"type": "ephemeral"}
    body = _body(
        [{"role": "user", "content": "hi"}, {"role": "system", "content": [{"type": "text", "text": "env", "cache_control": cc}]}],
        system=[{"type": "text", "text": "main"}],
    )
    out = clean(body=body)
    assert out["messages"] == [{"role": "user", "content": "hi"}]
    assert out["system"] == [{"type": "text", "text": "main"}, {"type": "text", "text": "env", "cache_control": cc}]


def test_system_message_with_string_system():
    """A string top-level system becomes a text block followed by the system message text."""
    out = clean(body=_body([{"role": "user", "content": "hi"}, {"role": "system", "content": "env"}], system="main"))
    assert out["system"] == [{"type": "text", "text": "main"}, {"type": "text", "text": "env"}]


def test_system_message_without_top_level_system():
    """Without a top-level system, the system message text becomes the system prompt."""
    out = clean(body=_body([{"role": "system", "content": "env"}, {"role": "user", "content": "hi"}]))
    assert out["system"] == [{"type": "text", "text": "env"}]
    assert out["messages"] == [{"role": "user", "content": "hi"}]


def test_system_message_between_tool_use_and_result_keeps_pairing():
    """A system message between a tool_use and its tool_result is moved out without breaking the pair."""
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [_tool_use("t1")]},
        {"role": "system", "content": "env"},
        {"role": "user", "content": [_tool_result("t1")]},
    ]
    out = clean(body=_body(msgs))
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][1]["content"] == [_tool_use("t1")]


def test_mid_conv_system_block_moves_to_system():
    """A mid_conv_system block is moved into `system`."""
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "mid_conv_system", "content": [{"type": "text", "text": "rule"}]}]}]
    out = clean(body=_body(msgs))
    assert out["system"] == [{"type": "text", "text": "rule"}]
    assert out["messages"][0]["content"] == [{"type": "text", "text": "a"}]


def test_tool_addition_and_removal_blocks_are_dropped():
    """tool_addition / tool_removal blocks are removed."""
    msgs = [{"role": "user", "content": [{"type": "tool_addition", "tools": []}, {"type": "text", "text": "a"}, {"type": "tool_removal", "names": ["x"]}]}]
    assert clean(body=_body(msgs))["messages"][0]["content"] == [{"type": "text", "text": "a"}]


def test_orphan_tool_use_in_history_is_dropped():
    """An unanswered tool_use in an earlier assistant turn is removed, the rest of the turn kept."""
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "text", "text": "let me"}, _tool_use("t1")]},
        {"role": "user", "content": "never mind"},
    ]
    out = clean(body=_body(msgs))
    assert out["messages"][1]["content"] == [{"type": "text", "text": "let me"}]


def test_partially_answered_tool_uses_keep_the_answered_one():
    """Of two tool_use blocks, only the one without a tool_result is removed."""
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [_tool_use("t1"), _tool_use("t2")]},
        {"role": "user", "content": [_tool_result("t1")]},
    ]
    out = clean(body=_body(msgs))
    assert out["messages"][1]["content"] == [_tool_use("t1")]


def test_assistant_left_empty_by_orphan_removal_is_dropped():
    """An assistant turn holding only orphan tool_use blocks disappears and the user turns merge."""
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [_tool_use("t1")]},
        {"role": "user", "content": "b"},
    ]
    out = clean(body=_body(msgs))
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]


def test_tool_use_in_final_message_is_kept():
    """A tool_use in the last message (not yet answered) is kept."""
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": [_tool_use("t1")]}]
    body = _body(msgs)
    assert clean(body=body) is body


def test_orphan_tool_result_is_left_for_validate():
    """A tool_result matching no tool_use is not removed (validate answers it with a 400)."""
    msgs = [{"role": "user", "content": [_tool_result("ghost"), {"type": "text", "text": "x"}]}]
    body = _body(msgs)
    assert clean(body=body)["messages"][0]["content"][0] == _tool_result("ghost")


def test_consecutive_same_role_messages_are_merged():
    """Two user messages in a row become one with both contents."""
    out = clean(body=_body([{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}]}]))
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]


def test_empty_tools_and_tool_choice_are_dropped():
    """`tools: []` is removed, and `tool_choice` with it."""
    out = clean(body=_body([{"role": "user", "content": "a"}], tools=[], tool_choice={"type": "auto"}))
    assert "tools" not in out and "tool_choice" not in out


def test_tool_choice_without_tools_is_dropped():
    """A tool_choice with no tools field at all is removed."""
    out = clean(body=_body([{"role": "user", "content": "a"}], tool_choice={"type": "any"}))
    assert "tool_choice" not in out


def test_tool_choice_with_tools_is_kept():
    """A tool_choice alongside tools stays."""
    body = _body([{"role": "user", "content": "a"}], tools=[{"name": "t", "input_schema": {}}], tool_choice={"type": "any"})
    assert clean(body=body) is body


def test_blank_system_is_removed():
    """A whitespace-only string system is removed."""
    assert "system" not in clean(body=_body([{"role": "user", "content": "a"}], system="  "))


def test_malformed_messages_are_left_for_validate():
    """A body with a bad role is returned untouched, so validate reports the original path."""
    body = _body([{"role": "user", "content": ""}, {"role": "tool", "content": "x"}])
    assert clean(body=body) is body


def test_non_list_messages_do_not_crash():
    """Garbage shapes (messages a string, blocks not objects) never raise."""
    for messages in ["x", None, 5, [5], [{"role": "user", "content": [5]}], [{"role": "user", "content": 5}]]:
        body = {"messages": messages, "system": "s"}
        assert clean(body=body) is body
