"""Re-make the committed captures: `uv run python -m tests.captures.record`.

Starts the fake OpenRouter and the gateway (the repo's pipelines, capture on) on loopback and
sends a fixed set of requests: a plain message, a stream, a tool call, a retried 429, a bad
request, a mid-stream cut and a real Claude Code request. The test suite replays the result
(`tests/captures/gateway.jsonl`) against the current pipelines, so any change in behaviour
shows up as a replay difference.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import anthropic
import httpx

from engine import logs
from engine.capture import CaptureWriter
from engine.executor import Engine
from engine.http import create_app
from tests.support.fake_openrouter import FakeOpenRouter
from tests.support.servers import serve_asgi
from tests.fixtures import CLAUDE_CODE as FIXTURES

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENV = {"BIG_MODEL": "test/big", "SMALL_MODEL": "test/small", "PING_INTERVAL": "30"}


def requests(url: str, fake: FakeOpenRouter) -> None:
    client = anthropic.Anthropic(base_url=url, api_key="sk-ant-capture-client", max_retries=0)
    ask = [{"role": "user", "content": "Hello capture"}]
    client.messages.create(model="claude-opus-5-5", max_tokens=64, messages=ask)
    with client.messages.stream(model="claude-haiku-5-5", max_tokens=64, messages=ask) as s:
        s.get_final_message()
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    with client.messages.stream(model="claude-sonnet-5-5", max_tokens=64, tools=tools, messages=[{"role": "user", "content": '[[tool:get_weather {"location": "Paris"}]]'}]) as s:
        s.get_final_message()
    fake.script("429;retry_after=1", "ok")
    client.messages.create(model="claude-opus-5-5", max_tokens=64, messages=ask)
    with httpx.Client(base_url=url, headers={"x-api-key": "sk-ant-capture-client"}) as http:
        http.post("/v1/messages", json={"model": "claude-opus-5-5", "messages": ask})
        fake.script("cut_mid_stream;after=3")
        http.post("/v1/messages", json={"model": "claude-opus-5-5", "max_tokens": 64, "stream": True, "messages": ask})
        body = (FIXTURES / "first_turn.json").read_bytes()
        http.post("/v1/messages?beta=true", content=body, headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
        http.post("/v1/messages/count_tokens", content=(FIXTURES / "count_tokens.json").read_bytes(), headers={"content-type": "application/json"})


def main() -> None:
    logs.configure("console", "warning")
    out = HERE / "gateway.jsonl"
    with tempfile.TemporaryDirectory() as tmp, FakeOpenRouter() as fake:
        engine = Engine.load([REPO / "pipelines"], env={**ENV, "OPENROUTER_BASE_URL": fake.base_url})
        engine.capture = CaptureWriter(tmp, fsync=None)
        with serve_asgi(create_app(engine)) as url:
            requests(url, fake)
        engine.capture.close()
        files = sorted(Path(tmp).glob("capture-*.jsonl"))
        with out.open("wb") as f:
            for p in files:
                f.write(p.read_bytes())
    count = sum(1 for _ in out.open())
    calls = json.loads(out.open().readline())["calls"]
    base = next(c["input"]["providers"]["providers"]["openrouter"]["base_url"] for c in calls if "providers" in c["input"])
    print(f"wrote {count} runs to {out} (upstream was {base})")
    shutil.rmtree(Path(tmp), ignore_errors=True)


if __name__ == "__main__":
    main()
