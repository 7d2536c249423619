"""Replaying captured runs through the current pipelines, offline, and saying what changed.

Each captured run is run again with the same input, request id, ids and clock readings; every
call of a `record: true` step is answered from the capture (in order, per pipeline and step),
so no network is touched. Then two things are compared with what was captured:

- the final output (status, content type, and the JSON body or each streamed event), and
- the inputs the run gave its recorded steps (e.g. the request it would have sent upstream):
  a changed model map shows up here, because the answer was taken from the capture.

Differences are listed as `path: old -> new`. Nothing is ignored but what is volatile by
nature (transport headers, and heartbeat events, which depend on timing).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson

from engine.capture import FORMAT, from_jsonable, jsonable, rebuild_error, redact_named
from engine.errors import StepError
from engine.executor import Engine
from engine.streams import is_stream
from engine.types import Reply

VOLATILE_HEADERS = {"date", "content-length", "server", "transfer-encoding", "connection"}


class ReplayMissing(StepError):
    """The run called a recorded step more often than the capture did."""

    kind = "replay"


@dataclass(slots=True)
class CaptureProblem:
    """A line of a capture file that could not be read (truncated or corrupt)."""

    file: str
    offset: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.offset}: {self.message}"


@dataclass(slots=True)
class Captured:
    """One captured run and where it came from."""

    file: str
    offset: int
    record: dict[str, Any]

    @property
    def label(self) -> str:
        r = self.record
        inp = r.get("input") or {}
        route = f" {inp.get('method')} {inp.get('path')}" if isinstance(inp, dict) and inp.get("path") else ""
        return f"{r.get('request_id', '?')} ({r.get('pipeline')}{route})"


def read_captures(paths: list[str | Path]) -> Iterator[Captured | CaptureProblem]:
    """Every record in the given files (directories: their capture-*.jsonl), in order."""
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as exc:
            yield CaptureProblem(str(f), 0, f"cannot read: {exc.strerror}")
            continue
        offset = 0
        for line in data.splitlines(keepends=True):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                kind = "truncated" if not line.endswith(b"\n") else "corrupt"
                yield CaptureProblem(str(f), start, f"{kind} record ({len(line)} bytes) skipped")
                continue
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                yield CaptureProblem(str(f), start, f"not an {FORMAT} record, skipped")
                continue
            yield Captured(str(f), start, record)


class ReplayIds:
    """Hands out the captured ids and clock readings in order, then fresh ones."""

    def __init__(self, ids: list[str], times: list[float], fallback: Any) -> None:
        self.ids = list(ids)
        self.times = list(times)
        self.fallback = fallback

    def new_id(self, prefix: str = "", length: int = 24) -> str:
        if self.ids and self.ids[0].startswith(prefix):
            return self.ids.pop(0)
        return self.fallback.new_id(prefix, length)

    def now(self) -> float:
        return self.times.pop(0) if self.times else self.fallback.now()


class Replayer:
    """Answers recorded steps from the capture and notes how their inputs changed."""

    def __init__(self, calls: list[dict[str, Any]], realtime: bool = False) -> None:
        self.queues: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for call in calls:
            self.queues[(call["pipeline"], call["step"])].append(call)
        self.realtime = realtime
        self.input_changes: list[str] = []
        self.answered = 0

    async def answer(self, pipeline: str, step: str, inputs: dict[str, Any]) -> Any:
        queue = self.queues.get((pipeline, step))
        if not queue:
            raise ReplayMissing(f"the capture has no further call of step '{step}' in pipeline '{pipeline}'")
        call = queue.pop(0)
        self.answered += 1
        now = redact_named(jsonable(inputs))
        for line in diff(call.get("input"), now):
            self.input_changes.append(f"{pipeline}.{step} input {line}")
        if "items" in call:
            return self._stream(call)
        if "error" in call:
            raise rebuild_error(call["error"])
        return from_jsonable(call.get("output"))

    async def _stream(self, call: dict[str, Any]) -> AsyncIterator[Any]:
        last = 0.0
        for offset, item in call["items"]:
            if self.realtime and offset > last:
                await anyio.sleep(offset - last)
                last = offset
            yield from_jsonable(item)
        if call.get("error"):
            raise rebuild_error(call["error"])


@dataclass(slots=True)
class Result:
    """The outcome of replaying one captured run."""

    captured: Captured
    output_changes: list[str] = field(default_factory=list)
    input_changes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    skipped: str | None = None

    @property
    def same(self) -> bool:
        return not (self.output_changes or self.input_changes or self.error)


async def replay_one(engine: Engine, captured: Captured, *, realtime: bool = False, live: bool = False) -> Result:
    """Run one captured run again and compare it with the capture."""
    record = captured.record
    result = Result(captured)
    t0 = time.perf_counter()
    if record.get("outcome") == "client_disconnected":
        # What the client saw ended where it hung up, and what the run would have done next
        # was never recorded: there is nothing to compare.
        result.skipped = "the client disconnected during this run; its output is incomplete"
        return result
    name = record.get("pipeline")
    if name not in engine.plans:
        result.error = f"pipeline '{name}' is not loaded (loaded: {', '.join(sorted(engine.plans))})"
        return result
    input = from_jsonable(record.get("input"))
    ctx = engine.context(name, input, request_id=record.get("request_id"))
    ctx.ids = ReplayIds(record.get("ids") or [], record.get("times") or [], engine.ids)
    replayer = None if live else Replayer(record.get("calls") or [], realtime=realtime)
    ctx.replayer = replayer
    try:
        out = await engine.run(name, input, ctx=ctx)
        actual = await _observe(out)
    except Exception as exc:
        result.error = f"the run failed: {type(exc).__name__}: {exc}"
        return result
    finally:
        await ctx.aclose()
        result.seconds = time.perf_counter() - t0
    expected = record.get("output")
    result.output_changes = compare_outputs(expected, actual)
    if replayer is not None:
        result.input_changes = replayer.input_changes
        unused = sum(len(q) for q in replayer.queues.values())
        if unused:
            result.input_changes.append(f"{unused} recorded call(s) were never made by the current pipelines")
    return result


async def _observe(out: Any) -> dict[str, Any]:
    """The output in the shape the HTTP layer captures: status, headers, body or stream."""
    if isinstance(out, Reply):
        observed: dict[str, Any] = {"status": out.status, "headers": {**out.headers, "content-type": out.media_type}}
        if out.stream is not None:
            chunks = []
            async for item in out.stream:
                chunks.append([0.0, item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)])
            observed["stream"] = chunks
        else:
            body = out.body
            if isinstance(body, bytes):
                body = body.decode("utf-8", errors="replace")
            observed["body"] = jsonable(body)
        return observed
    if is_stream(out):
        return {"status": 200, "headers": {}, "stream": [[0.0, jsonable(item)] async for item in out]}
    return {"status": 200, "headers": {"content-type": "application/json"}, "body": jsonable(out)}


def _events(chunks: list[Any]) -> list[Any]:
    """A stream as a list of events: Server-Sent Events parsed (data as JSON), heartbeats dropped."""
    if not chunks:
        return []
    if not all(isinstance(c[1], str) for c in chunks):
        return [c[1] for c in chunks]
    text = "".join(c[1] for c in chunks)
    events: list[Any] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.removeprefix(" ")
        if fields.get("event") == "ping":
            continue
        data: Any = fields.get("data", block)
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        events.append({"event": fields.get("event"), "data": data} if "event" in fields else data)
    return events


def compare_outputs(expected: Any, actual: Any) -> list[str]:
    expected = expected or {}
    changes = []
    if expected.get("status") != actual.get("status"):
        changes.append(f"status: {expected.get('status')} -> {actual.get('status')}")
    e_type = _content_type(expected.get("headers"))
    a_type = _content_type(actual.get("headers"))
    if e_type != a_type:
        changes.append(f"content-type: {e_type} -> {a_type}")
    if "stream" in expected or "stream" in actual:
        changes += diff(_events(expected.get("stream") or []), _events(actual.get("stream") or []), "events")
    else:
        changes += diff(expected.get("body"), actual.get("body"), "body")
    return changes


def _content_type(headers: Any) -> str:
    for k, v in (headers or {}).items():
        if k.lower() == "content-type":
            return str(v).split(";")[0].strip()
    return ""


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": [{"b": 1}]}` -> `{"a.0.b": 1}`; empty containers stay as leaves."""
    out: dict[str, Any] = {}
    if isinstance(value, dict) and value:
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out[prefix] = value
    return out


def diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Every path whose value differs, as `path: old -> new` (added and removed paths too)."""
    a, b = flatten(old, prefix), flatten(new, prefix)
    lines = []
    for path in list(dict.fromkeys([*a, *b])):
        if path not in b:
            lines.append(f"{path}: {_short(a[path])} -> (absent)")
        elif path not in a:
            lines.append(f"{path}: (absent) -> {_short(b[path])}")
        elif a[path] != b[path]:
            lines.append(f"{path}: {_short(a[path])} -> {_short(b[path])}")
    return lines


def _short(value: Any, limit: int = 120) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
