"""Replay never runs a server-side tool again: each execution is a recorded step (tool.run).

An /agent run that writes a file and runs Bash is captured through the real gateway; then the
workspace is deleted and the fake upstream stopped, and `engine replay` (the real command, in
a subprocess) answers every upstream turn and every tool execution from the capture: the run
matches, and nothing is written. A capture whose recorded tool input differs from what the
current pipelines ask for is reported as a difference of `tool.run`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.capture import CaptureWriter
from tests.pipelines.conftest import REPO
from tests.steps.tools.agent_gateway import outcome, results, start_agent
from tests.support.fake_openrouter import tool_mode


WRITE_THEN_BASH = (
    tool_mode("Write", {"file_path": "note.txt", "content": "alpha\n"}),
    tool_mode("Bash", {"command": "cat note.txt"}),
    "ok",
)


def captured_agent_run(base: Path, stream: bool, script: tuple[str, ...] = WRITE_THEN_BASH) -> tuple[Path, dict[str, str], Path]:
    """(capture file, the environment it was made with, the workspace) of one /agent run."""
    capture_dir = base / "captures"
    for agent in start_agent(base):
        agent.gw.engine.capture = CaptureWriter(capture_dir, fsync=None)
        agent.fake.script(*script)
        msg = agent.ask("Go.", stream=stream)
        if script is WRITE_THEN_BASH:
            ran = results(msg)
            assert [r[0] for r in ran] == ["Write", "Bash"]
            text, is_error = outcome(ran[1][2])
            assert not is_error and text.strip() == "alpha", text  # Bash really ran, in the sandbox
            assert (agent.ws / "note.txt").read_text() == "alpha\n"
        env = {"OPENROUTER_BASE_URL": agent.fake.base_url, "BIG_MODEL": "test/big", "SMALL_MODEL": "test/small",
               "PING_INTERVAL": "0.2", "AGENT_WORKSPACE": str(agent.ws), "AGENT_MAX_ROUNDS": "5"}
        writer = agent.gw.engine.capture
        deadline = time.monotonic() + 60  # a stream's record is written once the server has sent its end
        while writer.written < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        writer.close()
        ws = agent.ws
    [path] = list(capture_dir.glob("capture-*.jsonl"))
    return path, env, ws


def replay(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "ENGINE_SERVER_TOOLS": "", **env}  # /agent's switch need not be on to replay it
    return subprocess.run([sys.executable, "-m", "engine", "replay", str(path)], cwd=REPO, env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_replay_answers_tool_executions_from_the_capture(tmp_path: Path, stream: bool) -> None:
    path, env, ws = captured_agent_run(tmp_path, stream)
    [record] = [json.loads(line) for line in path.read_text().splitlines()]
    tools = [c for c in record["calls"] if (c["pipeline"], c["step"]) == ("tool", "run")]
    assert [c["input"]["call"]["name"] for c in tools] == ["Write", "Bash"]
    assert tools[1]["input"]["call"]["input"] == {"command": "cat note.txt"}
    assert tools[1]["output"]["text"].strip() == "alpha" and tools[1]["output"]["is_error"] is False
    assert tools[0]["input"]["request"]["body"] == {"$bytes": ""}  # the conversation is not copied per call

    shutil.rmtree(ws)  # offline too: the fake upstream stopped with the gateway
    done = replay(path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("1 run, 1 matched, 0 changed"), done.stdout
    assert not ws.exists()  # nothing was written: no workspace, no note.txt

    # The capture says the model asked Bash for something else than today's replay asks for.
    tools[1]["input"]["call"]["input"]["command"] = "cat other.txt"
    path.write_text(json.dumps(record) + "\n")
    changed = replay(path, env)
    assert changed.returncode == 1, changed.stdout + changed.stderr
    lines = [line.strip() for line in changed.stdout.splitlines()]
    assert "upstream  tool.run call.input.command: 'cat other.txt' -> 'cat note.txt'" in lines, changed.stdout
    assert not ws.exists()


def test_concurrent_calls_are_matched_by_their_input(tmp_path: Path) -> None:
    """The calls of one turn run concurrently, so they may start in another order in replay:
    each is answered by the recorded execution with the same call, not by position."""
    script = (tool_mode(calls=[("Write", {"file_path": f"w{i}.txt", "content": f"{i}\n"}) for i in range(3)]), "ok")
    path, env, ws = captured_agent_run(tmp_path, False, script)
    record = json.loads(path.read_text())
    tools = [c for c in record["calls"] if c["step"] == "run"]
    assert sorted(c["input"]["call"]["input"]["file_path"] for c in tools) == ["w0.txt", "w1.txt", "w2.txt"]
    others = [c for c in record["calls"] if c["step"] != "run"]
    record["calls"] = others[:1] + tools[::-1] + others[1:]  # recorded in the opposite order
    path.write_text(json.dumps(record) + "\n")
    shutil.rmtree(ws)
    done = replay(path, env)
    assert done.returncode == 0 and done.stdout.startswith("1 run, 1 matched"), done.stdout + done.stderr
    assert not ws.exists()


def test_web_search_is_answered_from_the_capture_too(tmp_path: Path) -> None:
    """Claude Code's web_search on /v1/messages: replay calls no search backend, and a call
    refused by max_uses (decided before anything runs) replays the same without a record."""
    import anyio

    from engine.capture_reader import Captured, read_captures
    from engine.executor import Engine
    from engine.replay import replay_one
    from tests.pipelines.conftest import PIPELINES
    from tests.steps.tools.agent_gateway import SEARCHES

    capture_dir = tmp_path / "captures"
    for agent in start_agent(tmp_path):
        agent.gw.engine.capture = CaptureWriter(capture_dir, fsync=None)
        client = agent.gw.client()
        for max_uses in (8, 0):
            agent.fake.script(tool_mode("web_search", {"query": "pipeline engines"}), "ok")
            tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": max_uses}]
            client.messages.create(model="claude-sonnet-5-5", max_tokens=200, tools=tools, messages=[{"role": "user", "content": "search"}])
        env = {"OPENROUTER_BASE_URL": agent.fake.base_url, "BIG_MODEL": "test/big", "SMALL_MODEL": "test/small",
               "WEB_SEARCH_BACKEND": "tests.steps.tools.agent_gateway:fake_search"}
        writer = agent.gw.engine.capture
        deadline = time.monotonic() + 60
        while writer.written < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        writer.close()
    records = [json.loads(line) for f in capture_dir.glob("capture-*.jsonl") for line in f.read_text().splitlines()]
    steps = sorted([(c["pipeline"], c["step"]) for c in r["calls"]] for r in records)
    turn = [("turn", "profiles"), ("turn", "calibration"), ("turn", "prices"), ("turn", "call")]  # each turn's recorded steps, in the plan's order
    assert steps == [[*turn, ("tool", "run"), *turn], [*turn, *turn]]

    searched = len(SEARCHES)

    async def go() -> list:
        engine = Engine.load([PIPELINES], env=env)
        try:
            return [await replay_one(engine, c) for c in read_captures(list(capture_dir.glob("capture-*.jsonl"))) if isinstance(c, Captured)]
        finally:
            await engine.aclose()

    results = anyio.run(go)
    assert len(results) == 2 and all(r.same for r in results), [r.changes for r in results]
    assert len(SEARCHES) == searched  # the search backend was not called again
