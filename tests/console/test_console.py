"""The web console over real HTTP: mounted only when on, the live feed, a run's page, the
pipelines, usage and replay pages, capture files, and the login when inbound keys are set."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx
import orjson

from engine.executor import Engine
from engine.http import create_app
from tests.console.conftest import PIPELINES, REPO, ConsoleGateway, console_gateway
from tests.support.servers import serve_asgi


def wait_until(predicate, timeout: float = 40.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def run_key(client: httpx.Client, request_id: str, *, running: bool = False) -> str:
    """The console's key for the run with this request id, once the runs page lists it
    finished (or, with `running`, in flight)."""
    found: list[str] = []
    state = "running" if running else "(?:ok|failed)"

    def listed() -> bool:
        page = client.get("/console/").text
        found[:] = re.findall(rf'<tr class="run {state}" data-key="([^"]+)"[^>]*>\s*(?:<td>[^<]*</td>\s*)<td><a class="run-link" href="[^"]+">{re.escape(request_id)}<', page)
        return bool(found)

    assert wait_until(listed), f"{request_id} never appeared on the runs page ({'running' if running else 'finished'})"
    return found[0]


def test_the_console_is_off_unless_asked_for() -> None:
    """create_app without console=True serves no /console (engine serve turns it on)."""
    engine = Engine.load([PIPELINES], env={"OPENROUTER_BASE_URL": "http://127.0.0.1:9", "OPENROUTER_MODELS_FETCH": "false"})
    with serve_asgi(create_app(engine)) as url:
        r = httpx.get(f"{url}/console/")
        assert r.status_code == 404
        assert engine.console is None


def test_a_run_is_pushed_over_server_sent_events(gw: ConsoleGateway) -> None:
    """A run that starts while the feed is open arrives on it as a `run` event when it starts
    (running) and again when it ends, with its access facts. Each feed response lasts a few seconds; like EventSource, the test then
    reconnects with Last-Event-ID."""
    event = started = None
    last = ""
    deadline = time.monotonic() + 40
    with gw.http() as client:
        sent = False
        while event is None and time.monotonic() < deadline:
            headers = {"last-event-id": last} if last else {}
            with client.stream("GET", "/console/events", headers=headers) as feed:
                assert feed.headers["content-type"].startswith("text/event-stream")
                if not sent:
                    assert gw.message(client, "req-sse-1").status_code == 200
                    sent = True
                buffer = ""
                for text in feed.iter_text():
                    buffer += text
                    blocks = buffer.split("\n\n")
                    buffer = blocks.pop()
                    for block in blocks:
                        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
                        last = fields.get("id", last)
                        if "req-sse-1" in fields.get("data", ""):
                            if orjson.loads(fields["data"])["running"]:
                                started = fields
                            else:
                                event = fields
                    if event is not None:
                        break
    assert event is not None, "the run never arrived on the feed"
    assert started is not None and orjson.loads(started["data"])["outcome"] == "running"  # listed from its start
    assert event["event"] == "run" and int(event["id"]) > int(started["id"])
    run = orjson.loads(event["data"])
    assert run["request_id"] == "req-sse-1" and run["pipeline"] == "messages"
    assert run["status"] == 200 and run["outcome"] == "ok" and not run["failed"]
    assert run["requested"] == "claude-sonnet-4-5"
    assert run["facts"]["model"] == "test/big"  # the access line's `model`: the one that answered
    assert event["id"] == str(run["version"]) and orjson.loads(started["data"])["key"] == run["key"]


def test_the_run_page_draws_the_graph_with_the_trace(gw: ConsoleGateway) -> None:
    """Every step of both pipelines the run went through is drawn, coloured by what it did."""
    with gw.http() as client:
        assert gw.message(client, "req-page-1", stream=True).status_code == 200
        page = client.get(f"/console/runs/{run_key(client, 'req-page-1')}").text
    for name in ("messages", "turn"):
        assert f'data-pipeline="{name}"' in page
    assert 'id="node-turn.call" data-step="call" data-state="ran"' in page
    assert 'id="node-turn.answer" data-step="answer" data-state="ran"' in page  # the one conversion, for JSON and streams
    assert 'class="waterfall"' in page
    assert 'id="call-turn.call-1"' in page  # what went upstream, attempt 1
    assert "message_start" in page and "content_block_delta" in page  # the answer's events
    assert "sk-ant-test-client-key" not in page
    assert "items are kept only with capture on" in page  # capture is off: the upstream stream's items are not kept
    with gw.http() as client:
        assert "req-page-1" not in client.get("/console/replay").text  # so it cannot be replayed


def test_a_failed_run_links_to_its_failing_step(gw: ConsoleGateway) -> None:
    """Upstream 500s until the retries run out: the page names turn.call, with each attempt's status."""
    gw.fake.script("500", "500", "500")
    with gw.http() as client:
        assert gw.message(client, "req-fail-1").status_code >= 500
        page = client.get(f"/console/runs/{run_key(client, 'req-fail-1')}").text
    assert 'class="failed-step" href="#step-turn.call"' in page
    assert 'id="step-turn.call" class="step-row failed"' in page
    assert 'data-state="failed"' in page
    assert page.count("upstream status 500") == 3


def test_pipelines_usage_and_replay_pages(gw: ConsoleGateway) -> None:
    with gw.http() as client:
        assert gw.message(client, "req-replay-1").status_code == 200
        key = run_key(client, "req-replay-1")
        pipelines = client.get("/console/pipelines").text
        assert 'id="check-result">OK' in pipelines
        assert pipelines.count('class="pipeline-graph"') == len(gw.engine.plans)
        headers = client.get("/console/pipelines").headers
        assert "script-src 'self'" in headers["content-security-policy"] and headers["cache-control"] == "no-store"
        usage = client.get("/console/usage").text
        assert "requests by model" in usage and "test/big" in usage
        replayed = client.post("/console/replay", data={"run": key}, headers={"origin": gw.url}).text
        assert "1 same, 0 changed" in replayed
        refused = client.post("/console/replay", data={"run": key}, headers={"origin": "http://evil.example"})
        assert refused.status_code == 403


def test_capture_files_are_listed_and_opened(tmp_path: Path) -> None:
    """With capture on, runs in the capture directory (earlier processes' too) are shown."""
    captures = tmp_path / "captures"
    captures.mkdir()
    shutil.copy(REPO / "tests" / "captures" / "gateway.jsonl", captures / "capture-earlier.jsonl")
    # The first turn.yaml run of the committed capture (its request id changes when it is re-recorded).
    first = next(r["request_id"] for r in map(orjson.loads, (captures / "capture-earlier.jsonl").read_bytes().splitlines()) if r["pipeline"] == "messages")
    with console_gateway(capture=str(captures)) as g, g.http() as client:
        page = client.get("/console/").text
        assert first in page
        key = re.search(rf'href="/console/runs/(capture-earlier\.jsonl@\d+)">{first}', page).group(1)
        run = client.get(f"/console/runs/{key}").text
        assert 'data-pipeline="turn"' in run and "from capture file capture-earlier.jsonl" in run
        assert client.get("/console/runs/..%2F..%2Fetc%2Fpasswd@0").status_code == 404
        assert g.message(client, "req-captured-1").status_code == 200
        assert g.message(client, "req-captured-2", stream=True).status_code == 200
        page = client.get(f"/console/runs/{run_key(client, 'req-captured-2')}").text
        assert "stream items (" in page and "kept only with capture on" not in page
        assert "req-captured-2" in client.get("/console/replay").text
    written = b"".join(p.read_bytes() for p in captures.glob("capture-2*.jsonl"))
    record = orjson.loads(written.splitlines()[-2])
    assert record["access"]["request_id"] == "req-captured-1" and record["access"]["model"] == "test/big"


def test_inbound_keys_guard_the_console() -> None:
    """A login form takes a key; the session cookie holds no key; every page needs it."""
    key = "console-inbound-key-123456"
    upstream = "sk-or-upstream-secret-7890"
    with console_gateway({"OPENROUTER_API_KEY": upstream}, api_keys=[key]) as g:
        anon = httpx.Client(base_url=g.url, timeout=30)
        r = anon.get("/console/")
        assert r.status_code == 303 and r.headers["location"] == "/console/login"
        assert anon.get("/console/events").status_code == 401
        assert anon.get("/console/runs/1").status_code == 303
        assert anon.post("/console/login", data={"key": "wrong-key-000000"}).status_code == 401
        r = anon.post("/console/login", data={"key": key})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "path=/console" in cookie.lower()
        assert key not in cookie
        with httpx.Client(base_url=g.url, timeout=30, headers={"x-api-key": key}) as client:
            assert g.message(client, "req-auth-1").status_code == 200
        assert anon.get("/console/").status_code == 200
        run = anon.get(f"/console/runs/{run_key(anon, 'req-auth-1')}").text
        assert key not in run and upstream not in run and 'data-pipeline="messages"' in run
        with httpx.Client(base_url=g.url, timeout=30, headers={"x-api-key": "not-the-key-00000"}) as client:
            assert g.message(client, "req-refused-1").status_code == 401
        refused = anon.get(f"/console/runs/{run_key(anon, 'req-refused-1')}")
        assert refused.status_code == 200 and "401 refused" in refused.text
        assert "not-the-key-00000" not in refused.text
        assert anon.post("/console/logout", headers={"origin": g.url}).status_code == 303
        anon.cookies.clear()
        assert anon.get("/console/").status_code == 303


def test_the_pipelines_page_shows_reloads_and_located_errors(tmp_path: Path) -> None:
    """A broken edit is refused by the reload and shown with file:line:col; fixing it applies."""
    pipelines = tmp_path / "pipelines"
    shutil.copytree(PIPELINES, pipelines)
    env = {"OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1", "OPENROUTER_MODELS_FETCH": "false"}
    engine = Engine.load([pipelines], env=env)
    app = create_app(engine, console=True, reload_from=[str(pipelines)], reload_interval=0.1)
    with serve_asgi(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        broken = pipelines / "broken.yaml"
        broken.write_text("name: broken\nsteps:\n  one:\n    uses: no.such_step\noutput: ${{ steps.one }}\n")
        assert wait_until(lambda: len(engine.console.reloads) == 1)
        page = client.get("/console/pipelines").text
        assert 'id="check-result">errors' in page
        assert f"{broken}:4:11: step &#39;one&#39;: unknown step &#39;no.such_step&#39;" in page
        assert "refused" in page
        broken.unlink()
        assert wait_until(lambda: len(engine.console.reloads) == 2)
        page = client.get("/console/pipelines").text
        assert 'id="check-result">OK' in page and "applied" in page


def test_a_run_in_flight_is_listed_as_running(gw: ConsoleGateway) -> None:
    """A slow stream is listed from its start, its page shows the steps done so far, and the
    same row turns into the finished run when it ends."""
    import threading

    gw.fake.script("slow_drip;delay_ms=150;chunks=30")
    with gw.http() as client:
        done = threading.Event()
        worker = threading.Thread(target=lambda: (gw.message(client, "req-slow-1", stream=True), done.set()))
        worker.start()
        try:
            key = run_key(client, "req-slow-1", running=True)
            page = client.get(f"/console/runs/{key}").text
            if not done.is_set():
                assert 'id="running">running<' in page
                assert 'data-state="ran"' in page  # the steps before the upstream call are done
        finally:
            worker.join(40)
        assert done.is_set()
        assert run_key(client, "req-slow-1") == key
        page = client.get(f"/console/runs/{key}").text
        assert 'id="running"' not in page and 'id="node-turn.call" data-step="call" data-state="ran"' in page


def test_a_stream_cut_after_it_started_is_shown_as_such(gw: ConsoleGateway) -> None:
    """The upstream cuts a stream mid-way: the 200 was already sent, the run's outcome says
    what happened, and the page shows the events the client got."""
    gw.fake.script("cut_mid_stream;after=3")
    with gw.http() as client:
        assert gw.message(client, "req-cut-1", stream=True).status_code == 200
        key = run_key(client, "req-cut-1")
        page = client.get(f"/console/runs/{key}").text
    assert 'id="failure"' in page
    assert "upstream_cut" in page
    assert 'id="events"' in page and "message_start" in page
