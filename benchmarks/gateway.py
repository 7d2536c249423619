"""The gateway benchmark: latency, throughput, stream timing and server CPU, with a floor.

    uv run python -m benchmarks.gateway [--quick] [--rounds N]

Starts a fast fake upstream (benchmarks/fast_upstream.py) and `engine serve` on loopback as
separate processes, the gateway pinned to core 0 and the upstream and this load client to
core 1, and drives them with a raw asyncio HTTP/1.1 client (keep-alive, no library parsing
cost). Every figure is printed next to the same measurement sent straight to the upstream
(the floor), and server CPU time comes from /proc/PID/stat. The gateway logs as in
production (info, one JSON access line per request) into a temporary file. Last, it opens
1,000 streams whose upstream falls silent after the first word and reads the gateway's RSS.
Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks.fast_upstream import IDLE_MAX_TOKENS

REPO = Path(__file__).resolve().parents[1]
IDLE_STREAMS = 1000
FIXTURE = REPO / "tests" / "fixtures" / "claude-code" / "first_turn.json"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kb(pid: int, key: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Timing:
    total: float
    first_event: float | None = None
    first_text: float | None = None
    chunks: int = 0


class Client:
    """One keep-alive HTTP/1.1 connection that measures what it reads."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, body: bytes, headers: bytes = b"") -> Timing:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        t0 = time.perf_counter()
        self.writer.write(b"POST %s HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nx-api-key: bench\r\n%scontent-length: %d\r\n\r\n%s" % (path.encode(), headers, len(body), body))
        reader = self.reader
        assert reader is not None
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n")[0].decode())
        timing = Timing(0.0)
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await reader.readexactly(2)
                    break
                data = await reader.readexactly(size + 2)
                now = time.perf_counter() - t0
                timing.chunks += data.count(b"\n\n")
                if timing.first_event is None and b"event:" in data:
                    timing.first_event = now
                if timing.first_text is None and b"text_delta" in data:
                    timing.first_text = now
        else:
            i = lower.index(b"content-length:")
            length = int(lower[i + 15 : lower.index(b"\r\n", i)])
            await reader.readexactly(length)
        timing.total = time.perf_counter() - t0
        return timing


async def drive(port: int, path: str, body: bytes, concurrency: int, total: int) -> tuple[list[Timing], float]:
    timings: list[Timing] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        client = Client(port)
        while remaining > 0:
            remaining -= 1
            timings.append(await client.request(path, body))
        if client.writer is not None:
            client.writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return timings, time.perf_counter() - t0


async def idle_streams(port: int, count: int) -> tuple[list[asyncio.StreamWriter], float]:
    """Open `count` streams whose upstream goes quiet after the first word; keep them open."""
    body = orjson.dumps({"model": "claude-opus-5-5", "max_tokens": IDLE_MAX_TOKENS, "stream": True, "messages": [{"role": "user", "content": "Think"}]})
    request = b"POST /v1/messages HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nx-api-key: bench\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    opening = asyncio.Semaphore(64)  # connection set-up in waves, not one SYN flood

    async def one() -> asyncio.StreamWriter:
        async with opening:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            seen = b""
            while b"text_delta" not in seen:
                data = await reader.read(65536)
                if not data:
                    raise RuntimeError("idle stream ended early")
                seen = seen[-64:] + data
            return writer

    t0 = time.perf_counter()
    writers = await asyncio.gather(*(one() for _ in range(count)))
    return list(writers), time.perf_counter() - t0


def large_body(megabytes: float, tools: int = 300) -> bytes:
    """A long agent session: `tools` tool definitions and about `megabytes` of history
    (text, tool_use and tool_result turns), as Claude Code sends near its context limit."""
    text = "lorem ipsum dolor sit amet " * 40  # about 1 KB
    schema = {"type": "object", "properties": {"path": {"type": "string", "description": "a path"}, "count": {"type": "integer"}, "mode": {"type": "string", "enum": ["a", "b", "c"]}}, "required": ["path"]}
    defs = [{"name": f"tool_{i}", "description": f"Tool number {i}: does a thing with files. " * 3, "input_schema": schema} for i in range(tools)]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Start."}]
    size, i = 0, 0
    while size < megabytes * 1024 * 1024:
        tid = f"toolu_{i:06d}"
        messages.append({"role": "assistant", "content": [{"type": "text", "text": text}, {"type": "tool_use", "id": tid, "name": f"tool_{i % tools}", "input": {"path": f"/src/file_{i}.py", "count": i}}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid, "content": text * 2}]})
        size += len(text) * 3 + 200
        i += 1
    messages.append({"role": "user", "content": "Continue."})
    return orjson.dumps({"model": "claude-opus-5-5", "max_tokens": 256, "tools": defs, "messages": messages})


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Compared:
    """One load, in rounds, each sent straight to the upstream (the floor) and then through
    the gateway: every timing, the wall time, and per-round medians (noise on a shared
    machine moves single rounds by several per cent)."""

    floor: list[Timing]
    floor_secs: float
    timings: list[Timing]
    secs: float
    cpu: float  # median over rounds of server CPU seconds per request
    added_p50: float  # median over rounds of (gateway p50 - floor p50)


async def compare(pid: int, port: int, up_port: int, body: bytes, direct: bytes, c: int, n: int, rounds: int, path: str = "/v1/messages") -> Compared:
    out = Compared([], 0.0, [], 0.0, 0.0, 0.0)
    cpus: list[float] = []
    added: list[float] = []
    for _ in range(rounds):
        floor, floor_secs = await drive(up_port, "/v1/chat/completions", direct, c, n)
        cpu0 = cpu_seconds(pid)
        timings, secs = await drive(port, path, body, c, n)
        cpus.append((cpu_seconds(pid) - cpu0) / n)
        added.append(pct([t.total for t in timings], 50) - pct([t.total for t in floor], 50))
        out.floor += floor
        out.floor_secs += floor_secs
        out.timings += timings
        out.secs += secs
    out.cpu, out.added_p50 = statistics.median(cpus), statistics.median(added)
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def ms(x: float | None) -> str:
    return "   -  " if x is None else f"{x * 1000:6.2f}"


def start(cmd: list[str], core: int, env: dict[str, str], log: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log, preexec_fn=lambda: os.sched_setaffinity(0, {core}))


async def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


async def main(quick: bool, rounds: int) -> None:
    scale = 0.2 if quick else 1.0
    cores = sorted(os.sched_getaffinity(0))
    server_core, other_core = cores[0], cores[-1]
    os.sched_setaffinity(0, {other_core})
    up_port, gw_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    upstream = start([sys.executable, "-m", "benchmarks.fast_upstream", str(up_port)], other_core, env)
    gw_env = {**env, "OPENROUTER_BASE_URL": f"http://127.0.0.1:{up_port}/v1", "ENGINE_LOG_FORMAT": "json", "BIG_MODEL": "bench/model", "OPENROUTER_MODELS_FETCH": "false",
              "UPSTREAM_CONCURRENCY": str(IDLE_STREAMS + 100)}  # fmt: skip
    # Logging as in production (info: one JSON access line per request), into a file.
    log_file = tempfile.NamedTemporaryFile(prefix="gateway-bench-", suffix=".log", delete=False)  # noqa: SIM115
    gateway = start([sys.executable, "-m", "engine", "serve", "--port", str(gw_port)], server_core, gw_env, log_file)
    try:
        await wait_port(up_port)
        await wait_port(gw_port)
        small = orjson.dumps({"model": "claude-opus-5-5", "max_tokens": 256, "messages": [{"role": "user", "content": "Say hello"}]})
        stream = orjson.dumps({"model": "claude-opus-5-5", "max_tokens": 1200, "stream": True, "messages": [{"role": "user", "content": "Say hello"}]})
        direct_small = orjson.dumps({"model": "bench/model", "max_tokens": 256, "messages": [{"role": "user", "content": "Say hello"}]})
        direct_stream = orjson.dumps({"model": "bench/model", "max_tokens": 1200, "stream": True, "messages": [{"role": "user", "content": "Say hello"}]})
        await drive(gw_port, "/v1/messages", small, 8, 400)  # warm-up (imports, pools, caches)
        await drive(gw_port, "/v1/messages", stream, 4, 40)
        print(f"gateway pid {gateway.pid} on core {server_core}, logging at info to {log_file.name}; upstream and client on core {other_core}; python {sys.version.split()[0]}")
        print(f"each line: {rounds} round(s), alternating straight-to-upstream (the floor) and through the gateway; CPU and added latency are medians over rounds")
        print("\nnon-streaming (JSON)   p50 ms  p99 ms    req/s  server CPU ms/req  |  floor p50 ms  floor req/s  |  p50 x floor  req/s / floor")
        for c, n in ((1, int(1000 * scale)), (16, int(4000 * scale)), (64, int(6000 * scale))):
            r = await compare(gateway.pid, gw_port, up_port, small, direct_small, c, n, rounds)
            lat = [t.total for t in r.timings]
            g50, f50 = pct(lat, 50), pct([t.total for t in r.floor], 50)
            rate, floor_rate = n * rounds / r.secs, n * rounds / r.floor_secs
            print(f"  c={c:<3d}               {ms(g50)}  {ms(pct(lat, 99))}  {rate:7.0f}  {r.cpu * 1000:10.3f}         |  {ms(f50)}       {floor_rate:7.0f}    |  {g50 / f50:8.1f}     {rate / floor_rate:8.3f}")
            if c == 1:
                print(f"    added p50 latency at c=1: {r.added_p50 * 1000:.3f} ms")
        print("\nstreams (200 chunks)   first event  first text  total ms  chunks/s  server CPU ms/stream      |  floor total ms  |  total x floor")
        cc = FIXTURE.read_bytes()
        loads = [(f"c={c}", stream, direct_stream, "/v1/messages", c, n) for c, n in ((1, int(200 * scale)), (64, int(640 * scale)))]
        loads.append((f"Claude Code first_turn.json ({len(cc) // 1024} KB), c=16", cc, cc, "/v1/messages?beta=true", 16, int(400 * scale)))
        for label, body, direct, path, c, n in loads:
            r = await compare(gateway.pid, gw_port, up_port, body, direct, c, n, rounds, path)
            timings = r.timings
            chunks = sum(t.chunks for t in timings)
            total, floor_total = pct([t.total for t in timings], 50), pct([t.total for t in r.floor], 50)
            if label.startswith("Claude"):
                print(f"  {label}: first event {ms(pct([t.first_event or 0 for t in timings], 50)).strip()} ms, total p50 {ms(total).strip()} ms, p99 {ms(pct([t.total for t in timings], 99)).strip()} ms, "
                      f"{n * rounds / r.secs:.0f} req/s, server CPU {r.cpu * 1000:.3f} ms/req  |  floor total {ms(floor_total).strip()} ms  |  x{total / floor_total:.1f}")  # fmt: skip
                continue
            print(
                f"  {label:<5s}                {ms(pct([t.first_event or 0 for t in timings], 50))}      {ms(pct([t.first_text or 0 for t in timings], 50))}    "
                f"{ms(total)}  {chunks / r.secs:8.0f}   {r.cpu * 1000:8.3f} ({r.cpu * 1e6 / 200:5.1f} us/chunk)  |  {ms(floor_total)}          |  {total / floor_total:8.1f}"
            )
        print(f"\ngateway peak RSS {rss_kb(gateway.pid) / 1024:.1f} MB")
        n = IDLE_STREAMS if not quick else IDLE_STREAMS // 5
        before, fds_before = rss_kb(gateway.pid, "VmRSS"), open_fds(gateway.pid)
        writers, secs = await idle_streams(gw_port, n)
        await asyncio.sleep(1.0)
        during, fds_during = rss_kb(gateway.pid, "VmRSS"), open_fds(gateway.pid)
        for w in writers:
            w.close()
        print(
            f"{n} concurrent idle streams (first word sent, then silence; opened in {secs:.1f} s): RSS {during / 1024:.1f} MB "
            f"({before / 1024:.1f} MB before, {(during - before) / n:.1f} KB per stream), descriptors {fds_before} -> {fds_during}"
        )
        print("\nlarge requests (300 tools + history, JSON, c=1)   body MB   server CPU ms/req   ms per MB")
        for mb in (0.5, 1, 2, 4):
            big = large_body(mb)
            await drive(gw_port, "/v1/messages", big, 1, 2)  # warm-up
            n = 5 if quick else 20
            cpu0 = cpu_seconds(gateway.pid)
            await drive(gw_port, "/v1/messages", big, 1, n)
            cpu = (cpu_seconds(gateway.pid) - cpu0) / n
            print(f"                                                  {len(big) / 1e6:6.2f}   {cpu * 1000:10.2f}          {cpu * 1000 / (len(big) / 1e6):6.2f}")
    finally:
        for proc in (gateway, upstream):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log_file.close()
        lines = Path(log_file.name).read_text(errors="replace").count("\n")
        os.unlink(log_file.name)
        print(f"(the gateway wrote {lines} log lines)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the requests, one round (a rough look)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per load; figures are medians over them (default 3)")
    args = parser.parse_args()
    asyncio.run(main(args.quick, 1 if args.quick else max(1, args.rounds)))
