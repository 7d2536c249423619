"""Capturing runs: what came in, what the outside world answered, what went out.

With capture on (`engine serve --capture DIR`), every run becomes one JSON line in a capture
file: the pipeline and its input (secret headers redacted), the ids and clock readings the
run drew, each call of a step marked `record: true` (its inputs, and its output or error; a
stream's items with their offsets in seconds), the step timeline, and the final output as it
was sent (a stream's chunks as written). `engine replay` turns those lines back into runs.

Durability: a record is serialised whole, then written with a single `write()` on a file
opened `O_APPEND`, so concurrent runs never interleave and `kill -9` never leaves half a record
(a short write, e.g. on ENOSPC, is cut back off). Writing happens on one background thread, so
a slow disk never slows a request, and a failed write is logged (at most every 10 s) and
counted, never raised: capture must not fail the user's request. Making the recorded values
JSON-ready happens there too: a run notes references (`Deferred`) and the writer, or the web
console when it shows the run, converts them (`resolve`). Files are 0600 in a 0700
directory and rotate by size, keeping a bounded number.

Reading is the other half (engine/capture_reader.py, engine/replay.py): a capture file may
come from anywhere, so it is data. Values come back through `from_jsonable`, which knows the
tags `jsonable` writes and rebuilds only the classes registered with `value_type`; nothing a
record names is imported or called.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import errno
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from engine import logs, metrics
from engine import errors as engine_errors
from engine.errors import StepError
from engine.streams import aclose_quietly
from engine.types import Request

_log = structlog.get_logger("engine.capture")
FORMAT = "engine-capture/1"


# The tags `jsonable` writes for values JSON has no word for. A plain dict that happens to
# have one of these keys (a tool schema with a "$type" property, say) is wrapped in "$dict",
# so a reader never mistakes data for a tag.
TAGS = frozenset({"$type", "$bytes", "$base64", "$set", "$repr", "$stream", "$dict"})

_known: dict[str, type] = {}


def type_name(cls: type) -> str:
    """How captures name a class: `module:qualname`, a label the reader looks up, never imports."""
    return f"{cls.__module__}:{cls.__qualname__}"


def value_type(cls: type) -> type:
    """Let captures hold instances of `cls` as themselves (a class decorator).

    Use it on a dataclass that a `record: true` step takes or returns, and on an exception
    class such a step raises. Replay rebuilds exactly the classes registered here: a capture
    is a file from outside, so a class name in it is a label to look up, never a module to
    import. A dataclass that is not registered makes its records unreplayable (replay says
    which name to register); an unregistered exception comes back as a `RecordedError`.
    """
    _known[type_name(cls)] = cls
    return cls


def known_types() -> dict[str, type]:
    """The registered value types and error classes, by capture name."""
    return dict(_known)


class RecordFormatError(ValueError):
    """A capture record holds something replay will not rebuild; `path` says where in it."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class RecordedError(Exception):
    """A recorded exception of a class replay does not rebuild; it keeps the name as text."""

    def __init__(self, class_name: str, message: str) -> None:
        super().__init__(message)
        self.recorded_class = class_name


def jsonable(value: Any) -> Any:
    """A JSON-ready form of a step's input or output (dataclasses become dicts, bytes text)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        out = {str(k): jsonable(v) for k, v in value.items()}
        return {"$dict": out} if not TAGS.isdisjoint(out) else out
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [jsonable(v) for v in value]
        try:
            items.sort()
        except TypeError:  # mixed types: any order is the same set
            pass
        return {"$set": items}
    if isinstance(value, bytes):
        try:
            return {"$bytes": value.decode("utf-8")}
        except UnicodeDecodeError:
            return {"$base64": base64.b64encode(value).decode()}
    names = _dataclass_fields(type(value))
    if names is not None:
        fields = {name: getattr(value, name) for name in names}
        if "headers" in fields:
            fields["headers"] = redact_headers(fields["headers"])
        return {"$type": type_name(type(value)), **{k: jsonable(v) for k, v in fields.items()}}
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="json"))
    if hasattr(value, "__anext__"):
        return {"$stream": True}
    return {"$repr": repr(value)[:200]}


_field_names: dict[type, tuple[str, ...] | None] = {}


def _dataclass_fields(cls: type) -> tuple[str, ...] | None:
    """The field names of a dataclass (None for any other class), looked up once per class:
    `dataclasses.fields` walks the class's fields and filters them on every call."""
    try:
        return _field_names[cls]
    except KeyError:
        pass
    names = tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None
    if len(_field_names) >= 1000:  # classes made on the fly: keep the cache bounded
        _field_names.clear()
    _field_names[cls] = names
    return names


def from_jsonable(value: Any, path: str = "") -> Any:
    """Undo `jsonable`: bytes, sets and registered dataclasses come back as themselves.

    Only what `TAGS` names is interpreted, and a `$type` is only looked up among the
    registered types (`value_type`); anything else is a `RecordFormatError` saying where.
    `$repr` and `$stream` (values the writer could not represent) stay as the dicts they are.
    """
    try:
        return _rebuild(value, path)
    except RecursionError:
        raise RecordFormatError(path, "nested too deeply to be a recorded value") from None


def _rebuild(value: Any, path: str) -> Any:
    if isinstance(value, list):
        return [_rebuild(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    tags = TAGS.intersection(value)
    if not tags:
        return {k: _rebuild(v, f"{path}.{k}" if path else k) for k, v in value.items()}
    if "$type" in tags:
        return _rebuild_dataclass(value, path)
    if len(value) != 1:
        raise RecordFormatError(path, f"a '{sorted(tags)[0]}' value has other keys beside it ({', '.join(sorted(value)[:5])})")
    tag, inner = next(iter(value.items()))
    if tag == "$dict":
        if not isinstance(inner, dict):
            raise RecordFormatError(path, "'$dict' must hold an object")
        return {k: _rebuild(v, f"{path}.{k}" if path else k) for k, v in inner.items()}
    if tag == "$bytes":
        if not isinstance(inner, str):
            raise RecordFormatError(path, "'$bytes' must hold a string")
        return inner.encode("utf-8")
    if tag == "$base64":
        try:
            return base64.b64decode(inner, validate=True)
        except (TypeError, ValueError, binascii.Error):
            raise RecordFormatError(path, "'$base64' does not hold base64 text") from None
    if tag == "$set":
        if not isinstance(inner, list):
            raise RecordFormatError(path, "'$set' must hold a list")
        try:
            return frozenset(_rebuild(inner, path))
        except TypeError:
            raise RecordFormatError(path, "'$set' holds items that cannot be in a set") from None
    return value  # $repr, $stream: a description of a value, kept as data


def _rebuild_dataclass(value: dict[str, Any], path: str) -> Any:
    name = value["$type"]
    cls = _known.get(name) if isinstance(name, str) else None
    if cls is None or not dataclasses.is_dataclass(cls):
        shown = repr(name)[:120]
        known = ", ".join(sorted(n for n, c in _known.items() if dataclasses.is_dataclass(c))) or "none"
        raise RecordFormatError(
            path,
            f"unknown type {shown}: replay rebuilds only registered types ({known}); "
            "if it is yours, register it with @engine.capture.value_type",
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = {}
    for k, v in value.items():
        if k == "$type":
            continue
        if k not in fields:
            raise RecordFormatError(path, f"type '{name}' has no field '{k[:80]}'")
        data[k] = _rebuild(v, f"{path}.{k}" if path else k)
    missing = [f for f, spec in fields.items() if f not in data and spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING]
    if missing:
        raise RecordFormatError(path, f"type '{name}' is missing field(s) {', '.join(missing)}")
    return cls(**data)


# The engine's own values: a routed run's input, and the errors any step may raise.
for _cls in (
    Request,
    StepError,
    engine_errors.StepTimeout,
    engine_errors.DeadlineExceeded,
    engine_errors.LimitTimeout,
    engine_errors.RunCancelled,
    engine_errors.HttpError,
    RecordedError,
):
    value_type(_cls)


def redact_headers(headers: Any) -> dict[str, str]:
    """Headers with every secret-named one replaced by a marker (names stay visible)."""
    return {k: "[REDACTED]" if logs.is_secret_name(k) else str(v) for k, v in dict(headers or {}).items()}


def redact_named(value: Any) -> Any:
    """Secret-named keys (api_key, authorization, ...) masked anywhere in a structure.

    Only names are judged: content is kept as it was (a capture must replay faithfully), and
    exact secret values are scrubbed from the whole line when it is written."""
    if isinstance(value, dict):
        return {k: "[REDACTED]" if logs.is_secret_name(k) and value[k] else redact_named(value[k]) for k in value}
    if isinstance(value, list):
        return [redact_named(v) for v in value]
    return value


def error_record(exc: BaseException) -> dict[str, Any]:
    """Enough of an exception to raise an equivalent one in replay."""
    attrs = {k: jsonable(v) for k, v in vars(exc).items() if not k.startswith("_") and k not in {"step", "attempts"}}
    return {
        "class": type_name(type(exc)),
        "message": logs.scrub_known(str(exc)),
        "attrs": attrs,
    }


def rebuild_error(record: Any, path: str = "error") -> BaseException:
    """The exception `error_record` described: its registered class, else a `RecordedError`.

    The class is only looked up among registered classes; an instance is made without calling
    its `__init__` and given the recorded public attributes."""
    if not isinstance(record, dict) or not isinstance(record.get("class", ""), str) or not isinstance(record.get("message", ""), str):
        raise RecordFormatError(path, "an error needs a 'class' and a 'message' string")
    name, message = record.get("class", ""), record.get("message", "")
    attrs = record.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise RecordFormatError(f"{path}.attrs", "must be an object")
    cls = _known.get(name)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        return RecordedError(name, message)
    exc = cls.__new__(cls)
    BaseException.__init__(exc, message)
    if isinstance(exc, StepError):  # what StepError.__init__ would have set; attrs may override
        exc.message, exc.step, exc.attempts, exc.retry_after = message, None, 0, None
    for k, v in attrs.items():
        if not k.isidentifier() or k.startswith("_"):
            raise RecordFormatError(f"{path}.attrs", f"'{k[:80]}' is not a public attribute name")
        try:
            setattr(exc, k, from_jsonable(v, f"{path}.attrs.{k}"))
        except (AttributeError, TypeError):
            raise RecordFormatError(f"{path}.attrs", f"'{name}' takes no attribute '{k}'") from None
    return exc


_PLAIN = frozenset({dict, list, tuple, str, int, float, bool, bytes, set, frozenset, type(None)})
_data_types: set[type] = set(_PLAIN)
"""Classes whose JSON form only their contents decide: plain containers, and the dataclasses
met so far (added on first sight, so the check per recorded value is one set operation)."""
_MISSING = object()


def _all_data(kinds: set[type]) -> bool:
    new = kinds - _data_types
    if not all(_dataclass_fields(k) is not None for k in new):
        return False
    if len(_data_types) >= 1000:  # classes made on the fly: keep the set bounded
        _data_types.intersection_update(_PLAIN)
    _data_types.update(new)
    return True


class Deferred:
    """A recorded value kept as the object it is until the record is read.

    Making every recorded input and output JSON-ready (and masking secret names) at call
    time cost about a fifth of a small request's CPU, for a record that is only read when the
    web console shows the run or a capture writes it. So the record holds a reference, and
    `resolve` converts it then. That is the value the step saw because values passed along
    the graph's edges are not changed after they are passed (tests/engine/test_capture_lazy.py
    holds the shipped pipelines to it); objects `jsonable` can only describe are converted at
    once (`RunRecorder`), since their description may change.
    """

    __slots__ = ("value", "how")

    def __init__(self, value: Any, how: str) -> None:
        self.value = value
        self.how = how  # "named": redact_named(jsonable()); "plain": jsonable(); "inputs": a call's kwargs; "trace"; "items"

    def convert(self, memo: dict[tuple[int, bool], Any]) -> Any:
        """The JSON-ready value; `memo` shares the conversion of an object recorded more than
        once in the run (the request, the providers and the profiles go to several steps)."""
        return _convert(self.value, self.how, memo)


def _convert(value: Any, how: str, memo: dict[tuple[int, bool], Any]) -> Any:
    if how == "inputs":  # redact_named(jsonable(kwargs)), with each argument converted once
        out = {str(k): _converted(v, True, memo) for k, v in value.items()}
        out = {k: "[REDACTED]" if logs.is_secret_name(k) and v else v for k, v in out.items()}
        return {"$dict": out} if not TAGS.isdisjoint(out) else out
    if how == "trace":
        return trace_rows(*value)
    if how == "body":  # a reply's body as sent: its JSON, else its text
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value.decode("utf-8", errors="replace")
    if how == "sent":  # a streamed reply as written: [offset from the run's start, text] per write
        sent, t0 = value
        return [[round(t - t0, 6), data.decode("utf-8", errors="replace")] for t, data in sent]
    if how == "items":  # a recorded stream's [offset, item] pairs
        return [[at, item.value if type(item) is _Converted else jsonable(item)] for at, item in value]
    return _converted(value, how == "named", memo)


def _converted(value: Any, named: bool, memo: dict[tuple[int, bool], Any]) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    key = (id(value), named)
    found = memo.get(key, _MISSING)
    if found is _MISSING:
        # The value is kept in the memo with its conversion, so its id cannot be reused.
        memo[key] = (value, redact_named(jsonable(value)) if named else jsonable(value))
        return memo[key][1]
    return found[1]


class _Converted:
    """A stream item converted when it came: `jsonable` could only describe it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class RunRecord(dict):  # type: ignore[type-arg]
    """A run's record: a plain dict to every reader (and to orjson), plus where it still holds
    a `Deferred`. Read it through `resolve` when those values matter."""

    __slots__ = ("pending", "lock")
    # Both set by RunRecorder (dict's own __init__ is faster than one of ours).
    pending: list[tuple[dict[str, Any] | None, str]]  # None: the record itself (no reference cycle)
    lock: threading.Lock  # the record's own: a page waits only for the conversion of its run

    def defer(self, container: dict[str, Any], key: str, value: Any, how: str) -> None:
        container[key] = Deferred(value, how)
        # The record's own keys are noted as None: a tuple holding the record, in a list the
        # record holds, would make every record a reference cycle, freed only by the cyclic
        # collector (rarely, with `engine serve`'s thresholds: RSS grew ~30 KB a stream).
        self.pending.append((None if container is self else container, key))


def resolve(record: Any) -> Any:
    """`record` with every deferred value converted, in place, and returned.

    The web console (on the event loop) and the capture writer (on its thread) may both ask;
    one converts while the other waits, so no reader sees a `Deferred`. A conversion that
    fails (a `repr` that raises) leaves a `$repr` saying so. Plain dicts pass unchanged."""
    pending = getattr(record, "pending", None)
    if pending:
        with record.lock:
            memo: dict[tuple[int, bool], Any] = {}
            while pending:
                container, key = pending[-1]
                container = record if container is None else container
                value = container.get(key)
                if isinstance(value, Deferred):
                    try:
                        container[key] = value.convert(memo)
                    except Exception as exc:  # a record must never break the page or the writer
                        container[key] = {"$repr": f"not recordable: {type(exc).__name__}: {exc}"[:200]}
                pending.pop()
    return record


def trace_rows(trace: list[Any], t0: float) -> list[dict[str, Any]]:
    """A run's trace `(pipeline, step, outcome, attempts, start, end)` as the record keeps it:
    offsets in seconds from the run's start."""
    return [
        {"pipeline": p, "step": s, "outcome": o, "attempts": a, "start": round(max(b - t0, 0.0), 6), "end": round(max(e - t0, 0.0), 6)}
        for p, s, o, a, b, e in trace
    ]


class RunRecorder:
    """Collects one run's record; `finish()` hands it to the writer.

    The run's input, each recorded call's inputs and outputs and the trace are noted as
    references and converted when the record is read (`Deferred`, `resolve`): the web console
    keeps a record of every run even with capture off, and nearly all are never looked at.

    `stream_items=False` keeps a recorded step's inputs but not the items of a stream it
    returns (noting `"stream": "not recorded"`): about 15 us less per streamed chunk, for the
    web console's record when capture is off. Such a record cannot be replayed.
    """

    def __init__(self, writer: CaptureWriter | None, pipeline: str, request_id: str, input: Any, *, stream_items: bool = True) -> None:
        self.writer = writer
        self.stream_items = stream_items
        self.t0 = time.perf_counter()
        self.record = RunRecord(
            format=FORMAT,
            pipeline=pipeline,
            request_id=request_id,
            started_at=time.time(),
            input=None,
            ids=[],
            times=[],
            calls=[],
            trace=[],
        )
        self.record.pending, self.record.lock = [], threading.Lock()
        self._note(self.record, "input", input, "named")
        self.finished = False

    def _note(self, container: dict[str, Any], key: str, value: Any, how: str) -> None:
        """Note `value` at `container[key]`: deferred when it is data whose JSON form only its
        contents decide (plain containers, dataclasses), converted now when it is an object
        `jsonable` can only describe (`$repr`, `$stream`: the description may change)."""
        if how == "inputs":
            kinds = set(map(type, value.values()))
            data = kinds <= _data_types or _all_data(kinds)
        else:
            data = type(value) in _data_types or _all_data({type(value)})
        if data:
            self.record.defer(container, key, value, how)
        else:
            container[key] = _convert(value, how, {})

    def offset(self) -> float:
        return round(time.perf_counter() - self.t0, 6)

    def drew_id(self, value: str) -> None:
        self.record["ids"].append(value)

    def read_clock(self, value: float) -> None:
        self.record["times"].append(value)

    def call(self, pipeline: str, step: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Start the record of one call of a recorded step; fill it with `returned`/`error`.

        `kwargs` must be a dict of its own (the call's inputs), not one the step may change."""
        entry: dict[str, Any] = {"pipeline": pipeline, "step": step, "at": self.offset(), "input": None}
        self._note(entry, "input", kwargs, "inputs")
        self.record["calls"].append(entry)
        return entry

    def returned(self, entry: dict[str, Any], value: Any) -> None:
        """What a recorded call returned (not a stream: see `recording_stream`)."""
        self._note(entry, "output", value, "plain")

    def finish(
        self, *, output: Any, outcome: str, trace: list[Any] | None = None, body: bytes | None = None, sent: list[tuple[float, bytes]] | None = None
    ) -> None:
        """The run ended with `output`; a reply's `body` (bytes) or what a streamed reply
        `sent` (`(perf_counter, bytes)` per write) is added to it as `body` or `stream`,
        converted when the record is read."""
        if self.finished:
            return
        self.finished = True
        self.record["outcome"] = outcome
        self.record["output"] = output
        if sent is not None:
            self.record.defer(output, "stream", (sent, self.t0), "sent")
        elif body is not None:
            self.record.defer(output, "body", body, "body")
        self.record["duration"] = self.offset()
        if trace is not None:  # copied: steps still winding down may add to the run's trace
            self.record.defer(self.record, "trace", (list(trace), self.t0), "trace")
        if self.writer is not None:
            self.writer.submit(self.record)


async def recording_stream(it: Any, entry: dict[str, Any], recorder: RunRecorder) -> Any:
    """Pass a stream through, noting each item and its offset from the stream's start.

    Items that are data are kept as they are and converted when the record is read (about
    5 us a chunk less); the list is deferred again when the stream ends, in case someone
    read the record while it went on (that reading converted the items so far, once)."""
    items: list[Any] = []
    record = recorder.record
    record.defer(entry, "items", items, "items")
    t0 = time.perf_counter()
    data = _data_types
    try:
        async for item in it:
            items.append([round(time.perf_counter() - t0, 6), item if type(item) in data else _Converted(jsonable(item))])
            yield item
        entry["end"] = "ok"
    except GeneratorExit:
        entry["end"] = "closed"
        raise
    except Exception as exc:
        entry["end"] = "error"
        entry["error"] = error_record(exc)
        raise
    except BaseException:  # cancelled: the client went away; what was read stays recorded
        entry["end"] = "cancelled"
        raise
    finally:
        if not isinstance(entry.get("items"), Deferred):
            record.defer(entry, "items", items, "items")
        await aclose_quietly(it)


class RecordingIds:
    """An id source that notes every id and clock reading into the run's record."""

    def __init__(self, inner: Any, recorder: RunRecorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def new_id(self, prefix: str = "", length: int = 24) -> str:
        value = self.inner.new_id(prefix, length)
        self.recorder.drew_id(value)
        return value

    def now(self) -> float:
        value = self.inner.now()
        self.recorder.read_clock(value)
        return value


class CaptureWriter:
    """Appends records to rotating JSONL files in `directory`, from one background thread.

    A record that cannot be made durable is lost, never half-kept: on a failed write or fsync
    the file is cut back to where the record began, and fsync is never retried (after a failed
    fsync a second one can report success without the data being on disk). Failures are
    counted (`engine_capture_failures_total`) and logged at most once every 10 s; requests
    never fail because of capture.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        max_files: int = 20,
        fsync: Callable[[int], None] | None = os.fsync,
    ) -> None:
        """`fsync` makes each record durable (None: leave it to the OS; tests pass a failing one)."""
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.fsync = fsync
        self.failures = 0
        self.written = 0
        self._last_error_log = 0.0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10_000)
        self._fd: int | None = None
        self._path: Path | None = None
        self._seq = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._thread = threading.Thread(target=self._run, name="engine-capture", daemon=True)
        self._thread.start()

    def submit(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._failed("capture queue full")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            try:
                self._write(serialize(record))
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, "")
                self._failed(f"capture write failed: {name} ({exc.strerror})" if name else f"capture write failed: {exc}")
            except Exception as exc:  # a record that cannot be serialised must not stop capture
                self._failed(f"capture write failed: {type(exc).__name__}: {exc}")

    def _open(self) -> int:
        if self._fd is not None and self._path is not None:
            try:
                if os.fstat(self._fd).st_size < self.max_bytes:
                    return self._fd
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
        self._seq += 1
        name = f"capture-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{self._seq:04d}.jsonl"
        self._path = self.dir / name
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        self._fd = fd
        self._prune()
        return fd

    def _prune(self) -> None:
        files = sorted(self.dir.glob("capture-*.jsonl"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.max_files)]:
            if old != self._path:
                old.unlink(missing_ok=True)

    def _write(self, line: bytes) -> None:
        fd = self._open()
        before = os.fstat(fd).st_size
        try:
            n = os.write(fd, line)
            if n != len(line):
                raise OSError(28, "short write")
            if self.fsync is not None:
                self.fsync(fd)
        except OSError:
            # Never leave half a record: cut the file back to where this one began.
            try:
                os.ftruncate(fd, before)
            except OSError:
                pass
            raise
        self.written += 1

    def _failed(self, message: str) -> None:
        self.failures += 1
        metrics.CAPTURE_FAILURES.inc()
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            _log.error(message, failures=self.failures)


def serialize(record: dict[str, Any]) -> bytes:
    """One record as one line, with every known secret value scrubbed from it (its deferred
    values converted first: on the writer's thread, off the requests' way)."""
    resolve(record)
    text = orjson.dumps(record, default=lambda v: jsonable(v)).decode("utf-8")
    return (logs.scrub_known(text) + "\n").encode("utf-8")
