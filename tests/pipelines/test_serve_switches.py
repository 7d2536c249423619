"""`engine serve` as a user starts it: server-side tools off unless switched on, the refusals
to start (exit 2, one line), and the Host check's access line. Real processes, real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from tests.pipelines.conftest import PIPELINES, REPO
from tests.support.servers import free_port

ASK = {"model": "claude-sonnet-5-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Served:
    url: str
    http: httpx.Client
    err: str = ""  # the start-up lines and the log, once the server stopped


@contextmanager
def serve(*args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """`engine serve` on a free loopback port until the block ends (stopped by its pid)."""
    port = free_port()
    full = {**os.environ, "OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1", "ENGINE_LOG_FORMAT": "json", "ENGINE_SERVER_TOOLS": "", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--port", str(port), "--pipelines", str(PIPELINES), *args],
        cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    served = Served(f"http://127.0.0.1:{port}", httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if served.http.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"engine serve did not start: {proc.communicate(timeout=30)[1]}")
            time.sleep(0.1)
        yield served
    finally:
        served.http.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        served.err = err + out


def serve_refused(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "ENGINE_SERVER_TOOLS": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "engine", "serve", "--pipelines", str(PIPELINES), *args], cwd=REPO, env=full, capture_output=True, text=True, timeout=60)


def test_server_side_tools_are_off_by_default() -> None:
    """Without the switch there is no /agent/v1/messages route, and the start-up lines say so."""
    with serve() as s:
        r = s.http.post("/agent/v1/messages", json=ASK, headers={"x-api-key": "k"})
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        assert "agent" in s.http.get("/health").json()["pipelines"]  # still loaded and checked
    assert "server-side tools: off" in s.err and "--server-tools" in s.err
    assert "-> agent" not in s.err


@pytest.mark.parametrize("switch", [("--server-tools",), ()], ids=["flag", "env"])
def test_the_switch_turns_them_on(switch: tuple[str, ...]) -> None:
    """`--server-tools` (or ENGINE_SERVER_TOOLS=on) serves /agent and the start-up lines say so."""
    env = {} if switch else {"ENGINE_SERVER_TOOLS": "on"}
    with serve(*switch, env=env) as s:
        r = s.http.post("/agent/v1/messages", json={"model": "x"}, headers={"x-api-key": "k"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"  # the agent pipeline answered
    assert "POST /agent/v1/messages -> agent" in s.err
    assert "server-side tools: ON: agent runs code on this machine" in s.err


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_server_tools_on_a_public_bind_need_keys_whatever_else_is_said() -> None:
    """With server-side tools on, a non-loopback bind without ENGINE_API_KEYS is refused even with --allow-unauthenticated."""
    r = serve_refused("--host", "0.0.0.0", "--port", "1", "--server-tools", "--allow-unauthenticated", env={"ENGINE_API_KEYS": ""})
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "server-side tools" in line and "ENGINE_API_KEYS" in line and "'agent'" in line
    r = serve_refused("--host", "0.0.0.0", "--port", "1", "--allow-unauthenticated", env={"ENGINE_API_KEYS": "", "ENGINE_SERVER_TOOLS": "on"})
    assert r.returncode == 2 and "server-side tools" in one_line(r.stderr)


def test_public_bind_without_keys_is_one_line_and_exit_2() -> None:
    """The older refusal (non-loopback bind, no inbound keys) now exits 2 with one line too."""
    r = serve_refused("--host", "0.0.0.0", "--port", "1", env={"ENGINE_API_KEYS": ""})
    assert r.returncode == 2 and "ENGINE_API_KEYS" in one_line(r.stderr)


def test_a_bad_allowlist_entry_refuses_to_start() -> None:
    """A malformed ENGINE_ALLOWED_HOSTS entry stops the start with one line, before binding."""
    r = serve_refused("--port", "1", env={"ENGINE_ALLOWED_HOSTS": "gateway.example:http"})
    assert r.returncode == 2 and "ENGINE_ALLOWED_HOSTS" in one_line(r.stderr)


def test_refusals_are_logged_with_the_access_line() -> None:
    """A forged Host and a foreign Origin each leave one access line with the reason."""
    with serve() as s:
        assert s.http.get("/health", headers={"Host": "evil.example"}).status_code == 403
        assert s.http.post("/v1/messages", json=ASK, headers={"Origin": "https://evil.example", "x-api-key": "k"}).status_code == 403
    lines = [json.loads(line) for line in s.err.splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("event") == "request" and e.get("status") == 403]
    assert [(e["reason"], e["header"], e["path"], e["outcome"]) for e in access] == [
        ("host_not_allowed", "evil.example", "/health", "refused"),
        ("origin_not_allowed", "https://evil.example", "/v1/messages", "refused"),
    ]


def test_allowed_hosts_from_the_environment() -> None:
    """ENGINE_ALLOWED_HOSTS and ENGINE_ALLOWED_ORIGINS reach the served app."""
    with serve(env={"ENGINE_ALLOWED_HOSTS": "gateway.example", "ENGINE_ALLOWED_ORIGINS": "https://app.example"}) as s:
        assert s.http.get("/health", headers={"Host": "gateway.example"}).status_code == 200
        assert s.http.get("/health", headers={"Origin": "https://app.example"}).status_code == 200
        assert s.http.get("/health", headers={"Host": "evil.example"}).status_code == 403


def test_a_reload_cannot_turn_server_tools_on_where_serve_would_refuse(tmp_path) -> None:
    """An edit that enables a code-running pipeline on a public bind without keys is not applied."""
    import shutil

    from engine.executor import Engine
    from engine.guard import code_exposure
    from engine.http import create_app
    from tests.support.servers import serve_asgi

    pipelines = tmp_path / "pipelines"
    shutil.copytree(PIPELINES, pipelines)
    agent = pipelines / "agent.yaml"
    engine = Engine.load([pipelines], env={"OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1"})
    # The vet engine serve installs for `--host 0.0.0.0` without ENGINE_API_KEYS; the socket stays on loopback.
    app = create_app(engine, reload_from=[str(pipelines)], reload_interval=0.05, vet=lambda plans: code_exposure(plans, "0.0.0.0", False))
    with serve_asgi(app) as url, httpx.Client(base_url=url, headers={"x-api-key": "k"}, timeout=30) as http:
        assert http.post("/agent/v1/messages", json={"model": "x"}).status_code == 404
        agent.write_text(agent.read_text().replace("enabled: ${ENGINE_SERVER_TOOLS:-off}", "enabled: true"))
        time.sleep(0.6)  # several reload polls
        assert http.post("/agent/v1/messages", json={"model": "x"}).status_code == 404
        (pipelines / "extra.yaml").write_text("name: extra\nroute: GET /extra\nsteps:\n  v: {uses: core.value, with: {value: 1}}\noutput: ${{ steps.v }}\n")
        agent.write_text(agent.read_text().replace("enabled: true", "enabled: false"))
        deadline = time.monotonic() + 40
        while http.get("/extra").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get("/extra").json() == 1  # a safe set is applied again


@pytest.mark.parametrize(("value", "served"), [("", False), ("off", False), ("false", False), ("on", True), ("true", True), ("1", True)])
def test_the_switch_is_read_by_the_pipeline(value: str, served: bool) -> None:
    """agent.yaml reads ENGINE_SERVER_TOOLS in `enabled:`; off, it is checked but has no route."""
    from engine.executor import load_plans

    agent = next(p for p in load_plans([PIPELINES], env={"ENGINE_SERVER_TOOLS": value}) if p.name == "agent")
    assert agent.runs_code and agent.enabled is served
    assert agent.routes == ([("POST", "/agent/v1/messages")] if served else [])
    assert "sequence" in agent.nodes  # loaded and checked either way


def test_a_bad_switch_value_is_a_located_error() -> None:
    """A value that is not on/off stops the load with file:line:col."""
    from engine.errors import SpecErrors
    from engine.executor import load_plans

    with pytest.raises(SpecErrors) as caught:
        load_plans([PIPELINES], env={"ENGINE_SERVER_TOOLS": "maybe"})
    assert any(re.search(r"agent\.yaml:\d+:\d+: .*'enabled'", str(e)) for e in caught.value.errors)
