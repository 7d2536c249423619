"""Suite-wide settings: quiet logs, so a failing test's output shows its own lines."""

from __future__ import annotations

import pytest

from engine import logs


def pytest_configure(config: pytest.Config) -> None:
    # Warnings and errors only: debug step lines would drown the output of failing tests.
    logs.configure("console", "warning", cache=False)
