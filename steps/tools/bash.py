"""Bash, run by the gateway: one allowlisted program, no shell, inside the OS sandbox.

The guarantee is the kernel's: every command runs in `steps.tools.sandbox` (bubblewrap: only
the workspace visible and writable, no network, own PID namespace, an unprivileged uid, CPU,
memory, process and file-size limits), so whatever a program does with its arguments, it
cannot read, write or reach anything else. When that sandbox cannot be built, Bash refuses
every call with the reason: it never runs a command without it.

What stays in front of the sandbox is a tripwire, not the boundary: the command line is split
with `shlex` and run directly (never `sh -c`), so `;`, `|`, `&&`, `$(...)`, redirections and
globs are refused with a clear reason rather than passed as literal arguments; the program must
be on the allowlist from the YAML; arguments that plainly name paths outside the workspace are
refused early with a message the model can act on. The command runs with a clean environment
(PATH, HOME and PWD set to the workspace, LANG; no keys), bounded in time and output; on
timeout or output cap the whole sandbox is killed.
"""

from __future__ import annotations

import shlex
import shutil
import signal
from dataclasses import dataclass, field

import anyio
from anyio.abc import ByteReceiveStream

from steps.tools import sandbox
from steps.tools.sandbox import MOUNT, SAFE_PATH, Sandbox, SandboxUnavailable
from steps.tools.workspace import ToolRefused, Workspace

_OPERATORS = {"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<", "<<<", "2>", "2>&1", "&>", "|&", "(", ")"}
_META = ("$(", "`", "${")


@dataclass(frozen=True, slots=True)
class BashLimits:
    """What the YAML says Bash may do, and how its sandbox is built."""

    allow: tuple[str, ...] = ()
    timeout: float = 30.0
    max_output: int = 100_000
    max_file_bytes: int = 100 * 1024 * 1024
    max_memory_bytes: int = 1024 * 1024 * 1024
    max_processes: int = 64
    max_cpu_seconds: int = 60
    tmp_bytes: int = 64 * 1024 * 1024
    user: str | int = "nobody"
    bwrap: str = "/usr/bin/bwrap"
    allow_paths: tuple[str, ...] = field(default=("/dev/null", "/dev/zero", "/dev/urandom"))

    def sandbox(self) -> Sandbox:
        return Sandbox(bwrap=self.bwrap, user=self.user, cpu_seconds=int(self.max_cpu_seconds),
                       memory_bytes=int(self.max_memory_bytes), processes=int(self.max_processes),
                       file_bytes=int(self.max_file_bytes), tmp_bytes=int(self.tmp_bytes))


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
    """Tripwire: an argument that plainly names a path outside the workspace is refused with a
    message the model can act on. Lexical only: the sandbox is what actually holds."""
    value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
    if value in lim.allow_paths:
        return
    if value.startswith("~"):
        raise ToolRefused(f"argument {arg!r} points outside the workspace")
    if value.startswith("/") or ".." in value.split("/"):
        try:
            ws.parts(value)
        except ToolRefused:
            raise ToolRefused(f"argument {arg!r} points outside the workspace (it is {MOUNT} for commands)") from None
        if value.startswith("/") and not (value == MOUNT or value.startswith(MOUNT + "/")):
            raise ToolRefused(f"argument {arg!r}: commands see the workspace at {MOUNT}; use a relative path or {MOUNT}/...")


async def run(ws: Workspace, lim: BashLimits, args: dict) -> tuple[str, bool]:
    """Run one command in the sandbox; returns (output, is_error). Refusals raise ToolRefused."""
    box = lim.sandbox()
    verdict = await sandbox.probe_async(box)
    if not verdict.ok:
        raise ToolRefused(f"server-side Bash is off: the sandbox cannot be built: {verdict.reason}")
    argv = parse_command(args.get("command"), ws, lim)
    timeout = lim.timeout
    asked = args.get("timeout")
    if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked > 0:
        timeout = min(timeout, asked / 1000)  # Claude Code gives milliseconds
    env = {"PATH": SAFE_PATH, "HOME": MOUNT, "LANG": "C.UTF-8", "PWD": MOUNT}
    chunks: list[bytes] = []
    size = 0
    capped = False
    timed_out = False
    try:
        async with sandbox.spawn(box, ws.root, argv, env) as process:

            async def pump(stream: ByteReceiveStream) -> None:
                nonlocal size, capped
                async for data in stream:
                    room = lim.max_output - size
                    if room > 0:
                        chunks.append(data[:room])
                    size += len(data)
                    if size >= lim.max_output:
                        capped = True
                        sandbox.kill(process)
                        return

            with anyio.move_on_after(timeout) as scope:
                assert process.stdout is not None
                await pump(process.stdout)
                await process.wait()
            timed_out = scope.cancelled_caught
    except SandboxUnavailable as exc:
        raise ToolRefused(f"server-side Bash is off: the sandbox cannot be built: {exc}") from None
    out = b"".join(chunks).decode("utf-8", "replace")
    code = process.returncode
    notes = []
    if capped:
        notes.append(f"[output capped at {lim.max_output} bytes; the command was stopped]")
    if timed_out:
        return f"timed out after {timeout:g} s; the command and everything it started were killed" + (f"\n{out}" if out else ""), True
    if not capped and code is not None and code != 0:
        number = -code if code < 0 else code - 128  # bwrap reports a signal death as 128 + signal
        if number in signal.Signals._value2member_map_:
            notes.append(f"[killed by signal {signal.Signals(number).name}]")
        else:
            notes.append(f"[exit code {code}]")
    text = out + ("\n" if out and notes else "") + "\n".join(notes)
    return text or "(no output)", bool(code != 0 and not capped)
