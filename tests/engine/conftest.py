from __future__ import annotations

import pytest

from tests.engine import toysteps


@pytest.fixture(autouse=True)
def _clean_toys():
    """Every test starts with no recorded calls or events."""
    toysteps.calls.clear()
    toysteps.events.clear()
    toysteps._flaky_counts.clear()
    yield
