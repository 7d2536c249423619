"""What an upstream failure means: the one classification every decision reads.

An upstream failure is classified once, here, into a `Failure`: its category, the status a
client should see, whether the same request may succeed later (`retryable`: the engine's
retry), whether another model may succeed now (`falls_back`: the candidates), and whether it
says anything about the model's health (`about_model`: the circuit breaker). The Anthropic
renderer only names the category in Anthropic's words. Before this table there were four
(retryable statuses, the fallback rule, the breaker rule, the renderer's status map), and
they disagreed at the edges.

Bodies are recognised by their shape, whatever dialect a provider declares, because a shape
that names itself cannot be mistaken: llama.cpp's `exceed_context_size_error` (with
`n_prompt_tokens` and `n_ctx`), OpenAI's `context_length_exceeded` and `insufficient_quota`
codes, OpenRouter's `metadata.error_type`, llama.cpp's `unavailable_error` (a model still
loading), vLLM's flat `{"object": "error", ...}` body. A context overflow keeps its numbers
(`ContextOverflow`): from the body's fields, else from the message in any of the wordings
OpenRouter, OpenAI, DeepSeek, vLLM and llama.cpp use, else (Ollama says only "the input length
exceeds the context length") from the model's profile and the request's token estimate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine.capture import value_type

__all__ = [
    "CATEGORIES",
    "ContextOverflow",
    "Failure",
    "classify",
    "context_from_message",
    "error_fields",
    "is_context_message",
]


@value_type  # carried by a recorded UpstreamError: replay rebuilds it from the capture
@dataclass(frozen=True, slots=True)
class Failure:
    """One classified upstream failure (see the module docstring for each flag)."""

    category: str
    status: int
    retryable: bool
    falls_back: bool
    about_model: bool


#: category -> (status, retryable, falls_back, about_model). The only table.
CATEGORIES: dict[str, tuple[int, bool, bool, bool]] = {
    "invalid_request": (400, False, False, False),
    "context_overflow": (400, False, True, False),  # a model with a larger window may take it
    "authentication": (401, False, False, False),
    "billing": (402, False, False, False),
    "permission": (403, False, False, False),
    "not_found": (404, False, True, False),  # "no endpoint supports images": about this request
    "conflict": (409, True, True, False),
    "too_large": (413, False, False, False),
    "rate_limited": (429, True, True, True),
    "server": (500, True, True, True),
    "bad_gateway": (502, True, True, True),  # 502, unknown 5xx, an error inside a 200
    "unreachable": (502, True, True, True),  # refused, reset or closed before the headers
    "cut": (502, True, True, True),  # the body broke off before its end
    "protocol": (502, False, True, True),  # an unusable body: the same model would repeat it
    "timeout": (504, True, True, True),  # the upstream's own timeout (a read, a connect)
    # Our per-model bound on the first byte (or the first content): the next candidate gets the
    # request, the same model is not asked again (a 2 MB prompt would time out again).
    "first_byte_timeout": (504, False, True, True),
    "overloaded": (529, True, True, True),  # 503, 529, a model still loading
    "deadline": (504, False, False, False),  # the run's deadline passed: nothing left to try
}

_BY_STATUS = {
    400: "invalid_request", 401: "authentication", 402: "billing", 403: "permission",
    404: "not_found", 408: "timeout", 409: "conflict", 413: "too_large", 422: "invalid_request",
    429: "rate_limited", 500: "server", 502: "bad_gateway", 503: "overloaded", 504: "timeout",
    529: "overloaded",
}  # fmt: skip

# Error types / codes that name their meaning whatever the status says.
_NAMED = {
    "context_length_exceeded": "context_overflow",  # OpenAI, OpenRouter
    "exceed_context_size_error": "context_overflow",  # llama.cpp
    "max_tokens_exceeded": "context_overflow",
    "token_limit_exceeded": "context_overflow",
    "insufficient_quota": "billing",  # OpenAI's 429 for an exhausted plan: waiting will not help
    "unavailable_error": "overloaded",  # llama.cpp: the model is loading
}

_CONTEXT_WORDS = (
    "context length", "context window", "context_length", "context size", "too long",
    "too many tokens", "maximum context", "maximum model length", "exceeds the context",
)  # fmt: skip


@value_type
@dataclass(frozen=True, slots=True)
class ContextOverflow:
    """The numbers of a context overflow: the prompt's tokens, the model's window and, when the
    upstream counted it in, the output budget (`max_tokens`)."""

    input_tokens: int | None
    limit: int | None
    output_tokens: int | None = None

    @property
    def complete(self) -> bool:
        return bool(self.input_tokens and self.limit)


def error_fields(body: Any) -> tuple[str | None, str | None, Any]:
    """(message, error type, code) of an error body, each None when absent.

    OpenRouter `{"error": {"code", "message", "metadata": {"error_type"}}}` (availability
    errors put `error_type` in `error`); OpenAI, DeepSeek, Ollama and llama.cpp
    `{"error": {"message", "type", "code"}}` (a string `code` such as "context_length_exceeded"
    names the error better than `type`); vLLM's flat `{"object": "error", "message", "type",
    "code"}`; Ollama's native `{"error": "text"}`; a bare `{"message"}` or `{"detail"}`.
    """
    if not isinstance(body, dict):
        return None, None, None
    err = body.get("error")
    if isinstance(err, str):
        return err, None, None
    if not isinstance(err, dict):
        if body.get("object") == "error":  # vLLM (older releases): the error is the body
            err = body
        else:
            msg = body.get("message") or body.get("detail")
            return (msg if isinstance(msg, str) else None), None, None
    message = err.get("message")
    if not isinstance(message, str):
        message = None if message is None else str(message)
    meta = err.get("metadata")
    error_type = meta.get("error_type") if isinstance(meta, dict) else None
    if not isinstance(error_type, str):
        error_type = err.get("error_type") if isinstance(err.get("error_type"), str) else None
    code = err.get("code")
    if error_type is None:
        if isinstance(code, str) and code and not code.isdigit():
            error_type = code
        elif isinstance(err.get("type"), str):
            error_type = err["type"]
    if isinstance(err.get("type"), str) and err["type"] in _NAMED:
        error_type = err["type"]  # llama.cpp's and OpenAI's self-naming types win
    if code is None:
        code = err.get("http_status")
    return message, error_type, code


def classify(
    *,
    status: int | None,
    kind: str,
    retryable: bool | None = None,
    error_type: str | None = None,
    message: str | None = None,
) -> Failure:
    """The Failure for an upstream error: by transport `kind`, else by named type, else status.

    `kind` is the transport's word ("status", "error_chunk", "connect", "timeout", "cut",
    "protocol"); `retryable`, when the transport knows better (a cut after content reached the
    client, a timeout that was the run's deadline), overrides the category's default.
    """
    if kind == "timeout":
        if error_type == "first_byte_timeout":
            category = "first_byte_timeout"
        else:
            category = "timeout" if retryable is not False else "deadline"
    elif kind in ("connect", "cut", "protocol"):
        category = {"connect": "unreachable"}.get(kind, kind)
    else:
        category = _NAMED.get(error_type or "")
        if category is None and status in (400, 413, 422) and is_context_message(message):
            category = "context_overflow"
        if category is None:
            if status is None:
                category = "bad_gateway"
            else:
                category = _BY_STATUS.get(status) or ("invalid_request" if 400 <= status < 500 else "bad_gateway")
    out_status, default_retry, falls, about = CATEGORIES[category]
    if category == "invalid_request" and status is not None and 400 <= status < 500 and status not in _BY_STATUS:
        out_status = status  # an unmapped 4xx keeps its number (418 stays 418)
    if retryable is None or category in ("deadline", "first_byte_timeout"):
        retryable = default_retry
        if category == "bad_gateway" and kind == "status" and status not in (None, 502):
            retryable = False  # 501, 505...: the server cannot do this at all (another model may)
    if kind == "cut" and not retryable:
        about = True  # a stream cut mid-way still says the model is unwell
    return Failure(category, out_status, retryable, falls, about)


def is_context_message(message: str | None) -> bool:
    """Whether an error message speaks of the prompt not fitting the model's window."""
    if not message:
        return False
    lowered = message.lower()
    return any(w in lowered for w in _CONTEXT_WORDS)


# --- the numbers of a context overflow, from the wordings servers use ----------------------------

_LIMIT = re.compile(
    r"maximum context length is\s+(\d+)"  # OpenAI, OpenRouter, DeepSeek, vLLM
    r"|maximum model length of\s+(\d+)"  # vLLM: "The decoder prompt (length N) is longer than ..."
    r"|available context size \((\d+) tokens\)"  # llama.cpp
    r"|(\d+)\s+maximum\b",  # Anthropic's own, passed through a router
    re.I,
)
_ASKED = re.compile(
    r"(?:you requested about|you requested|your messages resulted in|resulted in)\s+(\d+)\s+tokens", re.I
)
_INPUT = re.compile(
    r"your request has\s+(\d+)\s+input tokens"  # vLLM (newer)
    r"|prompt \(length\s+(\d+)\)"  # vLLM decoder prompt
    r"|request \((\d+) tokens\) exceeds"  # llama.cpp
    r"|prompt is too long:\s+(\d+)\s+tokens",  # Anthropic's own
    re.I,
)
# "(658 of text input, 732 of tool input, 262000 in the output)" (OpenRouter),
# "(4000 in the messages, 5000 in the completion)" (OpenAI, vLLM)
_OUTPUT = re.compile(r"(\d+)\s+in the (?:output|completion)", re.I)
_TOO_LARGE = re.compile(r"max_(?:completion_)?tokens'? is too large:\s+(\d+)", re.I)  # vLLM


def _first(m: re.Match[str] | None) -> int | None:
    if m is None:
        return None
    return next((int(g) for g in m.groups() if g is not None), None)


def context_from_message(message: str | None) -> ContextOverflow | None:
    """The numbers a context-overflow message states, or None when it states no window."""
    if not message:
        return None
    limit = _first(_LIMIT.search(message))
    if limit is None:
        return None
    output = _first(_OUTPUT.search(message)) or _first(_TOO_LARGE.search(message))
    prompt = _first(_INPUT.search(message))
    if prompt is None:
        asked = _first(_ASKED.search(message))
        if asked is not None:
            prompt = asked - output if output and asked - output > 0 else asked
    return ContextOverflow(prompt, limit, output)


def context_from_body(body: Any) -> ContextOverflow | None:
    """The numbers a body carries as fields (llama.cpp: `n_prompt_tokens`, `n_ctx`)."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        n_prompt, n_ctx = err.get("n_prompt_tokens"), err.get("n_ctx")
        if isinstance(n_prompt, int) and isinstance(n_ctx, int) and not isinstance(n_prompt, bool):
            return ContextOverflow(n_prompt, n_ctx)
    return None
