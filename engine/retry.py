"""When to try a failed step again, and how long to wait first.

The error decides whether it is worth retrying (`StepError.retryable`, `kind`); the YAML
policy decides how often and how long. Waits are exponential with full jitter (a uniform
draw between 0 and the capped exponential), so a crowd of clients does not retry in step.
A `retry_after` the failing party asked for is honoured when it fits both the policy's
`max_retry_after` and the run's remaining deadline; otherwise the error is returned at once,
because waiting past the deadline cannot succeed.
"""

from __future__ import annotations

import random

from engine.errors import StepError
from engine.spec import RetryBudgetSpec, RetrySpec

_rng = random.Random()


def backoff(policy: RetrySpec, attempt: int) -> float:
    """The wait before attempt `attempt + 1`: full jitter over the capped exponential."""
    ceiling = min(policy.max_backoff, policy.backoff * (2 ** (attempt - 1)))
    return _rng.uniform(0, ceiling)


def matches(error: BaseException, policy: RetrySpec) -> bool:
    """Whether the policy retries this error: it says it is retryable (and `on` has
    `retryable`), or `on` names its kind (`timeout`, `connect`...) or its status (429, 503)."""
    on = policy.on
    if not isinstance(error, StepError):
        return "error" in on
    if (error.retryable and "retryable" in on) or error.kind in on:
        return True
    status = getattr(error, "status", None)
    return isinstance(status, int) and (status in on or str(status) in on)


def next_delay(error: BaseException, policy: RetrySpec, attempt: int, remaining: float | None) -> float | None:
    """Seconds to wait before retrying, or None when the error must be returned now."""
    if attempt >= policy.attempts or not matches(error, policy):
        return None
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None and retry_after > 0:
        if retry_after > policy.max_retry_after:
            return None
        delay = float(retry_after)
    else:
        delay = backoff(policy, attempt)
    if remaining is not None and delay >= remaining:
        return None
    return delay


class RetryBudget:
    """Counts active runs and retries in flight; a retry proceeds only within the budget."""

    def __init__(self, spec: RetryBudgetSpec | None = None) -> None:
        spec = spec or RetryBudgetSpec()
        self.ratio = spec.ratio
        self.min = spec.min
        self.active_runs = 0
        self.active_retries = 0
        self.refused = 0

    def allow(self) -> bool:
        if self.active_retries < max(self.min, self.ratio * self.active_runs):
            return True
        self.refused += 1
        return False
