"""The runs the console shows: a bounded ring of this process's recent runs, and capture files.

A run enters the ring when it starts (engine/http.py calls `Console.started` once its
recorder is in place) and is completed where its access line is written (`Runs.add`, from
the same place), with the access facts (status, outcome, duration and whatever fields the
pipelines add: model, fallback, tokens, cost) and the run record that
`engine.capture.RunRecorder` collects (redacted input, recorded step calls, trace, the
answer as sent). The record is finished right after the access line, before anyone can read
it. Its recorded values stay the objects the run passed until a page shows the run
(`RunEntry.full_record`); the list reads what it needs without converting them. Only the
newest runs keep their record (50, and about 64 MB: a coding agent's request with its
history is megabytes); older ones keep their facts and what failed.

With capture on, the capture directory is indexed too, read incrementally (only the bytes
appended since the last look), so runs from before a restart and from other workers appear.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.capture import Deferred, resolve
from engine.types import Request

KNOWN_FACTS = ("model", "fallback", "route", "status", "outcome", "duration_ms")
"""Access-line fields shown first, in this order; every other field follows, as it came."""

_HIDDEN_FACTS = {"request_id", "pipeline", "event", "level", "timestamp", "logger"}
_CAPTURE_FILE = re.compile(r"^[A-Za-z0-9_.-]{1,200}\.jsonl$")


def is_token_field(name: str) -> bool:
    return "token" in name.lower()


def is_cost_field(name: str) -> bool:
    return "cost" in name.lower()


def ordered_facts(facts: dict[str, Any]) -> list[tuple[str, Any]]:
    """Known access fields first, then token and cost fields, then the rest, as they came."""
    rest = [k for k in facts if k not in KNOWN_FACTS and k not in _HIDDEN_FACTS]
    usage = [k for k in rest if is_token_field(k) or is_cost_field(k)]
    other = [k for k in rest if k not in usage]
    return [(k, facts[k]) for k in (*[k for k in KNOWN_FACTS if k in facts], *usage, *other)]


def _body(record: dict[str, Any] | None) -> Any:
    """The `body` of a run's input as its record shows it, without converting the record: the
    bytes themselves while a `Request` input is still deferred (the record will show them as
    `$bytes` text, or `$base64` when they are not UTF-8)."""
    inp = (record or {}).get("input")
    if isinstance(inp, Deferred):
        if isinstance(inp.value, Request):
            return inp.value.body
        inp = inp.convert({})
    return inp.get("body") if isinstance(inp, dict) else None


def requested_model(record: dict[str, Any] | None) -> str | None:
    """The model the client asked for, when its request body is a JSON object with `model`.

    Most model APIs name it so; for any other body this is simply absent."""
    body = _body(record)
    if isinstance(body, dict) and "$bytes" in body:
        body = body["$bytes"]
    if isinstance(body, (str, bytes)):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
    value = body.get("model") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


@dataclass(slots=True)
class RunEntry:
    """One run as the console lists it; `record` is None once it aged out (or never existed)."""

    key: str
    started_at: float
    facts: dict[str, Any]
    record: dict[str, Any] | None
    source: str = "live"
    failed_steps: list[str] = field(default_factory=list)
    version: int = 0
    weight: int = 0
    live_trace: Callable[[], list[dict[str, Any]]] | None = None  # set while the run is in flight
    _summary: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return self.live_trace is not None

    @property
    def request_id(self) -> str:
        return str(self.facts.get("request_id") or (self.record or {}).get("request_id") or "?")

    @property
    def pipeline(self) -> str:
        return str(self.facts.get("pipeline") or (self.record or {}).get("pipeline") or "?")

    @property
    def status(self) -> int:
        status = self.facts.get("status")
        if status is None:
            status = ((self.record or {}).get("output") or {}).get("status")
        return int(status) if isinstance(status, (int, float)) else 0

    @property
    def outcome(self) -> str:
        return str(self.facts.get("outcome") or (self.record or {}).get("outcome") or "?")

    @property
    def failed(self) -> bool:
        return self.status >= 400 or self.outcome not in {"ok", "?", "running"}

    def full_record(self) -> dict[str, Any] | None:
        """The record with every recorded value JSON-ready: converted now if it was deferred
        (`engine.capture.resolve`). `record` itself is for looks that need no conversion."""
        return resolve(self.record) if self.record is not None else None

    def summary(self) -> dict[str, Any]:
        """What a row of the runs table shows (also the JSON pushed over Server-Sent Events)."""
        if self._summary is None or self.running:
            if self.record is not None:  # finished by now: the writer runs after the access line
                self.failed_steps = _failed_steps(self.record)
            extra = {k: v for k, v in ordered_facts(self.facts) if k not in {"status", "outcome", "duration_ms"}}
            duration = self.facts.get("duration_ms")
            if self.running:
                duration = round((time.time() - self.started_at) * 1000, 2)
            elif duration is None and self.record and isinstance(self.record.get("duration"), (int, float)):
                duration = round(self.record["duration"] * 1000, 2)
            self._summary = {
                "key": self.key,
                "started_at": self.started_at,
                "time": time.strftime("%H:%M:%S", time.localtime(self.started_at)),
                "request_id": self.request_id,
                "pipeline": self.pipeline,
                "requested": requested_model(self.record),
                "status": self.status,
                "outcome": self.outcome,
                "failed": self.failed,
                "duration_ms": duration,
                "facts": extra,
                "failed_steps": self.failed_steps,
                "source": self.source,
                "running": self.running,
                "version": self.version,
            }
        return self._summary


def _weight(record: dict[str, Any]) -> int:
    """A run record's rough size: its request body three times over (the record holds the
    request, and each recorded call's inputs usually hold it again, converted), plus 4 KB."""
    body = _body(record)
    if isinstance(body, dict):
        body = body.get("$bytes") or body.get("$base64")
    elif isinstance(body, bytes):  # still deferred: the length of the text the record will hold
        return 3 * _text_length(body) + 4096
    return 3 * (len(body) if isinstance(body, (str, bytes)) else 0) + 4096


def _text_length(body: bytes) -> int:
    """The length of `body` as a record holds it: UTF-8 text, else base64."""
    if body.isascii():
        return len(body)
    try:
        return len(body.decode("utf-8"))
    except UnicodeDecodeError:
        return 4 * ((len(body) + 2) // 3)


_FAILED = frozenset({"error", "timeout"})


def _failed_steps(record: dict[str, Any] | None) -> list[str]:
    trace = (record or {}).get("trace") or []
    if isinstance(trace, Deferred):  # the run's own (pipeline, step, outcome, ...) rows, not yet converted
        return [f"{t[0]}.{t[1]}" for t in trace.value[0] if t[2] in _FAILED]
    return [f"{t.get('pipeline')}.{t.get('step')}" for t in trace if t.get("outcome") in _FAILED]


class Runs:
    """The newest runs of this process; wakes Server-Sent Event writers on each change.

    A run is listed from its start (`started`, outcome "running") and updated when it ends
    (`add`). Every change takes the next `version`, so a feed that saw version N asks for
    what changed after N and gets new runs and finished ones alike.

    Records are dropped oldest-finished first, never while their run is running; the finished
    ones wait in a queue of their own and the running ones are only counted, so a new run costs
    the same however many runs are in flight.
    """

    def __init__(self, keep: int = 1000, detailed: int = 50, detail_bytes: int = 64 * 1024 * 1024) -> None:
        self.keep = keep
        self.detailed = detailed
        self.detail_bytes = detail_bytes
        self._held = 0  # estimated bytes of the records kept
        self.version = 0
        self._keys = 0
        self._entries: OrderedDict[str, RunEntry] = OrderedDict()
        self._with_record: deque[RunEntry] = deque()  # finished runs that keep their record, oldest first
        self._running_records = 0  # running runs keep theirs too (never dropped while they run)
        self._running: dict[int, RunEntry] = {}  # by id() of the run's record
        self._changed = asyncio.Event()
        self._waiting = 0  # feeds waiting in `wait`

    def started(self, facts: dict[str, Any], record: dict[str, Any], live_trace: Callable[[], list[dict[str, Any]]]) -> RunEntry:
        """A run began: list it as running, its trace read live until it ends."""
        started = record.get("started_at")
        entry = self._new(float(started) if isinstance(started, (int, float)) else time.time(), {**facts, "outcome": "running"}, record, live_trace)
        self._running[id(record)] = entry
        while len(self._running) > self.keep:  # a run that never reported its end (cancelled at shutdown)
            self._ended(self._running.pop(next(iter(self._running))))
        self._changed_now(entry)
        return entry

    def add(self, facts: dict[str, Any], record: dict[str, Any] | None) -> RunEntry:
        """A run ended: its access facts and its run record (finished or about to be)."""
        entry = self._running.pop(id(record), None) if record is not None else None
        if entry is None:
            started = record.get("started_at") if record else None
            if not isinstance(started, (int, float)):
                started = time.time() - float(facts.get("duration_ms") or 0) / 1000
            entry = self._new(float(started), dict(facts), record)
        else:
            entry.facts = dict(facts)
            self._ended(entry)
            if entry.key not in self._entries:  # aged out while it ran: list it again
                self._entries[entry.key] = entry
        self._changed_now(entry)
        return entry

    def _new(self, started: float, facts: dict[str, Any], record: dict[str, Any] | None, live_trace: Callable[[], list[dict[str, Any]]] | None = None) -> RunEntry:
        self._keys += 1
        entry = RunEntry(str(self._keys), started, facts, record, live_trace=live_trace)
        self._entries[entry.key] = entry
        while len(self._entries) > self.keep:
            self._entries.popitem(last=False)
        if record is not None:
            entry.weight = _weight(record)
            self._held += entry.weight
            if entry.running:
                self._running_records += 1
            else:
                self._with_record.append(entry)
            kept = self._with_record
            # The newest run keeps its record whatever it weighs.
            while kept and kept[0] is not entry and (len(kept) + self._running_records > self.detailed or self._held > self.detail_bytes):
                old = kept.popleft()
                old.failed_steps = _failed_steps(old.record)
                old.record = None
                self._held -= old.weight
        return entry

    def _ended(self, entry: RunEntry) -> None:
        """`entry` is no longer running: its record may now be dropped like any other."""
        if entry.live_trace is None:
            return
        entry.live_trace = None
        if entry.record is not None:
            self._running_records -= 1
            self._with_record.append(entry)

    def _changed_now(self, entry: RunEntry) -> None:
        self.version += 1
        entry.version = self.version
        entry._summary = None
        if self._waiting:  # else nobody is woken: the event stays as it is, unset
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def get(self, key: str) -> RunEntry | None:
        return self._entries.get(key)

    def after(self, version: int) -> list[RunEntry]:
        """Entries added or changed after `version`, in the order they changed."""
        return sorted((e for e in self._entries.values() if e.version > version), key=lambda e: e.version)

    def all(self) -> list[RunEntry]:
        return list(self._entries.values())

    async def wait(self, timeout: float) -> None:
        """Return when a run starts or ends, or after `timeout` seconds."""
        self._waiting += 1
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiting -= 1


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # pruned by the capture writer a moment ago
        return 0.0


@dataclass(slots=True)
class _Indexed:
    size: int = 0
    entries: list[RunEntry] = field(default_factory=list)


class CaptureIndex:
    """The runs in a capture directory, indexed by reading only what was appended since."""

    def __init__(self, directory: str | Path, max_runs: int = 5000, max_files: int = 5) -> None:
        """Only the newest `max_files` files are read (a full capture directory holds 20 files
        of 64 MB: reading them all would hold a page for seconds)."""
        self.dir = Path(directory)
        self.max_runs = max_runs
        self.max_files = max_files
        self._files: dict[str, _Indexed] = {}

    def refresh(self) -> list[RunEntry]:
        """Every indexed run, oldest first (newest `max_runs`). Blocking: call in a thread."""
        try:
            files = list(self.dir.glob("*.jsonl"))
        except OSError:
            files = []
        names = [p.name for p in sorted(files, key=lambda p: (_mtime(p), p.name))][-self.max_files :]
        for gone in set(self._files) - set(names):
            del self._files[gone]
        for name in names:
            self._read_new(name)
        entries = [e for name in names for e in self._files[name].entries]
        entries.sort(key=lambda e: e.started_at)
        return entries[-self.max_runs :]

    def _read_new(self, name: str) -> None:
        indexed = self._files.setdefault(name, _Indexed())
        path = self.dir / name
        try:
            size = path.stat().st_size
            if size < indexed.size:  # truncated or replaced: read it again
                indexed.size, indexed.entries = 0, []
            if size == indexed.size:
                return
            with path.open("rb") as f:
                f.seek(indexed.size)
                data = f.read(size - indexed.size)
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # a record still being written is read next time
        offset = indexed.size
        for line in data[:end].splitlines(keepends=True):
            start, offset = offset, offset + len(line)
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(record, dict) or "pipeline" not in record:
                continue
            facts = dict(record.get("access") or {})
            facts.setdefault("request_id", record.get("request_id"))
            facts.setdefault("pipeline", record.get("pipeline"))
            facts.setdefault("outcome", record.get("outcome"))
            status = (record.get("output") or {}).get("status") if isinstance(record.get("output"), dict) else None
            if status is not None:
                facts.setdefault("status", status)
            if isinstance(record.get("duration"), (int, float)):
                facts.setdefault("duration_ms", round(record["duration"] * 1000, 2))
            started = record.get("started_at") if isinstance(record.get("started_at"), (int, float)) else 0.0
            entry = RunEntry(f"{name}@{start}", float(started), facts, None, source=name, failed_steps=_failed_steps(record))
            indexed.entries.append(entry)
        indexed.size += end

    def load(self, key: str) -> RunEntry | None:
        """The run `file@offset` with its whole record, read from its file."""
        name, _, offset_text = key.rpartition("@")
        if not _CAPTURE_FILE.match(name) or not offset_text.isdigit():
            return None
        indexed = self._files.get(name)
        entry = next((e for e in indexed.entries if e.key == key), None) if indexed else None
        if entry is None:
            return None
        try:
            with (self.dir / name).open("rb") as f:
                f.seek(int(offset_text))
                record = orjson.loads(f.readline())
        except (OSError, orjson.JSONDecodeError):
            return None
        return RunEntry(entry.key, entry.started_at, entry.facts, record, source=name, failed_steps=entry.failed_steps)
