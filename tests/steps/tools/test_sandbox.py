"""The real bubblewrap sandbox, driven directly (no argument checker in front): each test is an
escape or an exhaustion a program could try, and the kernel must stop it. CI installs
bubblewrap (.ci/run), so these run against the real thing; without it they fail with the reason."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import anyio
import pytest

from steps.tools import bash, sandbox
from steps.tools.sandbox import MOUNT, Sandbox
from steps.tools.workspace import ToolRefused, Workspace

REPO = Path(__file__).resolve().parents[3]
CANARY = "CANARY-sandbox-3e1d-do-not-leak"
PY = "/usr/bin/python3"
# Small limits so the exhaustion tests end fast; 32 processes keep a fork bomb from starving
# other sandboxes on the same machine (RLIMIT_NPROC counts per uid).
BOX = Sandbox(cpu_seconds=20, memory_bytes=512 * 1024 * 1024, processes=32, file_bytes=4 * 1024 * 1024, tmp_bytes=8 * 1024 * 1024)


@pytest.fixture(scope="module", autouse=True)
def _sandbox_builds() -> None:
    verdict = sandbox.probe(BOX)
    assert verdict.ok, f"the sandbox cannot be built here (install bubblewrap): {verdict.reason}"


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "ws"
    w.mkdir()
    os.chmod(w, 0o777)  # the sandbox user must be able to write it when the tests run as root
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (outside / "secret.txt").write_text(CANARY + "\n")
    return w


def run(ws: Path, argv: list[str], box: Sandbox = BOX, seconds: float = 60) -> tuple[int | None, str]:
    """Run argv in the sandbox with ws as the workspace: (exit status, stdout+stderr)."""

    async def go() -> tuple[int | None, str]:
        env = {"PATH": sandbox.SAFE_PATH, "HOME": MOUNT, "LANG": "C.UTF-8"}
        async with sandbox.spawn(box, str(ws), argv, env) as process:
            chunks = []
            with anyio.move_on_after(seconds):
                assert process.stdout is not None
                async for data in process.stdout:
                    chunks.append(data)
                await process.wait()
        return process.returncode, b"".join(chunks).decode("utf-8", "replace")

    return anyio.run(go)


def py(ws: Path, code: str, box: Sandbox = BOX) -> tuple[int | None, str]:
    return run(ws, [PY, "-c", code], box)


def test_runs_as_an_unprivileged_user_without_capabilities(ws: Path) -> None:
    code, out = py(ws, "import os; print(os.getuid(), os.getgid(), os.getgroups()); "
                       "print([l for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapPrm', 'CapBnd', 'NoNewPrivs'))])")
    assert code == 0, out
    assert out.splitlines()[0] == "65534 65534 []"
    assert "CapEff:\\t0000000000000000" in out and "CapPrm:\\t0000000000000000" in out and "NoNewPrivs:\\t1" in out


def test_only_the_workspace_and_system_trees_are_visible(ws: Path) -> None:
    """No /home, /root, /etc/shadow, no gateway files, no host /tmp: the mount namespace lacks them."""
    marker = Path("/tmp") / f"host-tmp-{os.getpid()}-{time.time_ns()}"
    marker.write_text(CANARY)
    try:
        secret = ws.parent / "outside" / "secret.txt"
        targets = ["/etc/shadow", "/root", "/home", str(secret), str(REPO / "pyproject.toml"), str(marker), str(ws)]
        code, out = py(ws, "import os, sys\n"
                           f"for p in {targets!r}:\n"
                           "    print(p, os.path.exists(p))\n"
                           "import json\nprint(json.dumps(sorted(os.listdir('/'))))\nprint(json.dumps(sorted(os.listdir('/etc'))))\nprint(os.listdir('/tmp'))\nprint(os.getcwd())")
    finally:
        marker.unlink()
    assert code == 0, out
    lines = out.splitlines()
    assert all(line.endswith(" False") for line in lines[: len(targets)]), out
    assert set(json.loads(lines[len(targets)])) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr", "workspace"}
    assert set(json.loads(lines[len(targets) + 1])) <= {"alternatives", "group", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd"}
    assert lines[-2] == "[]" and lines[-1] == MOUNT
    # the same through a plain program, with the checker out of the way
    code, out = run(ws, ["/usr/bin/cat", "/etc/shadow", str(secret)])
    assert code != 0 and CANARY not in out and "No such file" in out


def test_the_workspace_is_the_only_writable_place(ws: Path) -> None:
    outside = ws.parent / "outside"
    code, out = py(ws, "import os\n"
                       "open('inside.txt', 'w').write('ok')\n"
                       f"for p in ['/usr/pwned', '/etc/pwned', '{outside}/pwned', '/pwned']:\n"
                       "    try:\n        open(p, 'w').write('x'); print('WROTE', p)\n"
                       "    except OSError as e:\n        print('refused', p, e.strerror)")
    assert code == 0, out
    assert "WROTE" not in out and out.count("refused") == 4
    assert (ws / "inside.txt").read_text() == "ok"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert not Path("/usr/pwned").exists() and not Path("/pwned").exists()


def test_no_network_not_even_the_hosts_loopback(ws: Path) -> None:
    """A listener on the host's 127.0.0.1 is unreachable: the sandbox has its own, empty network."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        server.settimeout(0.5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not stop.is_set():
            try:
                accepted.append(server.accept())
            except TimeoutError:
                continue
            except OSError:
                return

    stop = threading.Event()
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        code, out = py(ws, "import socket\n"
                           f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=5); print('CONNECTED')\n"
                           "except OSError as e:\n    print('refused', type(e).__name__)\n"
                           "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))")
    finally:
        stop.set()
        t.join(5)
        server.close()
    assert code == 0, out
    assert "CONNECTED" not in out and "refused ConnectionRefusedError" in out
    assert out.splitlines()[-1] == "['lo']"
    assert accepted == []


def test_other_processes_are_invisible(ws: Path) -> None:
    """/proc is the sandbox's own PID namespace: not the gateway, not the host's init."""
    code, out = py(ws, "import json, os; print(json.dumps(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())))")
    assert code == 0, out
    pids = json.loads(out.splitlines()[0])
    assert os.getpid() not in pids and len(pids) <= 3 and max(pids) < 10, pids


def test_fork_bomb_stops_at_the_process_limit(ws: Path) -> None:
    marker = f"bomb-{os.getpid()}-{time.time_ns()}"
    code, out = py(ws, "import os, time, sys\n"
                       "n = 0\n"
                       "try:\n"
                       "    for _ in range(200):\n"
                       f"        if os.fork() == 0:\n            time.sleep(30); os._exit(0)  # {marker}\n"
                       "        n += 1\n"
                       "except BlockingIOError as e:\n    print('fork refused after', n, e.strerror)\n")
    assert code == 0, out
    assert "fork refused after" in out and "Resource temporarily unavailable" in out
    assert int(out.split("after ")[1].split()[0]) < BOX.processes
    _gone(marker)  # the children died with the sandbox's PID namespace


def test_memory_file_size_and_cpu_limits(ws: Path) -> None:
    code, out = py(ws, "x = ' ' * 10**10")
    assert code != 0 and "MemoryError" in out
    code, out = run(ws, ["/usr/bin/dd", "if=/dev/zero", "of=big", "bs=1M", "count=100"])
    assert code != 0 and ("File too large" in out or code == 128 + 25), (code, out)
    assert (ws / "big").stat().st_size <= BOX.file_bytes
    code, out = run(ws, ["/usr/bin/dd", "if=/dev/zero", "of=/tmp/big", "bs=1M", "count=100"])
    assert code != 0, out  # /tmp is a capped tmpfs of its own
    fast = Sandbox(cpu_seconds=1, memory_bytes=BOX.memory_bytes, processes=BOX.processes, file_bytes=BOX.file_bytes, tmp_bytes=BOX.tmp_bytes)
    assert sandbox.probe(fast).ok
    code, out = py(ws, "while True: pass", box=fast)
    assert code in (128 + 24, 128 + 9), (code, out)  # SIGXCPU at the soft limit (SIGKILL at the hard one)


def _gone(marker: str) -> None:
    """Wait (generously) until no process on the host has `marker` in its command line."""
    deadline = time.monotonic() + 40
    while True:
        left = subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout
        if not left:
            return
        assert time.monotonic() < deadline, f"processes survived the sandbox: {left!r}"
        time.sleep(0.2)


def test_timeout_kills_a_detached_grandchild(ws: Path) -> None:
    """A grandchild in its own session (out of the process group) dies with the sandbox on timeout."""
    marker = f"grandchild-{os.getpid()}-{time.time_ns()}"
    code = ("import os, subprocess, time\n"
            f"subprocess.Popen(['{PY}', '-c', 'import os, subprocess, time; os.setsid(); "
            f"subprocess.Popen([\"/usr/bin/sleep\", \"300\"]); time.sleep(300)', '{marker}'], start_new_session=True)\n"
            "time.sleep(300)")
    lim = bash.BashLimits(allow=("python3",), timeout=2, max_processes=BOX.processes, max_memory_bytes=BOX.memory_bytes,
                          max_file_bytes=BOX.file_bytes, tmp_bytes=BOX.tmp_bytes, max_cpu_seconds=BOX.cpu_seconds)
    wsp = Workspace.at(ws)

    async def go() -> tuple[str, bool]:
        return await bash.run(wsp, lim, {"command": f'python3 -c "{code}"'})

    started = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout:
                started.set()
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    text, is_error = anyio.run(go)
    t.join(1)
    assert is_error and text.startswith("timed out after 2 s"), text
    assert started.is_set(), "the grandchild never started, so the test proves nothing"
    _gone(marker)


def test_fail_closed_when_bubblewrap_is_missing(ws: Path) -> None:
    """A bwrap path that does not exist: no command runs, the refusal names the reason."""
    missing = ws.parent / "no-such-bwrap"
    lim = bash.BashLimits(allow=("touch",), bwrap=str(missing))
    verdict = sandbox.probe(lim.sandbox())
    assert not verdict.ok and f"bubblewrap is not installed at {missing}" in verdict.reason
    with pytest.raises(ToolRefused) as refused:
        anyio.run(bash.run, Workspace.at(ws), lim, {"command": "touch ran"})
    assert str(refused.value).startswith("server-side Bash is off: the sandbox cannot be built: bubblewrap is not installed at")
    assert not (ws / "ran").exists()


def test_fail_closed_when_bubblewrap_cannot_build_it(ws: Path, tmp_path: Path) -> None:
    """A 'bwrap' that exists but fails (as one without namespaces does): the probe reports its words."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    verdict = sandbox.probe(Sandbox(bwrap=str(fake)))
    assert not verdict.ok
    assert verdict.reason == f"bubblewrap at {fake} could not build the sandbox: bwrap: No permissions to create a new namespace"


@pytest.mark.parametrize("user", ["root", 0, "0", "no-such-user-5f1e"])
def test_fail_closed_for_a_privileged_or_unknown_user(user: object) -> None:
    verdict = sandbox.probe(Sandbox(user=user))  # type: ignore[arg-type]
    assert not verdict.ok and "sandbox user" in verdict.reason
