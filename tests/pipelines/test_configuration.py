"""Configuration that tells the truth: every variable the code reads is documented, a
contradictory setting refuses to start, and `engine --version` answers."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.pipelines.conftest import REPO

READ_IN_CODE = re.compile(r"""os\.environ(?:\.get)?\s*[\(\[]\s*["']([A-Z][A-Z0-9_]+)["']|os\.getenv\(\s*["']([A-Z][A-Z0-9_]+)["']|["']([A-Z][A-Z0-9_]+)["']\s+(?:not\s+)?in\s+os\.environ""")
READ_IN_YAML = re.compile(r"\$\{([A-Z][A-Z0-9_]*)")


def engine_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def variables_read() -> set[str]:
    found: set[str] = set()
    for package in ("engine", "steps"):
        for f in (REPO / package).rglob("*.py"):
            for m in READ_IN_CODE.finditer(f.read_text()):
                found.update(g for g in m.groups() if g)
    for f in (REPO / "pipelines").rglob("*.yaml"):
        found.update(READ_IN_YAML.findall(f.read_text()))
    return found


def test_every_environment_variable_read_is_in_the_readme_table() -> None:
    """`os.environ` / `${VAR}` names in engine/, steps/ and pipelines/ all appear, as `NAME`,
    in the README's Configuration table."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    read = variables_read()
    assert {"OPENROUTER_API_KEY", "BIG_MODEL", "ENGINE_API_KEYS", "UPSTREAM_TIMEOUT"} <= read  # the scan works
    assert sorted(read - documented) == []


def test_inbound_keys_without_an_upstream_key_refuse_to_start() -> None:
    """ENGINE_API_KEYS with a provider that forwards the client's key (the shipped openrouter with
    no OPENROUTER_API_KEY) would answer every request 401: `engine serve` exits 2 with one line
    saying why and what to set, and `engine doctor` flags it."""
    env = {"ENGINE_API_KEYS": "inbound-key-1", "OPENROUTER_API_KEY": "", "OPENROUTER_BASE_URL": "http://127.0.0.1:9/api/v1"}
    served = engine_cli("serve", "--port", "1", env=env)
    assert served.returncode == 2
    (line,) = served.stderr.strip().splitlines()
    assert "refusing to serve" in line and "ENGINE_API_KEYS" in line and "OPENROUTER_API_KEY" in line
    doctor = engine_cli("doctor", env=env)
    assert doctor.returncode == 1
    assert any(row.startswith(("✗", "FAIL")) and "ENGINE_API_KEYS is set but provider(s) openrouter have no api_key" in row for row in doctor.stdout.splitlines())


def test_version() -> None:
    out = engine_cli("--version", env={})
    assert out.returncode == 0 and re.fullmatch(r"engine \d+\.\d+\.\d+\S*\n", out.stdout)


HEAVY = ("networkx", "aiohttp", "httpx", "markdownify", "bs4", "regex", "wcmatch", "prometheus_client", "starlette", "uvicorn")


def test_cli_commands_that_serve_nothing_import_nothing_heavy() -> None:
    """`engine --help`, `check`, `steps` and `statusline` start fast because they never import
    the serving stack or the libraries only a request needs (checked by module, not by clock)."""
    probe = (
        "import contextlib, io, sys\n"
        "from engine.cli import main\n"
        "for argv in (['check'], ['steps'], ['statusline', '--url', 'http://127.0.0.1:9']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        sys.stdin = io.StringIO('{\"session_id\": \"s\"}')\n"
        "        assert main(argv) == 0, argv\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    helped = subprocess.run([sys.executable, "-c", "import sys\nfrom engine.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\nprint(sorted(m for m in sys.modules if m.startswith(('steps', 'pydantic', 'yaml', 'structlog', 'anyio'))))"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert helped.stdout.strip().splitlines()[-1] == "[]"
