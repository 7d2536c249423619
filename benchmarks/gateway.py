"""The gateway benchmark: server CPU and latency, as ratios to a forwarder floor and to ccr.

    uv run python -m benchmarks.gateway [--quick] [--rounds N] [--no-ccr]

Starts a fast fake upstream (benchmarks/fast_upstream.py) and, on loopback as separate
processes, the servers it compares: `engine serve` (the gateway), a conversion-free forwarder
(benchmarks/forwarder.py: starlette + aiohttp, the floor any Python proxy pays), and
claude-code-router when it is installed (`npm install --prefix .ci/.cache/ccr
@musistudio/claude-code-router`; never committed; configured by a config.json written into a
throw-away HOME). The servers are pinned to core 0, the upstream and this load client to core 1;
a raw asyncio HTTP/1.1 client (keep-alive, no library parsing cost) drives them. Every load
runs in rounds, the servers taking turns within a round, and each prints server CPU per
request (from /proc/PID/stat), latency, and the gateway's ratio to each other server measured
in the same round. The gateway logs as in production (info, one JSON access line per request)
into a temporary file. Last, gateway only: 1,000 streams whose upstream falls silent after the
first word (RSS), and large requests (CPU per MB).
Not a test: it prints and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
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
# claude-code-router, installed by hand (never committed): npm install --prefix .ci/.cache/ccr @musistudio/claude-code-router
CCR_CLI = REPO / ".ci" / ".cache" / "ccr" / "node_modules" / "@musistudio" / "claude-code-router" / "dist" / "cli.js"


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


TEXT_CHUNK = b'"delta":{"content":"'  # the upstream's own text chunk, as the forwarder passes it on


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
                if timing.first_event is None and b"data:" in data:
                    timing.first_event = now
                if timing.first_text is None and (b"text_delta" in data or TEXT_CHUNK in data):
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
class Target:
    """A server under load: its name in the report, the process whose CPU is counted, its port."""

    name: str
    pid: int
    port: int


@dataclass
class Measured:
    """One target's share of a load, over every round."""

    timings: list[Timing]
    secs: float
    cpus: list[float]  # server CPU seconds per request, one per round

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)


async def compare(targets: list[Target], body: bytes, c: int, n: int, rounds: int, path: str = "/v1/messages") -> dict[str, Measured]:
    """The same load on every target, in rounds; within a round the targets take turns (the
    order reversed every other round), so a burst of noise on the shared machine lands on all
    of them rather than on one, and ratios are taken within a round."""
    out = {t.name: Measured([], 0.0, []) for t in targets}
    for i in range(rounds):
        for t in targets if i % 2 == 0 else targets[::-1]:
            cpu0 = cpu_seconds(t.pid)
            timings, secs = await drive(t.port, path, body, c, n)
            m = out[t.name]
            m.cpus.append((cpu_seconds(t.pid) - cpu0) / n)
            m.timings += timings
            m.secs += secs
    return out


def cpu_ratio(results: dict[str, Measured], a: str, b: str) -> float:
    """Median over rounds of a's CPU per request divided by b's in the same round."""
    return statistics.median(x / y for x, y in zip(results[a].cpus, results[b].cpus, strict=True) if y > 0)


def ratios(results: dict[str, Measured], p50: dict[str, float]) -> str:
    parts = []
    for other in (name for name in results if name != "gateway"):
        parts.append(f"gateway / {other}: CPU x{cpu_ratio(results, 'gateway', other):.2f}, p50 x{p50['gateway'] / p50[other]:.2f}")
    return "    " + "   |   ".join(parts)


def write_ccr_config(home: Path, port: int, upstream_port: int) -> None:
    """claude-code-router's config.json (its README's format) in a throw-away HOME: one
    provider, the fast upstream, every request routed to it; logging at info like the gateway."""
    config = {
        "HOST": "127.0.0.1", "PORT": port, "LOG": True, "LOG_LEVEL": "info", "NON_INTERACTIVE_MODE": True, "API_TIMEOUT_MS": 600000,
        "Providers": [{"name": "bench", "api_base_url": f"http://127.0.0.1:{upstream_port}/v1/chat/completions", "api_key": "bench", "models": ["bench/model"]}],
        "Router": {"default": "bench,bench/model"},
    }  # fmt: skip
    (home / ".claude-code-router").mkdir(parents=True)
    (home / ".claude-code-router" / "config.json").write_bytes(orjson.dumps(config))


def ccr_command() -> tuple[list[str] | None, str]:
    """How to start claude-code-router, or why it cannot be."""
    cli = Path(os.environ.get("CCR_CLI", str(CCR_CLI)))
    node = shutil.which("node")
    if node is None:
        return None, "node is not on PATH"
    if not cli.is_file():
        return None, f"{cli} is missing (install it: npm install --prefix {CCR_CLI.parents[4]} @musistudio/claude-code-router; or set CCR_CLI)"
    return [node, str(cli), "start"], ""


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


async def main(quick: bool, rounds: int, with_ccr: bool) -> None:
    scale = 0.2 if quick else 1.0
    cores = sorted(os.sched_getaffinity(0))
    server_core, other_core = cores[0], cores[-1]
    os.sched_setaffinity(0, {other_core})
    up_port, gw_port, fw_port, ccr_port = free_port(), free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    upstream = start([sys.executable, "-m", "benchmarks.fast_upstream", str(up_port)], other_core, env)
    gw_env = {**env, "OPENROUTER_BASE_URL": f"http://127.0.0.1:{up_port}/v1", "ENGINE_LOG_FORMAT": "json", "BIG_MODEL": "bench/model", "OPENROUTER_MODELS_FETCH": "false",
              "UPSTREAM_CONCURRENCY": str(IDLE_STREAMS + 100)}  # fmt: skip
    # Logging as in production (info: one JSON access line per request), into a file.
    log_file = tempfile.NamedTemporaryFile(prefix="gateway-bench-", suffix=".log", delete=False)  # noqa: SIM115
    gateway = start([sys.executable, "-m", "engine", "serve", "--port", str(gw_port)], server_core, gw_env, log_file)
    forwarder = start([sys.executable, "-m", "benchmarks.forwarder", str(fw_port), f"http://127.0.0.1:{up_port}/v1/chat/completions"], server_core, env)
    procs = [gateway, forwarder, upstream]
    ccr_home = Path(tempfile.mkdtemp(prefix="gateway-bench-ccr-"))
    ccr_cmd, why_not = ccr_command() if with_ccr else (None, "left out (--no-ccr)")
    ccr: subprocess.Popen[bytes] | None = None
    try:
        await wait_port(up_port)
        await wait_port(gw_port)
        await wait_port(fw_port)
        targets = [Target("gateway", gateway.pid, gw_port), Target("forwarder", forwarder.pid, fw_port)]
        if ccr_cmd is not None:
            write_ccr_config(ccr_home, ccr_port, up_port)
            ccr = start(ccr_cmd, server_core, {**env, "HOME": str(ccr_home)})
            procs.insert(0, ccr)
            try:
                await wait_port(ccr_port)
                targets.append(Target("ccr", ccr.pid, ccr_port))
            except RuntimeError:
                why_not = f"it did not listen on {ccr_port} within 30 s (exit status {ccr.poll()})"
        small = orjson.dumps({"model": "claude-opus-5-5", "max_tokens": 256, "messages": [{"role": "user", "content": "Say hello"}]})
        stream = orjson.dumps({"model": "claude-opus-5-5", "max_tokens": 1200, "stream": True, "messages": [{"role": "user", "content": "Say hello"}]})
        for t in targets:  # warm-up (imports, pools, caches; node's JIT)
            await drive(t.port, "/v1/messages", small, 8, 1000)
            await drive(t.port, "/v1/messages", stream, 4, 100)
        cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "unknown CPU")
        print(f"machine: {cpu_model}, {os.cpu_count()} cores; python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.2f} at start")
        print(f"servers pinned to core {server_core}, the fast upstream and this client to core {other_core}")
        print(f"  gateway    pid {gateway.pid}, logging at info (one JSON access line per request) to {log_file.name}")
        print(f"  forwarder  pid {forwarder.pid}: benchmarks/forwarder.py, starlette + aiohttp, forwards bytes, converts nothing, logs nothing")
        if ccr is not None and any(t.name == "ccr" for t in targets):
            print(f"  ccr        pid {ccr.pid}: claude-code-router ({' '.join(ccr_cmd or [])}), HOME={ccr_home}, logging at info")
        else:
            print(f"  ccr        not measured: {why_not}")
        print(f"each load: {rounds} round(s), the servers taking turns within a round; CPU is the median over rounds, a ratio the median of per-round ratios")
        summary: list[str] = []

        print("\nnon-streaming (JSON)        server CPU ms/req   p50 ms   p99 ms    req/s")
        for c, n in ((1, int(1000 * scale)), (16, int(4000 * scale)), (64, int(6000 * scale))):
            results = await compare(targets, small, c, n, rounds)
            p50 = {}
            print(f"  c={c}")
            for name, r in results.items():
                lat = [t.total for t in r.timings]
                p50[name] = pct(lat, 50)
                print(f"    {name:<10s}                {r.cpu * 1000:8.3f}       {ms(p50[name])}   {ms(pct(lat, 99))}  {n * rounds / r.secs:7.0f}")
            print(ratios(results, p50))
            if c == 64:
                summary.append(f"small request, c=64: gateway CPU x{cpu_ratio(results, 'gateway', 'forwarder'):.2f} the forwarder's (target <= 1.15)")

        print("\nstreams (200 chunks)        server CPU ms/stream (us/chunk)   first event ms   first text ms   total p50 ms   chunks/s")
        cc = FIXTURE.read_bytes()
        loads = [(f"c={c}", stream, "/v1/messages", c, n) for c, n in ((1, int(200 * scale)), (64, int(640 * scale)))]
        loads.append((f"Claude Code first_turn.json ({len(cc) // 1024} KB, streamed), c=16", cc, "/v1/messages?beta=true", 16, int(400 * scale)))
        for label, body, path, c, n in loads:
            results = await compare(targets, body, c, n, rounds, path)
            p50 = {}
            print(f"  {label}")
            for name, r in results.items():
                p50[name] = pct([t.total for t in r.timings], 50)
                print(
                    f"    {name:<10s}                {r.cpu * 1000:8.3f} ({r.cpu * 1e6 / 200:5.1f})            {ms(pct([t.first_event or 0 for t in r.timings], 50))}"
                    f"          {ms(pct([t.first_text or 0 for t in r.timings], 50))}         {ms(p50[name])}   {sum(t.chunks for t in r.timings) / r.secs:8.0f}"
                )
            print(ratios(results, p50))
            summary.append(f"{label.split(' (')[0]} stream: gateway CPU x{cpu_ratio(results, 'gateway', 'forwarder'):.2f} the forwarder's" + (" (target <= 1.5)" if label.startswith("c=") else ""))
            if "ccr" in results:
                summary[-1] += f", x{cpu_ratio(results, 'gateway', 'ccr'):.2f} ccr's"

        print("\nsummary (ratios of server CPU, measured in this run):")
        for line in summary:
            print(f"  {line}")

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
        print("\nlarge requests (300 tools + history, JSON, c=1, gateway)   body MB   server CPU ms/req   ms per MB")
        for mb in (0.5, 1, 2, 4):
            big = large_body(mb)
            await drive(gw_port, "/v1/messages", big, 1, 2)  # warm-up
            n = 5 if quick else 20
            cpu0 = cpu_seconds(gateway.pid)
            await drive(gw_port, "/v1/messages", big, 1, n)
            cpu = (cpu_seconds(gateway.pid) - cpu0) / n
            print(f"                                                           {len(big) / 1e6:6.2f}   {cpu * 1000:10.2f}          {cpu * 1000 / (len(big) / 1e6):6.2f}")
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log_file.close()
        lines = Path(log_file.name).read_text(errors="replace").count("\n")
        os.unlink(log_file.name)
        shutil.rmtree(ccr_home, ignore_errors=True)
        print(f"(the gateway wrote {lines} log lines)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the requests, one round (a rough look)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per load; figures are medians over them (default 3)")
    parser.add_argument("--no-ccr", action="store_true", help="leave claude-code-router out even when it is installed")
    args = parser.parse_args()
    asyncio.run(main(args.quick, 1 if args.quick else max(1, args.rounds), not args.no_ccr))
