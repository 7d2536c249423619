"""Capture and offline replay: captured traffic as regression tests."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import anthropic
import anyio
import httpx
import pytest

from engine.capture import CaptureWriter
from engine.executor import Engine
from engine.capture_reader import Captured, CaptureProblem, read_captures
from engine.replay import compare_outputs, replay_one
from tests.pipelines.conftest import PIPELINES, REPO, start_gateway

CAPTURES = REPO / "tests" / "captures" / "gateway.jsonl"


def capture_env() -> dict[str, str]:
    """The configuration the committed captures were made with."""
    first = json.loads(CAPTURES.open().readline())
    base_url = next(c["input"]["providers"]["providers"]["openrouter"]["base_url"] for c in first["calls"] if "providers" in c["input"])
    return {"BIG_MODEL": "test/big", "SMALL_MODEL": "test/small", "PING_INTERVAL": "30", "OPENROUTER_BASE_URL": base_url}


def upstream_calls(record: dict) -> list[dict]:
    """The recorded calls of the upstream step (the model listings and prices are recorded too)."""
    return [c for c in record["calls"] if c["step"] == "call"]


def replay_all(engine: Engine, path: Path) -> list:
    async def go() -> list:
        results = []
        for item in read_captures([path]):
            if isinstance(item, Captured):
                results.append(await replay_one(engine, item))
        await engine.aclose()
        return results

    return anyio.run(go)


def test_committed_captures_replay_unchanged() -> None:
    """Every committed capture replays through the current pipelines with no difference."""
    results = replay_all(Engine.load([PIPELINES], env=capture_env()), CAPTURES)
    assert len(results) >= 8
    for r in results:
        assert r.same, f"{r.captured.label}: {r.changes}"


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(os.environ.get("ENGINE_TEST_NETNS") == "1" or not _can_unshare(), reason="unshare -rn is not available (or already inside)")
def test_shipped_capture_replays_in_a_network_namespace() -> None:
    """`engine replay` of the shipped capture inside `unshare -rn` (only loopback, and nothing
    listening on it: no fake upstream runs): every run matches, because every step that reads
    the outside world or state that changes while serving (the upstream call, the model
    listings and prices, the token-count calibration) is answered from the capture."""
    cmd = f"ip link set lo up && exec {sys.executable} -m engine replay {CAPTURES} --pipelines {PIPELINES}"
    env = {**os.environ, **capture_env(), "ENGINE_TEST_NETNS": "1"}
    done = subprocess.run(["unshare", "-rn", "sh", "-c", cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("8 runs, 8 matched, 0 changed, 0 skipped (offline)"), done.stdout
    assert "models_unavailable" not in done.stdout + done.stderr  # no listing was fetched


def test_model_map_change_shows_in_replay() -> None:
    """Replaying with another model map reports exactly the changed upstream model, offline."""
    env = {**capture_env(), "BIG_MODEL": "vendor/other-model"}
    results = replay_all(Engine.load([PIPELINES], env=env), CAPTURES)
    changed = [line for r in results for line in r.upstream]
    assert "turn.call payload.model: 'test/big' -> 'vendor/other-model'" in changed
    assert not any("small" in line for line in changed)


def test_output_change_is_diffed_by_event(tmp_path: Path) -> None:
    """A captured stream that differs from today's output is reported event by event."""
    records = [json.loads(line) for line in CAPTURES.open()]
    stream_run = next(r for r in records if "stream" in r["output"] and r["outcome"] == "ok")
    chunks = stream_run["output"]["stream"]
    i = next(i for i, (_, text) in enumerate(chunks) if '"text_delta"' in text)
    chunks[i][1] = chunks[i][1].replace('"text":"', '"text":"CHANGED ', 1)
    path = tmp_path / "edited.jsonl"
    path.write_text(json.dumps(stream_run) + "\n")
    [result] = replay_all(Engine.load([PIPELINES], env=capture_env()), path)
    assert result.upstream == [] and len(result.client) == 1
    assert result.client[0].startswith(f"event {i} (content_block_delta) delta.text: 'CHANGED ")


def engine_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_replay_command_exit_codes(tmp_path: Path) -> None:
    """`engine replay` exits 0 when all match, 1 when any differ, 2 when a record is unreadable."""
    env = capture_env()
    same = engine_cli("replay", str(CAPTURES), env=env)
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.startswith("8 runs, 8 matched, 0 changed, 0 skipped")
    changed = engine_cli("replay", str(CAPTURES), "--quiet", env={**env, "BIG_MODEL": "vendor/x"})
    assert changed.returncode == 1 and "upstream  turn.call payload.model: 'test/big' -> 'vendor/x'" in changed.stdout
    broken = tmp_path / "broken.jsonl"
    data = CAPTURES.read_bytes()
    first_line = data.split(b"\n", 1)[0] + b"\n"
    broken.write_bytes(first_line + data[len(first_line) : len(first_line) + 300])
    cut = engine_cli("replay", str(broken), env=env)
    assert cut.returncode == 2
    assert f"{broken}: record 2 (byte {len(first_line)}): truncated: the file ends inside it" in cut.stderr
    assert cut.stdout.startswith("1 run, 1 matched, 0 changed, 0 skipped, 1 unreadable record")
    assert "Traceback" not in cut.stderr


def test_replay_of_a_pipeline_edit_shows_only_what_is_sent_and_received(tmp_path: Path) -> None:
    """Issue 14.6: after adding one model alias to a copy of the pipelines, `engine replay` prints
    the summary first, then the changed runs in request order, each showing the upstream model
    it would now send and what the client would now receive; never a step's internals (the
    model profiles it was handed, its settings, capture tags)."""
    pipelines = tmp_path / "pipelines"
    shutil.copytree(PIPELINES, pipelines)
    turn = pipelines / "turn.yaml"
    original = turn.read_text()
    edited = original.replace(
        "      small_model: ${{ vars.small_model }}\n",
        "      small_model: ${{ vars.small_model }}\n      aliases:\n        claude-opus-5-5: test/opus-alias\n",
        1,
    )
    assert edited != original
    turn.write_text(edited)
    done = engine_cli("replay", str(CAPTURES), "--pipelines", str(pipelines), env=capture_env())
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # count_tokens has its own model map: its run matches (the calibration it read is recorded)
    assert lines[0] == "8 runs, 4 matched, 4 changed, 0 skipped (offline)"
    records = [json.loads(line) for line in CAPTURES.open()]
    in_order = [r["request_id"] for r in sorted(records, key=lambda r: r["started_at"])]
    assert [next(rid for rid in in_order if rid in line) for line in lines[1:] if line.startswith("  ") and "[" in line] == in_order
    plain = next(r for r in records if "body" in r["output"] and r["outcome"] == "ok" and len(upstream_calls(r)) == 1)
    at = next(i for i, line in enumerate(lines) if plain["request_id"] in line)
    assert lines[at].endswith(": 1 difference")
    assert lines[at + 1].strip() == "upstream  turn.call payload.model: 'test/big' -> 'test/opus-alias'"
    retried = next(r for r in records if len(upstream_calls(r)) == 2)
    at = next(i for i, line in enumerate(lines) if retried["request_id"] in line)
    assert lines[at + 1].strip() == "upstream  turn.call payload.model: 'test/big' -> 'test/opus-alias' (x2)"
    upstream = [line.strip() for line in lines if line.strip().startswith("upstream")]
    assert upstream and all("turn.call payload.model: 'test/big' -> 'test/opus-alias'" in line for line in upstream)
    for internal in ("profiles", "$", "schema_drop", "frozenset", "base_url", "pool_size", "request.", "input_tokens:"):
        assert not any(internal in line for line in upstream), internal
    assert "$" not in done.stdout.replace("(x2)", "")


def test_client_side_compares_status_headers_and_body() -> None:
    """What the client receives: the status, each header the replayed reply sets (transport
    headers and the HTTP layer's request id aside; content-type by media type) and the body."""
    captured = {
        "status": 200,
        "headers": {"content-type": "application/json; charset=utf-8", "x-should-retry": "true", "date": "Mon", "x-request-id": "a", "x-upstream-model": "m"},
        "body": {"content": [{"text": "hi"}]},
    }
    now = {"status": 529, "headers": {"content-type": "application/json", "x-should-retry": "false", "retry-after": "5"}, "body": {"content": [{"text": "ho"}]}}
    assert compare_outputs(captured, now) == [
        "status: 200 -> 529",
        "header x-should-retry: 'true' -> 'false'",
        "header retry-after: (absent) -> '5'",
        "body.content.0.text: 'hi' -> 'ho'",
    ]


def test_graph_trace_of_a_retried_run() -> None:
    """`engine graph --trace` shows which steps ran, were skipped or retried, and how long they took."""
    records = [json.loads(line) for line in CAPTURES.open()]
    retried = next(r for r in records if any(t["attempts"] > 1 for t in r["trace"]))
    r = engine_cli("graph", "turn", "--trace", str(CAPTURES), "--run", retried["request_id"], env=capture_env())
    assert r.returncode == 0, r.stderr
    call_line = next(line for line in r.stdout.splitlines() if line.strip().startswith("call ="))
    assert "-- ok" in call_line and "2 attempts" in call_line
    assert "-- ok" in next(line for line in r.stdout.splitlines() if line.strip().startswith("answer ="))
    mermaid = engine_cli("graph", "turn", "--format", "mermaid", "--trace", str(CAPTURES), "--run", retried["request_id"], env=capture_env())
    assert "class s_call retried" in mermaid.stdout and "class s_answer ran" in mermaid.stdout


CANARIES = {
    "client": "sk-ant-CANARY1-7f3e9a",
    "bearer": "CANARY2-a81c0d",
    "cookie": "CANARY3-55b2e1",
    "upstream": "sk-or-CANARY4-90d7c4",
}


def test_capture_is_private_and_holds_no_secret(tmp_path: Path) -> None:
    """Capture files are 0600 in a 0700 directory; no key, token or cookie appears in any record."""
    capture_dir = tmp_path / "captures"
    for gw in start_gateway({"OPENROUTER_API_KEY": CANARIES["upstream"]}):
        gw.engine.capture = CaptureWriter(capture_dir)
        client = anthropic.Anthropic(base_url=gw.url, api_key=CANARIES["client"], max_retries=0, default_headers={"cookie": f"s={CANARIES['cookie']}"})
        client.messages.create(model="claude-opus-5-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
        with client.messages.stream(model="claude-opus-5-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]) as s:
            s.get_final_message()
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {CANARIES['bearer']}"}) as http:
            http.post("/v1/messages", json={"model": "m", "messages": []})
        gw.fake.default_mode = "401"
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.create(model="claude-opus-5-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
        gw.fake.default_mode = "ok"
        assert gw.fake.requests[0].headers["authorization"] == f"Bearer {CANARIES['upstream']}"
        gw.engine.capture.close()
    files = list(capture_dir.glob("capture-*.jsonl"))
    assert files and stat.S_IMODE(capture_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    text = "".join(f.read_text() for f in files)
    for canary in CANARIES.values():
        assert canary not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["output"]["status"] for r in records] == [200, 200, 400, 401]
    stream = upstream_calls(records[1])[0]
    assert stream["items"] and all(isinstance(t, float) for t, _ in stream["items"])


@pytest.mark.parametrize("max_bytes", [64 * 1024 * 1024, 16 * 1024], ids=["one-file", "rotating"])
def test_concurrent_runs_make_whole_records(tmp_path: Path, max_bytes: int) -> None:
    """64 concurrent captured requests give 64 complete records with unique request ids, also
    when the files rotate every few records under that load (§6.5, §6.6): no record is split
    across files or lost."""
    for gw in start_gateway({}):
        gw.engine.capture = CaptureWriter(tmp_path / "c", fsync=None, max_bytes=max_bytes, max_files=1000)

        async def one(client: httpx.AsyncClient, i: int) -> int:
            r = await client.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 10, "stream": i % 2 == 0, "messages": [{"role": "user", "content": f"n{i}"}]})
            return r.status_code

        async def go() -> list[int]:
            async with httpx.AsyncClient(base_url=gw.url, headers={"x-api-key": "k"}, timeout=30) as client:
                results: list[int] = []

                async def run(i: int) -> None:
                    results.append(await one(client, i))

                async with anyio.create_task_group() as tg:
                    for i in range(64):
                        tg.start_soon(run, i)
                return results

        assert anyio.run(go) == [200] * 64
        # A stream's record is finished just after its last byte: give the last ones a moment.
        assert gw.fake.wait_for(lambda: gw.engine.capture.written == 64)
        gw.engine.capture.close()
    items = list(read_captures([tmp_path / "c"]))
    assert not [i for i in items if isinstance(i, CaptureProblem)]
    assert len(items) == 64 and len({i.record["request_id"] for i in items}) == 64
    files = list((tmp_path / "c").glob("capture-*.jsonl"))
    assert len(files) > 3 if max_bytes < 1024 * 1024 else len(files) == 1
    for f in files:  # every file holds whole lines only
        assert f.read_bytes().endswith(b"\n")


def test_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    """With `max_files`, the oldest files go as new ones start; the survivors hold whole records."""
    writer = CaptureWriter(tmp_path / "c", fsync=None, max_bytes=2000, max_files=3)
    for i in range(40):
        writer.submit({"request_id": f"req_{i:03d}", "pad": "x" * 500})
    writer.close()
    files = sorted((tmp_path / "c").glob("capture-*.jsonl"))
    assert len(files) == 3
    ids = [json.loads(line)["request_id"] for f in files for line in f.read_text().splitlines()]
    assert ids == sorted(ids) and ids[-1] == "req_039" and len(ids) < 40


def test_capture_failure_never_fails_a_request(tmp_path: Path) -> None:
    """When the capture directory becomes unwritable, requests still succeed and failures are counted."""
    capture_dir = tmp_path / "c"
    for gw in start_gateway({}):
        gw.engine.capture = writer = CaptureWriter(capture_dir, fsync=None)
        shutil.rmtree(capture_dir)
        capture_dir.write_text("not a directory")  # every open() now fails
        client = gw.client()
        for _ in range(3):
            assert client.messages.create(model="claude-opus-5-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]).content
        writer.close()
        assert writer.failures == 3 and writer.written == 0


def test_graph_draws_the_edges_the_code_uses() -> None:
    """Issue 15.5: `engine graph` shows every value a step uses: the header step reads the
    turn's facts (the model that answered), the converters read the call's, and the access
    line's fields are drawn from the steps that tell them (a recorded step's vars too)."""
    messages = engine_cli("graph", "messages", env=capture_env())
    assert messages.returncode == 0, messages.stderr
    lines = messages.stdout.splitlines()
    assert "  tagged = openrouter.upstream_header  <- reply, turn" in lines
    assert "  access <- turn (route, model, fallbacks, fallback, attempts, upstream_status, cooled); sequence (usage); input (session); reply (outcome)" in lines
    turn = engine_cli("graph", "turn", env=capture_env()).stdout.splitlines()
    assert any(line.startswith("  answer = convert.answer  <- call,") and "calibration" in line for line in turn)
    assert "  access <- route (route); call (model, fallbacks, fallback, attempts, upstream_status, cooled); answer (usage)" in turn
    assert any(line.startswith("  profiles = openrouter.profiles") and "[record;" in line for line in turn)
