"""The official anthropic SDK reads our replies: streams, mid-stream errors and error bodies."""

from __future__ import annotations

import anyio
import orjson
import pytest

from engine.run import RunContext
from steps.anthropic.errors import error
from steps.anthropic.reply import reply
from steps.openrouter.errors import UpstreamError

anthropic = pytest.importorskip("anthropic")
try:  # recent SDKs ship their own httpx fork and refuse plain httpx clients
    import httpx2 as hx
except ImportError:  # pragma: no cover - older SDKs
    import httpx as hx

START = {
    "type": "message_start",
    "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}},
}
EVENTS = [
    START,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
]


def _ctx() -> RunContext:
    return RunContext(request_id="req_test", pipeline="test", engine=None)


def _client(status: int, headers: dict, content: bytes):
    def handler(request):
        return hx.Response(status, headers=headers, content=content)

    return anthropic.Anthropic(api_key="k", base_url="http://test", http_client=hx.Client(transport=hx.MockTransport(handler)), max_retries=0)


def _stream_bytes(source) -> bytes:
    async def run():
        return b"".join([c async for c in reply(message=source, ctx=_ctx()).stream])

    return anyio.run(run)


def test_complete_stream_is_read_by_sdk():
    """A full event stream is assembled by the SDK into the expected message."""

    async def source():
        for e in EVENTS:
            yield e
        yield {"type": "content_block_stop", "index": 0}
        yield {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 2}}
        yield {"type": "message_stop"}

    client = _client(200, {"content-type": "text/event-stream"}, _stream_bytes(source()))
    with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]) as s:
        message = s.get_final_message()
    assert message.content[0].text == "hi" and message.stop_reason == "end_turn"


def test_mid_stream_cut_raises_api_status_error_in_sdk():
    """After a mid-stream cut the SDK has seen the deltas and then raises APIStatusError."""

    async def source():
        for e in EVENTS:
            yield e
        raise UpstreamError("eof", kind="cut", mid_stream=True)

    client = _client(200, {"content-type": "text/event-stream"}, _stream_bytes(source()))
    seen = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]) as s:
            for ev in s:
                seen.append(ev.type)
    assert "content_block_delta" in seen
    assert info.value.body["error"]["type"] == "api_error"


def test_error_reply_maps_to_sdk_exception_class():
    """An upstream 429 rendered by anthropic.error is a RateLimitError in the SDK, with our request id."""
    r = error(error=UpstreamError("slow down", status=429, retry_after=3), ctx=_ctx())
    client = _client(r.status, {**r.headers, "content-type": "application/json"}, orjson.dumps(r.body))
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.request_id == "req_test"
