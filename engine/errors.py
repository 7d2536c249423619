"""Every error the engine raises or understands, named by the phase it belongs to.

    EngineError
    ├── SpecError            a pipeline file is wrong (load time); carries file, line, col, hint
    │   └── SpecErrors       all SpecErrors found in one load, reported together
    ├── RegistryError        a step name or `module:function` reference cannot be resolved
    └── StepError            a step failed while a run was executing (run time)
        ├── StepTimeout      a step, a stream's first item or a stream gap took too long
        ├── DeadlineExceeded the run's deadline passed
        ├── LimitTimeout     a named concurrency limit stayed full for its whole queue timeout
        ├── RunCancelled     the run was cancelled (the client went away)
        └── HttpError        the HTTP layer refused a request before any pipeline ran

`StepError` is also the base class that step authors raise. The retry loop asks the error,
never guesses: `kind` names what happened (matched against `retry.on` in YAML), `retryable`
says whether repeating the step could help, and `retry_after` is the wait the failing party
asked for, in seconds. For a step that runs over `candidates:`, `fallback` says whether another
candidate may succeed now, and `about_candidate` whether the failure speaks of this candidate's
health (a breaker counts only those). An error's `status`, when it has one, can be named under
`retry.on` too.
"""

from __future__ import annotations

from dataclasses import dataclass


class EngineError(Exception):
    """Base class of everything the engine raises on purpose."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where in a pipeline file something was written (1-based line and column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class SpecError(EngineError):
    """A pipeline file is wrong. The message says what, `hint` says how to fix it."""

    def __init__(self, message: str, location: Location | None = None, hint: str = "") -> None:
        self.message = message
        self.location = location
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        hint = f"; {self.hint}" if self.hint else ""
        return f"{where}{self.message}{hint}"


class SpecErrors(EngineError):
    """Every `SpecError` found while loading, so a user fixes them all in one pass."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = sorted(errors, key=_error_order)
        super().__init__("\n".join(str(e) for e in self.errors))


def _error_order(e: SpecError) -> tuple[str, int, int]:
    loc = e.location
    return (loc.file, loc.line, loc.col) if loc else ("", 0, 0)


class RegistryError(EngineError):
    """A step could not be found or imported."""


class StepError(EngineError):
    """A step failed. Raise it (or a subclass) from a step to tell the engine how to react.

    `kind` is a short word the YAML can name under `retry.on` (e.g. "timeout", "connect",
    "rate_limit"); `retryable` says whether another attempt could succeed; `retry_after` is a
    wait in seconds asked for by whoever failed (an HTTP `Retry-After`, say).
    """

    kind: str = "error"
    retryable: bool = False
    fallback: bool = False
    about_candidate: bool = False

    def __init__(
        self,
        message: str = "",
        *,
        kind: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        fallback: bool | None = None,
        about_candidate: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind
        if retryable is not None:
            self.retryable = retryable
        if fallback is not None:
            self.fallback = fallback
        if about_candidate is not None:
            self.about_candidate = about_candidate
        self.retry_after = retry_after
        # Filled in by the executor so logs and error renderers can say where it happened.
        self.step: str | None = None
        self.attempts: int = 0


class StepTimeout(StepError):
    """A step (or a stream's first item, or the gap between two items) exceeded its timeout."""

    kind = "timeout"
    retryable = True
    fallback = True  # a candidate that did not answer in time: the next one may
    about_candidate = True


class DeadlineExceeded(StepError):
    """The run's deadline passed; nothing more is attempted."""

    kind = "deadline"
    retryable = False


class LimitTimeout(StepError):
    """A named concurrency limit stayed full for the whole queue timeout (overload)."""

    kind = "overloaded"
    retryable = False


class RunCancelled(StepError):
    """The run was cancelled from outside, e.g. the HTTP client disconnected."""

    kind = "cancelled"
    retryable = False


class HttpError(StepError):
    """The HTTP layer refused the request: no route (404), wrong method (405), body too large
    (413), unsupported content type (415), body too slow (408). The served protocol's error
    step renders it like any other error."""

    kind = "http"

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
