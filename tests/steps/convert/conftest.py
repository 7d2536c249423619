"""Unit tests of the converters run without an engine: give each test a fresh calibration."""

from __future__ import annotations

import pytest

from steps.anthropic import tokens


@pytest.fixture(autouse=True)
def _fresh_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "CALIBRATION", tokens.Calibration())
