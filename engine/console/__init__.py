"""The web console at `/console`: watch each request walk its graph.

`engine serve` mounts it (on by default on a loopback bind; `--no-console` or
`ENGINE_CONSOLE=off` turns it off). It only reads: the runs of this process (a bounded ring
fed where the access line is written, see `runs.py`), the capture directory when capture is
on, and the loaded pipelines. Pages are rendered on the server (Jinja2), drawings are inline
SVG (`svg.py`), and the one script (`static/console.js`) only follows the live list over
Server-Sent Events and filters it: everything ships in this package, nothing comes from a CDN.

When inbound keys are set (ENGINE_API_KEYS) every page but the login form needs a session:
the form takes a key, and the session cookie (signed, HttpOnly, SameSite=Strict, path
/console) holds only a fingerprint of it, never the key; a key removed from the set ends its
sessions. Keys are never rendered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.capture import trace_rows
from engine.console.runs import CaptureIndex, Runs

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from engine.executor import Engine
    from engine.run import RunContext

__all__ = ["Console", "enabled"]


def enabled(value: str | None) -> bool:
    """Whether an ENGINE_CONSOLE value turns the console on (`on`, `1`, `true`, `yes`)."""
    return (value or "").strip().lower() in {"on", "1", "true", "yes"}


class Console:
    """What the console knows beyond the engine: recent runs and the reload history.

    engine/http.py creates one per app, calls `ran()` with each access line, `reloaded()`
    after each reload attempt, and mounts `app()` at `/console`.
    """

    def __init__(self, engine: Engine, *, api_keys: list[str] | None = None, pipelines: list[str] | None = None) -> None:
        self.engine = engine
        self.api_keys = [k for k in api_keys or [] if k]
        self.pipelines = pipelines
        self.runs = Runs()
        self.captures = CaptureIndex(engine.capture.dir) if engine.capture is not None else None
        self.reloads: list[dict[str, Any]] = []  # newest last, bounded

    def started(self, ctx: RunContext) -> None:
        """A run began (its recorder in place): list it as running, with its trace so far."""
        recorder = ctx.recorder
        if recorder is None:
            return
        t0 = recorder.t0

        def live_trace() -> list[dict[str, Any]]:  # the shape RunRecorder.finish gives the trace
            return trace_rows(list(ctx.trace), t0)

        self.runs.started({"request_id": ctx.request_id, "pipeline": ctx.pipeline}, recorder.record, live_trace)

    def ran(self, facts: dict[str, Any], record: dict[str, Any] | None) -> None:
        """One finished run: its access-line fields and its run record (if one was kept)."""
        self.runs.add(facts, record)

    def reloaded(self, ok: bool, errors: list[str], pipelines: list[str]) -> None:
        """A live reload was attempted: applied (`ok`) or refused with located errors."""
        import time

        from engine.logs import scrub

        self.reloads.append({"at": time.time(), "ok": ok, "errors": [scrub(e) for e in errors], "pipelines": pipelines})
        del self.reloads[:-20]

    def app(self) -> ASGIApp:
        from engine.console.views import build

        return build(self)
