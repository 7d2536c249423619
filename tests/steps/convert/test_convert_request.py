"""convert.request: Anthropic Messages request → OpenAI chat completions request."""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import orjson
import pytest

from steps.convert.request import convert_request
from tests.fixtures import CLAUDE_CODE as FIXTURES
from tests.fixtures import claude_code_cases

CC_FIXTURES = [
    "first_turn",
    "tool_result_turn",
    "thinking_tool_result_turn",
    "small_model_call",
    "interactive_first_turn",
    "custom_model_turn",
    "sonnet45_turn",
]
ALLOWED_TOP = {
    "model", "messages", "max_tokens", "stream", "stream_options", "tools", "tool_choice",
    "parallel_tool_calls", "stop", "temperature", "top_p", "top_k", "user", "response_format",
    "cache_control", "reasoning",
}  # fmt: skip
NAME_OK = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def load(name: str) -> dict:
    return orjson.loads((FIXTURES / f"{name}.json").read_bytes())


def has_cache_control(obj: object) -> bool:
    if isinstance(obj, dict):
        return "cache_control" in obj or any(has_cache_control(v) for v in obj.values())
    if isinstance(obj, list):
        return any(has_cache_control(v) for v in obj)
    return False


def check_openai_request(req: dict, *, cache_allowed: bool = False) -> None:
    """Raise AssertionError when `req` is not a well-formed chat completions request."""
    assert set(req) <= ALLOWED_TOP, set(req) - ALLOWED_TOP
    assert isinstance(req["model"], str) and req["model"]
    msgs = req["messages"]
    assert msgs, "no messages"
    if "tools" in req:
        assert req["tools"], "tools: [] sent"
        for tool in req["tools"]:
            assert set(tool) == {"type", "function"} and tool["type"] == "function"
            assert set(tool["function"]) <= {"name", "description", "parameters"}
            assert NAME_OK.match(tool["function"]["name"])
            assert isinstance(tool["function"]["parameters"], dict)
    else:
        assert "tool_choice" not in req and "parallel_tool_calls" not in req
    if not cache_allowed:
        assert not has_cache_control(req), "cache_control leaked"
    for i, msg in enumerate(msgs):
        role = msg["role"]
        assert role in {"system", "user", "assistant", "tool"}, role
        if role == "system":
            assert i == 0, "system message not first"
        content = msg.get("content")
        if role == "assistant":
            assert content or msg.get("tool_calls"), "assistant with neither content nor tool_calls"
        elif role in ("system", "user"):
            assert content, f"empty {role} content"
        if isinstance(content, str):
            assert role == "tool" or content.strip(), "blank text"
        elif isinstance(content, list):
            for part in content:
                if part["type"] == "text":
                    assert part["text"].strip(), "empty text part"
        if msg.get("tool_calls"):
            ids = [c["id"] for c in msg["tool_calls"]]
            for call in msg["tool_calls"]:
                assert call["type"] == "function" and NAME_OK.match(call["function"]["name"])
                assert isinstance(orjson.loads(call["function"]["arguments"]), dict)
            answered = [m["tool_call_id"] for m in msgs[i + 1 : i + 1 + len(ids)] if m["role"] == "tool"]
            assert answered == ids, f"tool calls {ids} answered by {answered}"
        if role == "tool":
            prev = [m for m in msgs[:i] if m["role"] != "tool"][-1]
            assert prev["role"] == "assistant" and msg["tool_call_id"] in {c["id"] for c in prev["tool_calls"]}


RELEASE_CASES = claude_code_cases(CC_FIXTURES)


@pytest.mark.parametrize("path", [p for _, p in RELEASE_CASES], ids=[i for i, _ in RELEASE_CASES])
def test_claude_code_fixture_converts_to_valid_request(path: Path) -> None:
    """Every captured Claude Code request (every release) converts to a structurally valid OpenAI request."""
    body = orjson.loads(path.read_bytes())
    original = copy.deepcopy(body)
    req = convert_request(body, "openai/gpt-test")
    check_openai_request(req)
    assert body == original, "the input body was mutated"
    assert req["max_tokens"] == body["max_tokens"]
    assert req["stream"] is True and req["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("path", [p for _, p in RELEASE_CASES], ids=[i for i, _ in RELEASE_CASES])
def test_claude_code_fixture_with_cache_control_is_valid(path: Path) -> None:
    """With cache_control enabled the fixtures still convert validly, keeping breakpoints as parts."""
    req = convert_request(orjson.loads(path.read_bytes()), "anthropic/claude-test", cache_control=True)
    check_openai_request(req, cache_allowed=True)
    if path.stem != "small_model_call":
        assert isinstance(req["messages"][0]["content"], list)
        assert has_cache_control(req["messages"][0])


def test_system_blocks_join_and_drop_attribution() -> None:
    """System blocks join with blank lines into the first message, minus the billing-header block."""
    req = convert_request(load("first_turn"), "m")
    system = req["messages"][0]
    assert system["role"] == "system" and isinstance(system["content"], str)
    assert "x-anthropic-billing-header" not in system["content"]
    assert system["content"].startswith("You are a Claude agent")


def test_attribution_kept_when_asked() -> None:
    """drop_attribution=False keeps Claude Code's billing-header line."""
    req = convert_request(load("first_turn"), "m", drop_attribution=False)
    assert req["messages"][0]["content"].startswith("x-anthropic-billing-header:")


def test_system_role_messages_merge_into_system() -> None:
    """A role:system message inside messages (Claude Code's environment) merges into the system prompt."""
    req = convert_request(load("first_turn"), "m")
    assert [m["role"] for m in req["messages"]] == ["system", "user"]
    assert "# Environment" in req["messages"][0]["content"]


def test_tool_result_turn_shape() -> None:
    """An assistant text+tool_use turn and its tool_result become assistant(tool_calls) then a tool message."""
    body = load("tool_result_turn")
    req = convert_request(body, "m")
    roles = [m["role"] for m in req["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assistant, tool = req["messages"][2], req["messages"][3]
    use = body["messages"][2]["content"][1]
    assert assistant["content"] == "I'll create the file."
    assert assistant["tool_calls"][0]["id"] == use["id"]
    assert orjson.loads(assistant["tool_calls"][0]["function"]["arguments"]) == use["input"]
    assert tool["tool_call_id"] == use["id"]
    assert tool["content"].startswith("File created successfully")


def test_foreign_thinking_blocks_dropped() -> None:
    """Thinking blocks whose signature is not a gateway token are dropped; text and tool calls remain."""
    req = convert_request(load("thinking_tool_result_turn"), "m")
    assistant = req["messages"][2]
    assert assistant["content"] == "I'll create the file." and len(assistant["tool_calls"]) == 1
    assert "fake-signature" not in orjson.dumps(req).decode()


def test_thinking_only_assistant_turn_dropped() -> None:
    """An assistant turn holding only thinking is dropped rather than sent empty."""
    body = {
        "model": "x", "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}]},
            {"role": "user", "content": "again"},
        ],
    }  # fmt: skip
    req = convert_request(body, "m")
    assert [m["role"] for m in req["messages"]] == ["user", "user"]


def test_tools_converted_and_beta_fields_dropped() -> None:
    """Custom tools become functions without defer_loading/cache_control/strict; input_schema becomes parameters."""
    body = load("first_turn")
    req = convert_request(body, "m")
    assert len(req["tools"]) == len(body["tools"])
    write = next(t for t in req["tools"] if t["function"]["name"] == "Write")
    src = next(t for t in body["tools"] if t["name"] == "Write")
    assert write["function"]["parameters"] == src["input_schema"]
    assert write["function"]["description"] == src["description"]
    assert "defer_loading" not in orjson.dumps(req["tools"]).decode()


def test_server_tools_skipped() -> None:
    """Server tools (typed, e.g. web_search_20250305) are not sent as functions."""
    body = {
        "model": "x", "max_tokens": 10, "messages": [{"role": "user", "content": "q"}],
        "tools": [
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
            {"type": "custom", "name": "Bash", "input_schema": {"type": "object"}, "strict": True,
             "input_examples": [{}], "eager_input_streaming": True, "allowed_callers": ["direct"],
             "cache_control": {"type": "ephemeral"}},
        ],
    }  # fmt: skip
    req = convert_request(body, "m")
    assert req["tools"] == [{"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}}]


def test_empty_tools_never_sent_nor_tool_choice() -> None:
    """tools: [] (the title call) sends neither tools nor tool_choice."""
    body = load("small_model_call")
    body["tool_choice"] = {"type": "auto"}
    req = convert_request(body, "m")
    assert "tools" not in req and "tool_choice" not in req


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "Bash"}, {"type": "function", "function": {"name": "Bash"}}),
    ],
)
def test_tool_choice_mapping(choice: dict, expected: object) -> None:
    """Anthropic tool_choice maps to the OpenAI equivalent."""
    body = {
        "model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}],
        "tools": [{"name": "Bash", "input_schema": {"type": "object"}}], "tool_choice": choice,
    }  # fmt: skip
    assert convert_request(body, "m")["tool_choice"] == expected


def test_disable_parallel_tool_use() -> None:
    """disable_parallel_tool_use becomes parallel_tool_calls: false."""
    body = {
        "model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}],
        "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }  # fmt: skip
    assert convert_request(body, "m")["parallel_tool_calls"] is False


def test_sampling_stop_and_user() -> None:
    """Sampling passes through, stop keeps the first 4 sequences, user_id becomes a short stable hash."""
    body = load("first_turn")
    body.update(temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["a", "b", "c", "d", "e"])
    req = convert_request(body, "m")
    assert (req["temperature"], req["top_p"], req["top_k"]) == (0.5, 0.9, 40)
    assert req["stop"] == ["a", "b", "c", "d"]
    assert 0 < len(req["user"]) <= 64 and req["user"] == convert_request(body, "m")["user"]
    assert "session_id" not in req["user"]


def test_non_streaming_has_no_stream_options() -> None:
    """A non-streaming request sends neither stream nor stream_options."""
    body = load("first_turn")
    body["stream"] = False
    req = convert_request(body, "m")
    assert "stream" not in req and "stream_options" not in req


def test_stream_usage_off() -> None:
    """stream_usage=False omits stream_options."""
    req = convert_request(load("first_turn"), "m", stream_usage=False)
    assert req["stream"] is True and "stream_options" not in req


def test_structured_output_becomes_response_format() -> None:
    """output_config.format json_schema becomes response_format json_schema named output, strict."""
    body = load("small_model_call")
    req = convert_request(body, "m")
    assert req["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": body["output_config"]["format"]["schema"], "strict": True},
    }


def test_images_and_documents() -> None:
    """Base64/url images become image_url parts; PDFs become file parts; text documents become titled text."""
    body = {
        "model": "x", "max_tokens": 5,
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
            {"type": "image", "source": {"type": "url", "url": "https://e.x/a.png"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVB"}},
            {"type": "document", "title": "Notes", "source": {"type": "text", "media_type": "text/plain", "data": "body"}},
            {"type": "search_result", "source": "https://s", "title": "T", "content": [{"type": "text", "text": "r"}]},
            {"type": "text", "text": "what is this?"},
        ]}],
    }  # fmt: skip
    parts = convert_request(body, "m")["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}
    assert parts[1] == {"type": "image_url", "image_url": {"url": "https://e.x/a.png"}}
    assert parts[2] == {"type": "file", "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVB"}}
    assert parts[3] == {"type": "text", "text": "Notes\n\nbody"}
    assert parts[4] == {"type": "text", "text": "T\nSource: https://s\nr"}
    assert parts[5] == {"type": "text", "text": "what is this?"}


def test_tool_results_ordered_by_calls_then_user_text() -> None:
    """Tool results become tool messages in tool_use order, then one user message with the rest."""
    body = {
        "model": "x", "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_A", "name": "Read", "input": {"p": 1}},
                {"type": "tool_use", "id": "toolu_B", "name": "Read", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_B", "content": [{"type": "text", "text": "b1"}, {"type": "text", "text": "b2"}]},
                {"type": "tool_result", "tool_use_id": "toolu_A", "content": "a", "is_error": True},
                {"type": "text", "text": "continue"},
            ]},
        ],
    }  # fmt: skip
    req = convert_request(body, "m")
    check_openai_request(req)
    msgs = req["messages"]
    assert msgs[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "toolu_A", "type": "function", "function": {"name": "Read", "arguments": '{"p":1}'}},
            {"id": "toolu_B", "type": "function", "function": {"name": "Read", "arguments": "{}"}},
        ],
    }
    assert msgs[2] == {"role": "tool", "tool_call_id": "toolu_A", "content": "Error: a"}
    assert msgs[3] == {"role": "tool", "tool_call_id": "toolu_B", "content": "b1\nb2"}
    assert msgs[4] == {"role": "user", "content": "continue"}


def test_tool_result_media_follows_in_user_message() -> None:
    """Images inside a tool_result move to a user message right after the tool messages."""
    body = {
        "model": "x", "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "shot"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_S", "name": "Shot", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_S", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QQ"}},
            ]}]},
        ],
    }  # fmt: skip
    req = convert_request(body, "m")
    check_openai_request(req)
    tool, user = req["messages"][2], req["messages"][3]
    assert tool["role"] == "tool" and tool["content"]
    assert user == {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QQ"}}]}


def test_tool_reference_becomes_text() -> None:
    """A tool_reference inside a tool_result becomes 'tool <name> is now available'."""
    body = {
        "model": "x", "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "find"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_T", "name": "ToolSearch", "input": {"q": "x"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_T", "content": [
                {"type": "tool_reference", "tool_name": "WebFetch"}]}]},
        ],
    }  # fmt: skip
    assert convert_request(body, "m")["messages"][2]["content"] == "tool WebFetch is now available"


def test_server_tool_history_becomes_text() -> None:
    """server_tool_use and its result in history reach the model as text: what was asked, what was found."""
    body = {
        "model": "x", "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "search"},
            {"role": "assistant", "content": [
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [
                    {"type": "web_search_result", "title": "Result title", "url": "https://example.com/r", "encrypted_content": "opaque"}]},
                {"type": "text", "text": "found it"},
            ]},
            {"role": "user", "content": "thanks"},
        ],
    }  # fmt: skip
    req = convert_request(body, "m")
    check_openai_request(req)
    assert req["messages"][1] == {
        "role": "assistant",
        "content": '(web_search {"query":"q"})\n\n(web_search result)\nResult title\nhttps://example.com/r\n\nfound it',
    }


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"type": "code_execution_tool_result", "content": {"type": "code_execution_result", "stdout": "42", "stderr": "", "return_code": 0, "content": []}}, "(code_execution result)\n42"),
        ({"type": "bash_code_execution_tool_result", "content": {"type": "bash_code_execution_result", "stdout": "", "stderr": "boom", "return_code": 2, "content": []}}, "(bash_code_execution result)\nboom\nexit code 2"),
        ({"type": "tool_search_tool_result", "content": {"type": "tool_search_tool_search_result", "tool_references": [{"type": "tool_reference", "tool_name": "Grep"}]}}, "(tool_search result)\ntools found: Grep"),
        ({"type": "advisor_tool_result", "content": {"type": "advisor_result", "text": "use a set"}}, "(advisor result)\nuse a set"),
        ({"type": "web_fetch_tool_result", "content": {"type": "web_fetch_tool_result_error", "error_code": "url_not_accessible"}}, "(web_fetch result)\nerror: url_not_accessible"),
        ({"type": "web_fetch_tool_result", "content": {"type": "web_fetch_result", "url": "https://e.com", "content": {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}}}}, "(web_fetch result)\nhttps://e.com"),
        ({"type": "advisor_tool_result", "content": {"type": "advisor_redacted_result", "encrypted_content": "opaque"}}, "(advisor result)"),
    ],
)
def test_server_tool_results_of_every_kind_as_text(result: dict, expected: str) -> None:
    """Each server tool result kind (a newer one too) is read as text; encrypted and base64 content never is."""
    body = {"model": "x", "max_tokens": 5, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{**result, "tool_use_id": "srvtoolu_1"}]},
        {"role": "user", "content": "next"},
    ]}  # fmt: skip
    req = convert_request(body, "m")
    check_openai_request(req)
    assert req["messages"][1] == {"role": "assistant", "content": expected}


@pytest.mark.parametrize("kind", ["image", "document"])
def test_file_sources_become_a_note(kind: str) -> None:
    """An image or document held by Anthropic's Files API cannot be sent: a note says so, never a 400."""
    body = {"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": kind, "source": {"type": "file", "file_id": "file_011"}}, {"type": "text", "text": "what is this?"}]}]}  # fmt: skip
    req = convert_request(body, "m")
    check_openai_request(req)
    note, question = req["messages"][0]["content"]
    assert note["type"] == "text" and "file_011" in note["text"] and kind in note["text"]
    assert question == {"type": "text", "text": "what is this?"}


def test_empty_text_blocks_skipped() -> None:
    """Empty and whitespace-only text blocks are never sent."""
    body = {
        "model": "x", "max_tokens": 5,
        "messages": [{"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "  "}, {"type": "text", "text": "hi"}]}],
    }  # fmt: skip
    assert convert_request(body, "m")["messages"] == [{"role": "user", "content": "hi"}]


def test_unknown_fields_dropped() -> None:
    """Anthropic-only fields (context_management, safeguards, speed...) never reach the upstream."""
    req = convert_request(load("interactive_first_turn") | {"speed": "fast", "service_tier": "auto"}, "m")
    assert set(req) <= ALLOWED_TOP
    assert not {"thinking", "context_management", "safeguards", "speed", "output_config"} & set(req)


def test_request_conversion_speed_first_turn() -> None:
    """convert.request on first_turn.json stays well under 1 ms of CPU (measured figure printed)."""
    body = load("first_turn")
    for _ in range(50):
        convert_request(body, "m")
    n = 500
    start = time.perf_counter()
    for _ in range(n):
        convert_request(body, "m")
    per_call_ms = (time.perf_counter() - start) / n * 1000
    print(f"convert.request first_turn: {per_call_ms:.4f} ms/call")
    assert per_call_ms < 1.0
