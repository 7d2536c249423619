"""The real Claude Code CLI, every pinned release, through the gateway against the fake upstream.

`.ci/run` installs each release of PINNED; elsewhere set CLAUDE_CODE_BIN (or put `claude` on
PATH) to a binary of one of them. A release is skipped only when no binary of it can be found
and CLAUDE_CODE_REQUIRED is not set (CI sets it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines.conftest import REPO, Gateway


PINNED = ("2.1.331", "2.1.332")
"""The releases the suite runs (their request bodies are fixtures in tests/fixtures/); .ci/run
installs each into .ci/.cache/claude-VERSION. Add the newest here when it is recorded."""


def claude_bin(version: str) -> str | None:
    """The `claude` of `version`: .ci/run's install, or $CLAUDE_CODE_BIN when it is that release."""
    installed = REPO / ".ci" / ".cache" / f"claude-{version}" / "node_modules" / ".bin" / "claude"
    if installed.exists():
        return str(installed)
    for candidate in (os.environ.get("CLAUDE_CODE_BIN"), shutil.which("claude")):
        if candidate and Path(candidate).exists() and _version_of(candidate) == version:
            return candidate
    return None


def _version_of(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.split()[0] if out.strip() else None


@pytest.fixture(name="claude", params=PINNED)
def _claude(request: pytest.FixtureRequest) -> str:
    found = claude_bin(request.param)
    if found is None:
        if os.environ.get("CLAUDE_CODE_REQUIRED"):
            pytest.fail(f"CLAUDE_CODE_REQUIRED is set but Claude Code {request.param} was not found")
        pytest.skip(f"Claude Code {request.param} is not installed (bash .ci/run installs it)")
    return found


def run_claude(claude: str, gateway: Gateway, tmp_path: Path, prompt: str, *extra: str, env_extra: dict[str, str] | None = None) -> dict:
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gateway.url,
        "ANTHROPIC_API_KEY": "sk-ant-claude-code-test",
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        **(env_extra or {}),
    }
    proc = subprocess.run(
        [claude, "-p", prompt, "--output-format", "json", *extra],
        cwd=work, env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"claude exited {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def test_claude_code_writes_a_file_through_the_gateway(claude: str, gateway: Gateway, tmp_path: Path) -> None:
    """Claude Code runs a Write tool call the upstream asked for, then gets the streamed answer."""
    target = tmp_path / "work" / "hello.txt"
    args = json.dumps({"file_path": str(target), "content": "Hello from the gateway!\n"})
    result = run_claude(claude, gateway, tmp_path, f"Please do this: [[tool:Write {args}]]", "--permission-mode", "acceptEdits")
    assert target.read_text() == "Hello from the gateway!\n"
    assert result["is_error"] is False and result["result"].startswith("Done")
    sent = [r.json for r in gateway.fake.requests if r.path.endswith("/chat/completions")]
    assert len(sent) >= 2 and all(s["stream"] for s in sent)
    assert sent[-1]["messages"][-1]["role"] == "tool"


def test_claude_code_runs_bash_through_the_gateway(claude: str, gateway: Gateway, tmp_path: Path) -> None:
    """Claude Code runs a Bash tool call and sends its output back upstream as a tool message."""
    args = json.dumps({"command": "echo gateway-bash-ok", "description": "Print a marker"})
    result = run_claude(claude, gateway, tmp_path, f"[[tool:Bash {args}]]", "--allowedTools", "Bash")
    tool_messages = [m for r in gateway.fake.requests for m in r.json["messages"] if m["role"] == "tool"]
    assert any("gateway-bash-ok" in json.dumps(m["content"]) for m in tool_messages)
    assert result["result"].startswith("Done") and "gateway-bash-ok" in result["result"]


def test_claude_code_plain_answer(claude: str, gateway: Gateway, tmp_path: Path) -> None:
    """A plain prompt comes back as the upstream's streamed text, exactly."""
    result = run_claude(claude, gateway, tmp_path, "Say hello")
    assert result["result"].startswith("Hello! I am the fake upstream.")


def test_claude_code_session_usage_and_statusline(claude: str, gateway: Gateway, tmp_path: Path) -> None:
    """Claude Code's requests carry its session id: the gateway adds up their usage under it,
    and `engine statusline` fed the session id shows the upstream model and the cost."""
    gateway.fake.cost = 0.002
    result = run_claude(claude, gateway, tmp_path, "Say hello")
    session = result["session_id"]
    with gateway.http() as http:
        assert gateway.fake.wait_for(lambda: http.get("/usage", params={"session": session}).status_code == 200, timeout=40)
        found = http.get("/usage", params={"session": session}).json()
    assert found["total"]["requests"] >= 1 and found["total"]["cost_usd"] == pytest.approx(0.002 * found["total"]["requests"])
    assert set(found["models"]) <= {"test/big", "test/small"}
    status = subprocess.run(
        [sys.executable, "-m", "engine", "statusline", "--url", gateway.url],
        cwd=REPO, input=json.dumps({"session_id": session, "model": {"id": "claude-opus-5-5", "display_name": "Opus"}}),
        capture_output=True, text=True, timeout=60,
    )
    assert status.returncode == 0 and "test/" in status.stdout and "$0.0" in status.stdout


def test_claude_code_discovers_the_gateway_models_and_sizes_a_foreign_model(claude: str, gateway: Gateway, tmp_path: Path) -> None:
    """With gateway model discovery on, Claude Code reads GET /v1/models and keeps the Claude
    ids the gateway lists; for a model it does not know (ANTHROPIC_MODEL=openai/gpt-4o) it
    would assume 1M tokens, and the setting `engine doctor` prints gives it the real window."""
    with gateway.http() as http:
        listed = [m["id"] for m in http.get("/v1/models", params={"limit": 1000}).json()["data"]]
    claude_ids = [i for i in listed if "claude" in i.lower() or "anthropic" in i.lower()]
    env = {"CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY": "1", "ANTHROPIC_MODEL": "openai/gpt-4o", "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "128000"}
    result = run_claude(claude, gateway, tmp_path, "Say hello", "--debug", env_extra=env)
    debug = "".join(p.read_text(errors="replace") for p in (tmp_path / "home" / ".claude").rglob("debug/*") if p.is_file())
    assert f"[gatewayDiscovery] cached {len(claude_ids)} models" in debug
    assert result["modelUsage"]["openai/gpt-4o"]["contextWindow"] == 128000
