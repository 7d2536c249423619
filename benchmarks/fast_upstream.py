"""A minimal, fast OpenAI-compatible upstream for benchmarks (precomputed answers, raw asyncio).

    python -m benchmarks.fast_upstream PORT

POST .../chat/completions answers a fixed completion, or, with "stream": true, a stream of
`chunks` content chunks (default 200; a `max_tokens` of 1000+N asks for N chunks, N ≤ 10000),
with usage and [DONE]. A `max_tokens` of 999 asks for an idle stream: the first content chunk,
then nothing until the client hangs up (a model thinking for a long time). Keep-alive,
Content-Length requests only. Its own cost must stay far below the gateway's, so everything
is built once.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

COMPLETION = orjson.dumps(
    {
        "id": "gen-1", "object": "chat.completion", "created": 1, "model": "bench/model",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello from the benchmark upstream."}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
)


def _stream(chunks: int) -> bytes:
    out = [b": OPENROUTER PROCESSING\n\n"]
    out.append(b"data: " + orjson.dumps({"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "bench/model", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}) + b"\n\n")
    for i in range(chunks):
        out.append(b"data: " + orjson.dumps({"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "bench/model", "choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]}) + b"\n\n")
    out.append(b"data: " + orjson.dumps({"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "bench/model", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"\n\n")
    out.append(b"data: " + orjson.dumps({"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "bench/model", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}}) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


_STREAMS: dict[int, list[bytes]] = {}


def stream_parts(chunks: int) -> list[bytes]:
    """The stream as HTTP chunks, one SSE event each (so the gateway sees them one by one)."""
    parts = _STREAMS.get(chunks)
    if parts is None:
        events = _stream(chunks).split(b"\n\n")[:-1]
        parts = [b"%x\r\n%s\n\n\r\n" % (len(e) + 2, e) for e in events] + [b"0\r\n\r\n"]
        _STREAMS[chunks] = parts
    return parts


IDLE_MAX_TOKENS = 999
JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            if b'"stream":true' in body.replace(b" ", b""):
                chunks = 200
                try:
                    mt = orjson.loads(body).get("max_tokens", 0)
                    if 1000 < mt <= 11000:
                        chunks = mt - 1000
                except orjson.JSONDecodeError:
                    mt = 0
                if mt == IDLE_MAX_TOKENS:
                    writer.write(SSE_HEAD)
                    writer.write(stream_parts(1)[1] + stream_parts(1)[2])  # role chunk, one word
                    await writer.drain()
                    await reader.read()  # until the gateway closes the connection
                    return
                writer.write(SSE_HEAD)
                for part in stream_parts(chunks):
                    writer.write(part)
                await writer.drain()
            else:
                writer.write(JSON_HEAD % len(COMPLETION) + COMPLETION)
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
