"""Capture durability under disk faults (RELIABILITY §6.3, §6.4): a record is whole or absent."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import structlog

from engine.capture import CaptureWriter

REPO = Path(__file__).resolve().parents[2]


def wait_until(condition, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def records(directory: Path) -> list[dict]:
    out = []
    for f in sorted(directory.glob("capture-*.jsonl")):
        data = f.read_bytes()
        assert not data or data.endswith(b"\n"), f"{f.name} ends inside a record"
        out += [json.loads(line) for line in data.splitlines()]
    return out


def test_a_failed_fsync_loses_that_record_only_and_is_never_retried(tmp_path: Path) -> None:
    """§6.4: fsync fails with EIO for the second record: it is cut from the file (the others
    stay), fsync is not called again for it, and one ERROR line is logged."""
    calls: list[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)

    with structlog.testing.capture_logs() as logged:
        writer = CaptureWriter(tmp_path / "c", fsync=fsync)
        for i in range(3):
            writer.submit({"request_id": f"req_{i}", "pad": "x" * 1000})
        assert wait_until(lambda: writer.written + writer.failures == 3)
        writer.close()
    assert [r["request_id"] for r in records(tmp_path / "c")] == ["req_0", "req_2"]
    assert len(calls) == 3  # one fsync per record: no second try of the failed one
    assert writer.failures == 1
    errors = [e for e in logged if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["capture write failed: EIO (Input/output error)"]


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /tmp && true"], capture_output=True)
    return probe.returncode == 0


CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from engine import logs
    from engine.capture import CaptureWriter

    logs.configure("json", "info")
    root = sys.argv[1]
    with open(os.path.join(root, "ballast"), "wb") as f:  # leave room for about 10 records
        f.write(b"0" * (150 * 1024))
    writer = CaptureWriter(os.path.join(root, "c"))

    def settle(n):
        end = time.monotonic() + 60
        while writer.written + writer.failures < n and time.monotonic() < end:
            time.sleep(0.01)

    for i in range(30):  # about 300 KB into a 256 KB file system
        writer.submit({"request_id": f"a{i:02d}", "pad": "x" * 10000})
    settle(30)
    full = {"written": writer.written, "failures": writer.failures}
    os.unlink(os.path.join(root, "ballast"))  # space comes back: capture resumes, no restart
    for i in range(3):
        writer.submit({"request_id": f"b{i}", "pad": "x" * 10000})
    settle(33)
    writer.close()
    ids = []
    for name in sorted(os.listdir(os.path.join(root, "c"))):
        data = open(os.path.join(root, "c", name), "rb").read()
        assert not data or data.endswith(b"\\n"), "a partial record"
        ids += [json.loads(line)["request_id"] for line in data.splitlines()]
    print("RESULT " + json.dumps({"full": full, "after": writer.written, "ids": ids}))
    """
)


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -rm` and a tmpfs mount")
def test_a_full_disk_loses_records_whole_and_capture_resumes(tmp_path: Path) -> None:
    """§6.3: the capture directory on a 256 KB tmpfs (a real ENOSPC, in a private mount
    namespace): records that do not fit are dropped whole, the error is logged once (rate
    limited) with its errno, and once space is free capture goes on without a restart."""
    root = tmp_path / "fs"
    root.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cmd = f"mount -t tmpfs -o size=256k none {root} && exec {sys.executable} {script} {root}"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[7:])
    assert result["full"]["failures"] > 0 and result["full"]["written"] > 0
    assert result["after"] == result["full"]["written"] + 3
    written_a = [i for i in result["ids"] if i.startswith("a")]
    assert len(written_a) == result["full"]["written"] and written_a == sorted(written_a)
    assert [i for i in result["ids"] if i.startswith("b")] == ["b0", "b1", "b2"]
    logged = [json.loads(x) for x in (done.stdout + done.stderr).splitlines() if x.startswith("{")]
    errors = [e for e in logged if e.get("level") == "error" or e.get("log_level") == "error"]
    assert len(errors) == 1 and errors[0]["event"].startswith("capture write failed: ENOSPC"), errors
