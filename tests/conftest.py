"""Suite-wide guards: the shared Claude Code fixtures must be present (../shared beside the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import logs

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "claude-code"


def pytest_configure(config: pytest.Config) -> None:
    # Warnings and errors only: debug step lines would drown the output of failing tests.
    logs.configure("console", "warning", cache=False)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not (FIXTURES / "first_turn.json").is_file():
        raise pytest.UsageError(
            f"the shared Claude Code fixtures are missing: expected {FIXTURES} "
            "(clone the repo with the team's shared/ directory beside it)"
        )
