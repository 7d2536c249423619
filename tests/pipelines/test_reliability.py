"""Faults, bad input and attacks the gateway must survive (shared/reference/RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import anthropic
import httpx
import pytest

from engine.executor import Engine
from engine.http import create_app
from tests.pipelines.conftest import PIPELINES, REPO, Gateway
from tests.support.fake_openrouter import FakeOpenRouter
from tests.support.servers import serve_asgi

ASK = [{"role": "user", "content": "hi"}]


def raw_socket(url: str) -> socket.socket:
    u = urlparse(url)
    return socket.create_connection((u.hostname, u.port), timeout=10)


PROXY_KEY = "CANARY5-proxy-key-0b1d"
UPSTREAM_KEY = "sk-or-CANARY4-upstream-77a1"


@pytest.fixture(scope="module")
def keyed():
    """A gateway in proxy-key mode: inbound keys required, the upstream key kept server-side."""
    with FakeOpenRouter() as fake:
        env = {"OPENROUTER_BASE_URL": fake.base_url, "OPENROUTER_API_KEY": UPSTREAM_KEY, "BIG_MODEL": "test/big"}
        engine = Engine.load([PIPELINES], env=env)
        with serve_asgi(create_app(engine, api_keys=[PROXY_KEY, "second-key"])) as url:
            yield Gateway(url, fake, engine)


class TestInboundKeys:
    """§4a.1: proxy-key mode."""

    KEY = PROXY_KEY
    UPSTREAM = UPSTREAM_KEY

    def test_missing_or_wrong_key_is_401_and_nothing_goes_upstream(self, keyed: Gateway) -> None:
        """No key or a wrong key: 401 authentication_error, and no upstream request."""
        keyed.fake.clear()
        with httpx.Client(base_url=keyed.url) as http:
            none = http.post("/v1/messages", json={"model": "m", "max_tokens": 5, "messages": ASK})
            wrong = http.post("/v1/messages", json={"model": "m", "max_tokens": 5, "messages": ASK}, headers={"x-api-key": "nope"})
        for r in (none, wrong):
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert r.headers["request-id"] == r.json()["request_id"]
        assert keyed.fake.requests == []

    def test_right_key_either_header_and_upstream_sees_only_its_key(self, keyed: Gateway) -> None:
        """The proxy key works as x-api-key or bearer; upstream receives only the server's key."""
        keyed.fake.clear()
        anthropic.Anthropic(base_url=keyed.url, api_key=self.KEY, max_retries=0).messages.create(model="m/x", max_tokens=5, messages=ASK)
        anthropic.Anthropic(base_url=keyed.url, auth_token="second-key", max_retries=0).messages.create(model="m/x", max_tokens=5, messages=ASK)
        auth = [r.headers["authorization"] for r in keyed.fake.requests]
        assert auth == [f"Bearer {self.UPSTREAM}"] * 2
        assert all(self.KEY not in json.dumps(r.headers) for r in keyed.fake.requests)


def test_client_disconnect_cancels_a_non_streaming_upstream_call(gateway: Gateway) -> None:
    """A client that hangs up while a JSON request waits on the upstream cancels that upstream request."""
    gateway.fake.script("stall_before_headers;seconds=60")
    body = json.dumps({"model": "claude-opus-5-5", "max_tokens": 5, "messages": ASK}).encode()
    sock = raw_socket(gateway.url)
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: localhost\r\nx-api-key: k\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    assert gateway.fake.wait_for(lambda: len(gateway.fake.requests) == 1)
    sock.close()
    assert gateway.fake.wait_for(lambda: gateway.fake.requests[0].outcome == "peer_closed")


def test_client_disconnect_mid_stream_cancels_the_upstream_stream(gateway: Gateway) -> None:
    """A client that hangs up after the first text delta stops the upstream stream too."""
    gateway.fake.script("slow_drip;delay_ms=200;chunks=150")
    with httpx.Client(base_url=gateway.url, headers={"x-api-key": "k"}, timeout=30) as http:
        with http.stream("POST", "/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "stream": True, "messages": ASK}) as r:
            for line in r.iter_lines():
                if "text_delta" in line:
                    break
    assert gateway.fake.wait_for(lambda: gateway.fake.requests[0].outcome == "peer_closed")


class TestBadInput:
    """§3: bad inbound input gets an Anthropic error of the right status, never a 5xx."""

    def post(self, gateway: Gateway, **kw) -> httpx.Response:
        with gateway.http() as http:
            return http.post("/v1/messages", **kw)

    @pytest.mark.parametrize(
        ("content", "headers", "status"),
        [
            (b"{", {"content-type": "application/json"}, 400),
            (b"[]", {"content-type": "application/json"}, 400),
            (b"null", {}, 400),
            (b"\xff\xfe{}", {"content-type": "application/json"}, 400),
            (b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}', {"content-type": "text/plain"}, 415),
            (b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}', {"content-type": "application/x-www-form-urlencoded"}, 415),
            (b'{"model":"m","max_tokens":NaN,"messages":[]}', {"content-type": "application/json"}, 400),
            (b'{"model":"\\ud800","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}', {"content-type": "application/json"}, 400),
            (b"[" * 100_000 + b"]" * 100_000, {"content-type": "application/json"}, 400),
        ],
    )
    def test_malformed_bodies(self, gateway: Gateway, content: bytes, headers: dict, status: int) -> None:
        """Malformed, mistyped or hostile bodies are refused with the right status and no traceback."""
        r = self.post(gateway, content=content, headers=headers)
        assert r.status_code == status
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
        assert "Traceback" not in r.text
        assert gateway.fake.requests == []

    def test_no_content_type_is_accepted(self, gateway: Gateway) -> None:
        """A valid JSON body without Content-Type is accepted (no browser sends that)."""
        r = self.post(gateway, content=json.dumps({"model": "m/x", "max_tokens": 5, "messages": ASK}).encode())
        assert r.status_code == 200

    def test_body_over_limit_refused_before_it_is_read(self, gateway: Gateway) -> None:
        """A declared 33 MB body gets 413 request_too_large without the body being sent."""
        sock = raw_socket(gateway.url)
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 34603008\r\n\r\n")
        data = b""
        while b'"request_too_large"' not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        sock.close()
        reply = data.decode("latin-1")
        assert reply.startswith("HTTP/1.1 413")
        assert '"request_too_large"' in reply

    def test_chunked_body_over_limit(self, gateway: Gateway) -> None:
        """A chunked body that grows past the limit is cut off with 413."""
        def chunks():
            block = b" " * (1024 * 1024)
            for _ in range(40):
                yield block

        r = self.post(gateway, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

    def test_huge_header_refused_and_server_alive(self, gateway: Gateway) -> None:
        """A 64 KB header is refused by the HTTP layer and the server keeps serving."""
        with gateway.http() as http:
            r = http.post("/v1/messages", json={}, headers={"anthropic-beta": "x" * 65536})
            assert r.status_code in (400, 431)
            assert http.get("/health").status_code == 200

    @pytest.mark.parametrize(
        ("body", "message_part"),
        [
            ({"model": "m", "messages": ASK}, "max_tokens"),
            ({"model": "m", "max_tokens": "10", "messages": ASK}, "max_tokens"),
            ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
            ({"model": "m", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
            ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": 5}]}]}, "messages.0.content.0"),  # not a block; an unknown type is dropped (issue 16)
            ({"model": "m", "max_tokens": 5, "stream": "true", "messages": ASK}, "stream"),
            ({"model": 5, "max_tokens": 5, "messages": ASK}, "model"),
            ({"model": "m", "max_tokens": 5, "messages": ASK, "tools": [{"name": "bad name!", "input_schema": {"type": "object"}}]}, "tools.0.name"),
        ],
    )
    def test_invalid_requests_name_the_field(self, gateway: Gateway, body: dict, message_part: str) -> None:
        """Invalid requests are 400 invalid_request_error with a message naming the JSON path."""
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            with gateway.http() as http:
                r = http.post(path, json=body)
            if path.endswith("count_tokens") and message_part in {"max_tokens", "stream"}:
                continue  # count_tokens has neither field
            assert r.status_code == 400, (path, r.text)
            assert message_part in r.json()["error"]["message"]
        assert gateway.fake.requests == []

    def test_unknown_fields_are_accepted(self, gateway: Gateway) -> None:
        """Unknown top-level fields (future betas) are ignored, never refused."""
        r = self.post(gateway, json={"model": "m/x", "max_tokens": 5, "messages": ASK, "foo": 1, "speed": "fast", "context_management": {"edits": []}})
        assert r.status_code == 200
        assert "foo" not in gateway.fake.requests[0].json


def serve_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "serve", *args], cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_refuses_public_bind_without_keys() -> None:
    """Binding a non-loopback address without inbound keys is refused unless explicitly allowed."""
    r = serve_cli("--host", "0.0.0.0", "--port", "1", env={"ENGINE_API_KEYS": ""})
    assert r.returncode == 2 and "ENGINE_API_KEYS" in r.stderr and "--allow-unauthenticated" in r.stderr


def test_refuses_pipelines_writable_by_others(tmp_path: Path) -> None:
    """A pipeline directory others can write is refused: pipeline files run code."""
    d = tmp_path / "p"
    shutil.copytree(PIPELINES, d)
    os.chmod(d / "messages.yaml", 0o666)
    r = serve_cli("--pipelines", str(d), "--port", "1")
    assert r.returncode == 2 and "writable by group or others" in r.stderr


def test_overload_is_anthropic_529_not_plain_503() -> None:
    """With the upstream limit full past its queue timeout, requests get 529 overloaded_error JSON."""
    from tests.pipelines.conftest import start_gateway

    for gw in start_gateway({"UPSTREAM_CONCURRENCY": "2", "UPSTREAM_QUEUE_TIMEOUT": "0.3", "UPSTREAM_COOLDOWN": "0"}):
        gw.fake.default_mode = "slow_drip;delay_ms=100;chunks=10"

        async def go() -> list[httpx.Response]:
            import anyio

            out: list[httpx.Response] = []
            async with httpx.AsyncClient(base_url=gw.url, headers={"x-api-key": "k"}, timeout=30) as client:

                async def one() -> None:
                    out.append(await client.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": ASK}))

                async with anyio.create_task_group() as tg:
                    for _ in range(6):
                        tg.start_soon(one)
            return out

        import anyio

        responses = anyio.run(go)
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) >= 2 and 529 in statuses
        for r in responses:
            if r.status_code == 529:
                assert r.headers["content-type"].startswith("application/json")
                assert r.json()["error"]["type"] == "overloaded_error" and r.headers["x-should-retry"] == "true"
        assert max(len([x for x in gw.fake.requests if x.outcome is None]), 0) <= 2


def test_graceful_shutdown_drains_in_flight_streams(tmp_path: Path) -> None:
    """SIGTERM while a stream is in flight: the stream still ends with message_stop, then the process exits."""
    import signal

    from tests.support.servers import free_port, wait_healthy

    with FakeOpenRouter() as fake:
        fake.default_mode = "slow_drip;delay_ms=150;chunks=12"
        port = free_port()
        env = {**os.environ, "OPENROUTER_BASE_URL": fake.base_url, "ENGINE_LOG_FORMAT": "json", "PING_INTERVAL": "30"}
        proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc)
            text = ""
            with httpx.Client(base_url=url, headers={"x-api-key": "k"}, timeout=30) as http:
                with http.stream("POST", "/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "stream": True, "messages": ASK}) as r:
                    for line in r.iter_lines():
                        text += line + "\n"
                        if "text_delta" in line and proc.poll() is None and "SIGTERM" not in text:
                            proc.send_signal(signal.SIGTERM)
                            text += "SIGTERM\n"
            assert "event: message_stop" in text and text.count("text_delta") == 12
            # uvicorn re-raises the signal once it has drained, so the exit status is SIGTERM's.
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_canaries_never_reach_logs_or_error_bodies() -> None:
    """Client keys, cookies and the upstream key appear in no log line (debug included) and no error body."""
    import io

    import structlog

    from engine import logs
    from tests.pipelines.conftest import start_gateway

    canaries = ["sk-ant-CANARY1-4a1f", "CANARY2-bearer-77", "CANARY3-cookie-99", "sk-or-CANARY4-up-12"]
    buf = io.StringIO()
    logs.register_secret(canaries[3])
    logs.configure("json", "debug", stream=buf, cache=False)
    bodies = []
    try:
        for gw in start_gateway({"OPENROUTER_API_KEY": canaries[3], "UPSTREAM_COOLDOWN": "0"}):
            with httpx.Client(base_url=gw.url, timeout=30) as http:
                headers = {"x-api-key": canaries[0], "authorization": f"Bearer {canaries[1]}", "cookie": f"s={canaries[2]}"}
                for mode in ("ok", "401", "html", "malformed_chunk;bad=garbage;after=1", "500"):
                    gw.fake.script(mode)
                    stream = mode.startswith("malformed")
                    r = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "stream": stream, "messages": ASK}, headers=headers)
                    bodies.append(r.text)
                bodies.append(http.post("/v1/messages", content=b"{", headers=headers).text)
    finally:
        logs.configure("console", "warning", cache=False)
        structlog.reset_defaults()
        logs.configure("console", "warning", cache=False)
    text = buf.getvalue() + "\n".join(bodies)
    assert "step.end" in text and "request" in text  # the logs really were captured
    for canary in canaries:
        assert canary not in text
