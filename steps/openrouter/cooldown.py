"""A circuit breaker per upstream model, shaped like Envoy's outlier detection.

After `threshold` consecutive failures of one model that speak of its health
(`Failure.about_model`, steps/providers/failures.py: connection failures, upstream timeouts,
broken answers, 408, 429, 5xx; never 400, 401, 402, 403, 413, a context overflow or our own
deadline, which say nothing about the model), the model is *open* for `seconds`:
`openrouter.call` skips it while another candidate (a fallback) is left. It never refuses the
last candidate left (Envoy's panic mode: when every host is ejected, route to them anyway): a
request with nowhere else to go tries the open model, so a breaker can only ever redirect
traffic, never turn a request away (LiteLLM's cooldown: allowed_fails 3, 5 s). When the
cooldown has passed, exactly one request is let through as a *probe*: its success closes the
breaker, its failure opens it for another `seconds`; while the probe runs, other requests keep
skipping the model. A probe that ends without a verdict (cancelled by a client disconnect or
the engine's timeout, or a failure that says nothing about the model) lets the next request
probe instead.

Keys are provider, model and, when the provider forwards clients' own keys, a hash of the
client's key: one user's rate limit never shuts a model for the others. State lives in
memory, one `Cooldowns` per engine (an engine resource); it is not shared between workers or
replicas (DESIGN "Scale": a shared store such as Redis if that is ever needed). The clock is
monotonic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.run import RunContext

__all__ = ["Cooldowns", "cooldowns"]

RESOURCE = "openrouter.cooldowns"


@dataclass(slots=True)
class _State:
    failures: int = 0
    open_until: float | None = None  # monotonic time the cooldown ends; None = closed
    probing: bool = False  # a probe request is in flight


class Cooldowns:
    """Consecutive-failure counts and cooldowns per key. Not thread-safe: one event loop."""

    def __init__(self, clock=time.monotonic) -> None:  # noqa: ANN001 - a test may pass a fake clock
        self._states: dict[str, _State] = {}
        self._clock = clock

    def allow(self, key: str) -> bool:
        """Whether a request may go to `key` now (taking the probe slot after a cooldown)."""
        st = self._states.get(key)
        if st is None or st.open_until is None:
            return True
        if self._clock() < st.open_until or st.probing:
            return False
        st.probing = True
        return True

    def remaining(self, key: str) -> float:
        """Seconds of cooldown left for `key` (0 when closed or over)."""
        st = self._states.get(key)
        if st is None or st.open_until is None:
            return 0.0
        return max(0.0, st.open_until - self._clock())

    def failed(self, key: str, threshold: int, seconds: float) -> bool:
        """Count a failure; True when it (re)opened the breaker."""
        st = self._states.setdefault(key, _State())
        st.failures += 1
        if st.probing or st.failures >= max(1, threshold):
            st.probing = False
            st.open_until = self._clock() + seconds
            return True
        return False

    def succeeded(self, key: str) -> None:
        """A success closes the breaker and forgets the failures."""
        self._states.pop(key, None)

    def release(self, key: str) -> None:
        """A request ended without saying anything about the model's health."""
        st = self._states.get(key)
        if st is not None:
            st.probing = False

    def is_open(self, key: str) -> bool:
        st = self._states.get(key)
        return st is not None and st.open_until is not None and self._clock() < st.open_until


async def cooldowns(ctx: RunContext) -> Cooldowns:
    """The engine's breaker state (created on first use)."""
    return await ctx.resource(RESOURCE, Cooldowns)
