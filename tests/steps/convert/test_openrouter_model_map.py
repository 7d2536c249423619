"""openrouter.model_map and openrouter.model_list."""

from __future__ import annotations

import re

import pytest

from steps.openrouter.model_map import model_list, model_map

BIG, MID, SMALL = "openai/gpt-big", "google/gemini-mid", "qwen/small"


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("claude-opus-5-5", BIG),
        ("claude-sonnet-5-5", MID),
        ("claude-sonnet-4-5-20250929", MID),
        ("claude-haiku-5-5", SMALL),
        ("claude-haiku-4-5-20251001", SMALL),
        ("claude-3-7-something", BIG),
        ("openai/gpt-4o", "openai/gpt-4o"),
        ("gpt-4o", "gpt-4o"),
    ],
)
def test_family_mapping(requested: str, expected: str) -> None:
    """Claude families map to their tier; slash ids and non-Claude ids pass through."""
    assert model_map(requested, BIG, SMALL, MID) == expected


def test_sonnet_without_middle_uses_big() -> None:
    """Without a middle model, sonnet maps to the big model."""
    assert model_map("claude-sonnet-5-5", BIG, SMALL) == BIG


def test_alias_wins() -> None:
    """An exact alias match wins over family mapping and slash pass-through."""
    aliases = {"claude-opus-5-5": "x/special", "openai/gpt-4o": "y/other"}
    assert model_map("claude-opus-5-5", BIG, SMALL, MID, aliases) == "x/special"
    assert model_map("openai/gpt-4o", BIG, SMALL, MID, aliases) == "y/other"
    assert model_map("claude-opus-5-5-x", BIG, SMALL, MID, aliases) == BIG


def test_model_list_shape() -> None:
    """The model page follows Anthropic's list shape and every id contains 'claude'."""
    page = model_list(BIG, SMALL, MID, aliases={"claude-fast": "x/fast", "plain": "x/plain"})
    ids = [m["id"] for m in page["data"]]
    assert ids == ["claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5", "claude-fast"]
    assert all("claude" in i for i in ids)
    for m in page["data"]:
        assert m["type"] == "model" and m["display_name"]
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", m["created_at"])
    assert (page["first_id"], page["last_id"], page["has_more"]) == ("claude-opus-5-5", "claude-fast", False)
    assert BIG in page["data"][0]["display_name"]


def test_model_list_limit() -> None:
    """limit cuts the page and sets has_more."""
    page = model_list(BIG, SMALL, limit=2)
    assert len(page["data"]) == 2 and page["has_more"] is True and page["last_id"] == "claude-sonnet-5-5"
