"""Reading capture files as untrusted data: one record at a time, each one bounded.

A capture file may come from anywhere (a colleague, a bug report, an attacker), so reading it
must not run anything it names and must not hold more of it in memory than one record. The
file is read in blocks and cut at newlines; a record longer than the cap is skipped as it
streams past, never gathered whole. Each record is parsed, its shape checked, and every value
in it rebuilt once through `engine.capture.from_jsonable` (registered types only), so a record
replay would stumble on is reported here, with its file, number and byte offset, before any
run starts.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from engine import registry
from engine.capture import FORMAT, RecordFormatError, from_jsonable, rebuild_error

DEFAULT_MAX_RECORD_BYTES = 256 * 1024 * 1024
"""Room for a record of the largest request the HTTP layer accepts (32 MiB by default), which a
record holds up to three times (the run's input, a recorded call's input, its payload), plus
its answer."""

_BLOCK = 1024 * 1024


@dataclass(slots=True)
class CaptureProblem:
    """A record of a capture file that will not be replayed, and why."""

    file: str
    offset: int
    message: str
    index: int = 0  # the record's number in its file (its line), 1-based; 0: the whole file

    def __str__(self) -> str:
        where = f"record {self.index} (byte {self.offset})" if self.index else "the file"
        return f"{self.file}: {where}: {self.message}"


@dataclass(slots=True)
class Captured:
    """One captured run and where it came from."""

    file: str
    offset: int
    record: dict[str, Any]
    index: int = 0

    @property
    def label(self) -> str:
        r = self.record
        inp = r.get("input") or {}
        route = f" {inp.get('method')} {inp.get('path')}" if isinstance(inp, dict) and inp.get("path") else ""
        return f"{r.get('request_id', '?')} ({r.get('pipeline')}{route})"


def capture_files(paths: list[str | Path]) -> list[Path]:
    """The files to read: each path given, a directory's *.jsonl sorted by name."""
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    return files


def read_captures(paths: list[str | Path], max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[Captured | CaptureProblem]:
    """Every record in the given files, in order, or the problem that keeps it from replay."""
    registry.load_step_packages()  # the closed set of types a record may name is theirs and ours
    for f in capture_files(paths):
        yield from _read_file(f, max_record_bytes)


def _read_file(path: Path, cap: int) -> Iterator[Captured | CaptureProblem]:
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        yield CaptureProblem(name, 0, f"cannot read: {exc.strerror}")
        return
    with os.fdopen(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device would never end
            yield CaptureProblem(name, 0, "not a regular file")
            return
        for index, offset, line, problem in _lines(f, cap):
            if problem is not None:
                yield CaptureProblem(name, offset, problem, index)
            elif line.strip():
                yield _parse(name, index, offset, line)


def _lines(f: Any, cap: int) -> Iterator[tuple[int, int, bytes, str | None]]:
    """(record number, byte offset, line, problem) for every line, holding at most `cap` bytes.

    A line longer than `cap` is reported once its end (or the file's) is found; its bytes are
    dropped as they pass."""
    index, start, pos = 1, 0, 0
    parts: list[bytes] = []
    size = 0
    oversized = False
    while True:
        block = f.read(_BLOCK)
        if not block:
            break
        cut = 0
        while True:
            nl = block.find(b"\n", cut)
            piece = block[cut:] if nl < 0 else block[cut : nl + 1]
            size += len(piece)
            if not oversized:
                if size > cap:
                    oversized, parts = True, []
                else:
                    parts.append(piece)
            if nl < 0:
                break
            if oversized:
                yield index, start, b"", f"longer than the {cap}-byte record cap ({size} bytes); skipped unread (raise --max-record-bytes if it is genuine)"
            else:
                yield index, start, b"".join(parts), None
            pos = start + size
            index, start, parts, size, oversized = index + 1, pos, [], 0, False
            cut = nl + 1
    if oversized:
        yield index, start, b"", f"longer than the {cap}-byte record cap ({size} bytes, and the file ends inside it); skipped unread"
    elif size:
        yield index, start, b"".join(parts), None


def _parse(file: str, index: int, offset: int, line: bytes) -> Captured | CaptureProblem:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if not line.endswith(b"\n"):
            return CaptureProblem(file, offset, f"truncated: the file ends inside it ({len(line)} bytes, no newline)", index)
        return CaptureProblem(file, offset, f"not JSON ({exc})", index)
    try:
        check_record(record)
    except RecordFormatError as exc:
        return CaptureProblem(file, offset, str(exc), index)
    return Captured(file, offset, record, index)


def check_record(record: Any) -> None:
    """Raise `RecordFormatError` unless `record` is a run record replay can use as it is."""
    if not isinstance(record, dict):
        raise RecordFormatError("", f"not a capture record (a JSON {type(record).__name__}, not an object)")
    fmt = record.get("format")
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("engine-capture/"):
            raise RecordFormatError("format", f"written as {fmt!r}; this engine reads {FORMAT!r} (replay it with the engine version that wrote it)")
        raise RecordFormatError("format", f"not an {FORMAT} record")
    for key, kind in (("pipeline", str), ("request_id", str)):
        if not isinstance(record.get(key), kind):
            raise RecordFormatError(key, "missing, or not a string")
    for key, kind in (("ids", str), ("times", (int, float)), ("calls", dict), ("trace", dict)):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
            raise RecordFormatError(key, f"must be a list of {'strings' if kind is str else 'numbers' if kind != dict else 'objects'}")
    if not isinstance(record.get("output"), (dict, type(None))):
        raise RecordFormatError("output", "must be an object")
    from_jsonable(record.get("input"), "input")
    for i, call in enumerate(record.get("calls") or []):
        where = f"calls.{i}"
        if not isinstance(call.get("pipeline"), str) or not isinstance(call.get("step"), str):
            raise RecordFormatError(where, "a call needs 'pipeline' and 'step' strings")
        from_jsonable(call.get("input"), f"{where}.input")
        if "output" in call:
            from_jsonable(call["output"], f"{where}.output")
        items = call.get("items")
        if items is not None:
            if not isinstance(items, list) or not all(isinstance(it, list) and len(it) == 2 and isinstance(it[0], (int, float)) for it in items):
                raise RecordFormatError(f"{where}.items", "must be a list of [offset, item] pairs")
            for j, (_, item) in enumerate(items):
                from_jsonable(item, f"{where}.items.{j}")
        if call.get("error"):
            rebuild_error(call["error"], f"{where}.error")
