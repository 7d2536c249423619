"""Named concurrency limits shared by every run of an engine (e.g. calls to the upstream).

A step names a limit with `limit: NAME`; the pipeline declares it under `limits:` with `max`
holders and an optional `queue_timeout`. A run that waits longer than the queue timeout gets
`LimitTimeout` (kind "overloaded"), so an overloaded server answers quickly instead of piling
up work it cannot finish. A streaming step holds its slot until its stream ends.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from engine.errors import LimitTimeout
from engine.spec import LimitSpec


class Limits:
    def __init__(self, specs: dict[str, LimitSpec]) -> None:
        self._specs = specs
        self._sems = {name: anyio.Semaphore(spec.max) for name, spec in specs.items()}

    def add(self, specs: dict[str, LimitSpec]) -> None:
        """Add limits by name (existing names keep their semaphore and current holders)."""
        for name, spec in specs.items():
            if name not in self._sems:
                self._specs[name] = spec
                self._sems[name] = anyio.Semaphore(spec.max)

    async def acquire(self, name: str) -> Callable[[], None]:
        """Wait for a slot; returns the function that gives it back (call it exactly once)."""
        sem = self._sems[name]
        try:
            sem.acquire_nowait()  # the usual case: a free slot, no cancel scope, no checkpoint
            return _releaser(sem)
        except anyio.WouldBlock:
            pass
        timeout = self._specs[name].queue_timeout
        if timeout is None:
            await sem.acquire()
        else:
            with anyio.move_on_after(timeout):
                await sem.acquire()
                return _releaser(sem)
            raise LimitTimeout(f"limit '{name}' stayed full for {timeout:g} s", retry_after=1.0)
        return _releaser(sem)


def _releaser(sem: anyio.Semaphore) -> Callable[[], None]:
    done = False

    def release() -> None:
        nonlocal done
        if not done:
            done = True
            sem.release()

    return release
