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

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


@value_type
class UpstreamError(StepError):
    """The upstream answered with an error, sent something unusable, or could not be reached.

    `status` is the upstream HTTP status (None when there was no response: connect error,
    reset, timeout, or a stream that broke). `kind` is one of: "status" (an HTTP error
    status), "connect", "timeout", "protocol" (invalid body or chunk), "cut" (the stream
    ended early), "error_chunk" (the upstream reported an error inside a 200 stream).
    `error_type` is OpenRouter's `metadata.error_type` when it sent one; `mid_stream` is True
    once any item of the stream reached our consumer.
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
        if retryable is None:
            retryable = (status in RETRYABLE_STATUSES) if status is not None else kind in {"connect", "timeout"}
        super().__init__(message, kind=kind, retryable=retryable, retry_after=retry_after)
        self.status = status
        self.error_type = error_type
        self.body = body
        self.mid_stream = mid_stream


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


def error_fields(body: Any) -> tuple[str | None, str | None, Any]:
    """(message, error_type, code) from an OpenRouter/OpenAI error body, each None if absent.

    OpenRouter: `{"error":{"code","message","metadata":{"error_type"}}}`; availability errors
    carry `error.error_type` directly; OpenAI-style servers use `error.type` and a string
    `error.code` such as "context_length_exceeded". A bare `{"message": ...}` or
    `{"detail": ...}` (some routers) gives just the message.
    """
    if not isinstance(body, dict):
        return None, None, None
    err = body.get("error")
    if isinstance(err, str):
        return err, None, None
    if not isinstance(err, dict):
        msg = body.get("message") or body.get("detail")
        return (msg if isinstance(msg, str) else None), None, None
    message = err.get("message")
    if not isinstance(message, str):
        message = None if message is None else str(message)
    meta = err.get("metadata")
    error_type = meta.get("error_type") if isinstance(meta, dict) else None
    if not isinstance(error_type, str):
        error_type = err.get("error_type") if isinstance(err.get("error_type"), str) else None
    if error_type is None:
        code = err.get("code")
        if isinstance(code, str) and not code.isdigit():
            error_type = code
        elif isinstance(err.get("type"), str):
            error_type = err["type"]
    code = err.get("code")
    if code is None:
        code = err.get("http_status")
    return message, error_type, code
