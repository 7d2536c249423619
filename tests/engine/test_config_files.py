"""Configuration files beside pipelines, read when the pipelines load (the engine side of
providers.yaml, with a toy domain): a parameter type that reads the file a value names, with
that file's own located errors, and a file name the pipeline directory does not load as a pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import PlainValidator, ValidationInfo

from engine.errors import SpecError, SpecErrors
from engine.executor import load_plans
from engine.loader import read_document
from engine.registry import configuration_file, step

SETTINGS = configuration_file("toy-settings.yaml")


def _read(value: Any, info: ValidationInfo) -> dict:
    context = info.context or {}
    path = Path(context["file"]).parent / value
    doc = read_document(path, context.get("env"))
    if not isinstance(doc.data, dict) or not isinstance(doc.data.get("greeting"), str):
        raise SpecErrors([SpecError("'greeting' must be a text", doc.where("greeting"))])
    return doc.data


Settings = Annotated[dict, PlainValidator(_read)]


@step("toy.settings", blocking=False)
def settings(file: Settings) -> dict:
    """The toy settings file, read when the pipeline loads."""
    return file


PIPELINE = """\
name: greet
steps:
  settings:
    uses: toy.settings
    with:
      file: toy-settings.yaml
output: ${{ steps.settings.greeting }}
"""


def test_a_parameter_reads_the_file_beside_the_pipeline_with_its_environment(tmp_path: Path) -> None:
    (tmp_path / "greet.yaml").write_text(PIPELINE)
    (tmp_path / SETTINGS).write_text("greeting: ${GREETING:-hello}\n")
    [plan] = load_plans([tmp_path], env={"GREETING": "bonjour"})  # the settings file is not a pipeline
    assert plan.nodes["settings"].static["file"] == {"greeting": "bonjour"}


def test_the_files_own_errors_are_located_in_it(tmp_path: Path) -> None:
    (tmp_path / "greet.yaml").write_text(PIPELINE)
    (tmp_path / "again.yaml").write_text(PIPELINE.replace("name: greet", "name: again"))
    (tmp_path / SETTINGS).write_text("other: 1\ngreeting: [1, 2]\n")
    with pytest.raises(SpecErrors) as info:
        load_plans([tmp_path], env={})
    assert str(info.value) == f"{tmp_path / SETTINGS}:2:11: 'greeting' must be a text"  # two pipelines, one report
