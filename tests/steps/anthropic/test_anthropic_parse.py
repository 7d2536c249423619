"""anthropic.parse: body decoding and the content-type guard (RELIABILITY §3 rows 1, 2, 6, 7)."""

from __future__ import annotations

import pytest

from engine.types import Request
from steps.anthropic.errors import AnthropicError
from steps.anthropic.parse import parse

VALID = b'{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}'


def _req(body: bytes, content_type: str | None = "application/json") -> Request:
    headers = {} if content_type is None else {"content-type": content_type}
    return Request(method="POST", path="/v1/messages", headers=headers, query={}, body=body)


def _fails(body: bytes, content_type: str | None = "application/json") -> AnthropicError:
    with pytest.raises(AnthropicError) as info:
        parse(request=_req(body, content_type))
    return info.value


def _assert_400(err: AnthropicError) -> None:
    assert err.status == 400
    assert err.error_type == "invalid_request_error"
    assert "Traceback" not in err.message and "File \"" not in err.message


def test_valid_json_object_is_returned_as_dict():
    """A valid JSON object body comes back as a dict."""
    assert parse(request=_req(VALID))["model"] == "m"


@pytest.mark.parametrize("body", [b"{", b"[]", b'"x"', b"null", b"1", b""])
def test_invalid_or_non_object_body_is_400(body):
    """Row 1: truncated JSON, an array, a string, null, a number or nothing is 400 without traceback text."""
    _assert_400(_fails(body))


def test_truncated_json_message_says_invalid_json():
    """The message for broken JSON says the body is not valid JSON."""
    assert "not valid JSON" in _fails(b"{").message


def test_non_object_message_says_object():
    """The message for a JSON array says an object is expected."""
    assert "JSON object" in _fails(b"[]").message


def test_invalid_utf8_is_400():
    """Row 2: invalid UTF-8 bytes are 400."""
    _assert_400(_fails(b'{"model":"\xff\xfe"}'))


def test_bom_prefix_is_400():
    """Row 2: a UTF-8 byte order mark before the JSON is 400 with a message naming the BOM."""
    err = _fails(b"\xef\xbb\xbf" + VALID)
    _assert_400(err)
    assert "BOM" in err.message


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_400(literal):
    """NaN and Infinity are not JSON and are refused."""
    _assert_400(_fails(b'{"temperature":' + literal + b"}"))


def test_lone_surrogate_is_400():
    """A lone surrogate escape (which httpx could not re-encode later) is refused."""
    _assert_400(_fails(b'{"model":"\\ud800"}'))


def test_nesting_deeper_than_64_is_400():
    """Nesting deeper than 64 levels is refused with a message saying so."""
    err = _fails(b'{"a":' + b"[" * 70 + b"]" * 70 + b"}")
    _assert_400(err)
    assert "nested too deeply" in err.message


def test_nesting_of_64_is_accepted():
    """Exactly 64 levels of nesting is still accepted."""
    assert parse(request=_req(b'{"a":' + b"[" * 63 + b"]" * 63 + b"}"))


def test_very_deep_nesting_is_400_not_500():
    """100 000 nested brackets (stdlib json's RecursionError case) is a 400."""
    _assert_400(_fails(b"[" * 100_000 + b"]" * 100_000))


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/html"],
)
def test_non_json_content_type_is_415(content_type):
    """Row 6: text/plain, form or multipart with valid JSON is 415 invalid_request_error."""
    err = _fails(VALID, content_type)
    assert err.status == 415
    assert err.error_type == "invalid_request_error"


def test_missing_content_type_is_accepted():
    """Row 7: no Content-Type with valid JSON is accepted."""
    assert parse(request=_req(VALID, None))["max_tokens"] == 10


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"])
def test_json_content_type_with_params_is_accepted(content_type):
    """application/json with any case and a UTF-8 charset parameter is accepted."""
    assert parse(request=_req(VALID, content_type))["model"] == "m"


def test_content_type_header_in_sender_casing_is_found():
    """A plain dict with `Content-Type` in the sender's casing is still checked."""
    req = Request(method="POST", path="/", headers={"Content-Type": "text/plain"}, query={}, body=VALID)
    with pytest.raises(AnthropicError) as info:
        parse(request=req)
    assert info.value.status == 415
