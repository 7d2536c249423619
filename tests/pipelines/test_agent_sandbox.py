"""RELIABILITY §4b attacks on the server-side tools, each driven through the real pipeline: the
fake upstream scripts the tool call, the gateway runs it at /agent/v1/messages. A refusal is a
result with is_error and a one-line reason; the canary never appears; files outside W keep
their sha256. Bash runs in the real bubblewrap sandbox; the escapes through `python3 -c` pass
the argument checker on purpose, so only the kernel stands in their way."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.steps.tools.agent_gateway import CANARY, Agent, outcome, results, start_agent
from tests.support.fake_openrouter import tool_mode


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    yield from start_agent(tmp_path_factory.mktemp("sandbox"))


@pytest.fixture(autouse=True)
def _guard(agent: Agent) -> Iterator[None]:
    agent.fake.clear()
    agent.fake.default_mode = "ok"
    before = agent.outside_digest()
    yield
    assert agent.outside_digest() == before, "a file outside the workspace changed"


def run_tool(agent: Agent, name: str, args: dict, stream: bool = False) -> tuple[str, bool]:
    """Script one call of `name`, run it through the gateway; (result text, is_error)."""
    agent.fake.script(tool_mode(name, args), "ok")
    msg = agent.ask(f"please use {name}", stream=stream)
    ran = results(msg)
    assert len(ran) == 1 and ran[0][0] == name
    text, is_error = outcome(ran[0][2])
    assert CANARY not in text and all(CANARY not in getattr(b, "text", "") for b in msg.content)
    upstream_result = [m for m in agent.fake.requests[-1].json["messages"] if m["role"] == "tool"][-1]
    assert upstream_result["content"].startswith("Error: ") == is_error  # is_error reached the upstream too
    assert CANARY not in str(agent.fake.requests[-1].json)
    return text, is_error


def refused(agent: Agent, name: str, args: dict, *words: str) -> str:
    text, is_error = run_tool(agent, name, args)
    assert is_error, text
    assert "\n" not in text.strip(), "a refusal is one line"
    for w in words:
        assert w in text, text
    return text


# -- 10, 11: paths out of the workspace --------------------------------------------------------

OUTSIDE = ["../ws-out/secret.txt", "{base}/ws-out/secret.txt", "/etc/passwd", "~/.ssh/id_rsa", "{ws}/../ws-out/secret.txt",
           "{base}/ws-evil/x"]


@pytest.mark.parametrize("path", OUTSIDE)
@pytest.mark.parametrize("tool", ["Read", "Write", "Edit", "LS"])
def test_paths_outside_the_workspace_are_refused(agent: Agent, tool: str, path: str) -> None:
    """§4b 10 and 11 (prefix collision ws-evil): refused, nothing read or written outside."""
    p = path.format(base=agent.base, ws=agent.ws)
    args = {"Read": {"file_path": p}, "Write": {"file_path": p, "content": "pwned"},
            "Edit": {"file_path": p, "old_string": "CANARY", "new_string": "pwned"}, "LS": {"path": p}}[tool]
    refused(agent, tool, args, "outside the workspace")


def test_symlink_escape_is_refused(agent: Agent) -> None:
    """A symlink inside W pointing out (file or directory) is an escape; Write through it too."""
    os.symlink(agent.canary, agent.ws / "link")
    os.symlink(agent.canary.parent, agent.ws / "linkdir")
    refused(agent, "Read", {"file_path": "link"}, "symlink")
    refused(agent, "Read", {"file_path": "linkdir/secret.txt"}, "symlink")
    refused(agent, "Write", {"file_path": "linkdir/new.txt", "content": "x"}, "symlink")
    refused(agent, "Write", {"file_path": "link", "content": "x"}, "symlink")
    assert not (agent.canary.parent / "new.txt").exists()


def test_hard_link_escape_is_refused(agent: Agent) -> None:
    """A hard link to a file outside W cannot be told from inside: multiply linked files are refused."""
    outside = agent.base / "ws-evil" / "hard.txt"
    outside.write_text(CANARY + " hard\n")
    os.link(outside, agent.ws / "hard")
    refused(agent, "Read", {"file_path": "hard"}, "hard links")
    refused(agent, "Edit", {"file_path": "hard", "old_string": "hard", "new_string": "x"}, "hard links")
    assert outside.read_text() == CANARY + " hard\n"
    (agent.ws / "hard").unlink()
    outside.unlink()  # created by this test: leave the outside as the guard found it


def test_write_edit_inside_the_workspace(agent: Agent) -> None:
    """The same tools work inside W: Write, Edit, MultiEdit, LS, Glob, Grep."""
    assert not run_tool(agent, "Write", {"file_path": "sub/a.py", "content": "x = 1\ny = 2\n"})[1]
    assert not run_tool(agent, "Edit", {"file_path": "sub/a.py", "old_string": "x = 1", "new_string": "x = 10"})[1]
    assert not run_tool(agent, "MultiEdit", {"file_path": "sub/a.py", "edits": [{"old_string": "y = 2", "new_string": "y = 20"}]})[1]
    assert (agent.ws / "sub" / "a.py").read_text() == "x = 10\ny = 20\n"
    assert "a.py" in run_tool(agent, "LS", {"path": "sub"})[0]
    assert run_tool(agent, "Glob", {"pattern": "**/*.py"})[0].strip() == "sub/a.py"
    assert run_tool(agent, "Grep", {"pattern": "y = \\d+", "output_mode": "content"})[0].strip() == "sub/a.py:2:y = 20"
    refused(agent, "Edit", {"file_path": "sub/a.py", "old_string": "nope", "new_string": "x"}, "not found")


# -- 15, 16: special and huge files ------------------------------------------------------------

def test_fifo_and_device_are_refused_without_blocking(agent: Agent) -> None:
    """§4b 15: a FIFO in W and /dev/zero through a symlink: refused at once."""
    os.mkfifo(agent.ws / "p")
    os.symlink("/dev/zero", agent.ws / "z")
    refused(agent, "Read", {"file_path": "p"}, "not a regular file")
    refused(agent, "Read", {"file_path": "z"}, "outside the workspace")
    refused(agent, "Write", {"file_path": "p", "content": "x"}, "not a regular file")


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_huge_sparse_file_is_capped(agent: Agent) -> None:
    """§4b 16: a 2 GB sparse file: the first lines and a truncation note; memory barely moves."""
    with open(agent.ws / "big.log", "wb") as f:
        f.write(b"".join(b"line %d\n" % i for i in range(5000)))
        f.truncate(2 * 1024**3)
    before = _rss_kb()
    text, is_error = run_tool(agent, "Read", {"file_path": "big.log"})
    assert not is_error and "truncated" in text and "2147483648 bytes" in text
    assert text.count("\n") <= 2001
    assert _rss_kb() - before < 50 * 1024


# -- 17: catastrophic regex, glob over a loop and many files ----------------------------------

def test_catastrophic_grep_times_out(agent: Agent) -> None:
    """§4b 17: `(a+)+$` over 1 MB of a…b ends at the tool timeout (2 s here) with is_error."""
    (agent.ws / "redos.txt").write_text("a" * 1_000_000 + "b")
    text = refused(agent, "Grep", {"pattern": "(a+)+$", "output_mode": "content"}, "timed out after 2 s")
    assert text


def test_glob_is_bounded(agent: Agent, tmp_path_factory: pytest.TempPathFactory) -> None:
    """§4b 17: Glob `**/*` over a symlink loop and more files than the walk bound: bounded
    results, no hang. (Scaled: the bound is 10 000 entries here, 100 000 by default, so 12 000
    files stand for RELIABILITY's 200 000 and keep the test fast.)"""
    many = agent.ws / "many"
    many.mkdir()
    for d in range(12):
        sub = many / f"d{d}"
        sub.mkdir()
        for i in range(1000):
            os.close(os.open(sub / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    os.symlink(".", many / "loop")
    text, is_error = run_tool(agent, "Glob", {"pattern": "**/*", "path": "many"})
    assert not is_error
    assert "truncated: showing 1000" in text and "stopped after 10000 entries" in text
    assert len(text.splitlines()) <= 1002
    subprocess.run(["rm", "-rf", str(many)], check=True)


# -- 20, 21, 23: Bash -----------------------------------------------------------------------------

def test_bash_runs_an_allowlisted_program(agent: Agent) -> None:
    """Bash runs one allowlisted program in W with a clean environment (no keys)."""
    (agent.ws / "hello.txt").write_text("hi there\n")
    assert run_tool(agent, "Bash", {"command": "cat hello.txt"}) == ("hi there\n", False)
    env_out, _ = run_tool(agent, "Bash", {"command": "python3 -c 'import os; print(sorted(os.environ))'"})
    assert env_out.strip() == "['HOME', 'LANG', 'PATH', 'PWD']"


@pytest.mark.parametrize("command,reason", [
    ("sleep 100 & sleep 100 & wait", "shell operator '&'"),
    ("yes | head -c 100000000", "shell operator '|'"),
    ("echo hi > /tmp/x", "shell operator '>'"),
    ("echo $(cat /etc/passwd)", "shell syntax"),
    ("rm -rf .", "not allowed"),
    ("/bin/cat hello.txt", "bare name"),
    ("cat ../ws-out/secret.txt", "outside the workspace"),
    ("cat {base}/ws-out/secret.txt", "outside the workspace"),
])
def test_bash_refusals(agent: Agent, command: str, reason: str) -> None:
    """No shell: operators and substitutions are refused, and so are programs off the allowlist."""
    refused(agent, "Bash", {"command": command.format(base=agent.base)}, reason)


@pytest.mark.parametrize("code,expect", [
    ("print(open('/etc/shadow').read())", "FileNotFoundError"),
    ("print(open('{canary}').read())", "FileNotFoundError"),
    ("import os; print(os.listdir('/root'))", "FileNotFoundError"),
    ("open('{base}/ws-evil/x', 'a').write('pwned')", "FileNotFoundError"),
    ("open('/usr/pwned', 'w')", "Read-only file system"),
    ("import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)", "ConnectionRefusedError"),
    ("import os; os.kill({pid}, 9)", "ProcessLookupError"),
])
def test_bash_escapes_past_the_checker_meet_the_sandbox(agent: Agent, code: str, expect: str) -> None:
    """The checker sees one harmless-looking argument; the kernel refuses the file, the write, the
    gateway's own port (it listens on the host's loopback) and a signal to the gateway's pid."""
    port = agent.gw.url.rsplit(":", 1)[1]
    command = f'python3 -c "{code.format(canary=agent.canary, base=agent.base, port=port, pid=os.getpid())}"'
    text, is_error = run_tool(agent, "Bash", {"command": command})
    assert is_error and expect in text, text
    assert "pwned" not in (agent.base / "ws-evil" / "x").read_text()


def test_bash_sees_the_workspace_as_its_cwd(agent: Agent) -> None:
    (agent.ws / "here.txt").write_text("here\n")
    assert run_tool(agent, "Bash", {"command": "python3 -c \"import os; print(os.getcwd(), os.listdir('.').count('here.txt'), os.getuid())\""}) == ("/workspace 1 65534\n", False)
    assert run_tool(agent, "Bash", {"command": "cat /workspace/here.txt"}) == ("here\n", False)
    refused(agent, "Bash", {"command": f"cat {agent.ws}/here.txt"}, "commands see the workspace at /workspace")


def test_bash_timeout_kills_the_process_group(agent: Agent) -> None:
    """§4b 20: timeout 2 s → is_error "timed out after 2 s"; children in the group are gone too."""
    marker = f"marker-{os.getpid()}-{time.time_ns()}"
    script = f"import subprocess, time; subprocess.Popen(['sleep', '100', '{marker}'[:0] or '100']); subprocess.Popen(['python3', '-c', 'import time; time.sleep(100)', '{marker}']); time.sleep(100)"
    text = refused(agent, "Bash", {"command": f'python3 -c "{script}"'}, "timed out after 2 s")
    assert text
    deadline = time.monotonic() + 40
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout:
        assert time.monotonic() < deadline, "a child outlived the timeout"
        time.sleep(0.2)


def test_bash_output_is_capped_and_the_command_stopped(agent: Agent) -> None:
    """§4b 21: `yes` prints forever: the output stops at the cap with a note, memory stays flat."""
    before = _rss_kb()
    text, _ = run_tool(agent, "Bash", {"command": "yes"})
    assert "output capped at 100000 bytes" in text and len(text) < 110_000
    assert _rss_kb() - before < 50 * 1024


def test_bash_memory_and_disk_limits(agent: Agent) -> None:
    """§4b 23: 10 GB of memory and 10 GB of disk are stopped by RLIMIT_AS and RLIMIT_FSIZE."""
    text, is_error = run_tool(agent, "Bash", {"command": "python3 -c \"x=' '*10**10\""})
    assert is_error and "MemoryError" in text
    text, is_error = run_tool(agent, "Bash", {"command": "dd if=/dev/zero of=big bs=1M count=10000"})
    assert is_error and "SIGXFSZ" in text or "File too large" in text
    assert (agent.ws / "big").stat().st_size <= 8 * 1024 * 1024
    (agent.ws / "big").unlink()


def test_notebooks_and_todos(agent: Agent) -> None:
    """NotebookRead/NotebookEdit edit cells in W; TodoWrite/TodoRead keep a list in W."""
    import json

    nb = {"cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "source": "print(1)", "outputs": [], "execution_count": None}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (agent.ws / "n.ipynb").write_text(json.dumps(nb))
    assert "print(1)" in run_tool(agent, "NotebookRead", {"notebook_path": "n.ipynb"})[0]
    assert not run_tool(agent, "NotebookEdit", {"notebook_path": "n.ipynb", "cell_id": "c1", "new_source": "print(2)"})[1]
    assert json.loads((agent.ws / "n.ipynb").read_text())["cells"][0]["source"] == "print(2)"
    refused(agent, "NotebookRead", {"notebook_path": "../ws-out/secret.txt"}, "outside the workspace")
    assert not run_tool(agent, "TodoWrite", {"todos": [{"content": "ship it", "status": "pending"}]})[1]
    assert "ship it" in run_tool(agent, "TodoRead", {})[0]


# -- fail closed: no sandbox, no Bash --------------------------------------------------------------

@pytest.fixture(scope="module")
def unsandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """The same gateway with bash.bwrap pointing at a file that does not exist."""
    base = tmp_path_factory.mktemp("nobwrap")
    yield from start_agent(base, {"AGENT_BWRAP": str(base / "missing" / "bwrap")})


def test_without_the_sandbox_bash_refuses_with_the_reason(unsandboxed: Agent) -> None:
    """Every Bash call is an is_error tool_result saying why; nothing runs; file tools still work."""
    unsandboxed.fake.clear()
    unsandboxed.fake.default_mode = "ok"
    missing = unsandboxed.base / "missing" / "bwrap"
    text = refused(unsandboxed, "Bash", {"command": "python3 -c \"open('ran', 'w')\""},
                   "server-side Bash is off: the sandbox cannot be built", f"bubblewrap is not installed at {missing}")
    assert "bubblewrap" in text
    assert not (unsandboxed.ws / "ran").exists()
    assert not run_tool(unsandboxed, "Write", {"file_path": "still.txt", "content": "file tools need no sandbox"})[1]


def test_start_up_note_says_whether_bash_is_sandboxed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The lines `engine serve` prints at start-up: Bash off and why, or the sandbox it runs in."""
    from engine import registry
    from tests.pipelines.conftest import PIPELINES

    monkeypatch.setenv("ENGINE_PIPELINES", str(PIPELINES))
    monkeypatch.setenv("ENGINE_SERVER_TOOLS", "on")
    monkeypatch.setenv("AGENT_BWRAP", str(tmp_path / "missing-bwrap"))
    notes = [n for n in registry.serving_notes() if "server-side Bash" in n]
    assert notes == [f"server-side Bash in pipeline agent is OFF: bubblewrap is not installed at {tmp_path / 'missing-bwrap'} "
                     "(install the 'bubblewrap' package); every Bash call answers is_error with that reason"]
    monkeypatch.delenv("AGENT_BWRAP")
    notes = [n for n in registry.serving_notes() if "server-side Bash" in n]
    assert len(notes) == 1 and notes[0].startswith("server-side Bash in pipeline agent: sandboxed by bubblewrap"), notes
    assert "no network" in notes[0] and "uid 65534" in notes[0]
