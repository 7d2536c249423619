"""The shape of a pipeline file, as pydantic models: what a pipeline author may write.

A pipeline file looks like this (GitHub-Actions-like words: `uses`, `with`, `if`)::

    name: greet
    route: POST /greet            # optional: served over HTTP by `engine serve`; a list serves
                                  # several, and an entry {route: GET /greet/x, enabled: ${X:-off}}
                                  # is served only when its own `enabled` is on too
    enabled: ${GREET:-on}         # optional: off = loaded and checked, but no route
    runs_code: false              # optional: true if it runs code on the serving machine
    deadline: 30s                 # optional: the whole run, retries included
    limits:                       # optional: named concurrency limits, shared across runs
      upstream: {max: 64, queue_timeout: 5s}
    breakers:                     # optional: named circuit breakers, shared across runs
      upstream: {failures: 3, cooldown: 5s}
    steps:
      shout:
        uses: text.upper          # a registered step, or package.module:function
        with:
          text: ${{ input.name }} # a reference: this step now depends on the run input
      polite:
        uses: text.prefix
        if: ${{ input.polite }}   # skipped when false...
        else: ${{ steps.shout }}  # ...and dependents get this value instead
        with: {text: ${{ steps.shout }}, prefix: "Dear "}
        retry: {attempts: 3, backoff: 200ms, max_backoff: 2s, on: [retryable, 429, timeout]}
        timeout: 5s               # each attempt (each candidate's)
      send:
        uses: mail.send
        candidates: ${{ input.servers }}  # [{with: {...}, key: ..., name: ...}, ...]: one attempt each, in order
        breaker: upstream         # skip a candidate whose key is open (never the last one left)
        with: {text: ${{ steps.polite }}}
    output: ${{ steps.send }}
    errors: text.render_error     # optional: turns a failed run into an output
    access:                       # optional: the access line's fields, read when the request ends
      shouted: ${{ steps.shout }}

References are whole values `${{ input }}`, `${{ input.a.b }}`, `${{ steps.NAME.a.b }}` or
`${{ facts.NAME.key }}` (what a step told besides its output, engine.types.Facts); edges of
the graph come from them. `${VAR}` and `${VAR:-default}` read the environment when
the file loads. Everything here is checked before anything runs (see `check.py`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Accept seconds as a number or a string with a unit: `250ms`, `5s`, `2m`, `1h`."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"'{value}' is not a duration; write seconds (5) or 250ms, 5s, 2m, 1h")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class RetrySpec(_Strict):
    """How a step is retried. Bounded by default; waits use exponential backoff with full jitter."""

    attempts: int = Field(3, ge=1, le=20, description="total tries, the first included")
    backoff: Duration = Field(0.5, gt=0, le=60, description="base wait before the 2nd try")
    max_backoff: Duration = Field(8.0, gt=0, le=600, description="cap on one wait")
    max_retry_after: Duration = Field(
        60.0, ge=0, le=3600, description="a longer Retry-After is not waited for: the error is returned"
    )
    on: list[str | int] = Field(
        default_factory=lambda: ["retryable"],
        description="what retries: 'retryable' (any error that says it is), an error kind (timeout, connect...) or a status (429, 503)",
    )
    idempotent: bool = Field(False, description="allow retrying a step that has side effects")


class RetryBudgetSpec(_Strict):
    """Retries in flight across all runs, as a share of active runs (Envoy's retry budget).

    A retry storm (every request retrying at once against an upstream that is down) multiplies
    load exactly when the upstream can least take it; the budget caps that.
    """

    ratio: float = Field(0.2, ge=0, le=10, description="retries in flight per active run")
    min: int = Field(3, ge=0, le=100_000, description="retries always allowed, however few runs")


class LimitSpec(_Strict):
    """A named concurrency limit: at most `max` holders at once across all runs."""

    max: int = Field(ge=1, le=1_000_000)
    queue_timeout: Duration | None = Field(None, gt=0, description="give up waiting after this")


class BreakerSpec(_Strict):
    """A named circuit breaker (Envoy's outlier detection), keyed per candidate.

    After `failures` consecutive failures of one key that speak of its health (the error's
    `about_candidate`), the key is open for `cooldown`: steps that name the breaker skip that
    candidate while another is left; the last candidate is always tried (panic mode).
    """

    failures: int = Field(3, ge=1, le=1000, description="consecutive failures that open the breaker")
    cooldown: Duration = Field(5.0, ge=0, le=86400, description="how long an open key is skipped; 0 = breaker off")


class StepSpec(_Strict):
    """One step of a pipeline."""

    uses: str = Field(description="a registered step name, or package.module:function")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    if_: Any = Field(None, alias="if")
    else_: Any = Field(None, alias="else")
    retry: RetrySpec | None = None
    timeout: Duration | None = Field(None, gt=0, le=86400)
    idle_timeout: Duration | None = Field(None, gt=0, le=86400)
    limit: str | None = None
    record: bool = False
    candidates: Any = Field(
        None,
        description="a reference to an ordered list of candidates: one attempt each until one succeeds (README 'Failure policy')",
    )
    breaker: str | None = Field(None, description="a breaker declared under `breakers:`, keyed by each candidate's `key`")
    description: str = ""


class RouteSpec(_Strict):
    """One route that has a switch of its own: served only when `enabled` (and the pipeline) is on.

    A switch belongs to a route, not to the steps behind it: one pipeline may serve a route
    always and another only when a feature is turned on (the agent's `/agent/v1/models` beside
    `/v1/models`), without a second copy of its steps.
    """

    route: str = Field(description="METHOD /path")
    enabled: bool = Field(True, description="false: the route is checked but not served")


class PipelineSpec(_Strict):
    """A whole pipeline file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    description: str = ""
    route: str | RouteSpec | list[str | RouteSpec] | None = None
    enabled: bool = Field(True, description="false: loaded and checked like any pipeline, but none of its routes is served")
    runs_code: bool = Field(
        False,
        description="it runs code on the serving machine (server-side tools): `engine serve` then needs inbound keys on a non-loopback bind",
    )
    deadline: Duration | None = Field(None, gt=0, le=86400)
    limits: dict[str, LimitSpec] = Field(default_factory=dict)
    breakers: dict[str, BreakerSpec] = Field(default_factory=dict)
    retry_budget: RetryBudgetSpec | None = None
    steps: dict[str, StepSpec] = Field(min_length=1)
    output: Any
    errors: str | None = None
    access: dict[str, Any] = Field(
        default_factory=dict,
        description="the access line's fields: name -> reference, read when the request ends (a sub-run's are its facts)",
    )

    @property
    def routes(self) -> list[str]:
        """Every declared route, served or not, as `METHOD /path`."""
        return [text for text, _ in self.route_switches]

    @property
    def route_switches(self) -> list[tuple[str, bool]]:
        """Every declared route with whether it is served (its own switch and the pipeline's)."""
        if self.route is None:
            return []
        entries = self.route if isinstance(self.route, list) else [self.route]
        return [(e, self.enabled) if isinstance(e, str) else (e.route, self.enabled and e.enabled) for e in entries]


STEP_FIELDS = sorted({f.alias or n for n, f in StepSpec.model_fields.items()})
PIPELINE_FIELDS = sorted(PipelineSpec.model_fields)
