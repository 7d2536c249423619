"""Replaying captured runs through the current pipelines, offline, and saying what changed.

Each captured run is run again with the same input, request id, ids and clock readings; every
call of a `record: true` step is answered from the capture (in order, per pipeline and step;
a later recorded call with exactly the same compared inputs is taken first, since calls that
ran concurrently may start in another order), so no network is touched. Then what a person cares about is compared with the capture, and
nothing else:

- what would go upstream: the inputs each recorded step puts on the wire (the step's
  `sends`, e.g. the request payload and URL; all its inputs when it does not say; none for a
  step that only reads state, such as a calibration or a price list). A changed
  model map shows up here, because the answer itself was taken from the capture;
- what the client receives: the status, the reply headers the pipeline set, and the JSON
  body or each streamed event.

A step's other inputs (settings, lookup tables it was handed) are internals: when they matter,
they change what is sent or received. Differences are listed as `path: old -> new`. Volatile
by nature and never compared: transport headers, the request id header the HTTP layer adds,
and heartbeat events, which depend on timing.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from engine.capture import from_jsonable, jsonable, rebuild_error, redact_named, value_type
from engine.capture_reader import Captured, CaptureProblem, read_captures
from engine.errors import StepError
from engine.executor import Engine
from engine.streams import each, is_stream
from engine.types import Reply

__all__ = ["CaptureProblem", "Captured", "Result", "Summary", "read_captures", "replay_all", "replay_one"]

# Headers the transport or the HTTP layer sets around a pipeline's reply: not the pipeline's.
UNCOMPARED_HEADERS = {"date", "content-length", "server", "transfer-encoding", "connection", "x-request-id"}


@value_type
class ReplayMissing(StepError):
    """The run called a recorded step more often than the capture did."""

    kind = "replay"


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
    """Answers recorded steps from the capture and notes how what they would send changed."""

    def __init__(self, engine: Engine, calls: list[dict[str, Any]], realtime: bool = False) -> None:
        self.engine = engine
        self.queues: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for call in calls:
            self.queues[(call["pipeline"], call["step"])].append(call)
        self.realtime = realtime
        self.upstream_changes: list[str] = []
        self.answered = 0

    def sends(self, pipeline: str, step: str) -> tuple[str, ...] | None:
        """The inputs of this recorded step that go on the wire (None: all of them)."""
        plan = self.engine.plans.get(pipeline)
        node = plan.nodes.get(step) if plan is not None else None
        return node.info.sends if node is not None else None

    async def answer(self, pipeline: str, step: str, inputs: dict[str, Any], facts: dict[str, Any] | None = None) -> Any:
        queue = self.queues.get((pipeline, step))
        if not queue:
            raise ReplayMissing(f"the capture has no further call of step '{step}' in pipeline '{pipeline}'")
        wire = self.sends(pipeline, step)
        now = redact_named(jsonable(inputs))
        if wire is not None:
            now = {k: now[k] for k in wire if k in now}
        # In call order; but calls that ran concurrently (the tool calls of one turn) may
        # start in another order now, so a later recorded call with exactly these inputs wins.
        at = next((i for i, c in enumerate(queue) if _compared(c, wire) == now), 0)
        call = queue.pop(at)
        self.answered += 1
        told = call.get("facts")
        if facts is not None and isinstance(told, dict):  # what the step told in the captured run
            facts.update(from_jsonable(told))
        before = _compared(call, wire)
        for line in diff(plain(before), plain(now)):
            self.upstream_changes.append(f"{pipeline}.{step} {line}")
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

    def unmade(self) -> list[str]:
        """A line per recorded step whose captured calls the current pipelines did not all make."""
        return [
            f"{pipeline}.{step}: not sent ({len(queue)} recorded call{'s' if len(queue) != 1 else ''} the current pipelines no longer make)"
            for (pipeline, step), queue in self.queues.items()
            if queue
        ]


def _compared(call: dict[str, Any], wire: tuple[str, ...] | None) -> Any:
    """The recorded inputs replay compares: those the step sends (all when it does not say)."""
    before = call.get("input") or {}
    if wire is not None and isinstance(before, dict):
        return {k: before[k] for k in wire if k in before}
    return before


@dataclass(slots=True)
class Result:
    """The outcome of replaying one captured run: what changed upstream and for the client."""

    captured: Captured
    upstream: list[str] = field(default_factory=list)
    client: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    skipped: str | None = None

    @property
    def same(self) -> bool:
        return not (self.upstream or self.client or self.error)

    @property
    def changes(self) -> list[str]:
        """Every difference, labelled by where it shows: upstream first, then the client."""
        return (
            [f"upstream  {line}" for line in self.upstream]
            + [f"client    {line}" for line in self.client]
            + ([f"error     {self.error}"] if self.error else [])
        )


@dataclass(slots=True)
class Summary:
    """The counts `engine replay` prints first."""

    runs: int = 0
    matched: int = 0
    changed: int = 0
    skipped: int = 0
    unreadable: int = 0

    def add(self, result: Result) -> None:
        self.runs += 1
        if result.skipped:
            self.skipped += 1
        elif result.same:
            self.matched += 1
        else:
            self.changed += 1

    def __str__(self) -> str:
        bad = f", {self.unreadable} unreadable record{'s' if self.unreadable != 1 else ''}" if self.unreadable else ""
        return f"{self.runs} run{'s' if self.runs != 1 else ''}, {self.matched} matched, {self.changed} changed, {self.skipped} skipped{bad}"

    @property
    def exit_code(self) -> int:
        """0 all matched, 1 something changed, 2 a record could not be read (whatever else)."""
        return 2 if self.unreadable else 1 if self.changed else 0


def request_order(runs: list[Captured]) -> list[Captured]:
    """Runs in the order their requests arrived (a record is written when its run ends)."""
    return sorted(runs, key=lambda c: c.record.get("started_at") if isinstance(c.record.get("started_at"), (int, float)) else 0.0)


async def replay_all(engine: Engine, runs: list[Captured], *, realtime: bool = False, live: bool = False) -> list[Result]:
    """Replay runs one after the other, in request order."""
    return [await replay_one(engine, c, realtime=realtime, live=live) for c in request_order(runs)]


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
    input = from_jsonable(record.get("input"), "input")
    ctx = engine.context(name, input, request_id=record.get("request_id"))
    ctx.ids = ReplayIds(record.get("ids") or [], record.get("times") or [], engine.ids)
    replayer = None if live else Replayer(engine, record.get("calls") or [], realtime=realtime)
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
    result.client = compare_outputs(record.get("output"), actual)
    if replayer is not None:
        result.upstream = _collapse(replayer.upstream_changes) + replayer.unmade()
    return result


def _collapse(lines: list[str]) -> list[str]:
    """Repeated lines once each, with a count (a retried call sends the same change again)."""
    counts: dict[str, int] = {}
    for line in lines:
        counts[line] = counts.get(line, 0) + 1
    return [f"{line} (x{n})" if n > 1 else line for line, n in counts.items()]


async def _observe(out: Any) -> dict[str, Any]:
    """The output in the shape the HTTP layer captures: status, headers, body or stream."""
    if isinstance(out, Reply):
        observed: dict[str, Any] = {"status": out.status, "headers": {**out.headers, "content-type": out.media_type}}
        if out.stream is not None:
            chunks = []
            async for item in out.stream:
                chunks.append([0.0, item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)])
            observed["stream"] = chunks
            if out.heartbeat:
                observed["heartbeat"] = out.heartbeat.decode("utf-8", errors="replace")
        else:
            observed["body"] = _as_sent(out.body)
        return observed
    if is_stream(out):
        return {"status": 200, "headers": {}, "stream": [[0.0, jsonable(item)] async for item in each(out)]}
    return {"status": 200, "headers": {"content-type": "application/json"}, "body": _as_sent(out)}


def _as_sent(body: Any) -> Any:
    """A body as the capture holds what was sent: the bytes on the wire, parsed back when JSON."""
    content = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else orjson.dumps(body, default=str)
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.decode("utf-8", errors="replace")


def _events(chunks: list[Any], heartbeat: str | None = None) -> list[Any]:
    """A stream as a list of events: Server-Sent Events parsed (data as JSON), the reply's
    `heartbeat` events dropped (how many were sent depends on timing)."""
    if not chunks:
        return []
    if not all(isinstance(c, list) and len(c) == 2 and isinstance(c[1], str) for c in chunks):
        return [c[1] if isinstance(c, list) and len(c) == 2 else c for c in chunks]
    text = "".join(c[1] for c in chunks)
    beat = heartbeat.replace("\r\n", "\n").strip() if heartbeat else None
    events: list[Any] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip() or block.strip() == beat:
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.removeprefix(" ")
        data: Any = fields.get("data", block)
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        events.append({"event": fields.get("event"), "data": data} if "event" in fields else data)
    return events


def compare_outputs(expected: Any, actual: dict[str, Any]) -> list[str]:
    """What the client receives, compared: status, the pipeline's headers, body or events.

    A header is compared when the replayed reply has it. One only the capture has is not
    reported: headers such as the model that answered are set from what the recorded
    upstream did, which an offline replay reads from the capture, not from the reply."""
    expected = expected if isinstance(expected, dict) else {}
    changes = []
    if expected.get("status") != actual.get("status"):
        changes.append(f"status: {expected.get('status')} -> {actual.get('status')}")
    old_headers = _headers(expected.get("headers"))
    for name, value in _headers(actual.get("headers")).items():
        if old_headers.get(name) != value:
            changes.append(f"header {name}: {_short(old_headers[name]) if name in old_headers else '(absent)'} -> {_short(value)}")
    if "stream" in expected or "stream" in actual:
        beat = actual.get("heartbeat")
        changes += diff_events(_events(expected.get("stream") or [], beat), _events(actual.get("stream") or [], beat))
    else:
        changes += diff(expected.get("body"), actual.get("body"), "body")
    return changes


def _headers(headers: Any) -> dict[str, str]:
    out = {}
    for k, v in (headers if isinstance(headers, dict) else {}).items():
        name = str(k).lower()
        if name in UNCOMPARED_HEADERS:
            continue
        out[name] = str(v).split(";")[0].strip() if name == "content-type" else str(v)
    return out


def diff_events(old: list[Any], new: list[Any]) -> list[str]:
    """Event by event: `event 3 (content_block_delta) delta.text: 'a' -> 'b'`."""
    lines = []
    for i in range(max(len(old), len(new))):
        if i >= len(new):
            lines.append(f"event {i} ({_event_name(old[i])}): sent before, not now")
            continue
        if i >= len(old):
            lines.append(f"event {i} ({_event_name(new[i])}): new: {_short(new[i])}")
            continue
        a, b = old[i], new[i]
        if _event_name(a) != _event_name(b):
            lines.append(f"event {i}: {_event_name(a)} -> {_event_name(b)}")
            continue
        a_data = a.get("data") if isinstance(a, dict) and "event" in a else a
        b_data = b.get("data") if isinstance(b, dict) and "event" in b else b
        lines += [f"event {i} ({_event_name(a)}) {line}" for line in diff(a_data, b_data)]
    return lines


def _event_name(event: Any) -> str:
    if isinstance(event, dict):
        if isinstance(event.get("event"), str):
            return event["event"]
        if isinstance(event.get("type"), str):
            return event["type"]
    return "data"


def plain(value: Any) -> Any:
    """A captured (tagged) value as plain JSON for display: tags gone, bytes as their text."""
    if isinstance(value, list):
        return [plain(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        tag, inner = next(iter(value.items()))
        if tag in {"$bytes", "$base64", "$repr"}:
            return inner
        if tag == "$set":
            return plain(inner)
        if tag == "$dict" and isinstance(inner, dict):  # data whose keys look like tags
            return {k: plain(v) for k, v in inner.items()}
        if tag == "$stream":
            return "(a stream)"
    return {k: plain(v) for k, v in value.items() if k != "$type"}


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
        shown = path or "(whole value)"
        if path not in b:
            lines.append(f"{shown}: {_short(a[path])} -> (absent)")
        elif path not in a:
            lines.append(f"{shown}: (absent) -> {_short(b[path])}")
        elif a[path] != b[path]:
            lines.append(f"{shown}: {_short(a[path])} -> {_short(b[path])}")
    return lines


def _short(value: Any, limit: int = 120) -> str:
    text = orjson.dumps(value, default=str).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
