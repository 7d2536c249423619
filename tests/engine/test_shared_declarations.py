"""A named limit or breaker is one object shared by every run, so the files that declare it must agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import SpecErrors
from engine.executor import load_plans

PIPELINE = """\
name: {name}
{key}:
  shared: {spec}
steps:
  v:
    uses: core.value
    with:
      value: 1
output: ${{{{ steps.v }}}}
"""


@pytest.mark.parametrize(
    ("key", "kind", "first", "second"),
    [("limits", "limit", "{max: 2}", "{max: 3}"), ("breakers", "breaker", "{failures: 2, cooldown: 5s}", "{failures: 3, cooldown: 5s}")],
)
def test_a_shared_name_declared_differently_is_a_located_error(tmp_path: Path, key: str, kind: str, first: str, second: str) -> None:
    (tmp_path / "a.yaml").write_text(PIPELINE.format(name="a", key=key, spec=first))
    (tmp_path / "b.yaml").write_text(PIPELINE.format(name="b", key=key, spec=second))
    with pytest.raises(SpecErrors) as info:
        load_plans([tmp_path])
    message = str(info.value)
    assert f"{kind} 'shared' is declared differently in {tmp_path / 'a.yaml'}" in message
    assert f"{tmp_path / 'b.yaml'}:3:11: {kind}" in message  # at the second declaration


@pytest.mark.parametrize(("key", "spec"), [("limits", "{max: 2}"), ("breakers", "{failures: 2, cooldown: 5s}")])
def test_the_same_declaration_in_two_files_is_one_object(tmp_path: Path, key: str, spec: str) -> None:
    (tmp_path / "a.yaml").write_text(PIPELINE.format(name="a", key=key, spec=spec))
    (tmp_path / "b.yaml").write_text(PIPELINE.format(name="b", key=key, spec=spec))
    assert sorted(p.name for p in load_plans([tmp_path])) == ["a", "b"]
