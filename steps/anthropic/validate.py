"""Check an Anthropic request against the models and the tool_use/tool_result pairing rule.

Errors read like Anthropic's own (`max_tokens: Field required`, `messages.0.role: …`,
`tools.3.name: String should match pattern …`): 400 invalid_request_error, the JSON path of the
first problem, then pydantic's message. The body is returned unchanged: downstream steps work on
dicts, which is faster than model instances.
"""

from __future__ import annotations

from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from engine.registry import step
from steps.anthropic.errors import invalid_request
from steps.anthropic.models import TAG_MARK, UNION_ERRORS, CountTokensRequest, MessagesRequest


_log = structlog.get_logger("steps.anthropic")

KNOWN_FIELDS = frozenset(
    {
        "model", "max_tokens", "messages", "system", "metadata", "stop_sequences", "stream",
        "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "output_config",
        "output_format", "cache_control", "context_management", "compaction",
    }
)
"""Top-level fields whose meaning reaches the upstream. Every other field (`service_tier`,
`container`, `mcp_servers`, `speed`, `fallbacks`, `thread`, a field newer than this
code, ...) is accepted, never refused, and its name is
logged at debug (`anthropic.ignored_fields`); a step that gives one a meaning adds it here."""


def _log_unknown(body: dict) -> None:
    ignored = body.keys() - KNOWN_FIELDS
    if ignored:
        # Names only: values may hold user content or secrets (RELIABILITY I3, §3 row 17).
        _log.debug("anthropic.ignored_fields", fields=sorted(ignored)[:20])


def format_error(err: Any) -> str:
    """`<path>: <message>` for one pydantic error dict, with union tags removed from the path."""
    loc = [str(x) for x in err["loc"] if not (type(x) is str and x.startswith(TAG_MARK))]
    etype = err["type"]
    msg = err["msg"]
    if etype in UNION_ERRORS:
        value = err.get("input")
        expected = UNION_ERRORS[etype]
        if type(value) is not dict:
            msg = "Input should be a valid dictionary or object"
        elif "type" not in value:
            loc.append("type")
            msg = "Field required"
        elif type(value["type"]) is not str:
            loc.append("type")
            msg = "Input should be a valid string"
        else:
            loc.append("type")
            tags = ", ".join(f"'{t}'" for t in expected)
            msg = f"Input tag '{str(value['type'])[:100]}' found using 'type' does not match any of the expected tags: {tags}"
    path = ".".join(loc)
    return f"{path}: {msg}" if path else msg


def _check(model: type[BaseModel], body: dict) -> None:
    try:
        model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise invalid_request(format_error(errors[0])) from None


def check_tool_results(messages: list[dict]) -> None:
    """Every tool_result must answer a tool_use of the assistant turn just before it.

    "Turn" means what the API sees after merging: consecutive messages of one role are one
    turn, and `role: "system"` messages are skipped (anthropic.clean moves them out). A
    tool_result with no such tool_use is 400, as Anthropic answers it (RELIABILITY §3 row 16).
    """
    answerable: set[str] | frozenset[str] = frozenset()  # tool_use ids the current user turn may answer
    current: set[str] | None = None  # tool_use ids of the assistant turn being read
    last_role = None
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "system":
            continue
        content = m["content"]
        if role == "assistant":
            if last_role != "assistant":
                current = set()
            if type(content) is list:
                for b in content:
                    if b["type"] == "tool_use":
                        current.add(b["id"])  # type: ignore[union-attr]
        else:
            if last_role == "assistant":
                answerable = current or frozenset()
            elif last_role is None:
                answerable = frozenset()
            if type(content) is list:
                for j, b in enumerate(content):
                    if b["type"] == "tool_result" and b["tool_use_id"] not in answerable:
                        raise invalid_request(
                            f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                            f"{b['tool_use_id']}. Each `tool_result` block must have a corresponding `tool_use` "
                            "block in the previous message."
                        )
        last_role = role


@step("anthropic.validate", blocking=False)
def validate(body: dict) -> dict:
    """Check a Messages request; 400 invalid_request_error naming the JSON path of the problem.

    Unknown fields and betas are accepted and ignored (never a 400: Claude Code adds them every
    release). Types are strict ("10" is not a max_tokens). Every tool_result must match a
    tool_use of the previous assistant turn. Returns the body unchanged.
    """
    _check(MessagesRequest, body)
    check_tool_results(body["messages"])
    _log_unknown(body)
    return body


@step("anthropic.validate_count_tokens", blocking=False)
def validate_count_tokens(body: dict) -> dict:
    """Check a count_tokens request like anthropic.validate, without max_tokens (ignored if sent)."""
    _check(CountTokensRequest, body)
    check_tool_results(body["messages"])
    _log_unknown(body)
    return body
