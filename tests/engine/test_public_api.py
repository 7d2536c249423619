"""The names `engine` exports to step authors: pinned, so one leaves or joins only on purpose."""

from __future__ import annotations

import engine

EXPECTED = [
    "step",
    "serving_note",
    "doctor_check",
    "Finding",
    "RunContext",
    "Request",
    "Reply",
    "Stream",
    "JSON",
    "PipelineName",
    "Facts",
    "EngineError",
    "StepError",
    "HttpError",
    "StepTimeout",
    "DeadlineExceeded",
    "LimitTimeout",
    "RunCancelled",
    "is_stream",
    "aclose_quietly",
    "value_type",
    "KeyHeader",
    "key_header",
    "register_secret",
    "register_secret_names",
    "register_secret_values",
    "register_secret_env",
]


def test_all_is_exactly_the_step_author_api() -> None:
    assert engine.__all__ == EXPECTED


def test_every_exported_name_is_the_modules_own_object() -> None:
    """Re-exports, not copies: `engine.step is engine.registry.step`."""
    from engine import capture, errors, keys, logs, registry, run, streams, types

    homes = [capture, errors, keys, logs, registry, run, streams, types]
    for name in engine.__all__:
        obj = getattr(engine, name)
        assert any(getattr(m, name, None) is obj for m in homes), name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from engine import *", namespace)
    assert sorted(k for k in namespace if not k.startswith("__")) == sorted(EXPECTED)


def test_importing_the_cli_loads_no_step_machinery() -> None:
    """`engine statusline` starts fast: the package face loads its names only when used."""
    import subprocess
    import sys

    code = "import sys, engine.cli; print(sorted(m for m in ('structlog', 'anyio', 'pydantic', 'engine.registry') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
