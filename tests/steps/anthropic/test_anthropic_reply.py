"""anthropic.reply and sse.encode: JSON replies, SSE streams, the mid-stream error rule and closing."""

from __future__ import annotations

import anyio
import orjson
import pytest

from engine.run import RunContext
from steps.anthropic.errors import AnthropicError
from steps.anthropic.reply import reply
from steps.anthropic.sse import PING, encode
from steps.openrouter.errors import UpstreamError

EVENTS = [
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a\nb"}},
]


def _ctx() -> RunContext:
    return RunContext(request_id="req_test", pipeline="test", engine=None)


class Source:
    """An async iterator of events that can fail after some, and records being closed."""

    def __init__(self, events, fail: BaseException | None = None, hang: bool = False):
        self.events = list(events)
        self.fail = fail
        self.hang = hang
        self.closed = False
        self.pulled = 0

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.pulled < len(self.events):
            self.pulled += 1
            return self.events[self.pulled - 1]
        if self.hang:
            await anyio.sleep(30)
        if self.fail is not None:
            raise self.fail
        raise StopAsyncIteration

    async def aclose(self):
        self.closed = True


def _parse_sse(chunks: list[bytes]) -> list[tuple[str, dict]]:
    out = []
    for frame in b"".join(chunks).split(b"\n\n"):
        if not frame:
            continue
        event_line, data_line = frame.split(b"\n")
        assert event_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        out.append((event_line[7:].decode(), orjson.loads(data_line[6:])))
    return out


async def _collect(stream) -> list[bytes]:
    return [chunk async for chunk in stream]


def test_encode_frame_format():
    """encode() gives `event: <type>`, one line of JSON data, and a blank line."""
    frame = encode(EVENTS[2])
    assert frame.startswith(b"event: content_block_delta\ndata: {")
    assert frame.endswith(b"}\n\n")
    assert frame.count(b"\n") == 3  # the text's newline is escaped inside the JSON
    assert orjson.loads(frame.split(b"data: ", 1)[1]) == EVENTS[2]


def test_ping_bytes():
    """PING is the ping event frame."""
    assert PING == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_dict_becomes_json_reply():
    """A message dict is returned as the JSON body with a request-id header."""
    r = reply(message={"type": "message"}, ctx=_ctx())
    assert r.body == {"type": "message"} and r.stream is None
    assert r.headers == {"request-id": "req_test"}


def test_stream_reply_headers_and_heartbeat():
    """A stream reply is text/event-stream with request-id, no-cache and a 10 s ping heartbeat."""
    r = reply(message=Source(EVENTS), ctx=_ctx())
    assert r.media_type == "text/event-stream; charset=utf-8"
    assert r.headers == {"request-id": "req_test", "cache-control": "no-cache"}
    assert r.heartbeat == PING and r.heartbeat_interval == 10.0


def test_stream_encodes_every_event_in_order():
    """A clean stream yields each event encoded, in order, and closes the source."""
    src = Source(EVENTS)
    chunks = anyio.run(_collect, reply(message=src, ctx=_ctx()).stream)
    assert chunks == [encode(e) for e in EVENTS]
    assert src.closed


def test_upstream_cut_mid_stream_ends_with_one_error_event():
    """A cut after some events yields exactly those events, one api_error event, and nothing more."""
    src = Source(EVENTS, fail=UpstreamError("eof", kind="cut", mid_stream=True))
    events = _parse_sse(anyio.run(_collect, reply(message=src, ctx=_ctx()).stream))
    assert [e for _, e in events[:-1]] == EVENTS
    name, last = events[-1]
    assert name == "error"
    assert last["error"] == {"type": "api_error", "message": "upstream connection closed mid-stream"}
    assert src.closed


def test_unknown_exception_mid_stream_is_masked():
    """A bug mid-stream becomes an api_error event without the exception's text."""
    src = Source(EVENTS[:1], fail=RuntimeError("sk-secret-0123456789 leaked"))
    events = _parse_sse(anyio.run(_collect, reply(message=src, ctx=_ctx()).stream))
    assert events[-1][1]["error"] == {"type": "api_error", "message": "Internal server error"}
    assert b"sk-secret" not in encode(events[-1][1])


def test_anthropic_error_mid_stream_keeps_type():
    """An AnthropicError raised mid-stream keeps its type and message in the error event."""
    src = Source([], fail=AnthropicError(529, "overloaded_error", "Overloaded"))
    events = _parse_sse(anyio.run(_collect, reply(message=src, ctx=_ctx()).stream))
    assert events == [("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_test"})]


def test_client_going_away_closes_the_source():
    """Closing the reply stream early (client disconnect) calls aclose on the source iterator."""
    src = Source(EVENTS)

    async def main():
        stream = reply(message=src, ctx=_ctx()).stream
        first = await stream.__anext__()
        await stream.aclose()
        return first

    assert anyio.run(main) == encode(EVENTS[0])
    assert src.closed


def test_async_generator_source_is_closed_on_disconnect():
    """An async-generator source has its finally run when the reply stream is closed early."""
    state = {"finally": False}

    async def source():
        try:
            for e in EVENTS:
                yield e
        finally:
            state["finally"] = True

    async def main():
        stream = reply(message=source(), ctx=_ctx()).stream
        await stream.__anext__()
        await stream.aclose()

    anyio.run(main)
    assert state["finally"]


def test_cancellation_is_not_turned_into_an_error_event():
    """A cancelled consumer gets no error event, and the source is still closed."""
    src = Source(EVENTS[:1], hang=True)
    got: list[bytes] = []

    async def main():
        stream = reply(message=src, ctx=_ctx()).stream
        with anyio.move_on_after(0.05):
            async for chunk in stream:
                got.append(chunk)
        await stream.aclose()

    anyio.run(main)
    assert got == [encode(EVENTS[0])]
    assert src.closed


def test_non_dict_non_stream_is_a_type_error():
    """anything else than a dict or an async iterator is a programming error."""
    with pytest.raises(TypeError):
        reply(message=[1, 2], ctx=_ctx())
