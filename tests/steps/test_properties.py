"""Property-based tests (hypothesis) of the request path and the stream converter.

RELIABILITY §3 item 23 at step level. Strategies build valid Anthropic Messages requests and
mutate them (type swap, deletion, huge value, deep nesting, odd Unicode, NaN, raw byte damage);
the properties are:

- parse → clean → validate accepts every valid request, and convert.request turns it into a
  structurally valid chat completions request (`check_upstream`);
- a mutated body either passes or fails with an AnthropicError of status 400/413/415, never
  another exception; when it passes, the rest of the request path (token estimate,
  convert.request, serialisation) does not raise either;
- anthropic.clean never raises, never mutates its input and is idempotent;
- convert.stream turns any well-formed sequence of OpenAI chunks into events that follow
  Anthropic's stream grammar (`check_grammar`), tool input included.

Everything is derandomized and bounded (≤ 300 examples each), with no deadline.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.run import RunContext
from steps.anthropic import tokens
from steps.anthropic.clean import clean
from steps.anthropic.errors import AnthropicError
from steps.anthropic.parse import parse_body
from steps.anthropic.tokens import estimate_tokens
from steps.anthropic.validate import KNOWN_FIELDS, validate
from steps.convert.request import MAX_STOP, convert_request
from steps.convert.stream import convert_stream
from steps.convert.thinking import Reasoning

SETTINGS = dict(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
ACCEPTED_STATUSES = {400, 413, 415}
NAME_OK = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
UPSTREAM_ROLES = {"system", "user", "assistant", "tool"}
UPSTREAM_TOP = {
    "model", "messages", "max_tokens", "stream", "stream_options", "tools", "tool_choice",
    "parallel_tool_calls", "stop", "temperature", "top_p", "top_k", "user", "response_format",
    "cache_control", "reasoning",
}  # fmt: skip


# =============================================================================================
# Strategies: valid requests
# =============================================================================================

_ALPHABET = st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FFFF)
words = st.sampled_from(["hello", "list the files", "ok", "Done.", "résumé", "日本語", "🧪 test", "a\nb", "x" * 40])
texts = st.one_of(words, words, words, st.text(_ALPHABET, min_size=1, max_size=16).filter(lambda s: s.strip() != ""))
names = st.text(st.sampled_from("abcXYZ019_-"), min_size=1, max_size=12)
keys = st.text(st.sampled_from("abcdefxyz_"), min_size=1, max_size=6)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(_ALPHABET, max_size=12),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=5
)
json_objects = st.dictionaries(keys, json_values, max_size=4)
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
cache_controls = st.sampled_from([None, {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}])


def _with_cache(block: dict, cache: Any) -> dict:
    if cache is not None:
        block["cache_control"] = cache
    return block


@st.composite
def text_blocks(draw) -> dict:
    block = {"type": "text", "text": draw(texts)}
    if draw(st.booleans()):
        block["citations"] = None  # a field the SDK sends, unknown to the models
    return _with_cache(block, draw(cache_controls))


@st.composite
def image_blocks(draw) -> dict:
    if draw(st.integers(0, 4)) == 0:
        source = {"type": "url", "url": "https://example.com/cat.png"}
    else:
        mt = draw(st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"]))
        source = {"type": "base64", "media_type": mt, "data": PNG_1PX}
    return {"type": "image", "source": source}


@st.composite
def document_blocks(draw) -> dict:
    kind = draw(st.sampled_from(["base64", "text", "content", "url"]))
    if kind == "base64":
        source = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}
    elif kind == "text":
        source = {"type": "text", "media_type": "text/plain", "data": draw(texts)}
    elif kind == "content":
        source = {"type": "content", "content": draw(st.one_of(texts, st.lists(text_blocks(), min_size=1, max_size=2)))}
    else:
        source = {"type": "url", "url": "https://example.com/a.pdf"}
    block = {"type": "document", "source": source}
    if draw(st.booleans()):
        block["title"] = draw(texts)
    return block


def _signature(draw) -> str:
    """A thinking signature: a gateway token of some family, or an opaque foreign one."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.text(st.sampled_from("ABCDEFabcdef0123456789+/="), min_size=8, max_size=40))
    thought = Reasoning()
    if kind == 1:
        thought.add_text(draw(texts))
    else:
        thought.add_details(
            [{"type": "reasoning.text", "text": draw(texts), "format": "anthropic-claude-v1", "index": 0, "signature": "sig"}]
        )
    family = draw(st.sampled_from(["anthropic", "openai", "deepseek", "google"]))
    return thought.token(f"{family}/model", family)


@st.composite
def thinking_blocks(draw) -> dict:
    if draw(st.integers(0, 5)) == 0:
        return {"type": "redacted_thinking", "data": _signature(draw)}
    return {"type": "thinking", "thinking": draw(texts), "signature": _signature(draw)}


def tool_result_block(draw, tool_use_id: str) -> dict:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    kind = draw(st.integers(0, 3))
    if kind == 1:
        block["content"] = draw(texts)
    elif kind >= 2:
        block["content"] = draw(st.lists(st.one_of(text_blocks(), image_blocks()), min_size=1, max_size=3))
    if draw(st.booleans()):
        block["is_error"] = draw(st.booleans())
    return _with_cache(block, draw(cache_controls))


def input_schemas(draw) -> dict:
    props = draw(
        st.dictionaries(
            keys,
            st.sampled_from(
                [
                    {"type": "string"},
                    {"type": "integer", "minimum": 0},
                    {"type": "boolean"},
                    {"type": "array", "items": {"type": "string"}},
                    {"type": "string", "format": "uri", "enum": ["a", "b"]},
                    {"type": "object", "properties": {"x": {"type": "number"}}, "additionalProperties": False},
                ]
            ),
            max_size=3,
        )
    )
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if props and draw(st.booleans()):
        schema["required"] = sorted(props)[:1]
    if draw(st.booleans()):
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return schema


@st.composite
def messages_requests(draw, quirks: bool = True) -> dict:
    """A valid Messages request. With `quirks`, also what Claude Code sends and the gateway
    repairs (system-role messages, same-role neighbours, blank text, orphan tool_use in history)."""
    counter = iter(range(10_000))
    tool_names = draw(st.lists(names, max_size=3, unique=True))
    tools = []
    for n in tool_names:
        tool: dict[str, Any] = {"name": n, "input_schema": input_schemas(draw)}
        if draw(st.booleans()):
            tool["description"] = draw(texts)
        if draw(st.integers(0, 3)) == 0:
            tool["type"] = "custom"
        tools.append(_with_cache(tool, draw(cache_controls)))
    call_names = tool_names or ["Bash", "Read"]

    n_turns = draw(st.integers(1, 4))  # user turns
    messages: list[dict] = []
    pending: list[str] = []  # tool_use ids the next user turn must answer
    for turn in range(n_turns):
        # -- user turn
        blocks: list[dict] = [tool_result_block(draw, i) for i in pending]
        if len(blocks) > 1 and draw(st.booleans()):
            blocks.reverse()  # answers in another order than the calls
        pending = []
        extra = draw(st.lists(st.one_of(text_blocks(), text_blocks(), image_blocks(), document_blocks()), max_size=3))
        blocks += extra
        if not blocks:
            blocks = [draw(text_blocks())]
        if len(blocks) == 1 and blocks[0]["type"] == "text" and "cache_control" not in blocks[0] and draw(st.booleans()):
            messages.append({"role": "user", "content": blocks[0]["text"]})
        else:
            messages.append({"role": "user", "content": blocks})
        if turn == n_turns - 1:
            break
        # -- assistant turn
        blocks = []
        if draw(st.integers(0, 2)) == 0:
            blocks += draw(st.lists(thinking_blocks(), min_size=1, max_size=2))
        blocks += draw(st.lists(text_blocks(), max_size=2))
        for _ in range(draw(st.integers(0 if blocks else 1, 3))):
            tid = f"toolu_{next(counter):02d}{draw(st.sampled_from(['', 'abc', 'X_y-Z']))}"
            pending.append(tid)
            blocks.append(
                {"type": "tool_use", "id": tid, "name": draw(st.sampled_from(call_names)), "input": draw(json_objects)}
            )
        if not blocks:
            blocks = [draw(text_blocks())]
        messages.append({"role": "assistant", "content": blocks})
    if draw(st.integers(0, 4)) == 0:  # prefill
        messages.append({"role": "assistant", "content": draw(texts)})

    body: dict[str, Any] = {
        "model": draw(st.sampled_from(["claude-sonnet-4-5-20250929", "claude-3-5-haiku-20241022", "claude-opus-4-1", "openai/gpt-5", "x"])),
        "max_tokens": draw(st.integers(1, 200_000)),
        "messages": messages,
    }
    system_kind = draw(st.integers(0, 2))
    if system_kind == 1:
        body["system"] = draw(texts)
    elif system_kind == 2:
        sys_blocks = draw(st.lists(text_blocks(), min_size=1, max_size=3))
        if draw(st.booleans()):
            sys_blocks.insert(0, {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.0.0; cc_entrypoint=cli"})
        body["system"] = sys_blocks
    if tools:
        body["tools"] = tools
        choice = draw(st.sampled_from(["none", "auto", "any", "tool", "absent"]))
        if choice == "tool":
            body["tool_choice"] = {"type": "tool", "name": draw(st.sampled_from(tool_names))}
        elif choice != "absent":
            body["tool_choice"] = {"type": choice}
            if choice != "none" and draw(st.booleans()):
                body["tool_choice"]["disable_parallel_tool_use"] = draw(st.booleans())
    if draw(st.booleans()):
        body["stop_sequences"] = draw(st.lists(texts, max_size=6))
    if draw(st.booleans()):
        body["metadata"] = {"user_id": draw(st.text(_ALPHABET, max_size=40))}
    if draw(st.booleans()):
        body["stream"] = draw(st.booleans())
    for key, value in (
        ("temperature", st.floats(0, 1)),
        ("top_p", st.floats(0, 1)),
        ("top_k", st.integers(0, 500)),
    ):
        if draw(st.integers(0, 3)) == 0:
            body[key] = draw(value)
    thinking = draw(st.integers(0, 4))
    if thinking == 1:
        body["thinking"] = {"type": "enabled", "budget_tokens": draw(st.integers(1, 64_000))}
    elif thinking == 2:
        body["thinking"] = {"type": "adaptive"}
        body["output_config"] = {"effort": draw(st.sampled_from(["low", "medium", "high", "max"]))}
    elif thinking == 3:
        body["thinking"] = {"type": "disabled"}
    # unknown top-level fields (future betas): accepted and ignored
    for key, value in draw(st.dictionaries(keys.filter(lambda k: k not in KNOWN_FIELDS), json_values, max_size=2)).items():
        body[key] = value
    if quirks and draw(st.integers(0, 2)) == 0:
        _add_quirk(draw, body)
    return body


def _add_quirk(draw, body: dict) -> None:
    """One thing anthropic.clean repairs: what Claude Code really sends."""
    messages = body["messages"]
    kind = draw(st.sampled_from(["system_role", "split", "blank", "orphan", "empty_tools"]))
    pos = draw(st.integers(0, len(messages) - 1))
    if kind == "system_role":
        messages.insert(pos, {"role": "system", "content": draw(st.one_of(texts, st.lists(text_blocks(), min_size=1, max_size=2)))})
    elif kind == "split":
        m = messages[pos]
        if isinstance(m["content"], list) and len(m["content"]) > 1:
            cut = draw(st.integers(1, len(m["content"]) - 1))
            messages[pos : pos + 1] = [{**m, "content": m["content"][:cut]}, {**m, "content": m["content"][cut:]}]
    elif kind == "blank":
        m = messages[pos]
        if isinstance(m["content"], list):
            m["content"].insert(draw(st.integers(0, len(m["content"]))), {"type": "text", "text": draw(st.sampled_from(["", " ", "\n\t"]))})
    elif kind == "orphan":
        # an interrupted tool call in history: an assistant turn followed by a user turn
        for i in range(pos, len(messages) - 1):
            if messages[i]["role"] == "assistant" and isinstance(messages[i]["content"], list):
                messages[i]["content"].append({"type": "tool_use", "id": "toolu_orphan", "name": "Bash", "input": {}})
                break
    elif kind == "empty_tools" and "tools" not in body:
        body["tools"] = []
        body["tool_choice"] = {"type": "auto"}


# =============================================================================================
# Strategies: mutations
# =============================================================================================

_RAW = "@@RAW{}@@"  # placeholder string replaced by raw JSON text after serialisation
ODD_STRINGS = [
    "\ud800",  # lone high surrogate
    "\udfff",  # lone low surrogate
    "a\ud83dz",  # broken pair
    "\x00",
    "\uffff\ufffe",
    "\ufeffBOM inside",
    "\u202eRTL override",
    "e\u0301\u0301\u0301\u0301",
    "\u2028\u2029",
    "🧪" * 50,
    "\U0010ffff",
    "\\u0000 \" ' <script>",
    "",
    " ",
]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _swap(value: Any) -> list[Any]:
    candidates = [None, True, 0, -1, 10**12, 1.5, "x", "", [], {}, [1, "a"], {"type": "x"}, "10", "true"]
    return [c for c in candidates if type(c) is not type(value)] + ([] if type(value) is str else ["true"])


@st.composite
def mutated_bodies(draw) -> tuple[bytes, str]:
    """(raw JSON body, description) of a valid request with one thing broken."""
    body = copy.deepcopy(draw(messages_requests()))
    raws: dict[str, str] = {}
    kind = draw(st.sampled_from(["swap", "swap", "delete", "delete", "huge", "deep", "unicode", "unicode", "nan", "rename", "raw"]))
    # Pick a path by its shape (list indices as `*`) first, so that rare shapes such as
    # `messages.*.content.*.source.content` are hit as often as `messages.*.content.*.text`.
    shapes: dict[tuple, list[tuple]] = {}
    for p in _paths(body)[1:]:  # never the root itself (see "raw" for that)
        shapes.setdefault(tuple("*" if type(x) is int else x for x in p), []).append(p)
    path = draw(st.sampled_from(shapes[draw(st.sampled_from(sorted(shapes, key=repr)))]))
    parent, last = _get(body, path[:-1]), path[-1]
    old = parent[last]
    ensure_ascii = draw(st.booleans())

    def put(value: Any) -> None:
        parent[last] = value

    def raw(text: str) -> str:
        key = _RAW.format(len(raws))
        raws[key] = text
        return key

    if kind == "swap":
        put(draw(st.sampled_from(_swap(old))))
    elif kind == "delete":
        del parent[last]
    elif kind == "huge":
        put(
            draw(
                st.sampled_from(
                    [
                        "y" * 300_000,
                        10**30,
                        -(2**63) - 1,
                        2**64,
                        1e308,
                        -1e-320,
                        [{}] * 5_000,
                        {f"k{i}": i for i in range(5_000)},
                        raw("1e400"),
                        raw("123456789012345678901234567890.5e-999"),
                    ]
                )
            )
        )
    elif kind == "deep":
        depth = draw(st.sampled_from([10, 62, 63, 64, 65, 70, 300, 100_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        put(raw(opener * depth + "1" + closer * depth))
    elif kind == "unicode":
        odd = draw(st.sampled_from(ODD_STRINGS))
        if isinstance(old, str) and draw(st.booleans()):
            at = draw(st.integers(0, len(old)))
            put(old[:at] + odd + old[at:])
        else:
            put(odd)
    elif kind == "nan":
        put(draw(st.sampled_from([float("nan"), float("inf"), float("-inf")])))
    elif kind == "rename":
        if isinstance(parent, dict):
            del parent[last]
            parent[draw(st.sampled_from(ODD_STRINGS + ["type", "Type", "content ", "__proto__"]))] = old
        else:
            put(draw(st.sampled_from(_swap(old))))
    text = json.dumps(body, ensure_ascii=ensure_ascii, allow_nan=True)
    for key, value in raws.items():
        text = text.replace(f'"{key}"', value)
    data = text.encode("utf-8", "surrogatepass")
    if kind == "raw":
        how = draw(st.sampled_from(["truncate", "bom", "garbage", "latin1", "not_object", "empty", "trailing"]))
        if how == "truncate":
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif how == "bom":
            data = b"\xef\xbb\xbf" + data
        elif how == "garbage":
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"}", b",", b"\xed\xa0\x80"])) + data[at:]
        elif how == "latin1":
            data = json.dumps({**body, "system": "caf\u00e9"}, ensure_ascii=False).encode("latin-1", "replace")
        elif how == "not_object":
            data = draw(st.sampled_from([b"[]", b'"x"', b"null", b"1", b"[" + data + b"]"]))
        elif how == "empty":
            data = draw(st.sampled_from([b"", b" ", b"\n"]))
        else:
            data = data + b' {"x": 1}'
    return data, f"{kind} at {'.'.join(map(str, path))}"


# =============================================================================================
# Checkers
# =============================================================================================


def check_upstream(req: dict, *, strict: bool = True) -> None:
    """Raise AssertionError when `req` is not a structurally valid chat completions request."""
    assert set(req) <= UPSTREAM_TOP, set(req) - UPSTREAM_TOP
    assert isinstance(req["model"], str) and req["model"]
    orjson.dumps(req)  # what openrouter.call sends must serialise
    msgs = req["messages"]
    assert isinstance(msgs, list) and msgs, "no messages"
    if "tools" in req:
        assert req["tools"], "tools: [] sent"
        for tool in req["tools"]:
            assert tool["type"] == "function" and isinstance(tool["function"]["parameters"], dict)
            assert NAME_OK.match(tool["function"]["name"]), tool["function"]["name"]
    else:
        assert "tool_choice" not in req and "parallel_tool_calls" not in req, "tool_choice without tools"
    if "stop" in req:
        assert 1 <= len(req["stop"]) <= MAX_STOP and all(isinstance(s, str) and s for s in req["stop"])
    for i, msg in enumerate(msgs):
        role = msg["role"]
        assert role in UPSTREAM_ROLES, role
        if role == "system":
            assert i == 0, "system message not first"
        content = msg.get("content")
        if role == "assistant":
            assert content or msg.get("tool_calls"), f"messages.{i}: assistant with neither content nor tool_calls"
        elif role in ("system", "user"):
            assert content, f"messages.{i}: empty {role} content"
        else:
            assert isinstance(msg.get("tool_call_id"), str)
        if isinstance(content, str):
            assert role == "tool" or content.strip(), f"messages.{i}: blank text"
        elif isinstance(content, list):
            for part in content:
                assert isinstance(part, dict) and part.get("type") in ("text", "image_url", "file"), part
                if part["type"] == "text":
                    assert isinstance(part["text"], str) and part["text"].strip(), f"messages.{i}: empty text part"
                elif part["type"] == "image_url":
                    assert isinstance(part["image_url"]["url"], str) and part["image_url"]["url"], f"messages.{i}: {part}"
                else:
                    assert isinstance(part["file"]["file_data"], str) and part["file"]["file_data"], f"messages.{i}: {part}"
        else:
            assert content is None and role == "assistant", f"messages.{i}: content {content!r}"
        calls = msg.get("tool_calls")
        if calls:
            assert role == "assistant"
            ids = [c["id"] for c in calls]
            assert len(set(ids)) == len(ids), f"messages.{i}: duplicate tool call ids {ids}"
            for call in calls:
                assert call["type"] == "function"
                if strict:
                    assert NAME_OK.match(call["function"]["name"]), call["function"]["name"]
                assert isinstance(orjson.loads(call["function"]["arguments"]), dict)
            # answered by tool messages before the next non-tool message (if there is one)
            j = i + 1
            answered = []
            while j < len(msgs) and msgs[j]["role"] == "tool":
                answered.append(msgs[j]["tool_call_id"])
                j += 1
            if j < len(msgs) or answered:
                assert sorted(answered) == sorted(ids), f"messages.{i}: tool calls {ids} answered by {answered}"
        if role == "tool":
            prev = [m for m in msgs[:i] if m["role"] != "tool"]
            assert prev and prev[-1]["role"] == "assistant", f"messages.{i}: tool message not after an assistant"
            assert msg["tool_call_id"] in {c["id"] for c in prev[-1].get("tool_calls") or ()}, f"messages.{i}: unknown tool_call_id"


def request_path(data: bytes) -> dict | None:
    """What the Messages pipeline does before the upstream call; None when refused with a 4xx.

    Any exception other than AnthropicError(400/413/415) propagates: it would be a 500.
    """
    try:
        body = parse_body(data)
        before = copy.deepcopy(body)
        cleaned = clean(body)
        assert body == before, "anthropic.clean mutated its input"
        checked = validate(cleaned)
    except AnthropicError as exc:
        assert exc.status in ACCEPTED_STATUSES, exc
        assert exc.error_type == "invalid_request_error"
        assert isinstance(exc.message, str) and exc.message and "Traceback" not in exc.message
        return None
    estimate = estimate_tokens(checked)
    assert isinstance(estimate, int) and estimate >= 0
    return convert_request(checked, "openai/gpt-test", input_tokens=estimate)


# =============================================================================================
# Properties: requests
# =============================================================================================


@settings(max_examples=300, **SETTINGS)
@given(messages_requests())
def test_valid_requests_pass_and_convert_to_valid_upstream_requests(body: dict) -> None:
    """parse → clean → validate accepts every valid request; convert.request yields a valid payload."""
    original = copy.deepcopy(body)
    req = request_path(orjson.dumps(body))
    assert req is not None, "a valid request was refused"
    check_upstream(req)
    assert body == original
    if body.get("stop_sequences"):
        assert req["stop"] == body["stop_sequences"][:MAX_STOP]
    assert req["max_tokens"] == body["max_tokens"]


@settings(max_examples=100, **SETTINGS)
@given(messages_requests(quirks=False))
def test_valid_requests_without_quirks_keep_every_tool_call(body: dict) -> None:
    """A request with no repairs to make keeps every tool_use, each answered in order."""
    req = request_path(orjson.dumps(body))
    assert req is not None
    check_upstream(req)
    sent = [b["id"] for m in body["messages"] if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_use"]
    calls = [c["id"] for m in req["messages"] for c in m.get("tool_calls") or ()]
    assert calls == sent


def _one_block(block: dict) -> bytes:
    return orjson.dumps({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [block]}]})


# Minimal inputs found by the properties below. Each is accepted by anthropic.validate (a
# `source` is only checked to be an object) and then breaks convert.request: an exception
# (a 500 at HTTP level) or a payload no upstream accepts.
KNOWN_BAD = {
    "document content items not objects": _one_block({"type": "document", "source": {"type": "content", "content": [1]}}),
    "document content not a list": _one_block({"type": "document", "source": {"type": "content", "content": True}}),
    "document content text not a string": _one_block(
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": 5}]}}
    ),
    "document text data not a string": _one_block({"type": "document", "source": {"type": "text", "data": 5}}),
    "document base64 text/plain data not a string": _one_block(
        {"type": "document", "source": {"type": "base64", "media_type": "text/plain", "data": 5}}
    ),
    "document url not a string": _one_block({"type": "document", "source": {"type": "url", "url": 5}}),
    "image url not a string": _one_block({"type": "image", "source": {"type": "url", "url": 5}}),
    "only an unconvertible block leaves no messages": _one_block({"type": "image", "source": {"type": "file", "file_id": "file_1"}}),
}


@pytest.mark.parametrize("name", list(KNOWN_BAD))
def test_malformed_sources_are_refused_or_converted_validly(name: str) -> None:
    """Regression cases from the properties: refused with a 400, or converted to a valid payload."""
    req = request_path(KNOWN_BAD[name])
    if req is not None:
        check_upstream(req, strict=False)


@settings(max_examples=300, **SETTINGS)
@example(case=(KNOWN_BAD["document content items not objects"], "known"))  # fails fast while the bug is open
@given(mutated_bodies())
def test_mutated_requests_pass_or_fail_with_a_4xx(case: tuple[bytes, str]) -> None:
    """A request with one field broken is accepted or refused with 400/413/415, never anything else."""
    data, _ = case
    req = request_path(data)
    if req is not None:
        check_upstream(req, strict=False)


@settings(max_examples=300, **SETTINGS)
@given(st.one_of(messages_requests(), mutated_bodies()))
def test_clean_never_raises_and_is_idempotent(case: Any) -> None:
    """anthropic.clean survives any JSON object, does not mutate it, and clean(clean(x)) == clean(x)."""
    if isinstance(case, tuple):
        try:
            body = parse_body(case[0])
        except AnthropicError:
            return
    else:
        body = case
    before = copy.deepcopy(body)
    once = clean(body)
    assert body == before
    snapshot = copy.deepcopy(once)
    twice = clean(once)
    assert once == snapshot
    assert twice == once


@settings(max_examples=200, **SETTINGS)
@given(st.dictionaries(st.sampled_from(["messages", "system", "tools", "tool_choice", "model", "x"]), json_values, max_size=4)
       | st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 5]), "content": json_values}), max_size=4)}))
def test_clean_survives_arbitrary_json(body: dict) -> None:
    """clean on shapes no client sends: no exception, idempotent."""
    once = clean(body)
    assert clean(once) == once


# =============================================================================================
# Stream conversion
# =============================================================================================


def _ctx() -> RunContext:
    return RunContext(request_id="req_prop", pipeline="test", engine=None)


async def _aiter(items: list[dict]) -> AsyncIterator[dict]:
    for item in items:
        yield item


def _chunk(delta: dict | None, finish: str | None = None) -> dict:
    return {"id": "gen-1", "object": "chat.completion.chunk", "model": "x/y", "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def _split(draw, text: str) -> list[str]:
    """`text` cut at arbitrary points (some pieces may be empty)."""
    if not text:
        return [text]
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=6)))
    points = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(points, points[1:])]


@st.composite
def chunk_streams(draw) -> tuple[list[dict], list[tuple], dict]:
    """(chunks, expected segments, request body). Segments: ("text", s) / ("thinking", s) /
    ("tool", name, arguments object)."""
    segments: list[tuple] = []
    chunks: list[dict] = []
    if draw(st.booleans()):
        chunks.append(_chunk({"role": "assistant", "content": ""}))  # OpenRouter's first chunk
    plan = draw(st.lists(st.sampled_from(["text", "text", "tool", "tool", "thinking"]), max_size=6))
    # tools come after text and thinking, as models emit them: a text after a tool call
    # closes it, and more arguments for a closed call are an upstream protocol error
    plan.sort(key=lambda k: k == "tool")
    tool_index = 0
    for kind in plan:
        if kind == "text":
            text = draw(texts)
            segments.append(("text", text))
            for piece in _split(draw, text):
                if piece:
                    chunks.append(_chunk({"content": piece}))
                if draw(st.integers(0, 4)) == 0:
                    chunks.append(_chunk(draw(st.sampled_from([{}, {"content": ""}, {"content": None}, {"role": "assistant"}]))))
        elif kind == "thinking":
            text = draw(texts)
            segments.append(("thinking", text))
            field = draw(st.sampled_from(["reasoning", "reasoning_content"]))
            for piece in _split(draw, text):
                if piece:
                    chunks.append(_chunk({field: piece}))
        else:
            name = draw(names)
            args = draw(json_objects)
            encoded = draw(st.sampled_from([orjson.dumps(args).decode(), json.dumps(args), json.dumps(args, indent=1)]))
            if not args and draw(st.integers(0, 3)) == 0:
                encoded = ""  # some servers send no arguments for a call without parameters
            segments.append(("tool", name, args))
            raw_id = draw(st.sampled_from([f"call_{tool_index}", f"toolu_{tool_index:03d}x", "0", None, "functions.Bash:0"]))
            pieces = _split(draw, encoded)
            header_has_args = draw(st.booleans())
            first: dict[str, Any] = {"index": tool_index, "type": "function", "function": {"name": name}}
            if raw_id is not None:
                first["id"] = raw_id
            if header_has_args:
                first["function"]["arguments"] = pieces.pop(0)
            elif draw(st.booleans()):
                first["function"]["arguments"] = ""
            chunks.append(_chunk({"role": "assistant", "content": None, "tool_calls": [first]}))
            for piece in pieces:
                chunks.append(_chunk({"tool_calls": [{"index": tool_index, "function": {"arguments": piece}}]}))
                if draw(st.integers(0, 5)) == 0:
                    chunks.append(_chunk({}))
            tool_index += 1
    finish = "tool_calls" if tool_index else draw(st.sampled_from(["stop", "length", "stop"]))
    if draw(st.booleans()):
        chunks.append(_chunk({}, finish))
    else:  # the finish reason on the last content chunk
        if chunks and chunks[-1].get("choices"):
            chunks[-1]["choices"][0]["finish_reason"] = finish
        else:
            chunks.append(_chunk({}, finish))
    usage_kind = draw(st.integers(0, 2))
    usage = {"prompt_tokens": draw(st.integers(0, 10**6)), "completion_tokens": draw(st.integers(0, 10**5)), "total_tokens": 0}
    if usage_kind == 1:
        chunks.append({"id": "gen-1", "object": "chat.completion.chunk", "model": "x/y", "choices": [], "usage": usage})
    elif usage_kind == 2:
        chunks[-1]["usage"] = usage
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    if draw(st.booleans()):
        body["stream"] = True
    return chunks, segments, body


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_grammar(events: list[dict]) -> list[dict]:
    """Assert Anthropic's stream grammar; return the blocks as a client SDK would assemble them.

    message_start first and once (content [], integer usage); blocks with consecutive indices
    from 0, each started, given deltas of its own kind, and stopped before the next starts;
    tool input deltas concatenate to a JSON object; message_delta (stop_reason, integer usage)
    then message_stop, last.
    """
    assert events, "no events"
    start = events[0]
    assert start["type"] == "message_start", start
    msg = start["message"]
    assert msg["type"] == "message" and msg["role"] == "assistant" and msg["content"] == []
    assert isinstance(msg["id"], str) and msg["id"]
    assert msg["stop_reason"] is None
    for key in ("input_tokens", "output_tokens"):
        assert _is_int(msg["usage"][key]) and msg["usage"][key] >= 0, msg["usage"]
    assert events[-1] == {"type": "message_stop"}
    final = events[-2]
    assert final["type"] == "message_delta", final
    assert final["delta"]["stop_reason"] in ("end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", "pause_turn")
    for key in ("input_tokens", "output_tokens"):
        assert _is_int(final["usage"][key]) and final["usage"][key] >= 0, final["usage"]

    blocks: list[dict] = []
    open_index: int | None = None
    partial: dict[int, list[str]] = {}
    ids: set[str] = set()
    for e in events[1:-2]:
        t = e["type"]
        assert t in ("content_block_start", "content_block_delta", "content_block_stop", "ping"), f"unexpected {t} mid-stream"
        if t == "content_block_start":
            assert open_index is None, f"block {e['index']} started while {open_index} is open"
            assert e["index"] == len(blocks), f"index {e['index']} after {len(blocks)} blocks"
            block = copy.deepcopy(e["content_block"])
            kind = block["type"]
            if kind == "text":
                assert block["text"] == ""
            elif kind == "thinking":
                assert block["thinking"] == "" and block["signature"] == ""
            elif kind == "tool_use":
                assert block["input"] == {}
                assert re.fullmatch(r"[a-zA-Z0-9_-]+", block["id"]), block["id"]
                assert block["id"] not in ids, f"duplicate tool id {block['id']}"
                ids.add(block["id"])
                partial[e["index"]] = []
            elif kind == "redacted_thinking":
                assert isinstance(block["data"], str) and block["data"]
            else:
                raise AssertionError(f"unknown block type {kind}")
            blocks.append(block)
            open_index = e["index"]
        elif t == "content_block_delta":
            assert e["index"] == open_index, f"delta for {e['index']} while {open_index} is open"
            block = blocks[open_index]
            d = e["delta"]
            if d["type"] == "text_delta":
                assert block["type"] == "text" and isinstance(d["text"], str)
                block["text"] += d["text"]
            elif d["type"] == "thinking_delta":
                assert block["type"] == "thinking" and not block["signature"], "thinking after its signature"
                block["thinking"] += d["thinking"]
            elif d["type"] == "signature_delta":
                assert block["type"] == "thinking" and isinstance(d["signature"], str) and d["signature"]
                block["signature"] += d["signature"]
            elif d["type"] == "input_json_delta":
                assert block["type"] == "tool_use" and isinstance(d["partial_json"], str)
                partial[open_index].append(d["partial_json"])
            else:
                raise AssertionError(f"unknown delta {d['type']}")
        elif t == "content_block_stop":
            assert e["index"] == open_index, f"stop of {e['index']} while {open_index} is open"
            block = blocks[open_index]
            if block["type"] == "text":
                assert block["text"] != "", "empty text block"
            elif block["type"] == "thinking":
                assert block["signature"], "thinking block closed without a signature"
            elif block["type"] == "tool_use":
                joined = "".join(partial[open_index])
                value = orjson.loads(joined) if joined.strip() else {}
                assert isinstance(value, dict), joined
                block["input"] = value
            open_index = None
    assert open_index is None, f"block {open_index} never closed"
    return blocks


def _run_stream(chunks: list[dict], body: dict) -> list[dict]:
    async def go() -> list[dict]:
        return [e async for batch in convert_stream(_aiter(chunks), body, "x/y", _ctx(), 42) for e in batch]

    return anyio.run(go)


@pytest.fixture(scope="module", autouse=True)
def _own_calibration():
    """The stream converter learns from usage: keep that out of the global calibration."""
    saved = tokens.CALIBRATION
    tokens.CALIBRATION = tokens.Calibration()
    yield
    tokens.CALIBRATION = saved


@settings(max_examples=300, **SETTINGS)
@given(chunk_streams())
def test_stream_events_follow_the_anthropic_grammar(case: tuple[list[dict], list[tuple], dict]) -> None:
    """Any chunk sequence → message_start, well-nested blocks, message_delta, message_stop;
    text and thinking survive intact and tool input parses to the arguments sent."""
    chunks, segments, body = case
    events = _run_stream(copy.deepcopy(chunks), body)
    blocks = check_grammar(events)

    got_text = "".join(b["text"] for b in blocks if b["type"] == "text")
    assert got_text == "".join(s[1] for s in segments if s[0] == "text")
    got_thinking = "".join(b["thinking"] for b in blocks if b["type"] == "thinking")
    assert got_thinking == "".join(s[1] for s in segments if s[0] == "thinking")
    got_tools = [(b["name"], b["input"]) for b in blocks if b["type"] == "tool_use"]
    assert got_tools == [(s[1], s[2]) for s in segments if s[0] == "tool"]
    # block order follows the upstream's (adjacent text or thinking segments share a block)
    kinds = [b["type"] for b in blocks]
    expected: list[str] = []
    for s in segments:
        if s[0] == "tool" or not expected or expected[-1] != s[0]:
            expected.append("tool_use" if s[0] == "tool" else s[0])
    assert kinds == expected
    stop = events[-2]["delta"]["stop_reason"]
    if any(s[0] == "tool" for s in segments):
        assert stop == "tool_use"
    else:
        finish = next(c["choices"][0]["finish_reason"] for c in reversed(chunks) if c.get("choices") and c["choices"][0]["finish_reason"])
        assert stop == ("max_tokens" if finish == "length" else "end_turn")


def test_grammar_checker_rejects_broken_streams() -> None:
    """The checker itself: a good stream passes; each kind of damage is caught."""
    chunks = [_chunk({"content": "hi"}), _chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a": 1}'}}]}, "tool_calls")]
    events = _run_stream(chunks, {"model": "m", "max_tokens": 5, "messages": []})
    assert [b["type"] for b in check_grammar(events)] == ["text", "tool_use"]
    starts = [i for i, e in enumerate(events) if e["type"] == "content_block_start"]
    stops = [i for i, e in enumerate(events) if e["type"] == "content_block_stop"]
    broken = [
        events[1:],  # no message_start
        events[:-1],  # no message_stop
        [e for i, e in enumerate(events) if i != stops[0]],  # a block never closed
        [e for i, e in enumerate(events) if i != starts[0]],  # a delta with no block
        events[:1] + events,  # message_start twice
        [{**e, "index": 5} if e.get("index") == 1 else e for e in events],  # non-consecutive index
        [{**e, "delta": {**e["delta"], "partial_json": '{"a": '}} if e.get("delta", {}).get("type") == "input_json_delta" else e for e in events],
    ]
    for damaged in broken:
        with pytest.raises((AssertionError, KeyError, ValueError)):
            check_grammar(damaged)
    assert [b["input"] for b in check_grammar(events) if b["type"] == "tool_use"] == [{"a": 1}]
