"""engine.jsonbody: strict JSON, and a refusal that names the field or the byte offset."""

from __future__ import annotations

import pytest

from engine.jsonbody import EXPLAIN_LIMIT, InvalidJson, loads


def refused(data: bytes | str) -> InvalidJson:
    with pytest.raises(InvalidJson) as info:
        loads(data)
    return info.value


def test_valid_json_is_parsed_by_orjson() -> None:
    """A valid body comes back as its value, unicode and big numbers included."""
    assert loads(b'{"a": [1, 2.5, "\xc3\xa9", null, true], "b": {}}') == {"a": [1, 2.5, "é", None, True], "b": {}}


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b'{"messages":[{"content":[{},{"input":{"x":NaN}}]}]}', "messages.0.content.1.input.x", "NaN is not valid JSON"),
        (b'{"t": Infinity}', "t", "Infinity is not valid JSON"),
        (b'{"t": [-Infinity]}', "t.0", "-Infinity is not valid JSON"),
        (b'{"t": 1e999}', "t", "the number is too large"),
        (b'{"s": "\\ud800"}', "s", "a lone surrogate escape"),
        (b'{"a.b": {"c d": NaN}}', '"a.b"."c d"', "NaN is not valid JSON"),
        (b'{"k": {"\\udfff": 1}}', "k", "a key holds a lone surrogate escape"),
    ],
)
def test_a_value_strict_json_cannot_hold_is_named_by_its_field(body: bytes, field: str, reason: str) -> None:
    """NaN, Infinity, a double overflow or a lone surrogate: the dotted path, then why."""
    err = refused(body)
    assert err.field == field and err.reason.startswith(reason)
    assert str(err).startswith(f"{field}: {reason}")


def test_the_first_invalid_value_in_document_order_is_named() -> None:
    """Two bad values: the one orjson stopped at, the first in the text."""
    assert refused(b'{"z": NaN, "a": Infinity}').field == "z"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"a": 1,}', "trailing comma is not allowed at byte 7 (line 1, column 8)"),
        (b'{"a":\n  [1 2]}', "unexpected character, expected ',' or ']' at byte 11 (line 2, column 6)"),
        (b'{"a": 1} x', "unexpected content after document at byte 9 (line 1, column 10)"),
        ('{"a": "éé", "b": tru}'.encode(), "expected 'true' at byte 19 (line 1, column 18)"),  # offset in bytes, column in characters
        (b'{"a": "\xff"}', "invalid UTF-8 (the body must be UTF-8) at byte 7 (line 1, column 8)"),
        (b"NaN", "NaN is not valid JSON (send a number, a string or null) at byte 0 (line 1, column 1)"),
        (b"[" * 2000, "nesting is too deep (more than 1024 levels) at byte"),
    ],
)
def test_without_a_field_the_byte_offset_and_what_was_expected(body: bytes, message: str) -> None:
    """Syntax errors name the byte offset, line and column, and what orjson expected."""
    err = refused(body)
    assert err.field is None and message in str(err)


def test_a_str_body_is_measured_in_utf8_bytes() -> None:
    """A text body's offset is where its UTF-8 encoding goes wrong."""
    assert refused('{"éé": tru}').offset == 9


def test_a_huge_refused_body_is_not_read_again() -> None:
    """Above EXPLAIN_LIMIT the refusal gives the offset only (no second, slower parse)."""
    body = b'{"pad": "' + b"x" * EXPLAIN_LIMIT + b'", "v": NaN}'
    err = refused(body)
    assert err.field is None and err.offset == len(body) - 4
