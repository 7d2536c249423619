"""A capture file is data from outside: `engine replay` never imports what it names, never
holds more of it than one bounded record, and answers a bad record with exit 2 naming the
file, the record and what is wrong (issue 13 item 5)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.capture import RecordedError, RecordFormatError, from_jsonable, jsonable, rebuild_error
from engine.capture_reader import Captured, CaptureProblem, read_captures
from tests.pipelines.test_capture_replay import CAPTURES, capture_env

REPO = Path(__file__).resolve().parents[2]
LINES = CAPTURES.read_bytes().splitlines(keepends=True)


def replay(*args: str, cwd: Path, limit_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    """`engine replay` in a child process, optionally under an address-space limit."""

    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    env = {**os.environ, **capture_env(), "PYTHONPATH": f"{REPO}{os.pathsep}{cwd}"}
    return subprocess.run(
        [sys.executable, "-m", "engine", "replay", *args, "--pipelines", str(REPO / "pipelines")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit,
    )


def marker_module(directory: Path) -> Path:
    """A module that leaves a file behind if anything imports it; returns that file's path."""
    marker = directory / "IMPORTED"
    (directory / "capture_marker_mod.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib
            pathlib.Path({str(marker)!r}).write_text("imported")

            class Payload:
                def __init__(self, **kw):
                    pathlib.Path({str(marker)!r}).write_text("called")
            """
        )
    )
    return marker


def test_a_capture_naming_a_module_is_refused_not_imported(tmp_path: Path) -> None:
    """A record whose `$type` names an importable module: the module is never imported, and the
    record is reported (file, record number, byte offset, where in it, what is wrong) with exit 2;
    the other records still replay."""
    marker = marker_module(tmp_path)
    crafted = LINES[1].replace(b'"$type":"engine.types:Request"', b'"$type":"capture_marker_mod:Payload"', 1)
    assert crafted != LINES[1]
    path = tmp_path / "crafted.jsonl"
    path.write_bytes(LINES[0] + crafted + LINES[2])
    done = replay(str(path), cwd=tmp_path)
    assert not marker.exists(), "replay imported a module a capture file named"
    assert done.returncode == 2, done.stdout + done.stderr
    expected = f"{path}: record 2 (byte {len(LINES[0])}): input: unknown type 'capture_marker_mod:Payload'"
    assert expected in done.stderr
    assert done.stdout.startswith("2 runs, 2 matched, 0 changed, 0 skipped, 1 unreadable record")
    assert "Traceback" not in done.stderr


def test_an_error_class_a_capture_names_is_never_imported(tmp_path: Path) -> None:
    """A recorded error naming an unknown class comes back as a RecordedError carrying the
    name as text; the module stays unimported, and a tag it does not know is an error."""
    marker = marker_module(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        exc = rebuild_error({"class": "capture_marker_mod:Payload", "message": "boom", "attrs": {"status": 500}})
        with pytest.raises(RecordFormatError, match="unknown type 'capture_marker_mod:Payload'"):
            from_jsonable({"$type": "capture_marker_mod:Payload"})
        with pytest.raises(RecordFormatError, match="not a public attribute name"):
            rebuild_error({"class": "engine.errors:StepError", "message": "x", "attrs": {"__class__": 1}})
    finally:
        sys.path.remove(str(tmp_path))
    assert isinstance(exc, RecordedError) and exc.recorded_class == "capture_marker_mod:Payload" and str(exc) == "boom"
    assert "capture_marker_mod" not in sys.modules and not marker.exists()


def test_tagged_values_round_trip_and_data_is_never_a_tag() -> None:
    """Sets and bytes come back as themselves; a plain dict whose keys look like tags (a tool
    schema with a `$type` property) comes back as the same dict, not as a type lookup."""
    value = {"schema": {"$type": "os:system", "$bytes": 1}, "drop": frozenset({"b", "a"}), "raw": b"\xff\x00", "text": b"hi"}
    written = json.loads(json.dumps(jsonable(value)))
    assert from_jsonable(written) == value


def test_an_oversized_record_is_skipped_unread(tmp_path: Path) -> None:
    """A record longer than --max-record-bytes is reported with its number and offset and skipped;
    the records after it replay."""
    big = max(range(len(LINES)), key=lambda i: len(LINES[i]))
    path = tmp_path / "big.jsonl"
    path.write_bytes(LINES[0] + LINES[big] + LINES[1])
    cap = len(LINES[big]) // 2
    done = replay(str(path), "--max-record-bytes", str(cap), "--quiet", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{path}: record 2 (byte {len(LINES[0])}): longer than the {cap}-byte record cap ({len(LINES[big])} bytes)" in done.stderr
    assert done.stdout.startswith("2 runs, 2 matched, 0 changed, 0 skipped, 1 unreadable record")


def test_a_huge_record_does_not_exhaust_memory(tmp_path: Path) -> None:
    """A 2 GiB record (a sparse file: no disk used) read under a 1 GiB address-space limit: the
    reader streams past it at the default 256 MiB cap instead of loading it, and says so."""
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as f:
        f.write(LINES[0])
        f.truncate(len(LINES[0]) + 2 * 1024**3)  # zeros to the end, no newline
    done = replay(str(path), cwd=tmp_path, limit_bytes=1024**3)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{path}: record 2 (byte {len(LINES[0])}): longer than the {256 * 1024**2}-byte record cap" in done.stderr
    assert "file ends inside it" in done.stderr
    assert done.stdout.startswith("1 run, 1 matched")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"\x00\xffgarbage\x01\n", "not JSON"),
        (b'{"format": "engine-capture/1", "pipeline": "messages"\n', "not JSON"),
        (b"[1, 2, 3]\n", "not a capture record (a JSON list, not an object)"),
        (b'{"format": "something-else/3"}\n', "format: not an engine-capture/1 record"),
        (b'{"format": "engine-capture/9", "pipeline": "messages", "request_id": "r"}\n', "format: written as 'engine-capture/9'; this engine reads 'engine-capture/1'"),
        (b'{"format": "engine-capture/1", "pipeline": "messages", "request_id": "r", "calls": [{"step": 1}]}\n', "calls.0: a call needs 'pipeline' and 'step' strings"),
        (b'{"format": "engine-capture/1", "pipeline": "messages", "request_id": "r", "input": {"body": {"$base64": "@@@"}}}\n', "input.body: '$base64' does not hold base64 text"),
        (b'{"format": "engine-capture/1", "pipeline": "messages", "request_id": "r", "input": {"$type": "engine.types:Request", "method": "GET", "evil": 1}}\n', "input: type 'engine.types:Request' has no field 'evil'"),
        (b'{"format": "engine-capture/1", "pipeline": "messages", "request_id": "r", "input": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", "not JSON"),
    ],
    ids=["binary", "cut-json", "array", "other-format", "newer-version", "bad-call", "bad-base64", "unknown-field", "deep-nesting"],
)
def test_a_bad_record_is_named_and_the_rest_is_read(tmp_path: Path, line: bytes, problem: str) -> None:
    """Garbage, a record of another format or version, or one with an ill-formed value: a
    problem naming file, record and byte offset; the records around it still come through."""
    path = tmp_path / "bad.jsonl"
    path.write_bytes(LINES[0] + line + LINES[1])
    items = list(read_captures([path]))
    assert [type(i) for i in items] == [Captured, CaptureProblem, Captured]
    assert str(items[1]).startswith(f"{path}: record 2 (byte {len(LINES[0])}): {problem}"), str(items[1])
    assert items[2].index == 3 and items[2].offset == len(LINES[0]) + len(line)


def test_a_device_or_fifo_is_not_read(tmp_path: Path) -> None:
    """A capture path that is not a regular file (a FIFO would block, /dev/zero never ends)."""
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    [problem] = list(read_captures([fifo]))
    assert isinstance(problem, CaptureProblem) and str(problem) == f"{fifo}: the file: not a regular file"
