"""The shipped Messages pipeline run in process, without the HTTP server: CPU per run.

    uv run python -m benchmarks.pipeline [--runs N]

`benchmarks.gateway` measures the whole server; this isolates what the engine and the steps
cost (parse, clean, validate, route, convert, the upstream call over aiohttp, convert back),
so a change to them can be judged without the noise of uvicorn, starlette and the sockets of
a load client. The upstream is benchmarks/fast_upstream.py in its own process on loopback;
runs go 32 at a time on one event loop (uvloop, as `engine serve` uses), after a warm-up,
with the garbage collector set up as `engine serve` sets it. Each load is measured with and
without the run record the web console keeps (`RunRecorder` with no capture writer). CPU is
this process's (`time.process_time`), so the upstream's own work is not counted.
Not a test: it prints and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "claude-code" / "first_turn.json"
CONCURRENCY = 32


def loads() -> list[tuple[str, bytes, str]]:
    small = orjson.dumps({"model": "claude-opus-5-5", "max_tokens": 256, "messages": [{"role": "user", "content": "Say hello"}]})
    stream = orjson.dumps({"model": "claude-opus-5-5", "max_tokens": 1200, "stream": True, "messages": [{"role": "user", "content": "Say hello"}]})
    return [
        ("small JSON", small, "/v1/messages"),
        ("200-chunk stream", stream, "/v1/messages"),
        (f"Claude Code first_turn.json ({len(FIXTURE.read_bytes()) // 1024} KB, streamed)", FIXTURE.read_bytes(), "/v1/messages"),
    ]


async def measure(engine: Any, body: bytes, path: str, runs: int, record: bool) -> float:
    """CPU seconds per run of `messages` on `body`, the answer consumed to its end."""
    from engine.capture import RunRecorder
    from engine.types import Request

    headers = {"content-type": "application/json", "x-api-key": "bench", "host": "localhost"}

    async def one() -> None:
        req = Request(method="POST", path=path, headers=headers, query={}, body=body)
        ctx = engine.context("messages")
        if record:
            ctx.recorder = RunRecorder(None, "messages", ctx.request_id, req, stream_items=False)
        try:
            out = await engine.run("messages", req, ctx=ctx)
            if out.stream is not None:  # an engine.types.Reply: its body, or its stream of SSE bytes
                async for _ in out.stream:
                    pass
        finally:
            await ctx.aclose()

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    per_worker = max(1, runs // CONCURRENCY)
    t0 = time.process_time()
    await asyncio.gather(*(worker(per_worker) for _ in range(CONCURRENCY)))
    return (time.process_time() - t0) / (per_worker * CONCURRENCY)


async def main(runs: int, rounds: int) -> None:
    from benchmarks.gateway import free_port, wait_port

    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "benchmarks.fast_upstream", str(port)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        os.environ.update({"OPENROUTER_BASE_URL": f"http://127.0.0.1:{port}/v1", "BIG_MODEL": "bench/model", "OPENROUTER_MODELS_FETCH": "false", "UPSTREAM_CONCURRENCY": "1100"})
        from engine import logs
        from engine.executor import Engine
        from engine.http import tune_gc

        with open(os.devnull, "w") as devnull:  # logging as in production (info), into nowhere
            logs.configure("json", "info", stream=devnull)
            engine = Engine.load([REPO / "pipelines"])
            await wait_port(port)
            print(f"python {sys.version.split()[0]}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start; {CONCURRENCY} runs at a time")
            print(f"{'load':58s} {'CPU us/run':>11s} {'with the console record':>24s}")
            for label, body, path in loads():
                n = runs if "small" in label else max(CONCURRENCY, runs // 4)
                await measure(engine, body, path, n // 4, False)  # warm-up: pools, caches
                tune_gc()
                plain, recorded = [], []
                for _ in range(rounds):  # alternating, so noise lands on both
                    plain.append(await measure(engine, body, path, n, False))
                    recorded.append(await measure(engine, body, path, n, True))
                print(f"{label:58s} {statistics.median(plain) * 1e6:11.1f} {statistics.median(recorded) * 1e6:24.1f}")
            await engine.aclose()
    finally:
        upstream.terminate()
        upstream.wait(timeout=20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4000, help="runs per measurement of the small load (streams: a quarter)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per load; the median is printed")
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.runs, args.rounds))
