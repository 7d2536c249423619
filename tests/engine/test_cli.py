"""The `engine` command as a user meets it: their own functions, a pipeline, check, graph, run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.servers import free_port, wait_healthy

USER_STEPS = '''
"""A user's own steps."""
import anyio

def shout(text: str, punctuation: str = "!") -> str:
    """Upper-case a text."""
    return text.upper() + punctuation

async def words(text: str):
    """Stream the words of a text."""
    for w in text.split():
        await anyio.sleep(0)
        yield w
'''

PIPELINE = """
name: mine
steps:
  loud:
    uses: mysteps:shout
    with:
      text: ${{ input.text }}
  split:
    uses: mysteps:words
    with:
      text: ${{ steps.loud }}
output: ${{ steps.split }}
"""


def engine(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "ENGINE_LOG_FORMAT": "json", **(env or {})}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(name="project")
def _project(tmp_path: Path) -> Path:
    (tmp_path / "mysteps.py").write_text(USER_STEPS)
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "mine.yaml").write_text(PIPELINE)
    return tmp_path


def test_check_ok(project: Path) -> None:
    """`engine check` on a good pipeline of the user's own functions exits 0 and says OK."""
    r = engine("check", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "pipelines/mine.yaml: OK (2 steps)" in r.stdout


def test_check_reports_every_mistake_located(project: Path) -> None:
    """Mistakes are all reported with file:line:col, and the exit code is 1."""
    (project / "pipelines" / "mine.yaml").write_text(PIPELINE.replace("mysteps:shout", "mysteps:shoot").replace("text: ${{ steps.loud }}", "txt: ${{ steps.loud }}"))
    r = engine("check", cwd=project)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("pipelines/mine.yaml:5:11: step 'loud': module 'mysteps' has no function 'shoot'")
    assert lines[1].startswith("pipelines/mine.yaml:11:7: step 'split': mysteps:words has no parameter 'txt'; did you mean 'text'?")
    assert lines[2].startswith("pipelines/mine.yaml:11:7: step 'split': mysteps:words needs parameter 'text'")
    assert lines[-1] == "3 errors"


def test_graph_mermaid(project: Path) -> None:
    """`engine graph --format mermaid` draws the user's pipeline."""
    r = engine("graph", "mine", "--format", "mermaid", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "s_loud --> s_split" in r.stdout and "input --> s_loud" in r.stdout


def test_run_prints_the_output(project: Path) -> None:
    """`engine run` runs one input and prints each item of a streamed output."""
    (project / "in.json").write_text(json.dumps({"text": "hello big world"}))
    r = engine("run", "mine", "--input", "in.json", cwd=project)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["HELLO", "BIG", "WORLD!"]


def test_steps_catalogue(project: Path) -> None:
    """`engine steps` lists the registered steps with parameters and their first docstring line."""
    r = engine("steps", cwd=project)
    assert r.returncode == 0
    assert "anthropic.validate(body: dict)" in r.stdout
    assert "openrouter.call(" in r.stdout and "core.value(value: Any)" in r.stdout


def test_help_has_examples(project: Path) -> None:
    """Every subcommand's help ends with examples."""
    for command in ("serve", "check", "graph", "run", "steps"):
        r = engine(command, "--help", cwd=project)
        assert r.returncode == 0 and "examples:" in r.stdout


def test_serve_starts_and_answers_health(tmp_path: Path) -> None:
    """`engine serve` prints its start-up line (address, routes, upstream) and serves /health."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--port", str(port), "--pipelines", str(Path(__file__).resolve().parents[2] / "pipelines")],
        env={**os.environ, "OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1", "ENGINE_LOG_FORMAT": "json"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert f"engine serving http://127.0.0.1:{port}" in err
    assert "POST /v1/messages -> messages" in err
    assert "upstream http://127.0.0.1:9/v1" in err


def test_readme_step_catalogue_is_current() -> None:
    """The README's step catalogue is exactly what `engine steps --format markdown` prints."""
    repo = Path(__file__).resolve().parents[2]
    r = engine("steps", "--format", "markdown", cwd=repo)
    assert r.returncode == 0 and r.stdout.count("\n") > 20
    assert r.stdout in (repo / "README.md").read_text()
