"""SSEDecoder: framing, comments, line endings, fields, flush."""

from __future__ import annotations

import pytest

from steps.openrouter.sse import DONE, SSEDecoder, SSEError

STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"a":1}\n\n'
    b"event: ignored\nid: 7\nretry: 10\n"
    b'data: {"b":2}\n\n'
    b"no field name here\n"
    b'{"json":"without data prefix"}\n\n'
    b"data:{\"c\":3}\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [b'{"a":1}', b'{"b":2}', b'{"c":3}', DONE]


def decode_all(pieces: list[bytes]) -> list[bytes]:
    d = SSEDecoder()
    out: list[bytes] = []
    for p in pieces:
        out += d.feed(p)
    return out + d.flush()


def test_whole_stream() -> None:
    assert decode_all([STREAM]) == EXPECTED


def test_byte_by_byte() -> None:
    assert decode_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
def test_other_line_endings_split_anywhere(eol: bytes) -> None:
    s = STREAM.replace(b"\n", eol)
    for cut in range(1, len(s)):
        assert decode_all([s[:cut], s[cut:]]) == EXPECTED, cut


def test_multiline_data_joined_with_newline() -> None:
    assert decode_all([b"data: one\ndata: two\n\n"]) == [b"one\ntwo"]


def test_only_one_leading_space_stripped() -> None:
    assert decode_all([b"data:  x\n\n"]) == [b" x"]


def test_flush_dispatches_unterminated_event_and_keeps_partial_line() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: [DONE]\n") == []
    assert d.flush() == [DONE]
    d = SSEDecoder()
    assert d.feed(b'data: {"a":1}\n\ndata: {"tru') == [b'{"a":1}']
    assert d.flush() == []
    assert d.partial == b'data: {"tru'


def test_event_name_kept() -> None:
    d = SSEDecoder()
    d.feed(b"event: error\ndata: {}\n\n")
    assert d.last_event == b"error"


def test_line_too_long() -> None:
    d = SSEDecoder(max_line=100)
    with pytest.raises(SSEError):
        for _ in range(20):
            d.feed(b"x" * 10)
    with pytest.raises(SSEError):
        SSEDecoder(max_line=10).feed(b"data: 1\n" + b"y" * 50)
