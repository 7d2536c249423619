"""A failure after a server-side tool has run: it says what already happened, and is never retried.

Once a run has written a file, run a command or fetched a page for the model, sending the
same request again would do it again. So every later failure of that run (the next upstream
turn failing, the deadline, a broken stream) is raised as `AfterSideEffects`, wrapping the
original error: the error renderer keeps the original's status and type, appends what ran to
the message and answers `x-should-retry: false`; the engine's retry loop sees a
non-retryable kind no policy names. The error is the only carrier: no flag on the run.
"""

from __future__ import annotations

from engine.errors import StepError


class AfterSideEffects(StepError):
    """`cause` failed after the server-side tool calls named in `ran` had already run."""

    kind = "after_side_effects"
    retryable = False

    def __init__(self, cause: BaseException, ran: list[str]) -> None:
        self.cause = cause
        self.ran = list(ran)
        super().__init__(f"{type(cause).__name__} {self.note}")

    @property
    def note(self) -> str:
        """What to append to the client's message, e.g. `after 2 server-side tool calls had
        already run (Bash, Write); not retried`."""
        n = len(self.ran)
        names = ", ".join(dict.fromkeys(self.ran))
        return f"after {n} server-side tool call{'s' if n != 1 else ''} had already run ({names}); not retried"
