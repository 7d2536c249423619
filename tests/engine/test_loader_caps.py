"""Pipeline YAML is read with caps: an alias bomb, a recursive alias or an oversized file is a
located error, never an expansion that eats the machine's memory (issue 13 item 5)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import SpecErrors
from engine.loader import MAX_ALIASES, MAX_DOCUMENT_BYTES, load_file, load_text

REPO = Path(__file__).resolve().parents[2]

# Nine levels of nine aliases: 9**9 (about 387 million) strings once expanded.
BOMB = "name: bomb\n" + 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
) + "steps:\n  x:\n    uses: core.identity\n    with: {value: *a8}\noutput: ${{ steps.x }}\n"


def test_an_alias_bomb_is_a_located_error_under_a_memory_limit(tmp_path: Path) -> None:
    """`engine check` on a billion-laughs file, in a child process limited to 1 GiB of address
    space: it exits 1 with the file, line and column of the alias that crossed the cap (the
    expansion, had it happened, would need tens of gigabytes)."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1024**3, 1024**3))

    done = subprocess.run(
        [sys.executable, "-m", "engine", "check", str(bomb)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300, preexec_fn=limit,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    # Line 7 holds a5, whose first alias (*a4, 66430 values) takes the total past 100000.
    assert lines[0].startswith(f"{bomb}:7:10: YAML aliases expand to more than 100000 values (an alias bomb?)"), done.stderr[-2000:]
    assert lines[1:] == ["1 error"]


def test_a_recursive_alias_is_a_located_error() -> None:
    text = "name: r\nsteps: &s\n  x: {uses: core.identity, with: {value: *s}}\noutput: 1\n"
    with pytest.raises(SpecErrors) as err:
        load_text(text, "r.yaml")
    assert str(err.value.errors[0]).startswith("r.yaml:3:42: an alias refers to a node that contains it")


def test_too_many_aliases_is_a_located_error() -> None:
    text = "name: many\nv: &v 1\nlist: [" + ", ".join(["*v"] * (MAX_ALIASES + 1)) + "]\n"
    with pytest.raises(SpecErrors) as err:
        load_text(text, "many.yaml")
    [e] = err.value.errors
    assert e.location is not None and e.location.line == 3 and e.message == f"more than {MAX_ALIASES} YAML aliases"


def test_a_few_aliases_still_work() -> None:
    """Anchors are plain YAML and stay allowed within the caps."""
    text = "name: ok\nsteps:\n  a:\n    uses: core.identity\n    with: &w {value: 1}\n  b:\n    uses: core.identity\n    with: *w\noutput: ${{ steps.b }}\n"
    loaded = load_text(text, "ok.yaml")
    assert loaded.spec.steps["b"].with_ == {"value": 1}


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n# " + "x" * MAX_DOCUMENT_BYTES + "\n")
    with pytest.raises(SpecErrors) as err:
        load_file(big)
    assert str(err.value.errors[0]).startswith(f"{big}:1:1: the file is larger than {MAX_DOCUMENT_BYTES} bytes")
