"""The fake upstream itself: mode parsing, records, rules and each fault mode, via plain httpx."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.support.fake_openrouter import FakeOpenRouter, Mode, drip_text
from tests.support.servers import free_port, serve_asgi

WRITE = {"type": "function", "function": {"name": "Write", "parameters": {"type": "object"}}}
BASH = {"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def fake() -> Any:
    with FakeOpenRouter() as f:
        yield f


@pytest.fixture(autouse=True)
def _fresh(fake: FakeOpenRouter) -> None:
    fake.clear()
    fake.default_mode = "ok"


@pytest.fixture
def client() -> Any:
    with httpx.Client(timeout=10) as c:
        yield c


def body(text: str = "hi", stream: bool = False, **kw: Any) -> dict:
    return {"model": "fake/model", "messages": [{"role": "user", "content": text}], "stream": stream, **kw}


def post(client: httpx.Client, fake: FakeOpenRouter, b: dict, mode: str | None = None) -> httpx.Response:
    headers = {"x-fake-mode": mode} if mode else {}
    return client.post(f"{fake.base_url}/chat/completions", json=b, headers=headers)


def sse(client: httpx.Client, fake: FakeOpenRouter, b: dict, mode: str | None = None) -> tuple[list[bytes], Exception | None]:
    """Raw lines of a streamed answer, and the transport error that ended it, if any."""
    headers = {"x-fake-mode": mode} if mode else {}
    raw = b""
    err: Exception | None = None
    try:
        with client.stream("POST", f"{fake.base_url}/chat/completions", json=b, headers=headers) as r:
            assert r.status_code == 200
            for part in r.iter_raw():
                raw += part
    except httpx.HTTPError as exc:
        err = exc
    return [ln for ln in raw.split(b"\n") if ln], err


def data(lines: list[bytes]) -> list[Any]:
    return [ln[6:] if ln == b"data: [DONE]" else orjson.loads(ln[6:]) for ln in lines if ln.startswith(b"data: ")]


def text(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if isinstance(c, dict) and c.get("choices"))


# --- modes and records -------------------------------------------------------------------------


def test_mode_parse() -> None:
    assert Mode.parse("429;retry_after=1").params == {"code": "429", "retry_after": "1"}
    assert Mode.parse("429").name == "status"
    assert Mode.parse("status=503").params == {"code": "503"}
    assert Mode.parse("text=a%3Bb%20c").params == {"text": "a;b c"}
    m = Mode.parse("malformed_chunk;bad=utf8;after=2")
    assert (m.name, m.int("after", 3), m.params["bad"]) == ("malformed_chunk", 2, "utf8")
    with pytest.raises(ValueError):
        Mode.parse("nonsense")
    with pytest.raises(ValueError):
        FakeOpenRouter().script("ok", "bogus")


def test_script_fifo_header_override_and_default(fake: FakeOpenRouter, client: httpx.Client) -> None:
    fake.script("503", "400")
    assert post(client, fake, body(), mode="402").status_code == 402  # header wins, script untouched
    assert post(client, fake, body()).status_code == 503
    assert post(client, fake, body()).status_code == 400
    assert post(client, fake, body()).status_code == 200
    fake.default_mode = "404"
    assert post(client, fake, body()).status_code == 404
    recs = fake.requests
    assert [r.mode for r in recs] == ["402", "503", "400", "ok", "404"]
    r = recs[0]
    assert (r.method, r.path, r.json, r.outcome) == ("POST", "/api/v1/chat/completions", body(), "ok")
    assert r.headers["x-fake-mode"] == "402" and r.at <= recs[1].at
    assert len({x.connection_id for x in recs}) == 1  # keep-alive
    assert fake.wait_for(lambda: fake.active_requests == 0 and fake.open_connections == 1)


def test_bad_mode_header_is_400(fake: FakeOpenRouter, client: httpx.Client) -> None:
    r = post(client, fake, body(), mode="nope")
    assert r.status_code == 400 and "unknown fake mode" in r.json()["error"]["message"]


def test_models_and_unknown_path(fake: FakeOpenRouter, client: httpx.Client) -> None:
    assert client.get(f"{fake.base_url}/models").json()["data"][0]["id"] == "fake/model"
    assert client.post(f"{fake.base_url}/nope", json={}).status_code == 404


# --- ok rules ----------------------------------------------------------------------------------


def test_rules(fake: FakeOpenRouter, client: httpx.Client) -> None:
    msg = post(client, fake, body("one two three")).json()["choices"][0]["message"]
    assert msg["content"].startswith("Hello! I am the fake upstream. You said: one two three.")
    assert len(msg["content"].split()) >= 12
    out = post(client, fake, body('go [[tool:Glob {"pattern": "*.py"}]]')).json()["choices"][0]
    assert out["finish_reason"] == "tool_calls"
    call = out["message"]["tool_calls"][0]
    assert call["function"] == {"name": "Glob", "arguments": '{"pattern":"*.py"}'} and call["id"].startswith("call_")
    call = post(client, fake, body("create hello.txt please", tools=[WRITE, BASH])).json()["choices"][0]["message"]["tool_calls"][0]
    assert orjson.loads(call["function"]["arguments"]) == {"file_path": "hello.txt", "content": "Hello, world!\n"}
    call = post(client, fake, body("Run something", tools=[WRITE, BASH])).json()["choices"][0]["message"]["tool_calls"][0]
    assert orjson.loads(call["function"]["arguments"]) == {"command": "echo hi", "description": "Say hi"}
    convo = {"model": "m", "messages": [
        {"role": "user", "content": "create hello.txt"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                               "function": {"name": "Write", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "File created successfully at hello.txt"},
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>hello.txt</system-reminder>"}]},
    ], "tools": [WRITE]}
    msg = post(client, fake, convo).json()["choices"][0]["message"]
    assert msg["content"] == "Done: File created successfully at hello.txt"


def test_ok_stream_shape(fake: FakeOpenRouter, client: httpx.Client) -> None:
    lines, err = sse(client, fake, body("a b c", stream=True))
    assert err is None and lines[0] == b": OPENROUTER PROCESSING"
    chunks = data(lines)
    assert chunks[-1] == b"[DONE]"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    assert len(chunks) - 4 >= 12  # one word per content chunk
    assert text(chunks[:-1]).startswith("Hello! I am the fake upstream. You said: a b c.")


def test_stream_tool_call_fragments(fake: FakeOpenRouter, client: httpx.Client) -> None:
    lines, _ = sse(client, fake, body("make hello.txt", stream=True, tools=[WRITE]))
    frags = [tc for c in data(lines)[:-1] if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert frags[0]["id"].startswith("call_") and frags[0]["function"] == {"name": "Write", "arguments": ""}
    assert all(len(f["function"]["arguments"]) <= 8 for f in frags[1:]) and len(frags) > 3
    assert orjson.loads("".join(f["function"]["arguments"] for f in frags))["file_path"] == "hello.txt"


# --- fault modes -------------------------------------------------------------------------------


def test_status_modes(fake: FakeOpenRouter, client: httpx.Client) -> None:
    r = post(client, fake, body(), mode="429;retry_after=1")
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert err["code"] == 429 and err["metadata"]["error_type"] == "rate_limit_exceeded"
    for code in (400, 401, 402, 403, 404, 413, 500, 503):
        r = post(client, fake, body(stream=True), mode=str(code))
        assert r.status_code == code and r.json()["error"]["code"] == code
    r = post(client, fake, body(), mode="context_length")
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith(
        "This endpoint's maximum context length is 200000 tokens. However, you requested about 263390 tokens")


def test_error_200_html_empty(fake: FakeOpenRouter, client: httpx.Client) -> None:
    r = post(client, fake, body(), mode="error_200")
    assert r.status_code == 200 and r.json()["error"]["code"] == 502
    r = post(client, fake, body(), mode="html")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    msg = post(client, fake, body(), mode="empty").json()["choices"][0]["message"]
    assert msg["content"] == "" and "tool_calls" not in msg
    chunks = data(sse(client, fake, body(stream=True), mode="empty")[0])
    assert len(chunks) == 4 and text(chunks[:-1]) == ""


@pytest.mark.parametrize(("mode", "outcome"), [("reset_before_headers", "reset"), ("close_before_headers", "closed")])
def test_before_headers(fake: FakeOpenRouter, client: httpx.Client, mode: str, outcome: str) -> None:
    with pytest.raises(httpx.TransportError):
        post(client, fake, body(), mode=mode)
    assert fake.wait_for(lambda: fake.requests[0].outcome == outcome)


def test_reset_is_a_real_rst(fake: FakeOpenRouter) -> None:
    with socket.create_connection(("127.0.0.1", fake.port)) as s:
        s.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-fake-mode: reset_before_headers\r\n"
                  b"content-length: 2\r\n\r\n{}")
        with pytest.raises(ConnectionResetError):
            s.recv(100)


def test_stall_before_headers(fake: FakeOpenRouter) -> None:
    with httpx.Client(timeout=httpx.Timeout(5, read=0.3)) as c, pytest.raises(httpx.ReadTimeout):
        post(c, fake, body(), mode="stall_before_headers")
    assert fake.wait_for(lambda: fake.requests[0].outcome == "peer_closed")
    with httpx.Client(timeout=5) as c, pytest.raises(httpx.RemoteProtocolError):
        post(c, fake, body(), mode="stall_before_headers;seconds=0.2")  # bounded stall ends by itself
    assert fake.requests[1].outcome == "stall_timeout"


def test_cut_and_reset_mid_stream(fake: FakeOpenRouter, client: httpx.Client) -> None:
    for mode, outcome in (("cut_mid_stream;after=3", "closed"), ("reset_mid_stream;after=3", "reset")):
        lines, err = sse(client, fake, body(stream=True), mode=mode)
        assert err is not None
        assert len(data(lines)) == 4  # role + 3 content chunks
        assert fake.requests[-1].outcome == outcome


def test_error_chunk(fake: FakeOpenRouter, client: httpx.Client) -> None:
    lines, err = sse(client, fake, body(stream=True), mode="error_chunk;code=503;after=1")
    chunks = data(lines)
    assert err is None and len(chunks) == 3 and b"[DONE]" not in chunks
    assert chunks[-1]["error"]["code"] == 503 and chunks[-1]["choices"][0]["finish_reason"] == "error"
    chunks = data(sse(client, fake, body(stream=True), mode="error_chunk;code=server_error;after=0")[0])
    assert chunks[-1]["error"]["code"] == "server_error"


@pytest.mark.parametrize(("bad", "marker"), [("truncated", b'data: {"id"'), ("garbage", b"data: <html>"),
                                             ("utf8", b"\xff\xfe"), ("nodata", b"this line has no field name")])
def test_malformed(fake: FakeOpenRouter, client: httpx.Client, bad: str, marker: bytes) -> None:
    lines, err = sse(client, fake, body(stream=True), mode=f"malformed_chunk;bad={bad};after=2")
    assert err is None
    idx = next(i for i, ln in enumerate(lines) if marker in ln and not _is_json_data(ln))
    assert len([ln for ln in lines[:idx] if ln.startswith(b"data: ")]) == 3  # role + 2
    assert lines[-1] == b"data: [DONE]"


def _is_json_data(line: bytes) -> bool:
    try:
        orjson.loads(line[6:])
        return line.startswith(b"data: ")
    except orjson.JSONDecodeError:
        return False


def test_no_done(fake: FakeOpenRouter, client: httpx.Client) -> None:
    lines, err = sse(client, fake, body(stream=True), mode="no_done")
    chunks = data(lines)
    assert err is None and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stall_mid_stream(fake: FakeOpenRouter) -> None:
    with httpx.Client(timeout=httpx.Timeout(5, read=0.3)) as c:
        lines, err = sse(c, fake, body(stream=True), mode="stall_mid_stream;after=2")
    assert isinstance(err, httpx.ReadTimeout) and len(data(lines)) == 3
    assert fake.wait_for(lambda: fake.requests[0].outcome == "peer_closed")


def test_slow_drip_comments_text_framing(fake: FakeOpenRouter, client: httpx.Client) -> None:
    t0 = time.monotonic()
    chunks = data(sse(client, fake, body(stream=True), mode="slow_drip;delay_ms=50;chunks=6")[0])
    assert 0.28 <= time.monotonic() - t0 < 3 and text(chunks[:-1]) == drip_text(6)
    t0 = time.monotonic()
    lines, _ = sse(client, fake, body(stream=True), mode="comments;seconds=1")
    assert time.monotonic() - t0 >= 0.95
    assert lines.count(b": OPENROUTER PROCESSING") >= 3
    assert text(data(lines)[:-1]).startswith("Hello!")
    assert text(data(sse(client, fake, body(stream=True), mode="text=x%20y")[0])[:-1]) == "x y"
    lines, err = sse(client, fake, body(stream=True), mode="ok;framing=close")
    assert err is None and lines[-1] == b"data: [DONE]"


def test_client_disconnect_records_peer_closed(fake: FakeOpenRouter, client: httpx.Client) -> None:
    with client.stream("POST", f"{fake.base_url}/chat/completions", json=body(stream=True),
                       headers={"x-fake-mode": "slow_drip;delay_ms=100;chunks=100"}) as r:
        it = r.iter_raw()  # keep a reference: a dropped iter_raw() generator closes the response
        next(it)
        time.sleep(0.2)
        assert fake.active_requests == 1 and fake.requests[0].outcome is None
    closed = time.monotonic()
    assert fake.wait_for(lambda: fake.requests[0].outcome == "peer_closed")
    assert fake.requests[0].finished_at - closed < 8  # type: ignore[operator]  # the whole drip would take 10 s
    assert fake.active_requests == 0


def test_stop_ends_stalls_and_connections() -> None:
    f = FakeOpenRouter()
    f.start()
    s = socket.create_connection(("127.0.0.1", f.port))
    s.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-fake-mode: stall_before_headers\r\n"
              b"content-length: 2\r\n\r\n{}")
    assert f.wait_for(lambda: f.active_requests == 1)
    t0 = time.monotonic()
    f.stop()
    assert time.monotonic() - t0 < 3
    assert f.requests[0].outcome == "stopped" and f.open_connections == 0
    s.settimeout(2)
    assert s.recv(10) == b""
    s.close()
    with pytest.raises(ValueError):
        FakeOpenRouter(host="0.0.0.0")


# --- servers.serve_asgi ------------------------------------------------------------------------


def test_serve_asgi_and_free_port() -> None:
    events: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                events.append(msg["type"])
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"pong"})

    with serve_asgi(app, lifespan="on") as base:
        assert httpx.get(base).text == "pong"
    assert events == ["lifespan.startup", "lifespan.shutdown"]
    assert 0 < free_port() < 65536
