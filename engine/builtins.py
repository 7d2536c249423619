"""Steps every pipeline may use, whatever it serves."""

from __future__ import annotations

from typing import Any

from engine.registry import step


@step("core.value", blocking=False)
def value(value: Any) -> Any:
    """Return `value` as given: a constant, or a reference passed through under a new name."""
    return value
