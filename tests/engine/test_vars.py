"""`vars`: a value written once (in `vars.yaml` beside the pipelines, or a file's own `vars:`)
and used as `${{ vars.NAME }}`, checked like a value written in place, errors located."""

from __future__ import annotations

import textwrap
from pathlib import Path

import anyio
import pytest

import tests.engine.toysteps  # noqa: F401  (registers the toy steps)
from engine.errors import SpecErrors
from engine.executor import Engine, load_plans, pipeline_files
from engine.graph import to_text


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _run(engine: Engine, name: str) -> object:
    return anyio.run(engine.run, name, None)


SHARED = """
greeting: hello
answer: 41
flags: {loud: true}
base_url: ${TOY_BASE_URL:-https://example.invalid/v1}
"""


def test_shared_and_own_vars_fill_values_where_they_are_used(tmp_path: Path) -> None:
    _write(tmp_path, "vars.yaml", SHARED)
    _write(
        tmp_path,
        "greet.yaml",
        """
        vars:
          who: world
        steps:
          n: {uses: toy.add, with: {a: "${{ vars.answer }}", b: 1}}
          text: {uses: toy.concat, with: {parts: ["${{ vars.greeting }}", " ", "${{ vars.who }}"]}}
          both: {uses: toy.const, with: {value: {n: "${{ steps.n }}", text: "${{ steps.text }}", loud: "${{ vars.flags.loud }}", quiet: "${{ !vars.flags.loud }}", url: "${{ vars.base_url }}"}}}
        output: ${{ steps.both }}
        """,
    )
    engine = Engine.load([tmp_path], env={"TOY_BASE_URL": "http://127.0.0.1:9/v1"})
    assert [p.name for p in engine.plans.values()] == ["greet"]  # vars.yaml is not a pipeline
    assert _run(engine, "greet") == {"n": 42, "text": "hello world", "loud": True, "quiet": False, "url": "http://127.0.0.1:9/v1"}
    assert [f.name for f in pipeline_files([tmp_path])] == ["greet.yaml"]


def test_graph_notes_the_vars_a_step_reads(tmp_path: Path) -> None:
    _write(tmp_path, "vars.yaml", SHARED)
    _write(tmp_path, "g.yaml", """
        steps:
          text: {uses: toy.concat, with: {parts: ["${{ vars.greeting }}", "${{ input }}"]}}
        output: ${{ steps.text }}
        """)
    plan = load_plans([tmp_path])[0]
    assert plan.nodes["text"].vars == ("greeting",)
    assert "vars greeting" in to_text(plan)


def _errors(directory: Path) -> list[str]:
    with pytest.raises(SpecErrors) as exc:
        load_plans([directory])
    return [str(e) for e in exc.value.errors]


def test_an_unknown_variable_is_located_with_a_suggestion(tmp_path: Path) -> None:
    _write(tmp_path, "vars.yaml", SHARED)
    f = _write(tmp_path, "p.yaml", """
        steps:
          text: {uses: toy.concat, with: {parts: ["${{ vars.greting }}"]}}
        output: ${{ steps.text }}
        """)
    (err,) = _errors(tmp_path)
    assert err.startswith(f"{f}:2:")
    assert "unknown variable 'vars.greting'" in err and "did you mean 'vars.greeting'?" in err


def test_a_missing_key_and_a_non_boolean_negation_are_errors(tmp_path: Path) -> None:
    _write(tmp_path, "vars.yaml", SHARED)
    _write(tmp_path, "p.yaml", """
        steps:
          a: {uses: toy.const, with: {value: "${{ vars.flags.quiet }}"}}
          b: {uses: toy.const, with: {value: "${{ !vars.greeting }}"}}
          c: {uses: toy.const, with: {value: ["${{ steps.a }}", "${{ steps.b }}"]}}
        output: ${{ steps.c }}
        """)
    errors = _errors(tmp_path)
    assert any("'vars.flags.quiet' does not exist" in e for e in errors)
    assert any("negates a value that is not true or false" in e for e in errors)


def test_a_value_of_the_wrong_type_is_reported_where_the_variable_is_used(tmp_path: Path) -> None:
    _write(tmp_path, "vars.yaml", SHARED)
    f = _write(tmp_path, "p.yaml", """
        steps:
          n:
            uses: toy.add
            with:
              a: ${{ vars.greeting }}
        output: ${{ steps.n }}
        """)
    (err,) = _errors(tmp_path)
    assert err.startswith(f"{f}:5:") and "'a'" in err
    assert "${{ vars.greeting }}" in err  # the reference is quoted, not the value (a key, maybe)


def test_the_vars_file_is_checked_once_with_located_errors(tmp_path: Path) -> None:
    v = _write(tmp_path, "vars.yaml", """
        fine: 1
        bad-name: 2
        loop: ${{ vars.fine }}
        unset: ${TOY_NEVER_SET_VARIABLE}
        """)
    for name in ("a.yaml", "b.yaml"):
        _write(tmp_path, name, """
            steps:
              x: {uses: toy.const, with: {value: "${{ vars.fine }}"}}
            output: ${{ steps.x }}
            """)
    errors = _errors(tmp_path)
    assert sum("is not a variable name" in e for e in errors) == 1
    assert any(e.startswith(f"{v}:3:") and "a variable cannot be a reference" in e for e in errors)
    assert sum("TOY_NEVER_SET_VARIABLE" in e for e in errors) == 1


def test_a_pipeline_file_loaded_alone_reads_the_vars_beside_it(tmp_path: Path) -> None:
    from engine.loader import load_file

    _write(tmp_path, "vars.yaml", SHARED)
    f = _write(tmp_path, "p.yaml", """
        steps:
          x: {uses: toy.const, with: {value: "${{ vars.answer }}"}}
        output: ${{ steps.x }}
        """)
    assert load_file(f).spec.steps["x"].with_ == {"value": 41}
