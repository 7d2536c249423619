"""What the conversion of an upstream answer rests on (PROTOCOL.md §7.3, §7.5, §7.6): the
finish_reason → stop_reason table, the usage mapping, tool id hygiene, tool-argument parsing
and repair, error objects. The conversion itself is one, the stream's (steps/convert/stream.py);
a JSON answer is folded from its events (steps/convert/answer.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from engine.run import RunContext
from steps.anthropic.tokens import calibration as learned_by
from steps.convert.thinking import Reasoning
from steps.openrouter.errors import UpstreamError
from steps.openrouter.profiles import Profile, family_of

_TOOL_ID_OK = re.compile(r"^[a-zA-Z0-9_-]+$").match
_JSON_DECODER = json.JSONDecoder()
REFUSAL_DETAILS = {"type": "refusal", "category": None, "explanation": None}
_STOP_FIELDS = ("stop_reason", "matched_stop", "stopping_word", "stop_sequence")
"""Choice fields in which a server names the stop string it stopped on (vLLM, SGLang, llama.cpp)."""




def answered_model(answered: Any, model: str) -> str:
    """The upstream model that answered (openrouter.call's `model` fact), else the mapped one."""
    return answered if isinstance(answered, str) and answered else model


def family_for(model: str, profiles: dict[str, Profile] | None) -> str:
    profile = profiles.get(model) if profiles else None
    return profile.family if profile is not None else family_of(model)


def display_omitted(body: dict) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("display") == "omitted"


def thinking_block(thought: Reasoning, model: str, family: str, body: dict) -> dict:
    token = thought.token(model, family)
    if thought.encrypted_only:
        return {"type": "redacted_thinking", "data": token}
    return {"type": "thinking", "thinking": "" if display_omitted(body) else thought.text, "signature": token}


def learn(ctx: RunContext, model: str, estimate: Any, usage: Any) -> None:
    """Feed the count_tokens calibration with the upstream's real prompt size for `model`."""
    if isinstance(usage, dict) and isinstance(estimate, int):
        prompt = usage.get("prompt_tokens")
        if isinstance(prompt, int) and not isinstance(prompt, bool):
            learned_by(ctx).learn(model, estimate, prompt)


def stop_reason_for(
    finish: Any,
    saw_tools: bool,
    refused: bool,
    text_tail: str,
    choice: dict | None,
    stop_sequences: Any,
) -> tuple[str, str | None]:
    """OpenAI finish_reason → (Anthropic stop_reason, stop_sequence) per §7.5.

    `length` beats tool calls: arguments cut by the output cap must not look like a
    finished call. A stop string is reported when the text ends with one (OpenAI strips it,
    some servers don't), when the choice names it in a server's own field (vLLM
    `stop_reason`, SGLang `matched_stop`, llama.cpp `stopping_word`, `stop_sequence`), or, if
    the provider says `stop_sequence` natively, as the only one configured (else null: unknown
    which).
    """
    if finish == "length":
        return "max_tokens", None
    if finish == "content_filter" or (refused and not saw_tools):
        return "refusal", None
    if saw_tools or finish == "tool_calls" or finish == "function_call":
        return "tool_use", None
    if stop_sequences:
        if text_tail:
            for seq in stop_sequences:
                if seq and text_tail.endswith(seq):
                    return "stop_sequence", seq
        if choice:
            for field in _STOP_FIELDS:
                named = choice.get(field)
                if isinstance(named, str) and named in stop_sequences:
                    return "stop_sequence", named
            if choice.get("native_finish_reason") == "stop_sequence":
                return "stop_sequence", stop_sequences[0] if len(stop_sequences) == 1 else None
    return "end_turn", None


def map_usage(usage: Any) -> dict | None:
    """OpenAI usage → Anthropic usage (§7.6): prompt_tokens includes cache reads and writes."""
    if not isinstance(usage, dict) or usage.get("prompt_tokens") is None and usage.get("completion_tokens") is None:
        return None
    prompt = usage.get("prompt_tokens") or 0
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or usage.get("prompt_cache_hit_tokens") or 0
    written = details.get("cache_write_tokens") or 0
    return {
        "input_tokens": max(0, prompt - cached - written),
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


def tool_id(raw: Any, seen: set[str], ctx: RunContext) -> str:
    """The upstream tool call id when Anthropic-valid and new, else a fresh `toolu_` id.

    Some providers send `"0"`, `functions.Bash:0` or repeat ids; Claude Code matches tool
    results by id, so those would land on the wrong call (§5.1, §8.4).
    """
    if isinstance(raw, str) and raw and raw not in seen and not raw.isdigit() and _TOOL_ID_OK(raw):
        seen.add(raw)
        return raw
    new = ctx.new_id("toolu_")
    seen.add(new)
    return new


def parse_arguments(arguments: Any) -> dict:
    """Tool call arguments → input object; empty → {}; truncated JSON repaired when possible.

    Raises UpstreamError(kind="protocol") when no object can be recovered: a tool call with
    made-up input is worse than an error Claude Code can retry.
    """
    if isinstance(arguments, dict):
        return arguments
    if arguments is None:
        return {}
    if not isinstance(arguments, str):
        raise UpstreamError("tool call arguments are not a JSON string", status=502, kind="protocol")
    if not arguments or arguments.isspace():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        value = repair_json(arguments)
        if value is None:
            raise UpstreamError(
                f"tool call arguments are not valid JSON: {arguments[:200]!r}", status=502, kind="protocol"
            ) from None
    if isinstance(value, str):  # double-encoded arguments, seen from some models
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
    if not isinstance(value, dict):
        raise UpstreamError("tool call arguments are not a JSON object", status=502, kind="protocol")
    return value


def repair_json(text: str) -> dict | None:
    """Recover an object from truncated or trailing-garbage JSON, or None.

    Tries, in order: the first complete value (drops trailing data such as a repeated
    object), the text with its open string and brackets closed, then the same after
    cutting back to each of the last few commas. Each attempt is linear; the number of
    attempts is bounded, so garbage costs O(n), not O(n²).
    """
    s = text.strip()
    if not s.startswith("{"):
        return None
    try:
        value, _ = _JSON_DECODER.raw_decode(s)
        return value if isinstance(value, dict) else None
    except ValueError:
        pass
    closed = close_json(s)
    if closed is not None:
        value = _loads_dict(s + closed)
        if value is not None:
            return value
    cuts = _comma_positions(s)
    for pos in reversed(cuts[-8:]):
        prefix = s[:pos]
        closed = close_json(prefix)
        if closed is not None:
            value = _loads_dict(prefix + closed)
            if value is not None:
                return value
    return None


def _outside_strings(s: str) -> tuple[list[tuple[int, str]], bool, bool]:
    """The characters of a JSON prefix that are not inside string literals, as (index, char),
    and whether the prefix ends inside a string (and right after a backslash there)."""
    out: list[tuple[int, str]] = []
    in_str = False
    esc = False
    for i, ch in enumerate(s):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        else:
            out.append((i, ch))
    return out, in_str, esc


def close_json(s: str) -> str | None:
    """The suffix that closes an unterminated JSON prefix (string, arrays, objects)."""
    structure, in_str, esc = _outside_strings(s)
    stack: list[str] = []
    for _, ch in structure:
        if ch == "{":
            stack.append("}")
        elif ch == "[":
            stack.append("]")
        elif ch == "}" or ch == "]":
            if not stack or stack.pop() != ch:
                return None
    suffix = ""
    if in_str:
        # a dangling backslash is completed as an escaped backslash, then the string closed
        suffix = '\\"' if esc else '"'
    stripped = s.rstrip()
    if not in_str and stripped.endswith((",", ":")):
        return None  # a dangling separator: let the caller cut back to a comma
    return suffix + "".join(reversed(stack))


def _comma_positions(s: str) -> list[int]:
    return [i for i, ch in _outside_strings(s)[0] if ch == ","]


def _loads_dict(s: str) -> dict | None:
    try:
        value = orjson.loads(s)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def error_from(err: Any, payload: Any) -> UpstreamError:
    """An OpenRouter `error` object (top level or in a choice) → UpstreamError(kind="error_chunk").

    `code` is usually the HTTP status; one OpenRouter doc shows "server_error" (§9.4), so a
    non-numeric code counts as 502.
    """
    if not isinstance(err, dict):
        return UpstreamError(f"upstream error: {err}", status=502, kind="error_chunk", body=payload)
    code = err.get("code")
    status = None
    if isinstance(code, int) and not isinstance(code, bool):
        status = code
    elif isinstance(code, str) and code.isdigit():
        status = int(code)
    if status is None or not 400 <= status <= 599:
        status = err.get("http_status") if isinstance(err.get("http_status"), int) else 502
    metadata = err.get("metadata") if isinstance(err.get("metadata"), dict) else {}
    error_type = metadata.get("error_type") or err.get("error_type") or err.get("type")
    message = err.get("message") or "upstream error"
    return UpstreamError(
        str(message), status=status, kind="error_chunk", error_type=error_type, body=payload
    )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer with text parts
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""
