"""Bash, run by the gateway: one allowlisted program, no shell, bounded in time, output and size.

The command line is split with `shlex` and run directly (never `sh -c`), so `;`, `|`, `&&`,
`$(...)`, redirections and globs mean nothing; they are refused with a clear reason rather
than passed as literal arguments. The program must be on the allowlist from the YAML and is
looked up on a fixed PATH. Arguments that are paths outside the workspace are refused too.
As Anthropic's bash tool guide says, these checks are a tripwire, not the boundary: the
boundary is running the gateway in a container or VM. What the gateway does enforce:

- its own session and process group, killed as a whole on timeout or output cap;
- `prlimit` limits: file size (RLIMIT_FSIZE), address space (RLIMIT_AS), processes
  (RLIMIT_NPROC, which only binds a non-root uid), no core dumps;
- an unprivileged uid when the gateway runs as root (`setpriv`), so RLIMIT_NPROC holds and
  files the gateway's user owns stay out of reach;
- a clean environment: PATH, HOME (the workspace), LANG; no keys.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

import anyio
from anyio.abc import ByteReceiveStream

from steps.tools.workspace import ToolRefused, Workspace

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_OPERATORS = {"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<", "<<<", "2>", "2>&1", "&>", "|&", "(", ")"}
_META = ("$(", "`", "${")


@dataclass(frozen=True, slots=True)
class BashLimits:
    """What the YAML says Bash may do."""

    allow: tuple[str, ...] = ()
    timeout: float = 30.0
    max_output: int = 100_000
    max_file_bytes: int = 100 * 1024 * 1024
    max_memory_bytes: int = 1024 * 1024 * 1024
    max_processes: int = 64
    user: str | None = "nobody"
    allow_paths: tuple[str, ...] = field(default=("/dev/null", "/dev/zero", "/dev/urandom"))


def parse_command(command: str, ws: Workspace, lim: BashLimits) -> list[str]:
    """The argv for `command`, or ToolRefused naming what is not allowed."""
    if not isinstance(command, str) or not command.strip():
        raise ToolRefused("'command' must be a non-empty string")
    for token in _META:
        if token in command:
            raise ToolRefused(f"shell syntax {token!r} is not supported: commands run without a shell")
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|<>()")
        lexer.whitespace_split = True
        argv = list(lexer)
    except ValueError as exc:
        raise ToolRefused(f"cannot parse the command: {exc}") from None
    for arg in argv:
        if arg in _OPERATORS or (arg and set(arg) <= set(";&|<>()")):
            raise ToolRefused(f"shell operator {arg!r} is not supported: commands run without a shell, one program at a time")
    if not argv:
        raise ToolRefused("empty command")
    program = argv[0]
    if "/" in program:
        raise ToolRefused(f"program {program!r} must be a bare name from the allowlist")
    if program not in lim.allow:
        allowed = ", ".join(sorted(lim.allow)) or "none"
        raise ToolRefused(f"program {program!r} is not allowed; allowed: {allowed}")
    for arg in argv[1:]:
        _check_argument(arg, ws, lim)
    resolved = shutil.which(program, path=SAFE_PATH)
    if resolved is None:
        raise ToolRefused(f"program {program!r} is not installed")
    return [resolved, *argv[1:]]


def _check_argument(arg: str, ws: Workspace, lim: BashLimits) -> None:
    value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
    if value in lim.allow_paths:
        return
    if value.startswith("~"):
        raise ToolRefused(f"argument {arg!r} points outside the workspace")
    if value.startswith("/") or ".." in value.split("/"):
        try:
            ws.resolve(value)
        except ToolRefused:
            raise ToolRefused(f"argument {arg!r} points outside the workspace") from None


def _wrapper(lim: BashLimits) -> list[str]:
    """`prlimit ... [setpriv ...] --` prefix; limits are set by the exec'd helpers, so no
    Python code runs between fork and exec (no preexec_fn)."""
    prefix: list[str] = []
    prlimit = shutil.which("prlimit", path=SAFE_PATH + ":/usr/sbin:/sbin")
    if prlimit is not None:
        prefix = [
            prlimit,
            f"--fsize={lim.max_file_bytes}",
            f"--as={lim.max_memory_bytes}",
            f"--nproc={lim.max_processes}",
            "--core=0",
            "--",
        ]
    if os.geteuid() == 0 and lim.user:
        setpriv = shutil.which("setpriv", path=SAFE_PATH + ":/usr/sbin:/sbin")
        try:
            pw = pwd.getpwnam(lim.user)
        except KeyError:
            pw = None
        if setpriv is not None and pw is not None:
            prefix += [setpriv, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
    return prefix


async def run(ws: Workspace, lim: BashLimits, args: dict) -> tuple[str, bool]:
    """Run one command; returns (output, is_error). Refusals raise ToolRefused."""
    argv = parse_command(args.get("command"), ws, lim)
    timeout = lim.timeout
    asked = args.get("timeout")
    if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked > 0:
        timeout = min(timeout, asked / 1000)  # Claude Code gives milliseconds
    env = {"PATH": SAFE_PATH, "HOME": ws.root, "LANG": "C.UTF-8", "PWD": ws.root}
    process = await anyio.open_process(
        _wrapper(lim) + argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ws.root,
        env=env,
        start_new_session=True,
    )
    pgid = process.pid
    chunks: list[bytes] = []
    size = 0
    capped = False
    timed_out = False

    async def pump(stream: ByteReceiveStream) -> None:
        nonlocal size, capped
        async for data in stream:
            room = lim.max_output - size
            if room > 0:
                chunks.append(data[:room])
            size += len(data)
            if size >= lim.max_output:
                capped = True
                _kill_group(pgid)
                return

    try:
        with anyio.move_on_after(timeout) as scope:
            assert process.stdout is not None
            await pump(process.stdout)
            await process.wait()
        timed_out = scope.cancelled_caught
    finally:
        _kill_group(pgid)  # whatever is left of the group: background children included
        with anyio.move_on_after(5, shield=True):
            await process.wait()
        await process.aclose()
    out = b"".join(chunks).decode("utf-8", "replace")
    code = process.returncode
    notes = []
    if capped:
        notes.append(f"[output capped at {lim.max_output} bytes; the command was stopped]")
    if timed_out:
        notes.append(f"[timed out after {timeout:g} s; the command was killed]")
    elif not capped and code is not None and code != 0:
        if code < 0:
            sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            notes.append(f"[killed by signal {sig}]")
        else:
            notes.append(f"[exit code {code}]")
    text = out + ("\n" if out and notes else "") + "\n".join(notes)
    if timed_out:
        return f"timed out after {timeout:g} s" + (f"\n{out}" if out else ""), True
    return text or "(no output)", bool(timed_out or (code != 0 and not capped))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
