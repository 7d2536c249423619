"""The OS sandbox every subprocess of a server-side tool runs in: bubblewrap plus rlimits.

Why the kernel and not a parser: an argument checker cannot know what `python3 -c ...`, a
`find -fprint` or an option it has never seen will open, so the wall must hold whatever the
program does. bubblewrap (`bwrap`) builds it from namespaces:

- a new mount namespace holding only the workspace (bound read-write at /workspace, the
  working directory), the system's program and library trees read-only (/usr and the /bin,
  /lib... links or directories beside it), a few read-only files from /etc that dynamic
  linking and program lookup need, a synthetic /etc/passwd and /etc/group naming only the
  sandbox user, a fresh size-capped tmpfs on /tmp and /dev/shm, a minimal /dev and the /proc
  of its own PID namespace. No home directory, no other /tmp, no gateway files exist there;
- new network (no interface but a loopback of its own), PID, IPC, UTS and, where the kernel
  has it, cgroup namespaces;
- an unprivileged uid/gid (65534 unless the YAML names another user) and no capabilities;
  `--die-with-parent` and `--new-session` (no terminal to inject keystrokes into);
- rlimits set by `prlimit` before bwrap starts, inherited by everything inside: CPU seconds
  per process, address space, processes (counted per uid), file size, no core dumps.

How the unprivileged user is made depends on who runs the gateway. Not root: bwrap creates a
user namespace (`--unshare-user`, `--disable-userns`) whose uid 65534 maps to the gateway's own
uid, with no capabilities. Root: a user namespace would map 65534 back to host root, so instead
bwrap builds the namespaces with root's privileges and `setpriv` inside switches to the real
unprivileged uid/gid, clears the groups, the capability bounding set and sets no_new_privs
before the program runs. Either way the workspace is bound from an open descriptor
(`--bind-fd`), so the directory mounted is the one the gateway opened, whatever its path does.

Killing the outer bwrap (the timeout kills its process group) takes the sandbox's PID 1 with
it (`--die-with-parent`), and the kernel then kills every process left in that PID namespace:
background children and grandchildren included.

`probe` builds the whole sandbox once and runs `true` in it; its verdict is cached per
configuration. When the sandbox cannot be built (no bwrap, no namespaces allowed, an option the
installed bwrap lacks), the tools that need it refuse with that reason: fail closed.

Bash is the only server-side tool that starts a subprocess: the file tools, Glob and Grep are
pure Python in the gateway (confined by `steps.tools.workspace`), WebFetch and web search are
HTTP clients (confined by `steps.tools.fetch`'s address checks). A tool that ever needs a
program goes through `spawn` here.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import anyio
import anyio.to_thread
from anyio.abc import Process

MOUNT = "/workspace"  # where the workspace appears inside the sandbox
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_HELPERS_PATH = SAFE_PATH + ":/usr/sbin:/sbin"
_SYSTEM_TREES = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime")
PROBE_SECONDS = 60.0


class SandboxUnavailable(Exception):
    """The sandbox cannot be built here; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class Sandbox:
    """How to build the sandbox (from the `bash:` block of the pipeline YAML)."""

    bwrap: str = "/usr/bin/bwrap"
    user: str | int = "nobody"
    cpu_seconds: int = 60
    memory_bytes: int = 1024 * 1024 * 1024
    processes: int = 64
    file_bytes: int = 100 * 1024 * 1024
    tmp_bytes: int = 64 * 1024 * 1024

    def ids(self) -> tuple[int, int, str]:
        """(uid, gid, name) of the sandbox user: a number, or a name looked up on the host."""
        user = self.user
        if isinstance(user, int) or (isinstance(user, str) and user.isdigit()):
            uid, gid, name = int(user), int(user), "sandbox"
        else:
            try:
                pw = pwd.getpwnam(str(user))
            except KeyError:
                raise SandboxUnavailable(f"the sandbox user {user!r} does not exist on this machine (set bash.user to a name or a uid)") from None
            uid, gid, name = pw.pw_uid, pw.pw_gid, pw.pw_name
        if uid == 0 or gid == 0:
            raise SandboxUnavailable(f"the sandbox user {user!r} is root; name an unprivileged user")
        return uid, gid, name

    def describe(self) -> str:
        uid, gid, _ = self.ids()
        return (f"workspace only at {MOUNT}, no network, own PID namespace, uid {uid}/gid {gid}, "
                f"limits: {self.cpu_seconds} s CPU, {_size(self.memory_bytes)} memory, {self.processes} processes, "
                f"{_size(self.file_bytes)} per file")

    def command(self, workspace_fd: int, passwd_fd: int, group_fd: int, argv: list[str]) -> list[str]:
        """The full argv: prlimit, bwrap with every mount and namespace, [setpriv], the program."""
        if not os.path.isabs(self.bwrap):
            raise SandboxUnavailable(f"bash.bwrap must be an absolute path, got {self.bwrap!r}")
        if not os.access(self.bwrap, os.X_OK):
            raise SandboxUnavailable(f"bubblewrap is not installed at {self.bwrap} (install the 'bubblewrap' package)")
        prlimit = _helper("prlimit")
        uid, gid, _ = self.ids()
        as_root = os.geteuid() == 0
        cmd = [
            prlimit,
            f"--cpu={self.cpu_seconds}",
            f"--as={self.memory_bytes}",
            f"--nproc={self.processes}",
            f"--fsize={self.file_bytes}",
            "--core=0",
            "--",
            self.bwrap,
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session",
        ]
        if as_root:
            # Root: namespaces built with root's privileges, then setpriv (below) becomes the
            # unprivileged user; only the capabilities setpriv needs survive until then.
            cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        else:
            cmd += ["--unshare-user", "--disable-userns", "--uid", str(uid), "--gid", str(gid), "--cap-drop", "ALL"]
        cmd += ["--ro-bind", "/usr", "/usr"]
        for tree in _SYSTEM_TREES:
            if os.path.islink(tree):
                cmd += ["--symlink", os.readlink(tree), tree]
            elif os.path.isdir(tree):
                cmd += ["--ro-bind", tree, tree]
        cmd += ["--perms", "0755", "--dir", "/etc"]
        for path in _ETC_FILES:
            cmd += ["--ro-bind-try", path, path]
        cmd += [
            "--perms", "0644", "--ro-bind-data", str(passwd_fd), "/etc/passwd",
            "--perms", "0644", "--ro-bind-data", str(group_fd), "/etc/group",
            "--proc", "/proc",
            "--dev", "/dev",
            "--perms", "1777", "--size", str(self.tmp_bytes), "--tmpfs", "/tmp",
            "--perms", "1777", "--size", str(self.tmp_bytes), "--tmpfs", "/dev/shm",
            "--bind-fd", str(workspace_fd), MOUNT,
            "--chdir", MOUNT,
            "--",
        ]
        if as_root:
            cmd += [_helper("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                    "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"]
        return cmd + argv

    def _identity(self) -> tuple[bytes, bytes]:
        uid, gid, name = self.ids()
        passwd = f"{name}:x:{uid}:{gid}:{name}:{MOUNT}:/usr/sbin/nologin\n".encode()
        group = f"{name}:x:{gid}:\n".encode()
        return passwd, group


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def _helper(name: str) -> str:
    found = shutil.which(name, path=_HELPERS_PATH)
    if found is None:
        raise SandboxUnavailable(f"{name} is not installed (util-linux); the sandbox needs it")
    return found


def _data_fd(data: bytes) -> int:
    """A pipe's read end already holding `data` (bwrap copies it into the sandbox)."""
    r, w = os.pipe()
    try:
        os.write(w, data)  # a few dozen bytes: far below the pipe buffer
    finally:
        os.close(w)
    return r


class _Launch:
    """The descriptors one sandbox start needs, closed in the parent once the child has them."""

    def __init__(self, box: Sandbox, workspace: str, argv: list[str]) -> None:
        self.fds: list[int] = []
        try:
            ws_fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.fds.append(ws_fd)
            passwd, group = box._identity()
            self.fds += [_data_fd(passwd), _data_fd(group)]
            self.argv = box.command(ws_fd, self.fds[1], self.fds[2], argv)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.fds:
            with suppress(OSError):
                os.close(fd)
        self.fds = []


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str  # why not, or what was built ("bubblewrap 0.8.0 at /usr/bin/bwrap")


_verdicts: dict[Sandbox, Verdict] = {}
_probe_lock = threading.Lock()


def probe(box: Sandbox) -> Verdict:
    """Build the sandbox once and run `true` in it; the verdict is cached per configuration."""
    with _probe_lock:
        verdict = _verdicts.get(box)
        if verdict is None:
            verdict = _verdicts[box] = _probe(box)
        return verdict


async def probe_async(box: Sandbox) -> Verdict:
    cached = _verdicts.get(box)
    if cached is not None:
        return cached
    return await anyio.to_thread.run_sync(probe, box)


def _probe(box: Sandbox) -> Verdict:
    true = shutil.which("true", path=SAFE_PATH)
    if true is None:
        return Verdict(False, "'true' is not installed, so the sandbox cannot be tested")
    try:
        with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as tmp:
            launch = _Launch(box, tmp, [true])
            try:
                done = subprocess.run(launch.argv, stdin=subprocess.DEVNULL, capture_output=True, pass_fds=launch.fds,
                                      env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"}, timeout=PROBE_SECONDS, check=False)
            finally:
                launch.close()
    except SandboxUnavailable as exc:
        return Verdict(False, str(exc))
    except subprocess.TimeoutExpired:
        return Verdict(False, f"bubblewrap did not finish a test run of 'true' within {PROBE_SECONDS:g} s")
    except OSError as exc:
        return Verdict(False, f"cannot start bubblewrap at {box.bwrap}: {exc.strerror or exc}")
    if done.returncode != 0:
        said = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        why = said[-1].strip() if said else f"exit status {done.returncode}"
        return Verdict(False, f"bubblewrap at {box.bwrap} could not build the sandbox: {why}")
    version = subprocess.run([box.bwrap, "--version"], capture_output=True, check=False, timeout=PROBE_SECONDS)
    name = version.stdout.decode("utf-8", "replace").strip() or "bubblewrap"
    return Verdict(True, f"{name} at {box.bwrap}")


@asynccontextmanager
async def spawn(box: Sandbox, workspace: str, argv: list[str], env: dict[str, str]) -> AsyncIterator[Process]:
    """Start `argv` in the sandbox with stdout+stderr on one pipe, in its own process group.

    Raises SandboxUnavailable (with the probe's reason) when the sandbox cannot be built. On
    leaving, whatever is left of the group is killed and reaped.
    """
    verdict = await probe_async(box)
    if not verdict.ok:
        raise SandboxUnavailable(verdict.reason)
    launch = _Launch(box, workspace, argv)
    try:
        process = await anyio.open_process(
            launch.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, pass_fds=launch.fds,
        )
    finally:
        launch.close()
    try:
        yield process
    finally:
        kill(process)
        with anyio.move_on_after(5, shield=True):
            await process.wait()
        await process.aclose()


def kill(process: Process) -> None:
    """SIGKILL the sandbox's process group; the PID namespace dies with bwrap."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
