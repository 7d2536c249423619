"""Anthropic error objects, and the renderer that turns any failure into one.

Every non-2xx answer the gateway gives is `{"type":"error","error":{"type":T,"message":M},
"request_id":R}` with a `request-id` header (PROTOCOL §1.6, RELIABILITY invariant I1). Clients
decide what to do from the status, `error.type`, `x-should-retry` and `retry-after`, and Claude
Code's recovery keys on Anthropic's wording, so the mapping below is a contract, not cosmetics
(RELIABILITY §1 "Upstream → client", PROTOCOL §7.8).

Two things never reach a client: text of an exception we did not raise on purpose (it may hold
paths, hosts or secrets), and anything that looks like an API key inside an upstream message.
"""

from __future__ import annotations

import math
import re
from typing import Any

from engine.errors import (
    DeadlineExceeded,
    HttpError,
    LimitTimeout,
    RunCancelled,
    StepError,
    StepTimeout,
)
from engine.registry import step
from engine.run import RunContext
from engine.types import Reply
from steps.openrouter.errors import UpstreamError
from steps.providers.failures import ContextOverflow, context_from_message
from steps.tools.effects import AfterSideEffects

MAX_RETRY_AFTER = 60
"""The Anthropic SDK honours `retry-after` only up to 60 s; Claude Code gives up above it."""

INTERNAL_MESSAGE = "Internal server error"


class AnthropicError(StepError):
    """An error already in Anthropic terms: raise it from a step and it is rendered as is.

    `status` is the HTTP status, `error_type` Anthropic's `error.type`, `message` the text the
    client sees (it must be safe to show), `headers` extra response headers (e.g. `retry-after`),
    `details` the body's `error.details` (the SDKs recover from some errors by its `error_code`).
    """

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        if retryable is None:
            retryable = status >= 500 or status == 429
        super().__init__(message, kind=error_type, retryable=retryable)
        self.status = status
        self.error_type = error_type
        self.headers = headers or {}
        self.details = details

    def __repr__(self) -> str:
        return f"AnthropicError({self.status}, {self.error_type!r}, {self.message!r})"


def invalid_request(message: str, status: int = 400) -> AnthropicError:
    """The 4xx every validation step raises: bad client input, never retried."""
    return AnthropicError(status, "invalid_request_error", message)


# --- secret scrubbing -------------------------------------------------------------------------

_SECRET_RE = re.compile(
    r"(?i)(?:"
    r"\bsk-[A-Za-z0-9][A-Za-z0-9_\-]{7,}"  # sk-..., sk-or-v1-..., sk-ant-..., sk-proj-...
    r"|\bbearer\s+[A-Za-z0-9._~+/=\-]{8,}"  # Authorization header values
    r"|\b(?:api[_-]?key|x-api-key|access[_-]?token|authorization)\b[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?[^\s\"',;}]{6,}"
    r")"
)


def scrub(text: str) -> str:
    """Replace anything that looks like an API key or bearer token with `[redacted]`."""
    if not text:
        return text
    return _SECRET_RE.sub("[redacted]", text)


# --- context-length wording -----------------------------------------------------------------


def context_message(context: ContextOverflow | None) -> str | None:
    """Anthropic's wording of a context overflow with its numbers, or None without them.

    Claude Code auto-compacts on `prompt is too long: N tokens > M maximum` and lowers
    `max_tokens` on `input length and `max_tokens` exceed context limit: …` (PROTOCOL §7.8), so
    when the upstream says how much of the request was output budget and the input alone fits,
    the second wording is used; otherwise the first.
    """
    if context is None or not context.complete:
        return None
    prompt, limit, output = context.input_tokens, context.limit, context.output_tokens
    if output and 0 <= prompt <= limit:  # type: ignore[operator]
        return (
            f"input length and `max_tokens` exceed context limit: {prompt} + {output} > {limit}, "
            "decrease input length or `max_tokens` and try again"
        )
    return f"prompt is too long: {prompt} tokens > {limit} maximum"


def rewrite_context_length(message: str) -> str | None:
    """Anthropic's context-length wording for an upstream message, or None when it is not one."""
    return context_message(context_from_message(message))


# --- the mapping ----------------------------------------------------------------------------

# The classification (steps/providers/failures.py) decides; this only names its categories.
_ANTHROPIC_TYPES = {
    "invalid_request": "invalid_request_error",
    "context_overflow": "invalid_request_error",
    "authentication": "authentication_error",
    "billing": "billing_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "conflict": "conflict_error",
    "too_large": "request_too_large",
    "rate_limited": "rate_limit_error",
    "overloaded": "overloaded_error",
    "timeout": "timeout_error",
    "first_byte_timeout": "timeout_error",
    "deadline": "timeout_error",
}
_FIXED_MESSAGES = {
    "overloaded": "Overloaded",
    "server": INTERNAL_MESSAGE,
    "bad_gateway": "upstream error",
    "unreachable": "upstream unreachable",
    "timeout": "upstream request timed out",
    "first_byte_timeout": "upstream request timed out",
    "deadline": "upstream request timed out",
}

_HTTP_4XX = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
}


def _retry_after(seconds: float | None) -> str | None:
    if seconds is None or seconds != seconds or seconds < 0:  # None or NaN or negative
        return None
    return str(min(MAX_RETRY_AFTER, max(0, math.ceil(seconds))))


def _mapped(status: int, error_type: str, message: str, retry: bool, retry_after: float | None = None):
    headers = {"x-should-retry": "true" if retry else "false"}
    ra = _retry_after(retry_after) if retry else None
    if ra is not None:
        headers["retry-after"] = ra
    return status, error_type, message, headers


def _upstream(error: UpstreamError, mid_stream: bool):
    failure = error.failure
    category, status = failure.category, failure.status
    etype = _ANTHROPIC_TYPES.get(category, "api_error")
    if category == "cut":
        msg = "upstream connection closed mid-stream" if mid_stream else "upstream connection closed"
        return _mapped(502, etype, msg, True)
    if category == "protocol":
        msg = "upstream sent an invalid chunk" if mid_stream else "upstream sent an invalid response"
        return _mapped(502, etype, msg, True)
    if status >= 500:
        return _mapped(status, etype, _FIXED_MESSAGES.get(category, "upstream error"), True, error.retry_after)
    message = scrub(error.message or "")
    if category == "rate_limited":
        # A 429 the upstream marks as not retryable (a spend cap) must not be retried.
        return _mapped(429, etype, message or "Rate limited", failure.retryable, error.retry_after)
    if category == "context_overflow":
        message = context_message(error.context) or rewrite_context_length(message) or message
    return _mapped(status, etype, message or etype, False)


def _unwrap(error: BaseException) -> BaseException:
    """The error worth reporting: first leaf of an exception group; the cause of a bare wrapper."""
    seen = 0
    while seen < 8:
        seen += 1
        if isinstance(error, BaseExceptionGroup) and error.exceptions:
            error = next(
                (e for e in error.exceptions if isinstance(e, Exception)), error.exceptions[0]
            )
            continue
        if type(error) is StepError and isinstance(error.__cause__, BaseException):
            error = error.__cause__
            continue
        break
    return error


def classify(error: BaseException, *, mid_stream: bool = False) -> tuple[int, str, str, dict[str, str]]:
    """(status, error.type, message, headers) for any exception; the single mapping table."""
    error = _unwrap(error)
    if isinstance(error, AfterSideEffects):  # the cause's status and type; never retried
        status, etype, message, headers = classify(error.cause, mid_stream=mid_stream)
        headers.pop("retry-after", None)
        return status, etype, f"{message} {error.note}", {**headers, "x-should-retry": "false"}
    if isinstance(error, AnthropicError):
        retry = error.status >= 500 or (error.status == 429 and error.retryable)
        headers = {"x-should-retry": "true" if retry else "false"}
        headers.update(error.headers)
        return error.status, error.error_type, error.message, headers
    if isinstance(error, UpstreamError):
        return _upstream(error, mid_stream)
    if isinstance(error, HttpError):
        status = error.status
        if status >= 500:
            status, etype, msg, headers = _mapped(status, "api_error", INTERNAL_MESSAGE, True)
        else:
            etype = _HTTP_4XX.get(status, "invalid_request_error")
            msg = "Method Not Allowed" if status == 405 else (error.message or etype)
            status, etype, msg, headers = _mapped(status, etype, msg, False)
        merged = dict(error.headers)
        merged.update(headers)
        return status, etype, msg, merged
    if isinstance(error, LimitTimeout):
        return _mapped(529, "overloaded_error", "Overloaded", True, error.retry_after)
    if isinstance(error, DeadlineExceeded):
        return _mapped(504, "timeout_error", "request deadline exceeded", True)
    if isinstance(error, StepTimeout):
        return _mapped(504, "timeout_error", "upstream request timed out", True)
    if isinstance(error, RunCancelled):
        # Nobody is listening any more; 499 is what the logs show for it.
        return _mapped(499, "invalid_request_error", "request cancelled", False)
    return _mapped(500, "api_error", INTERNAL_MESSAGE, False)


_KNOWN = (AnthropicError, UpstreamError, HttpError, LimitTimeout, DeadlineExceeded, StepTimeout, RunCancelled)


@step("anthropic.error", blocking=False)
def error(error: BaseException, ctx: RunContext) -> Reply:
    """Render any failure as an Anthropic error reply (status, JSON body, request-id, retry hints).

    This is the error step of every Anthropic pipeline: known errors keep their meaning
    (RELIABILITY §1 table), unknown ones become 500 api_error with a fixed message, because an
    exception's own text may carry paths, hosts or secrets.
    """
    status, etype, message, headers = classify(error)
    inner = _unwrap(error)
    if not isinstance(_unwrap(inner.cause) if isinstance(inner, AfterSideEffects) else inner, _KNOWN):
        # A bug or an unforeseen failure: the client gets a fixed text, the log the traceback.
        log = getattr(ctx, "log", None)
        if log is not None:
            log.error("anthropic.unhandled_error", error_class=type(error).__name__, exc_info=error)
    headers["request-id"] = ctx.request_id
    body: dict[str, Any] = {"type": etype, "message": message}
    details = getattr(_unwrap(error), "details", None)
    if isinstance(details, dict):
        body["details"] = details
    return Reply(
        body={"type": "error", "error": body, "request_id": ctx.request_id},
        status=status,
        headers=headers,
    )


def error_event(error: BaseException, request_id: str | None = None) -> dict[str, Any]:
    """The payload of an SSE `error` event for a failure after the 200 was sent (same mapping).

    Mid-stream an upstream cut reads "upstream connection closed mid-stream" and a malformed
    chunk "upstream sent an invalid chunk" (RELIABILITY §2). `request_id`, when given, is
    included as the real API does.
    """
    _, etype, message, _ = classify(error, mid_stream=True)
    event: dict[str, Any] = {"type": "error", "error": {"type": etype, "message": message}}
    if request_id:
        event["request_id"] = request_id
    return event
