"""Every `/agent` route sits behind the one server-side-tools switch (ENGINE_SERVER_TOOLS).

The routes are found, not listed: every route under /agent that any shipped pipeline serves
with the switch on, so an /agent route added later is covered too. Real gateway, real sockets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.errors import SpecErrors
from engine.executor import load_plans
from tests.pipelines.conftest import PIPELINES, Gateway, start_gateway

ASK = {"model": "claude-sonnet-5-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def agent_routes() -> list[tuple[str, str, str]]:
    """(method, path, pipeline) of every /agent route served with the switch on."""
    plans = load_plans([PIPELINES], env={"ENGINE_SERVER_TOOLS": "on"})
    return sorted((m, p, plan.name) for plan in plans for m, p in plan.routes if p == "/agent" or p.startswith("/agent/"))


def test_the_agent_routes_are_all_found() -> None:
    """The enumeration the other tests rely on sees the agent and its auxiliary routes."""
    found = {(m, p) for m, p, _ in agent_routes()}
    assert {("POST", "/agent/v1/messages"), ("POST", "/agent/v1/messages/count_tokens"), ("GET", "/agent/v1/models"),
            ("HEAD", "/agent"), ("HEAD", "/agent/api/hello")} <= found


@pytest.mark.parametrize("value", ["", "off"])
def test_switched_off_no_plan_serves_an_agent_route(value: str) -> None:
    plans = load_plans([PIPELINES], env={"ENGINE_SERVER_TOOLS": value})
    served = [(m, p, plan.name) for plan in plans for m, p in plan.routes]
    assert not [r for r in served if r[1] == "/agent" or r[1].startswith("/agent/")]
    assert ("GET", "/v1/models", "models") in served and ("HEAD", "/api/hello", "hello") in served


def send(gw: Gateway, method: str, path: str) -> object:
    with gw.http() as http:
        if method == "POST":
            return http.post(path, json=ASK)
        return http.request(method, path)


@pytest.fixture(scope="module")
def off() -> Iterator[Gateway]:
    yield from start_gateway({"ENGINE_SERVER_TOOLS": "off"})


@pytest.fixture(scope="module")
def on(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from start_gateway({"ENGINE_SERVER_TOOLS": "on", "AGENT_WORKSPACE": str(tmp_path_factory.mktemp("ws"))})


@pytest.mark.parametrize(("method", "path", "pipeline"), agent_routes())
def test_off_every_agent_route_is_404_in_anthropics_format(off: Gateway, method: str, path: str, pipeline: str) -> None:
    r = send(off, method, path)
    assert r.status_code == 404, (method, path, r.status_code)
    if method != "HEAD":  # a HEAD answer has no body
        assert r.headers["content-type"].startswith("application/json")
        body = r.json()
        assert body["type"] == "error" and body["error"]["type"] == "not_found_error" and body["error"]["message"]
    assert not off.fake.requests  # nothing reached the upstream


def test_off_the_plain_routes_are_still_served(off: Gateway) -> None:
    with off.http() as http:
        assert http.get("/v1/models").status_code == 200
        assert http.head("/api/hello").status_code == 200
        assert http.post("/v1/messages/count_tokens", json=ASK).json()["input_tokens"] > 0


@pytest.mark.parametrize(("method", "path", "pipeline"), agent_routes())
def test_on_every_agent_route_is_served(on: Gateway, method: str, path: str, pipeline: str) -> None:
    r = send(on, method, path)
    assert r.status_code == 200, (method, path, r.status_code, r.text[:300])
    if pipeline == "models":
        assert any(m["id"].startswith("claude") for m in r.json()["data"])
    elif pipeline == "count_tokens":
        assert r.json()["input_tokens"] > 0
    elif pipeline == "agent":
        assert r.json()["type"] == "message" and len(on.fake.requests) == 1


def test_a_route_switch_of_its_own(tmp_path) -> None:
    """The route syntax the shipped files use: an entry with its own `enabled`, checked either way."""
    text = (
        "name: two\nroute:\n  - GET /a\n  - {route: GET /b, enabled: \"${B:-off}\"}\n"
        "steps:\n  v: {uses: core.value, with: {value: 1}}\noutput: ${{ steps.v }}\n"
    )
    (tmp_path / "two.yaml").write_text(text)
    assert load_plans([tmp_path], env={})[0].routes == [("GET", "/a")]
    assert load_plans([tmp_path], env={"B": "on"})[0].routes == [("GET", "/a"), ("GET", "/b")]
    (tmp_path / "two.yaml").write_text(text.replace("GET /b", "FETCH /b"))
    with pytest.raises(SpecErrors) as caught:
        load_plans([tmp_path], env={})  # a switched-off route is still checked
    assert [str(e).split(": ", 1)[0] for e in caught.value.errors] == [f"{tmp_path / 'two.yaml'}:4:13"]
    (tmp_path / "two.yaml").write_text(text.replace("enabled", "enable"))
    with pytest.raises(SpecErrors):
        load_plans([tmp_path], env={})


def test_engine_run_of_a_switched_off_route_still_gets_a_request(tmp_path) -> None:
    """`engine run agent --input body.json` with the switch off: the file is still the request
    body (sent as to the pipeline's declared route), not a bare value (that was a 500)."""
    import json
    import os
    import subprocess
    import sys

    from tests.pipelines.conftest import REPO

    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "x"}))
    env = {**os.environ, "ENGINE_SERVER_TOOLS": "", "OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1"}
    done = subprocess.run([sys.executable, "-m", "engine", "run", "agent", "--input", str(body)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = json.loads(done.stdout)
    assert out["error"]["type"] == "invalid_request_error" and "messages" in out["error"]["message"], done.stdout + done.stderr
    assert "HTTP 400" in done.stderr
