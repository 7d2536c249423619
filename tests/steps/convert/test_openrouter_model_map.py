"""openrouter.model_map and openrouter.model_list."""

from __future__ import annotations

import re

import pytest

from engine.types import Request
from steps.openrouter.model_map import model_catalogue, model_map, model_page
from steps.openrouter.profiles import Profile

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


def _page(query: dict | None = None, model_id: str | None = None, profiles: dict | None = None, **kw) -> dict:
    request = Request(method="GET", path="/v1/models", headers={}, query=query or {}, body=b"", path_params={"model_id": model_id} if model_id else {})
    catalogue = model_catalogue(BIG, SMALL, MID, request=request, **kw)
    return model_page(catalogue, profiles or {}, request)


def test_model_list_shape() -> None:
    """Anthropic's list shape: the Claude ids first (what Claude Code's discovery keeps), then every configured upstream model."""
    page = _page(aliases={"claude-fast": "x/fast", "plain": "x/plain"})
    ids = [m["id"] for m in page["data"]]
    assert ids[:4] == ["claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5", "claude-fast"]
    assert set(ids[4:]) == {BIG, MID, SMALL, "x/fast", "x/plain"}
    for m in page["data"]:
        assert m["type"] == "model" and m["display_name"] and m["lifecycle"] == "active"
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", m["created_at"])
        assert m["max_input_tokens"] is None and m["max_tokens"] is None  # no profile given
    assert (page["first_id"], page["has_more"]) == ("claude-opus-5-5", False)
    assert BIG in page["data"][0]["display_name"]


def test_model_list_pages_like_anthropic() -> None:
    """limit (default 20), after_id and before_id page through the list."""
    all_ids = [m["id"] for m in _page({"limit": "1000"})["data"]]
    first = _page({"limit": "2"})
    assert [m["id"] for m in first["data"]] == all_ids[:2] and first["has_more"] is True and first["last_id"] == all_ids[1]
    second = _page({"limit": "2", "after_id": first["last_id"]})
    assert [m["id"] for m in second["data"]] == all_ids[2:4]
    back = _page({"limit": "2", "before_id": all_ids[3]})
    assert [m["id"] for m in back["data"]] == all_ids[1:3] and back["has_more"] is True


def test_one_model_carries_its_window() -> None:
    """GET /v1/models/{id}: a tier id or any other id, mapped as a request would be, with its profile's figures."""
    profiles = {BIG: Profile(model=BIG, family="anthropic", context_length=200000, max_output=64000), "openai/gpt-4o": Profile(model="openai/gpt-4o", family="openai", context_length=128000, max_output=16384)}
    opus = _page(model_id="claude-opus-5-5", profiles=profiles)
    assert (opus["id"], opus["max_input_tokens"], opus["max_tokens"]) == ("claude-opus-5-5", 200000, 64000)
    other = _page(model_id="openai/gpt-4o", profiles=profiles)
    assert (other["id"], other["max_input_tokens"], other["max_tokens"]) == ("openai/gpt-4o", 128000, 16384)
