"""Never refuse what a newer client sends (issue 16): every request content block, tool type,
system message, top-level field and beta that the installed `anthropic` SDK defines goes
through a real gateway, and none gets a 4xx.

The cases are not listed here: they are read from the SDK's own type definitions (the content
union of `MessageParam` / `BetaMessageParam`, `ToolUnionParam` / `BetaToolUnionParam`, the
fields of `MessageCreateParams`, `AnthropicBetaParam`), with a minimal value of each built from
its declared types (tests/support/sdk_types.py). Raising the SDK pin in the dev group brings
whatever the new release added into these tests; a type the gateway refuses fails under its
own name.

`sdk_request_surface.json` lists the names this gateway was reviewed against (made with the
pinned SDK); a release that adds one fails `test_the_sdk_defines_nothing_unreviewed`, naming it.

Each block is sent in an earlier turn, once as user and once as assistant content, in a
conversation the API takes: the `id` / `tool_use_id` of every block is one id, a user-turn
block follows an assistant `tool_use` of that id (so a `tool_result` answers it), and an
assistant `tool_use` is answered in the next user turn. The fake upstream runs in strict mode:
it refuses what real providers refuse (unanswered tool calls, empty messages, ...), so what the
gateway converts must also be something an upstream takes.

Exceptions, where the API itself refuses and so may the gateway (`REFUSED_BY_THE_API`):
- a `thread: {type: "continue"}` naming a message no server holds: the API answers 404
  `thread_not_found` (`error.details.error_code`), which is what the SDK falls back on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import anthropic
import orjson
import pytest
from anthropic.types import AnthropicBetaParam, MessageParam, ToolUnionParam
from anthropic.types import message_create_params as create
from anthropic.types.beta import BetaMessageParam, BetaToolUnionParam
from anthropic.types.beta import message_create_params as beta_create

from tests.pipelines.conftest import Gateway
from tests.support.sdk_types import TOOL_USE_ID, hints, item_type, label, members, type_tags, variants

SURFACE = Path(__file__).with_name("sdk_request_surface.json")
BASE_FIELDS = {"model", "max_tokens", "messages"}
HEADER_FIELDS = {"betas"}  # the SDK sends these as the anthropic-beta header, never in the body
REFUSED_BY_THE_API = {
    # field: the error codes the API answers it with; a 4xx carrying one of them is the API's own
    "thread": {"thread_not_found", "thread_unsupported_request"},
}


def _case_id(owner: str, value: Any) -> str:
    return f"{owner}:{label(value) or 'minimal'}"


def _unique(cases: Iterator[tuple[str, Any]]) -> list[Any]:
    seen: set[bytes] = set()
    out = []
    for case_id, value in cases:
        key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        if key not in seen:
            seen.add(key)
            out.append(pytest.param(value, id=case_id))
    return out


def _content_blocks() -> Iterator[tuple[str, Any]]:
    """Every block type of the user / assistant content unions, plain and beta."""
    for union in (MessageParam, BetaMessageParam):
        for message in members(union):
            content = hints(message)["content"]
            for alt in members(content):
                inner = item_type(alt)
                if inner is None:
                    continue  # the plain-string form
                for block in members(inner):
                    for value in variants(block, optional=True):
                        yield _case_id(block.__name__, value), value


def _system_messages() -> Iterator[tuple[str, Any]]:
    for union in (MessageParam, BetaMessageParam):
        for message in members(union):
            if "system" in get_args(hints(message)["role"]):
                for value in variants(message, optional=True):
                    yield _case_id(message.__name__, value), value


def _tools() -> Iterator[tuple[str, Any]]:
    for union in (ToolUnionParam, BetaToolUnionParam):
        for tool in members(union):
            for value in variants(tool):
                yield _case_id(tool.__name__, value), value


def _fields() -> Iterator[tuple[str, Any]]:
    for params in (create.MessageCreateParamsBase, beta_create.MessageCreateParamsBase):
        for name, tp in get_type_hints(params).items():
            if name in BASE_FIELDS or name in HEADER_FIELDS:
                continue
            for alt in members(tp):
                for value in variants(alt):
                    yield f"{name}:{label(value) or orjson.dumps(value).decode()[:40]}", {name: value}


def _betas() -> list[str]:
    return [v for alt in get_args(AnthropicBetaParam) if get_origin(alt) is not None for v in get_args(alt)]


def sdk_surface() -> dict[str, list[str]]:
    """The names of everything request-side the SDK defines: block, system block and tool types
    (by their `type` tags), top-level fields and betas."""

    def tags(types: list[Any]) -> set[str]:
        out: set[str] = set()
        for t in types:
            out.update(type_tags(t) or {f"(untyped) {getattr(t, '__name__', t)}"})
        return out

    blocks: set[str] = set()
    system: set[str] = set()
    for union in (MessageParam, BetaMessageParam):
        for message in members(union):
            into = system if "system" in get_args(hints(message)["role"]) else blocks
            for alt in members(hints(message).get("content")):
                inner = item_type(alt)
                if inner is not None:
                    into |= tags(members(inner))
    tools: set[str] = set()
    fields: set[str] = set()
    for params in (create.MessageCreateParamsBase, beta_create.MessageCreateParamsBase):
        declared = get_type_hints(params)
        tools |= tags(members(item_type(declared["tools"])))
        fields |= set(declared)
    return {"blocks": sorted(blocks), "system_blocks": sorted(system), "tools": sorted(tools), "fields": sorted(fields), "betas": sorted(set(_betas()))}


BLOCKS = _unique(_content_blocks())
SYSTEM_MESSAGES = _unique(_system_messages())
TOOLS = _unique(_tools())
FIELDS = _unique(_fields())


@pytest.fixture(scope="module")
def strict(gateway: Gateway) -> Gateway:
    gateway.fake.strict = True
    return gateway


def _post(gw: Gateway, body: dict, headers: dict | None = None) -> Any:
    with gw.http() as http:
        return http.post("/v1/messages", json=body, headers=headers or {})


def _assert_served(gw: Gateway, body: dict, headers: dict | None = None, refused_by_api: set[str] = frozenset()) -> dict:
    r = _post(gw, body, headers)
    if 400 <= r.status_code < 500 and refused_by_api:
        details = (r.json().get("error") or {}).get("details") or {}
        if details.get("error_code") in refused_by_api:
            return {}
    assert r.status_code == 200, f"{r.status_code}: {r.text[:500]}"
    assert gw.fake.requests, "the upstream was never called"
    return gw.fake.requests[-1].json


def _body(messages: list[dict], **extra: Any) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": messages, **extra}


def test_the_sdk_defines_nothing_unreviewed() -> None:
    """Raising the SDK pin shows what the new release added: every block, tool type, field and
    beta it defines was looked at and given a meaning here (converted, or dropped on purpose),
    and `sdk_request_surface.json` lists them. A new name fails this test (the tests below
    already send it through the gateway) until it is handled and added to the list."""
    reviewed = orjson.loads(SURFACE.read_bytes())
    current = sdk_surface()
    added = {k: sorted(set(v) - set(reviewed[k])) for k, v in current.items() if set(v) - set(reviewed[k])}
    removed = {k: sorted(set(reviewed[k]) - set(v)) for k, v in current.items() if set(reviewed[k]) - set(v)}
    assert not added and not removed, (
        f"anthropic {anthropic.__version__} (the list was made with {reviewed['sdk']}) "
        f"adds {added} and removes {removed}: decide what each new type means to the gateway "
        "(steps/anthropic/blocks.py converts or drops blocks; steps/convert/request.py renders them), "
        f"then update {SURFACE.name}"
    )


def test_the_sdk_defines_what_the_issue_names() -> None:
    """The walk sees the blocks issue 16 names: if a release renamed them, these tests would
    silently stop covering them."""
    types = {case.values[0].get("type") for case in BLOCKS}
    assert {"compaction", "mcp_tool_use", "mcp_tool_result", "fallback", "tool_addition", "tool_removal"} <= types
    assert len(TOOLS) > 20 and len(FIELDS) > 20


@pytest.mark.parametrize("block", BLOCKS)
def test_block_in_an_earlier_user_turn(strict: Gateway, block: dict) -> None:
    messages = [
        {"role": "user", "content": "start"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": TOOL_USE_ID, "name": "lookup", "input": {}}]},
        {"role": "user", "content": [block, {"type": "text", "text": "and then?"}]},
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": "go on"},
    ]
    _assert_served(strict, _body(messages, tools=[{"name": "lookup", "input_schema": {"type": "object"}}]))


@pytest.mark.parametrize("block", BLOCKS)
def test_block_in_an_earlier_assistant_turn(strict: Gateway, block: dict) -> None:
    after: list[dict] = [{"type": "text", "text": "go on"}]
    if block.get("type") == "tool_use":
        after.insert(0, {"type": "tool_result", "tool_use_id": TOOL_USE_ID, "content": "done"})
    messages = [
        {"role": "user", "content": "start"},
        {"role": "assistant", "content": [{"type": "text", "text": "working"}, block]},
        {"role": "user", "content": after},
    ]
    _assert_served(strict, _body(messages, tools=[{"name": "x", "input_schema": {"type": "object"}}]))


@pytest.mark.parametrize("message", SYSTEM_MESSAGES)
def test_system_message_in_an_earlier_turn(strict: Gateway, message: dict) -> None:
    messages = [
        {"role": "user", "content": "start"},
        message,
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": "go on"},
    ]
    _assert_served(strict, _body(messages, tools=[{"name": "x", "input_schema": {"type": "object"}}]))


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_type(strict: Gateway, tool: dict) -> None:
    _assert_served(strict, _body([{"role": "user", "content": "hi"}], tools=[tool]))


@pytest.mark.parametrize("field", FIELDS)
def test_request_field(strict: Gateway, field: dict) -> None:
    (name,) = field
    body = _body([{"role": "user", "content": "hi"}], **field)
    _assert_served(strict, body, refused_by_api=REFUSED_BY_THE_API.get(name, frozenset()))


def test_every_beta(strict: Gateway) -> None:
    """All the betas the SDK names, announced at once: accepted (logged at debug, never refused)."""
    betas = _betas()
    assert "mid-conversation-tool-changes-2026-07-01" in betas
    _assert_served(strict, _body([{"role": "user", "content": "hi"}]), headers={"anthropic-beta": ",".join(betas)})
