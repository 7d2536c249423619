"""The README's examples, run as written: every `python` and `yaml` block, and the served one.

- A `python` block whose first line is `# NAME.py` is a module: it is written to a project
  directory (where `engine` runs, so pipelines can name `NAME:function`) and imported. Any
  other `python` block is a script, run there, and must exit 0.
- A `yaml` block is a pipeline file: at the path its first line names (`# dir/file.yaml`),
  else in a directory of its own. Each directory must pass `engine check`.
- A block that is part of a file says so in an HTML comment on the line before it:
  `<!-- readme-example: steps of pipelines/turn.yaml -->` means "these steps, put into a copy
  of that repository file, which must still pass `engine check`".
- "Serve your own pipeline" is followed command by command: its `uv run engine ...` lines
  run (`serve` in the background, on a free port instead of the one written), its `curl`
  calls are made over real HTTP, and each answer must match the `# {...}` line under it
  (a string ending in `...` matches by prefix). The log line it quotes must be in the log.
- The YAML reference's example runs on a request, and its `errors:` step (from the
  `mysteps.py` of "Writing your own steps") renders a bad body.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.servers import free_port, wait_healthy

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*readme-example:\s*(.*?)\s*-->$")
FILE_HEADER = re.compile(r"^#\s*([\w./-]+\.(?:ya?ml|py))\b")
SERVE_SECTION = "Serve your own pipeline"


@dataclass
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    section: str
    marker: str | None

    @property
    def file(self) -> str | None:
        first = self.text.split("\n", 1)[0]
        m = FILE_HEADER.match(first)
        return m.group(1) if m else None

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang} block in '{self.section}')"


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    lines = README.read_text(encoding="utf-8").splitlines()
    section, marker, i = "", None, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        if (m := MARKER.match(line.strip())) is not None:
            marker = m.group(1)
        elif (f := FENCE.match(line)) is not None:
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(f.group(1), "\n".join(body) + "\n", start + 1, section, marker))
            marker = None
        elif line.strip():
            marker = None
        i += 1
    return blocks


def exported() -> dict[str, str]:
    """The variables the README's shell blocks `export` (a YAML example may need them set)."""
    found: dict[str, str] = {}
    for block in readme_blocks():
        if block.lang in ("bash", "sh", "shell"):
            for m in re.finditer(r"^export ((?:[A-Z_][A-Z0-9_]*=\S+\s*)+)", block.text, re.M):
                for pair in m.group(1).split():
                    name, _, value = pair.partition("=")
                    found[name] = value
    return found


def engine(*args: str, cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **exported(), "ENGINE_LOG_FORMAT": "json"}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(name="project", scope="module")
def _project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding every module and pipeline file the README writes."""
    project = tmp_path_factory.mktemp("readme")
    for block in readme_blocks():
        if block.lang in {"python", "yaml"} and block.file and not block.marker:
            target = project / block.file
            assert not target.exists(), f"{block} writes {block.file} a second time"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text)
    return project


def test_the_readme_has_examples_of_each_kind() -> None:
    """The parser finds the blocks (a README reshuffle cannot silently turn this test off)."""
    blocks = readme_blocks()
    assert sum(b.lang == "python" for b in blocks) >= 2 and sum(b.lang == "yaml" for b in blocks) >= 4
    assert any(b.section == SERVE_SECTION for b in blocks)
    unknown = [f"{b}: {b.marker}" for b in blocks if b.marker and not b.marker.startswith("steps of ")]
    assert not unknown, f"markers this test does not understand: {unknown}"


@pytest.mark.parametrize("block", [b for b in readme_blocks() if b.lang == "python"], ids=str)
def test_python_block_runs(block: Block, project: Path) -> None:
    """A module imports cleanly from the project directory; a script runs and exits 0."""
    if block.file:
        module = block.file.removesuffix(".py").replace("/", ".")
        r = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=project, capture_output=True, text=True, timeout=120)
    else:
        r = subprocess.run([sys.executable, "-"], input=block.text, cwd=project, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{block}:\n{r.stderr}"


@pytest.mark.parametrize("block", [b for b in readme_blocks() if b.lang == "yaml"], ids=str)
def test_yaml_block_passes_engine_check(block: Block, project: Path, tmp_path: Path) -> None:
    """Each pipeline in the README loads and checks, with the README's modules importable."""
    if block.marker:
        target = _splice(block, tmp_path)
    elif block.file:
        target = project / block.file
    else:
        target = project / f"example_line_{block.line}" / "example.yaml"
        target.parent.mkdir(exist_ok=True)
        target.write_text(block.text)
    r = engine("check", str(target), cwd=project)
    assert r.returncode == 0, f"{block}: engine check {target.relative_to(target.parents[1])}\n{r.stdout}{r.stderr}"
    assert f"{target}: OK" in r.stdout


def _splice(block: Block, tmp_path: Path) -> Path:
    """A copy of the repository's pipelines with the block's steps put into the named file."""
    into = block.marker.removeprefix("steps of ").strip()  # type: ignore[union-attr]
    source = REPO / into
    assert source.is_file(), f"{block}: the marker names {into}, which does not exist"
    copy = tmp_path / "pipelines"
    shutil.copytree(source.parent, copy)
    target = copy / source.name
    doc = yaml.safe_load(target.read_text())
    fragment = yaml.safe_load(block.text)
    assert isinstance(fragment, dict) and fragment, f"{block}: a steps fragment is a mapping of step names"
    for name, spec in fragment.items():
        assert name in doc["steps"], f"{block}: {into} has no step '{name}' for the example to replace"
        doc["steps"][name] = spec
    target.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return target


def test_serve_your_own_pipeline_as_written(project: Path) -> None:
    """The section's commands, in order: check, serve on a real port, the curl calls with
    the answers it shows, and the log line it quotes."""
    blocks = [b for b in readme_blocks() if b.section == SERVE_SECTION and b.lang == "sh"]
    commands = [line for b in blocks for line in b.text.splitlines()]
    port = free_port()
    proc: subprocess.Popen[str] | None = None
    calls = 0
    log_path = project / "serve.log"
    try:
        for n, line in enumerate(commands):
            if line.startswith("uv run engine "):
                args = shlex.split(line, comments=True)[3:]
                expected = line.partition("#")[2].strip()
                if args[0] == "serve":
                    written = args[args.index("--port") + 1]
                    args[args.index("--port") + 1] = str(port)
                    env = {**os.environ, "ENGINE_LOG_FORMAT": "json"}
                    with log_path.open("w") as log:
                        proc = subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
                    wait_healthy(f"http://127.0.0.1:{port}", proc)
                    continue
                r = engine(*args, cwd=project)
                assert r.returncode == 0, f"{line}\n{r.stdout}{r.stderr}"
                assert expected in r.stdout, f"{line}: expected {expected!r}, got {r.stdout!r}"
            elif line.startswith("curl "):
                assert proc is not None, "the section calls curl before it serves"
                answer = _curl(line.replace(f":{written}/", f":{port}/"))
                shown = commands[n + 1] if n + 1 < len(commands) else ""
                assert shown.startswith("# {"), f"{line}: the README shows no answer under it"
                assert answer.headers["content-type"].startswith("application/json")
                got = answer.json()
                assert _matches(got, json.loads(shown[2:])), f"{line}\n  README: {shown[2:]}\n  served: {answer.text}"
                if "request_id" in got:
                    assert answer.headers["request-id"] == got["request_id"]
                calls += 1
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
    assert proc is not None and calls >= 3
    _assert_quoted_log_line(log_path.read_text())


def _curl(command: str) -> httpx.Response:
    """Make the request a README `curl` line describes (the flags it uses: -s, -d, -H, -X)."""
    args = shlex.split(command)[1:]
    method, data, headers, url = None, None, {}, None
    while args:
        arg = args.pop(0)
        if arg == "-s":
            continue
        if arg == "-d":
            data = args.pop(0)
        elif arg == "-H":
            name, _, value = args.pop(0).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-X":
            method = args.pop(0)
        elif arg.startswith("http"):
            url = arg
        else:
            raise AssertionError(f"the README's curl uses {arg!r}, which this test does not translate")
    assert url is not None, command
    if data is not None:
        headers.setdefault("content-type", "application/x-www-form-urlencoded")  # what curl -d sends
    return httpx.request(method or ("POST" if data is not None else "GET"), url, content=data, headers=headers, timeout=60)


def _matches(got: Any, shown: Any) -> bool:
    if isinstance(shown, str) and shown.endswith("..."):
        return isinstance(got, str) and got.startswith(shown[:-3])
    if isinstance(shown, dict):
        return isinstance(got, dict) and got.keys() == shown.keys() and all(_matches(got[k], v) for k, v in shown.items())
    if isinstance(shown, list):
        return isinstance(got, list) and len(got) == len(shown) and all(map(_matches, got, shown))
    return got == shown


def _assert_quoted_log_line(log: str) -> None:
    """The section quotes a log line as `EVENT ... key=value ...`; the server logged it."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(f"## {SERVE_SECTION}") :]
    quoted = re.search(r"`(run\.failed [^`]*)`", section)
    assert quoted is not None, "the section no longer quotes the log line of a failed step"
    event, *pairs = shlex.split(quoted.group(1).replace("...", ""))
    fields = dict(p.split("=", 1) for p in pairs)
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    found = [x for x in lines if x.get("event") == event]
    assert found, f"no '{event}' line in the server's log:\n{log[-3000:]}"
    assert any(all(str(x.get(k)) == v for k, v in fields.items()) for x in found), (fields, found)
    assert any(fields.get("error", "").split(":")[0] in str(x.get("exception")) for x in found), "the traceback is missing"


def test_the_reference_pipeline_runs_with_its_error_step(project: Path, tmp_path: Path) -> None:
    """The YAML reference's example, on "Writing your own steps"' mysteps.py, answers a
    request (`engine run` builds one from its route), and its `errors:` step renders a bad
    body in its own format."""
    (block,) = [b for b in readme_blocks() if b.section == "Pipeline YAML reference" and b.lang == "yaml"]
    pipeline = tmp_path / "reference" / "greet.yaml"
    pipeline.parent.mkdir()
    pipeline.write_text(block.text)
    (tmp_path / "polite.json").write_text('{"name": "ada", "polite": true}')
    r = engine("run", str(pipeline), "--input", str(tmp_path / "polite.json"), cwd=project)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ADA!, please!\n"  # a string output is printed as it is
    (tmp_path / "nan.json").write_text('{"name": NaN}')
    r = engine("run", str(pipeline), "--input", str(tmp_path / "nan.json"), cwd=project)
    assert r.returncode == 1 and r.stderr.strip() == "engine: greet answered HTTP 400"
    answer = json.loads(r.stdout)
    assert answer["problem"].startswith("The request body is not valid JSON: name: NaN") and answer["request"].startswith("req_")
