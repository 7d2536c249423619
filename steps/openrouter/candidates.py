"""`openrouter.candidates`: the ordered attempts of one upstream turn, for the engine to try.

The routed model comes first, then its fallbacks (openrouter.route), each with its own payload
(convert.request, convert.requests) and provider. The engine runs `openrouter.call` over this
list (`candidates:` in pipelines/turn.yaml): one attempt per candidate, moving on when a
failure says another model may succeed, skipping a model whose breaker is open while another
is left. Each candidate's breaker `key` is provider and model and, when the provider forwards
clients' own keys, a hash of the client's key, so one user's rate limit never shuts a model
for everyone (the key itself is never kept).
"""

from __future__ import annotations

import hashlib

from engine.registry import step
from engine.types import Request
from steps.openrouter.upstream import _client_key
from steps.providers.config import Providers, Target, single

__all__ = ["candidates"]


@step("openrouter.candidates", blocking=False)
def candidates(
    payload: dict,
    request: Request,
    providers: Providers | None = None,
    route: list[dict] | None = None,
    fallbacks: list[dict] | None = None,
) -> list[dict]:
    """The attempts in order: `[{with: {payload, target}, key, name}, ...]`.

    `payload` is the routed model's request and `fallbacks` one per fallback model;
    `route` (openrouter.route's `candidates`) says which provider serves each, in the same
    order. `target` tells the call where to send and which attempt it is (`index`, and the
    `first` model's name, for the access log's `fallback` field).
    """
    providers = providers or single("https://openrouter.ai/api/v1")
    payloads = [p for p in [payload, *(fallbacks or ())] if isinstance(p, dict)]
    targets = [_target(providers, p, route[i] if route and i < len(route) else None) for i, p in enumerate(payloads)]
    client = _client_key(request)
    first = providers.shown(targets[0]) if targets else ""
    out = []
    for i, (p, t) in enumerate(zip(payloads, targets)):
        shown = providers.shown(t)
        key = f"{t.provider}|{t.model}"
        provider = providers.get(t.provider)
        if not provider.api_key and provider.forward_client_key and client:
            key += "|" + hashlib.sha256(client.encode()).hexdigest()[:16]
        target = {"provider": t.provider, "model": t.model, "ref": t.ref, "index": i, "first": first}
        out.append({"with": {"payload": p, "target": target}, "key": key, "name": shown})
    return out


def _target(providers: Providers, payload: dict, routed: dict | None) -> Target:
    if isinstance(routed, dict) and routed.get("provider") in providers.providers:
        return Target(routed["provider"], str(routed.get("model") or payload.get("model")), str(routed.get("ref") or payload.get("model")))
    return providers.resolve(str(payload.get("model") or ""))
