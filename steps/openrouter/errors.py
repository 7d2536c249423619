"""What went wrong talking to the upstream, in upstream terms.

The upstream call raises `UpstreamError`; the Anthropic error renderer maps it onto
Anthropic's status and type table (shared/reference/PROTOCOL.md §7.8). Keeping the two apart
means the upstream module knows nothing of Anthropic and the renderer nothing of httpx.
"""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime
from typing import Any

from engine.capture import value_type
from engine.errors import StepError
from steps.providers.failures import (
    ContextOverflow,
    Failure,
    classify,
    context_from_body,
    context_from_message,
    error_fields,
)

__all__ = ["UpstreamError", "clip", "error_fields", "parse_retry_after", "retry_after_from_headers", "scrub", "scrub_value", "status_from_code"]

@value_type
class UpstreamError(StepError):
    """The upstream answered with an error, sent something unusable, or could not be reached.

    `status` is the upstream HTTP status (None when there was no response: connect error,
    reset, timeout, or a stream that broke). `kind` is one of: "status" (an HTTP error
    status), "connect", "timeout", "protocol" (invalid body or chunk), "cut" (the stream
    ended early), "error_chunk" (the upstream reported an error inside a 200 stream).
    `error_type` is the body's own name for the error (OpenRouter's `metadata.error_type`, an
    OpenAI-style `code` or `type`); `mid_stream` is True once any item of the stream reached
    our consumer. `failure` is what it means (steps/providers/failures.py: the one
    classification the retry, the candidates, the breaker and the renderer all read) and
    `context` the numbers of a context overflow, when it is one and they are known.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        kind: str = "status",
        retryable: bool | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
        body: Any = None,
        mid_stream: bool = False,
    ) -> None:
        failure = classify(status=status, kind=kind, retryable=retryable, error_type=error_type, message=message)
        super().__init__(message, kind=kind, retryable=failure.retryable, retry_after=retry_after)
        self.status = status
        self.error_type = error_type
        self.body = body
        self.mid_stream = mid_stream
        self.failure: Failure = failure
        self.context: ContextOverflow | None = None
        if failure.category == "context_overflow":
            self.context = context_from_body(body) or context_from_message(message)

    # What the engine's candidates and breakers read (engine/errors.py), from the one
    # classification, so a replayed error (rebuilt from its recorded `failure`) says the same.
    @property
    def fallback(self) -> bool:  # type: ignore[override]
        return self.failure.falls_back

    @property
    def about_candidate(self) -> bool:  # type: ignore[override]
        return self.failure.about_model


# --- helpers for building UpstreamErrors (used by steps/openrouter/upstream.py) ---------------

MAX_MESSAGE_CHARS = 1000

# Things that look like credentials: OpenAI/OpenRouter/Anthropic style keys, bearer tokens,
# and `key=...`-style assignments. Replaced with a marker, never logged or rendered.
_SECRET_PATTERNS = re.compile(
    r"(?:sk-[A-Za-z0-9_\-]{8,})"
    r"|(?:(?i:bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*)"
    r"|(?:(?i:api[_-]?key|x-api-key|authorization)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9._~+/\-]{8,})"
)


def scrub(text: str, *secrets: str) -> str:
    """`text` with every key-looking string (and each given secret verbatim) replaced."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "[redacted]")
    return _SECRET_PATTERNS.sub("[redacted]", text)


def scrub_value(value: Any, *secrets: str) -> Any:
    """`scrub` applied to every string inside a JSON-like value (dicts, lists, strings)."""
    if isinstance(value, str):
        return scrub(value, *secrets)
    if isinstance(value, dict):
        return {k: scrub_value(v, *secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_value(v, *secrets) for v in value]
    return value


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` cut to `limit` characters, with an ellipsis when something was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or an HTTP date), else None.

    Negative results become 0; anything unparseable is None. `now` (epoch seconds) is for tests.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0.0, seconds)


def retry_after_from_headers(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` (preferred, as the Stainless SDKs do) or `retry-after`."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            v = float(ms)
            if v == v and v >= 0:
                return v / 1000.0
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def status_from_code(code: Any, default: int = 502) -> int:
    """An HTTP status from an OpenRouter `error.code` (int, numeric string) or `default`."""
    if isinstance(code, bool):
        return default
    if isinstance(code, int) and 100 <= code <= 599:
        return code
    if isinstance(code, str) and code.isdigit() and 100 <= int(code) <= 599:
        return int(code)
    return default
