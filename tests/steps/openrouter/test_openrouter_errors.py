"""Helpers in steps/openrouter/errors.py."""

from __future__ import annotations

from email.utils import formatdate

from steps.openrouter.errors import (
    UpstreamError,
    clip,
    error_fields,
    parse_retry_after,
    retry_after_from_headers,
    scrub,
    scrub_value,
    status_from_code,
)


def test_parse_retry_after() -> None:
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_retry_after_ms_preferred() -> None:
    assert retry_after_from_headers({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_from_headers({"retry-after": "9"}) == 9.0
    assert retry_after_from_headers({}) is None


def test_scrub() -> None:
    text = "key sk-or-v1-0123456789abcdef, Bearer abcdefgh12345678 and api_key=zzzzzzzzzzzz, custom SECRET42x"
    out = scrub(text, "SECRET42x")
    for secret in ("sk-or-v1", "abcdefgh12345678", "zzzzzzzzzzzz", "SECRET42x"):
        assert secret not in out
    assert scrub_value({"a": ["sk-ant-0123456789"], "b": 1}) == {"a": ["[redacted]"], "b": 1}


def test_clip() -> None:
    assert clip("x" * 10) == "x" * 10
    assert len(clip("x" * 2000)) == 1000


def test_status_from_code() -> None:
    assert status_from_code(429) == 429
    assert status_from_code("503") == 503
    assert status_from_code("server_error") == 502
    assert status_from_code(None) == 502
    assert status_from_code(True) == 502
    assert status_from_code(42) == 502


def test_error_fields() -> None:
    assert error_fields({"error": {"code": 400, "message": "m", "metadata": {"error_type": "invalid_request"}}}) == (
        "m", "invalid_request", 400)
    assert error_fields({"error": {"message": "m", "type": "invalid_request_error",
                                   "code": "context_length_exceeded"}}) == ("m", "context_length_exceeded",
                                                                            "context_length_exceeded")
    assert error_fields({"error": {"message": "m", "error_type": "provider_overloaded", "http_status": 503}}) == (
        "m", "provider_overloaded", 503)
    assert error_fields({"detail": "nope"}) == ("nope", None, None)
    assert error_fields("x") == (None, None, None)


def test_upstream_error_defaults() -> None:
    assert UpstreamError("x", status=503).retryable
    assert not UpstreamError("x", status=400).retryable
    assert UpstreamError("x", kind="connect").retryable
