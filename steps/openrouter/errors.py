"""What went wrong talking to the upstream, in upstream terms.

The upstream call raises `UpstreamError`; the Anthropic error renderer maps it onto
Anthropic's status and type table (shared/reference/PROTOCOL.md §7.8). Keeping the two apart
means the upstream module knows nothing of Anthropic and the renderer nothing of httpx.
"""

from __future__ import annotations

from typing import Any

from engine.errors import StepError

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


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
