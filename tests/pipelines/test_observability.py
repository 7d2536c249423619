"""Metrics, request ids and live reload, seen from outside."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx

from engine.executor import Engine
from engine.http import create_app
from tests.pipelines.conftest import PIPELINES, Gateway
from tests.support.fake_openrouter import FakeOpenRouter
from tests.support.servers import serve_asgi

ASK = [{"role": "user", "content": "hi"}]


def test_metrics_count_requests_steps_and_streams(gateway: Gateway) -> None:
    """/metrics exposes requests by pipeline and status, step durations and retries."""
    gateway.fake.script("429;retry_after=0.1", "ok")
    with gateway.http() as http:
        assert http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": ASK}).status_code == 200
        text = http.get("/metrics").text
    assert 'engine_requests_total{outcome="ok",pipeline="messages",status="200"}' in text
    assert 'engine_step_duration_seconds_count{outcome="ok",pipeline="turn",step="call"}' in text
    assert 'engine_step_retries_total{kind="status",pipeline="turn",step="call"}' in text
    assert "engine_active_streams" in text


def test_request_id_accepted_and_echoed(gateway: Gateway) -> None:
    """A sane x-request-id from the client becomes the request id, echoed in headers and error bodies."""
    with gateway.http() as http:
        ok = http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 5, "messages": ASK}, headers={"x-request-id": "client-id-42"})
        bad = http.post("/v1/messages", json={"model": "m"}, headers={"x-request-id": "client-id-43"})
        weird = http.post("/v1/messages", json={"model": "m"}, headers={"x-request-id": "has spaces and <html>"})
    assert ok.headers["request-id"] == ok.headers["x-request-id"] == "client-id-42"
    assert bad.json()["request_id"] == "client-id-43"
    assert weird.headers["request-id"].startswith("req_")


def test_live_reload_swaps_valid_sets_and_keeps_the_old_on_errors(tmp_path: Path) -> None:
    """An edit takes effect without a restart; a broken edit is reported and the old set serves on."""
    pipelines = tmp_path / "pipelines"
    shutil.copytree(PIPELINES, pipelines)
    models = pipelines / "models.yaml"
    with FakeOpenRouter() as fake:
        engine = Engine.load([pipelines], env={"OPENROUTER_BASE_URL": fake.base_url})
        with serve_asgi(create_app(engine, reload_from=[str(pipelines)], reload_interval=0.05)) as url, httpx.Client(base_url=url, headers={"x-api-key": "k"}) as http:

            def ids() -> list[str]:
                return [m["id"] for m in http.get("/v1/models").json()["data"]]

            before = ids()
            models.write_text(models.read_text().replace("middle_model: ${{ vars.middle_model }}", "middle_model: x/reloaded-middle"))

            def wait_until(predicate, timeout: float = 60.0) -> bool:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if predicate():
                        return True
                    time.sleep(0.05)
                return False

            assert wait_until(lambda: "x/reloaded-middle" in ids()) and "x/reloaded-middle" not in before
            models.write_text(models.read_text().replace("uses: openrouter.model_page", "uses: openrouter.no_such_step"))
            time.sleep(0.5)  # several reload polls
            assert "x/reloaded-middle" in ids()  # still the last good set
            (pipelines / "extra.yaml").write_text(
                "name: extra\nroute: GET /extra\nsteps:\n  v: {uses: core.value, with: {value: {hello: world}}}\noutput: ${{ steps.v }}\n"
            )
            models.write_text(models.read_text().replace("openrouter.no_such_step", "openrouter.model_page"))
            assert wait_until(lambda: http.get("/extra").status_code == 200)
            assert http.get("/extra").json() == {"hello": "world"}
