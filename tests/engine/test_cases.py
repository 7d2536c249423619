"""Broken pipeline files, each with the exact located messages `engine check` must print."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.engine.toysteps  # noqa: F401  (registers the toy steps)
from engine.errors import SpecErrors
from engine.executor import load_plans

CASES = Path(__file__).parent / "cases"


@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.yaml")))
def test_broken_file_reports_every_error_located(case: str) -> None:
    """Loading the file fails with exactly the expected `file:line:col: message` lines."""
    path = CASES / f"{case}.yaml"
    expected = (CASES / f"{case}.expected").read_text().strip().replace("{file}", str(path))
    with pytest.raises(SpecErrors) as info:
        load_plans([path])
    assert str(info.value) == expected


def test_python_tag_is_never_constructed(tmp_path: Path) -> None:
    """A `!!python/object/apply` tag is reported, and the command in it never runs."""
    marker = tmp_path / "pwned"
    pipeline = tmp_path / "evil.yaml"
    pipeline.write_text(
        "name: evil\nsteps:\n  a:\n    uses: toy.const\n"
        f'    with: {{value: !!python/object/apply:os.system ["touch {marker}"]}}\n'
        "output: ${{ steps.a }}\n"
    )
    with pytest.raises(SpecErrors, match="unknown tag"):
        load_plans([pipeline])
    assert not marker.exists()


def test_env_interpolation_with_default_and_type(tmp_path: Path) -> None:
    """`${VAR:-default}` fills values when the file loads, and a plain scalar keeps YAML's type."""
    pipeline = tmp_path / "env.yaml"
    pipeline.write_text(
        "name: env\nsteps:\n  a:\n    uses: toy.add\n"
        "    with:\n      a: ${ENGINE_TEST_A}\n      b: ${ENGINE_TEST_B:-5}\n"
        "output: ${{ steps.a }}\n"
    )
    plan = load_plans([pipeline], env={"ENGINE_TEST_A": "3"})[0]
    assert plan.nodes["a"].static == {"a": 3, "b": 5}


def test_check_never_prints_secret_values(tmp_path: Path) -> None:
    """An error in a file that interpolates a secret shows the file's text, not the secret."""
    pipeline = tmp_path / "secret.yaml"
    pipeline.write_text(
        "name: secret\nsteps:\n  a:\n    uses: toy.add\n"
        "    with:\n      a: ${ENGINE_TEST_KEY}\n"
        "output: ${{ steps.a }}\n"
    )
    with pytest.raises(SpecErrors) as info:
        load_plans([pipeline], env={"ENGINE_TEST_KEY": "sk-or-CANARY4-abc"})
    assert "CANARY4" not in str(info.value)
