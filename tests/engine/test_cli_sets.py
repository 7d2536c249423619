"""`engine check`, `run` and `graph` see the same pipeline set, and say what is wrong in a line.

A file is loaded with its directory's pipelines (they run one another by name); every error
of every file is reported in one pass; `engine run` gives a routed pipeline a request built
from its route, with the input file as the body.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.executor import load_plans
from tests.fixtures import CLAUDE_CODE
from tests.support.fake_openrouter import FakeOpenRouter

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "pipelines"
ROUTED = sorted((p.name, p.routes[0][0]) for p in load_plans([PIPELINES], env={**os.environ, "OPENROUTER_API_KEY": "x"}) if p.routes)
ASK = {"model": "claude-opus-5-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hello world"}]}


def engine(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "ENGINE_LOG_FORMAT": "json", **(env or {})}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120)


@pytest.fixture(name="fake", scope="module")
def _fake() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter() as fake:
        yield fake


def test_check_of_one_file_loads_its_siblings() -> None:
    """`engine check pipelines/messages.yaml` (its --help example) passes: turn.yaml, which it
    runs, is loaded with it; only the file named is reported."""
    r = engine("check", "pipelines/messages.yaml")
    assert r.returncode == 0, r.stderr
    [line] = r.stdout.splitlines()
    assert re.fullmatch(r"pipelines/messages\.yaml: OK \(\d+ steps, POST /v1/messages\)", line), line


def test_check_of_the_vars_file_checks_it_as_shared_values(tmp_path: Path) -> None:
    """`engine check pipelines/vars.yaml` checks the file as the shared values it is (not as a
    pipeline, which it is not), with the pipelines beside it that read it; a broken one is a
    located error."""
    r = engine("check", "pipelines/vars.yaml")
    assert r.returncode == 0, r.stderr
    [line] = r.stdout.splitlines()
    assert line.startswith("pipelines/vars.yaml: OK (shared values: ") and "big_model" in line, line
    (tmp_path / "vars.yaml").write_text("a: 1\nb: ${{ vars.a }}\n")
    r = engine("check", str(tmp_path / "vars.yaml"))
    assert r.returncode == 1
    assert f"{tmp_path / 'vars.yaml'}:2:4: a variable cannot be a reference" in r.stderr, r.stderr


BROKEN_A = """
name: a
steps:
  v: {uses: core.value, with: {value: "${UNSET_IN_THIS_TEST}"}}
  w: {uses: core.nosuch, with: {value: "${{ steps.v }}"}}
output: ${{ steps.w }}
"""
BROKEN_B = """
name: b
steps:
  r: {uses: core.run, with: {pipeline: a, input: 1}}
  x: {uses: core.nothing, with: {value: "${{ steps.r }}"}}
output: ${{ steps.x }}
"""


@pytest.mark.parametrize("target", [".", "b.yaml"])
def test_every_error_of_every_file_at_once(tmp_path: Path, target: str) -> None:
    """An unset variable in a.yaml hides neither a.yaml's other mistake nor b.yaml's, and b
    still finds pipeline a; checking one file reports its siblings' errors too."""
    (tmp_path / "a.yaml").write_text(BROKEN_A)
    (tmp_path / "b.yaml").write_text(BROKEN_B)
    r = engine("check", target, cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "a.yaml:4:39: environment variable 'UNSET_IN_THIS_TEST' is not set; set it, or give a default: ${UNSET_IN_THIS_TEST:-value}",
        "a.yaml:5:13: step 'w': unknown step 'core.nosuch'; did you mean 'core.run'?",
        "b.yaml:5:13: step 'x': unknown step 'core.nothing'; did you mean 'core.run'?",
        "3 errors",
    ]


def test_check_of_a_missing_path_says_so(tmp_path: Path) -> None:
    """A path that does not exist is one line, not a traceback."""
    r = engine("check", "nope.yaml", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == "engine: no such file or directory: nope.yaml"


@pytest.mark.parametrize(("name", "method"), ROUTED, ids=[n for n, _ in ROUTED])
def test_run_serves_every_routed_pipeline_a_request(name: str, method: str, fake: FakeOpenRouter, tmp_path: Path) -> None:
    """For a pipeline with a route, --input is the request body; the output is the answer."""
    args = ["run", name]
    if method not in {"GET", "HEAD"}:
        (tmp_path / "body.json").write_text(json.dumps(ASK))
        args += ["--input", str(tmp_path / "body.json")]
    r = engine(*args, env={"OPENROUTER_BASE_URL": fake.base_url, "OPENROUTER_API_KEY": "sk-or-test"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stdout.strip()


def test_run_count_tokens_on_a_real_claude_code_body() -> None:
    """The issue's example: `engine run count_tokens --input body.json` prints the count."""
    r = engine("run", "count_tokens", "--input", str(CLAUDE_CODE / "count_tokens.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["input_tokens"] > 1000


def test_run_with_a_bad_body_prints_the_pipelines_error_and_exits_1(tmp_path: Path) -> None:
    """A body with NaN: the Anthropic 400 naming the field on stdout, the status on stderr."""
    (tmp_path / "bad.json").write_text('{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": NaN}]}]}')
    r = engine("run", "count_tokens", "--input", str(tmp_path / "bad.json"))
    assert r.returncode == 1
    error = json.loads(r.stdout)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("The request body is not valid JSON: messages.0.content.0.text: NaN is not valid JSON")
    assert r.stderr.strip() == "engine: count_tokens answered HTTP 400"


USER = '''
def loud(text: str) -> str:
    """Upper-case."""
    return text.upper()
'''
MINE = """
name: mine
steps:
  up: {uses: "mine_cli_steps:loud", with: {text: "${{ input.text }}"}}
output: ${{ steps.up }}
"""


def test_a_step_that_raises_is_one_line_naming_it(tmp_path: Path) -> None:
    """No traceback unless asked: `engine: step 'mine.up' failed: AttributeError: ...`."""
    (tmp_path / "mine_cli_steps.py").write_text(USER)
    (tmp_path / "mine.yaml").write_text(MINE)
    (tmp_path / "in.json").write_text("{}")
    r = engine("run", "mine.yaml", "--input", "in.json", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip() == "engine: step 'mine.up' failed: AttributeError: 'NoneType' object has no attribute 'upper' (--traceback shows where)"
    r = engine("run", "mine.yaml", "--input", "in.json", "--traceback", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" in r.stderr and "return text.upper()" in r.stderr


def test_run_with_a_missing_input_file_says_so(tmp_path: Path) -> None:
    """An input file that cannot be read is one line naming it."""
    (tmp_path / "mine_cli_steps.py").write_text(USER)
    (tmp_path / "mine.yaml").write_text(MINE)
    r = engine("run", "mine.yaml", "--input", "nope.json", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == "engine: cannot read the input file nope.json: No such file or directory"


def test_graph_of_a_file_uses_the_same_set_as_check() -> None:
    """`engine graph pipelines/messages.yaml` draws it, with turn.yaml loaded beside it."""
    r = engine("graph", "pipelines/messages.yaml")
    assert r.returncode == 0, r.stderr
    assert "turn" in r.stdout
