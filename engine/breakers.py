"""Named circuit breakers shared by every run of an engine, shaped like Envoy's outlier detection.

A pipeline declares `breakers: {NAME: {failures: 3, cooldown: 5s}}` and a step that runs over
`candidates:` names one with `breaker: NAME`. Each candidate carries a `key` (for the upstream
call: provider, model and, when clients' own keys are forwarded, a hash of the key, so one
user's rate limit never shuts a model for the others). After `failures` consecutive failures
of a key that speak of its health (the error's `about_candidate`: a 429, a 5xx, a timeout, a
broken answer; never a 400, 401, 402, 403, 413, which say nothing about the candidate), the key
is *open* for `cooldown` seconds: the step skips that candidate while another is left. It never
refuses the last candidate left (Envoy's panic mode): a breaker can only redirect traffic,
never turn a request away. When the cooldown has passed, exactly one run is let through as a
*probe*: its success closes the breaker, its failure opens it for another cooldown; while the
probe runs, other runs keep skipping the key. A probe that ends without a verdict (cancelled,
or a failure that says nothing about the candidate) lets the next run probe instead.

State lives in memory, one `Breakers` per engine; it is not shared between workers or replicas
(DESIGN "Scale": a shared store such as Redis if that is ever needed). The clock is monotonic.
`Breakers.state()` is the one read of that state (for a capture or the console).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from engine.spec import BreakerSpec

__all__ = ["Breaker", "Breakers"]


@dataclass(slots=True)
class _State:
    failures: int = 0
    open_until: float | None = None  # monotonic time the cooldown ends; None = closed
    probing: bool = False  # a probe run is in flight


class Breaker:
    """Consecutive-failure counts and cooldowns per key. Not thread-safe: one event loop."""

    def __init__(self, spec: BreakerSpec | None = None, clock=time.monotonic) -> None:  # noqa: ANN001 - a test may pass a fake clock
        self.spec = spec or BreakerSpec()
        self._states: dict[str, _State] = {}
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self.spec.cooldown > 0

    def allow(self, key: str) -> bool:
        """Whether a run may try `key` now (taking the probe slot after a cooldown)."""
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

    def failed(self, key: str) -> bool:
        """Count a failure about the candidate; True when it (re)opened the breaker."""
        st = self._states.setdefault(key, _State())
        st.failures += 1
        if st.probing or st.failures >= self.spec.failures:
            st.probing = False
            st.open_until = self._clock() + self.spec.cooldown
            return True
        return False

    def succeeded(self, key: str) -> None:
        """A success closes the breaker and forgets the failures."""
        self._states.pop(key, None)

    def release(self, key: str) -> None:
        """A run ended without saying anything about the candidate's health."""
        st = self._states.get(key)
        if st is not None:
            st.probing = False

    def is_open(self, key: str) -> bool:
        st = self._states.get(key)
        return st is not None and st.open_until is not None and self._clock() < st.open_until

    def state(self) -> dict[str, dict[str, Any]]:
        """Every key with failures or a cooldown: `{key: {failures, open_s, probing}}`."""
        return {
            key: {"failures": st.failures, "open_s": round(self.remaining(key), 3), "probing": st.probing}
            for key, st in self._states.items()
        }


class Breakers:
    """The engine's breakers by name; a reload keeps the state of names it keeps."""

    def __init__(self, specs: dict[str, BreakerSpec] | None = None) -> None:
        self._breakers: dict[str, Breaker] = {}
        self.add(specs or {})

    def add(self, specs: dict[str, BreakerSpec]) -> None:
        for name, spec in specs.items():
            current = self._breakers.get(name)
            if current is None:
                self._breakers[name] = Breaker(spec)
            else:
                current.spec = spec

    def get(self, name: str) -> Breaker:
        return self._breakers[name]

    def state(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every breaker's open or failing keys, by breaker name (empty ones left out)."""
        return {name: s for name, b in self._breakers.items() if (s := b.state())}
