"""Model prices: the listing's `pricing` over the profile YAML's `price`, and what a call costs."""

from __future__ import annotations

from pathlib import Path

import pytest

from steps.convert.metering import reported_cost
from steps.openrouter.profiles import Prices, ProfileBook, load_rules


def book(tmp_path: Path, yaml_text: str) -> ProfileBook:
    data = tmp_path / "profiles.yaml"
    data.write_text(yaml_text)
    return ProfileBook(load_rules(data))


class TestPrices:
    def test_cost_bills_cache_tokens_at_their_prices(self) -> None:
        """Input excludes cache reads and writes; each kind is billed at its own price."""
        p = Prices(input=3, output=15, cache_read=0.3, cache_write=3.75)
        assert p.cost(1_000_000, 0) == pytest.approx(3)
        assert p.cost(1000, 2000, cache_read=10_000, cache_write=4000) == pytest.approx((3000 + 30000 + 3000 + 15000) / 1e6)

    def test_missing_cache_prices_are_billed_as_input(self) -> None:
        """A price list without cache prices never makes cached tokens free."""
        assert Prices(input=2, output=8).cost(0, 0, cache_read=1_000_000, cache_write=1_000_000) == pytest.approx(4)


class TestProfileBookPrices:
    def test_the_last_matching_yaml_price_wins(self, tmp_path: Path) -> None:
        """Rules apply in file order: a narrower, later rule overrides a broader one."""
        b = book(tmp_path, 'rules:\n  - match: ["a/*"]\n    price: {input: 1, output: 2}\n  - match: ["a/special"]\n    price: {input: 5, output: 6, cache_read: 0.5}\n')
        assert b.prices("a/plain") == Prices(1, 2)
        assert b.prices("a/special") == Prices(5, 6, 0.5)
        assert b.prices("b/other") is None

    def test_listing_pricing_wins_and_is_per_token(self, tmp_path: Path) -> None:
        """OpenRouter lists USD per token as decimal strings; negative means variable (ignored)."""
        b = book(tmp_path, 'rules:\n  - match: ["*"]\n    price: {input: 1, output: 2}\n')
        b.live = {
            "x/listed": {"id": "x/listed", "pricing": {"prompt": "0.000003", "completion": "0.000015", "input_cache_read": "0.0000003", "input_cache_write": "0.00000375"}},
            "x/router": {"id": "x/router", "pricing": {"prompt": "-1", "completion": "-1"}},
            "x/garbled": {"id": "x/garbled", "pricing": {"prompt": "cheap"}},
        }
        assert b.prices("x/listed") == Prices(3, 15, 0.3, 3.75)
        assert b.prices("x/router") == Prices(1, 2)  # falls back to the YAML
        assert b.prices("x/garbled") == Prices(1, 2)

    def test_the_shipped_profiles_price_the_default_models(self) -> None:
        """The default BIG and SMALL models have a price out of the box."""
        b = ProfileBook(load_rules())
        assert b.prices("anthropic/claude-sonnet-4.5") == Prices(3, 15, 0.3, 3.75)
        assert b.prices("anthropic/claude-haiku-4.5") == Prices(1, 5, 0.1, 1.25)


class TestReportedCost:
    def test_openrouter_cost_is_used_as_is(self) -> None:
        assert reported_cost({"cost": 0.0123, "is_byok": False}) == 0.0123
        assert reported_cost({"cost": 0}) == 0.0

    def test_byok_adds_what_the_provider_billed(self) -> None:
        """With your own provider key, OpenRouter's `cost` is its fee; the provider's bill is
        `cost_details.upstream_inference_cost`."""
        assert reported_cost({"cost": 0.001, "is_byok": True, "cost_details": {"upstream_inference_cost": 0.02}}) == pytest.approx(0.021)

    def test_absent_or_nonsense_cost_is_unknown(self) -> None:
        for raw in (None, {}, {"cost": None}, {"cost": "1"}, {"cost": True}, {"cost": -1}, "x"):
            assert reported_cost(raw) is None
