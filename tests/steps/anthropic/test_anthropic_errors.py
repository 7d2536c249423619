"""anthropic.error and error_event: the error mapping table, row by row (RELIABILITY §1, PROTOCOL §7.8)."""

from __future__ import annotations

import pytest

from engine.errors import DeadlineExceeded, HttpError, LimitTimeout, StepError, StepTimeout
from engine.run import RunContext
from steps.anthropic.errors import AnthropicError, error, error_event, rewrite_context_length, scrub
from steps.openrouter.errors import UpstreamError


def _ctx() -> RunContext:
    return RunContext(request_id="req_test", pipeline="test", engine=None)


def _render(exc: BaseException):
    return error(error=exc, ctx=_ctx())


def _check(exc: BaseException, status: int, etype: str, retry: str):
    reply = _render(exc)
    assert reply.status == status
    assert reply.body["type"] == "error"
    assert reply.body["error"]["type"] == etype
    assert reply.body["request_id"] == "req_test"
    assert reply.headers["request-id"] == "req_test"
    assert reply.headers["x-should-retry"] == retry
    return reply


def test_error_body_shape():
    """The body is exactly {type, error{type, message}, request_id}."""
    reply = _render(AnthropicError(400, "invalid_request_error", "bad"))
    assert reply.body == {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}, "request_id": "req_test"}


def test_anthropic_error_is_rendered_as_is():
    """An AnthropicError keeps its status, type, message and extra headers."""
    reply = _check(AnthropicError(413, "request_too_large", "too big", {"x-extra": "1"}), 413, "request_too_large", "false")
    assert reply.body["error"]["message"] == "too big"
    assert reply.headers["x-extra"] == "1"


@pytest.mark.parametrize(
    ("status", "etype"),
    [(404, "not_found_error"), (405, "invalid_request_error"), (413, "request_too_large"), (415, "invalid_request_error"), (408, "invalid_request_error"), (431, "invalid_request_error")],
)
def test_http_error_mapping(status, etype):
    """HttpError 404/405/413/415/408/other 4xx keep their status with the mapped type and no retry."""
    _check(HttpError(status, "msg"), status, etype, "false")


def test_http_405_message():
    """A 405 reads "Method Not Allowed" and keeps the HttpError's headers (Allow)."""
    reply = _render(HttpError(405, "whatever", {"allow": "POST"}))
    assert reply.body["error"]["message"] == "Method Not Allowed"
    assert reply.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("up", "status", "etype"),
    [
        (400, 400, "invalid_request_error"),
        (401, 401, "authentication_error"),
        (402, 402, "billing_error"),
        (403, 403, "permission_error"),
        (404, 404, "not_found_error"),
        (413, 413, "request_too_large"),
        (422, 400, "invalid_request_error"),
    ],
)
def test_upstream_4xx_mapping(up, status, etype):
    """Upstream 400/401/402/403/404/413/422 map per the table, keep the message, no retry."""
    reply = _check(UpstreamError("upstream says no", status=up), status, etype, "false")
    assert reply.body["error"]["message"] == "upstream says no"


def test_upstream_429_caps_retry_after_at_60():
    """Upstream 429 with Retry-After 120 is 429 rate_limit_error with retry-after 60."""
    reply = _check(UpstreamError("slow down", status=429, retry_after=120), 429, "rate_limit_error", "true")
    assert reply.headers["retry-after"] == "60"


def test_upstream_429_keeps_short_retry_after():
    """A short upstream Retry-After (1.2 s) is passed on, rounded up to whole seconds."""
    assert _render(UpstreamError("slow", status=429, retry_after=1.2)).headers["retry-after"] == "2"


def test_upstream_429_not_retryable_says_no_retry():
    """A 429 the upstream marks as not retryable (spend cap) carries x-should-retry false."""
    _check(UpstreamError("cap", status=429, retryable=False), 429, "rate_limit_error", "false")


def test_upstream_500_is_masked():
    """Upstream 500 is 500 api_error with a masked message."""
    reply = _check(UpstreamError("db at 10.0.0.3 exploded", status=500), 500, "api_error", "true")
    assert reply.body["error"]["message"] == "Internal server error"


@pytest.mark.parametrize(
    "exc",
    [
        UpstreamError("bad gateway", status=502),
        UpstreamError("refused", kind="connect"),
        UpstreamError("html", kind="protocol", status=200),
        UpstreamError("eof", kind="cut"),
    ],
)
def test_upstream_502_connect_protocol_cut(exc):
    """Upstream 502, connect errors, protocol errors and cuts are 502 api_error, retryable."""
    _check(exc, 502, "api_error", "true")


@pytest.mark.parametrize("up", [503, 529])
def test_upstream_503_529_is_overloaded(up):
    """Upstream 503 and 529 are 529 overloaded_error, retryable, Retry-After copied."""
    reply = _check(UpstreamError("busy", status=up, retry_after=5), 529, "overloaded_error", "true")
    assert reply.headers["retry-after"] == "5"


@pytest.mark.parametrize("exc", [UpstreamError("t", status=408), UpstreamError("t", status=504), UpstreamError("t", kind="timeout")])
def test_upstream_timeouts(exc):
    """Upstream 408, 504 and timeouts are 504 timeout_error."""
    _check(exc, 504, "timeout_error", "true")


@pytest.mark.parametrize("exc", [StepTimeout("slow"), DeadlineExceeded("late")])
def test_engine_timeouts(exc):
    """StepTimeout and DeadlineExceeded are 504 timeout_error."""
    _check(exc, 504, "timeout_error", "true")


def test_limit_timeout_is_overloaded():
    """LimitTimeout (a full concurrency limit) is 529 overloaded_error."""
    _check(LimitTimeout("full"), 529, "overloaded_error", "true")


@pytest.mark.parametrize("exc", [RuntimeError("secret at /etc/passwd sk-abcdef1234567890"), KeyError("x"), StepError("oops")])
def test_unknown_exception_is_masked_500(exc):
    """Any other exception is 500 api_error "Internal server error", with none of its text."""
    reply = _check(exc, 500, "api_error", "false")
    assert reply.body["error"]["message"] == "Internal server error"


def test_exception_group_uses_first_leaf():
    """An exception group (from a task group) is rendered as its first error."""
    group = ExceptionGroup("tg", [UpstreamError("busy", status=503)])
    _check(group, 529, "overloaded_error", "true")


def test_upstream_key_is_scrubbed():
    """An API key or bearer token inside a kept upstream message never reaches the client."""
    msg = "Invalid key sk-or-v1-0123456789abcdef0123 (Authorization: Bearer abcdefghijklmnop12345)"
    reply = _render(UpstreamError(msg, status=401))
    text = reply.body["error"]["message"]
    assert "sk-or-v1-0123" not in text and "abcdefghijklmnop12345" not in text
    assert "[redacted]" in text


def test_scrub_leaves_plain_text_alone():
    """scrub() does not touch text without anything key-like."""
    assert scrub("model not found: gpt-5") == "model not found: gpt-5"


def test_openrouter_context_length_is_rewritten():
    """OpenRouter's context wording with input over the limit becomes `prompt is too long: N tokens > M maximum`."""
    msg = "This endpoint's maximum context length is 200000 tokens. However, you requested about 263390 tokens (250000 of text input, 390 of tool input, 13000 in the output). Please reduce the length"
    reply = _render(UpstreamError(msg, status=400))
    assert reply.body["error"]["message"] == "prompt is too long: 250390 tokens > 200000 maximum"


def test_openrouter_context_length_output_only_uses_max_tokens_wording():
    """When only input + max_tokens overflow, the max_tokens wording Claude Code retries on is used."""
    msg = "This endpoint's maximum context length is 200000 tokens. However, you requested about 263390 tokens (658 of text input, 732 of tool input, 262000 in the output)."
    assert rewrite_context_length(msg) == (
        "input length and `max_tokens` exceed context limit: 1390 + 262000 > 200000, "
        "decrease input length or `max_tokens` and try again"
    )


def test_openrouter_context_length_without_breakdown():
    """OpenRouter's wording without a breakdown uses the requested total as N."""
    msg = "This endpoint's maximum context length is 131072 tokens. However, you requested about 140000 tokens. Please reduce"
    assert rewrite_context_length(msg) == "prompt is too long: 140000 tokens > 131072 maximum"


def test_openai_context_length_is_rewritten():
    """OpenAI's "your messages resulted in N tokens" wording is rewritten too."""
    msg = "This model's maximum context length is 128000 tokens. However, your messages resulted in 130001 tokens. Please reduce"
    reply = _render(UpstreamError(msg, status=400))
    assert reply.body["error"]["message"] == "prompt is too long: 130001 tokens > 128000 maximum"


def test_other_400_text_is_kept():
    """A 400 that is not about context length keeps the upstream text."""
    assert _render(UpstreamError("tools.0: bad schema", status=400)).body["error"]["message"] == "tools.0: bad schema"


def test_error_event_payload():
    """error_event gives the SSE payload with the same type mapping and the request id."""
    ev = error_event(UpstreamError("busy", status=503), "req_1")
    assert ev == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"}


def test_error_event_cut_mid_stream():
    """Mid-stream, an upstream cut is api_error "upstream connection closed mid-stream"."""
    ev = error_event(UpstreamError("eof", kind="cut", mid_stream=True), "req_1")
    assert ev["error"] == {"type": "api_error", "message": "upstream connection closed mid-stream"}


def test_error_event_malformed_chunk():
    """Mid-stream, a malformed upstream chunk is api_error "upstream sent an invalid chunk"."""
    ev = error_event(UpstreamError("garbage", kind="protocol"), "req_1")
    assert ev["error"] == {"type": "api_error", "message": "upstream sent an invalid chunk"}


def test_error_event_error_chunk_4xx_keeps_message_5xx_masked():
    """An upstream error chunk keeps a 4xx message and masks a 5xx one."""
    assert error_event(UpstreamError("limited", kind="error_chunk", status=429))["error"] == {"type": "rate_limit_error", "message": "limited"}
    assert error_event(UpstreamError("boom", kind="error_chunk", status=502))["error"]["message"] != "boom"
