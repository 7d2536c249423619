"""What one upstream turn used: its tokens by kind and its cost, as `engine.usage` counts them.

Both conversions (JSON and stream) call `meter` once per turn with the Anthropic usage they
send the client and tell the result as their `usage` fact, which the pipelines' `access:`
declares, so the access line, the metrics and Claude Code agree on the tokens. The
cost is the upstream's own figure when it reports one (OpenRouter's `usage.cost`, always sent
since 2025; with BYOK plus `cost_details.upstream_inference_cost`, what the provider billed),
else the model's prices (`openrouter.prices`: the listing's `pricing`, else the profile YAML).
"""

from __future__ import annotations

from typing import Any

from engine import usage as metering
from steps.openrouter.profiles import Prices


def reported_cost(raw: Any) -> float | None:
    """The USD cost an upstream put in its usage object, or None."""
    if not isinstance(raw, dict):
        return None
    cost = raw.get("cost")
    if not isinstance(cost, (int, float)) or isinstance(cost, bool) or cost < 0:
        return None
    details = raw.get("cost_details")
    if raw.get("is_byok") and isinstance(details, dict):
        upstream = details.get("upstream_inference_cost")
        if isinstance(upstream, (int, float)) and not isinstance(upstream, bool) and upstream > 0:
            cost += upstream
    return float(cost)


def meter(model: str, usage: dict, raw: Any, prices: dict[str, Prices] | None) -> dict[str, dict[str, Any]]:
    """One turn of `model` as `engine.usage` counts it ({model: tokens by kind and cost}):
    `usage` is the Anthropic usage sent to the client, `raw` the upstream's usage object
    (None when it sent none)."""
    tokens = {
        "input": usage.get("input_tokens") or 0,
        "output": usage.get("output_tokens") or 0,
        "cache_read": usage.get("cache_read_input_tokens") or 0,
        "cache_write": usage.get("cache_creation_input_tokens") or 0,
    }
    cost = reported_cost(raw)
    if cost is None and prices:
        price = prices.get(model)
        if price is not None:
            cost = price.cost(tokens["input"], tokens["output"], tokens["cache_read"], tokens["cache_write"])
    return metering.add({}, model, tokens, cost)
