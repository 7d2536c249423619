"""The run context: what one execution of a pipeline knows about itself.

A step asks for it by declaring a parameter annotated `RunContext` (or named `ctx`). Through
it a step reads the request id and the deadline, logs with the run's context already bound,
gets shared resources (a pooled HTTP client, say), draws ids and timestamps that replay can
reproduce, and runs sub-pipelines, which is how loops happen without a cycle in any graph.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio
import structlog

from engine.streams import aclose_quietly

T = TypeVar("T")

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE62_BYTE = bytes((_BASE62 + "??")[b & 63].encode()[0] for b in range(256))  # byte -> its character
_OVER_61 = bytes(b for b in range(256) if b & 63 > 61)  # the bytes rejection sampling drops
_STEP_LOG = structlog.wrap_logger(None, logger_factory_args=("engine.step",), cache_logger_on_first_use=False)
"""The steps' logger, one for every run: `get_logger` per run built a proxy per request (two
runs each), for a logger most runs never use. Never cached, so it follows every `configure`."""


class Resources:
    """Objects shared by every run of one engine (e.g. a pooled HTTP client), closed with it.

    A step calls ``await ctx.resource("name", factory)``; the first caller creates the object,
    later ones share it. On shutdown every object with an ``aclose`` or ``close`` is closed in
    reverse order of creation.
    """

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._lock = anyio.Lock()

    async def get(self, name: str, factory: Callable[[], Any | Awaitable[Any]]) -> Any:
        item = self._items.get(name)
        if item is not None:
            return item
        async with self._lock:
            if name not in self._items:
                made = factory()
                if isinstance(made, Awaitable):
                    made = await made
                self._items[name] = made
            return self._items[name]

    def get_now(self, name: str, factory: Callable[[], Any]) -> Any:
        """`get` for an object a plain function makes: no await, so a sync step can share one.

        Nothing else runs on the event loop while this does, so no lock is needed; a name must
        be made either way, not both (an async factory may be awaited under `get`'s lock)."""
        item = self._items.get(name)
        if item is None:
            item = factory()
            if isinstance(item, Awaitable):
                raise TypeError(f"resource '{name}': get_now takes a plain factory; await get() for an async one")
            self._items[name] = item
        return item

    async def aclose(self) -> None:
        items, self._items = list(self._items.values()), {}
        for item in reversed(items):
            closer = getattr(item, "aclose", None)
            if closer is not None:
                await closer()
            elif callable(getattr(item, "close", None)):
                item.close()


class IdSource:
    """Random ids and clock readings for a run. Replay swaps in one that repeats a capture."""

    def new_id(self, prefix: str = "", length: int = 24) -> str:
        """`length` uniformly random base62 characters after `prefix`.

        Rejection sampling done in C: each random byte's low six bits pick a character, and the
        two values past 61 are dropped (`bytes.translate` maps and drops in one call), so every
        character stays uniform. ~1.5 us, against ~5.5 us for base62 by integer division (a
        request draws two or three ids) and ~45 us for secrets.choice x24.
        """
        out = b""
        while len(out) < length:  # a 25% margin: a second draw is rarely needed
            out += secrets.token_bytes(length + length // 4 + 2).translate(_BASE62_BYTE, _OVER_61)
        return prefix + out[:length].decode("ascii")

    def now(self) -> float:
        return time.time()


class Runner(Protocol):
    """What a run needs from the engine running it: shared resources and sub-runs.

    `engine.executor.Engine` is the one implementation; naming only this much here keeps the
    run context below the executor (the executor builds contexts, never the other way).
    """

    resources: Resources

    async def run(self, name: str, input: Any = None, *, parent: RunContext | None = None) -> Any: ...


@dataclass(slots=True, eq=False)
class RunContext:
    """One run of one pipeline. Created by the engine; steps only read it and call its methods."""

    request_id: str
    pipeline: str
    engine: Runner
    input: Any = None
    deadline: float | None = None  # time.monotonic() seconds
    ids: IdSource = field(default_factory=IdSource)
    parent: RunContext | None = None
    log: Any = field(default=None)
    results: dict[Any, Any] = field(default_factory=dict)  # the run's step outputs and facts so far (its access line reads them)
    trace: list[tuple[str, str, str, int, float, float]] = field(default_factory=list)  # (pipeline, step, outcome, attempts, start, end); sub-runs add theirs
    streams: list[Any] = field(default_factory=list)
    committed: bool = False  # a top-level run whose output is ready: the response has started
    recorder: Any = None  # engine.capture.RunRecorder while capturing
    replayer: Any = None  # engine.replay.Replayer while replaying

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = _STEP_LOG

    def response_started(self) -> bool:
        """Whether the run this one belongs to has produced its output (the response started).

        A sub-run started after that (a tool loop inside a stream) does not inherit the
        deadline: it bounds the wait for the response to start, not the stream."""
        ctx: RunContext | None = self
        while ctx is not None:
            if ctx.committed:
                return True
            ctx = ctx.parent
        return False

    def remaining(self) -> float | None:
        """Seconds left before the run's deadline, or None when the run has none."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()  # the loop's clock on asyncio/uvloop, without its lookup cost

    def new_id(self, prefix: str = "", length: int = 24) -> str:
        """A random id such as `msg_...`; replay reproduces the captured ones."""
        return self.ids.new_id(prefix, length)

    def now(self) -> float:
        """Wall-clock seconds; replay reproduces the captured ones."""
        return self.ids.now()

    async def resource(self, name: str, factory: Callable[[], Any | Awaitable[Any]]) -> Any:
        """A shared object (created once per engine by `factory`), e.g. a pooled HTTP client."""
        return await self.engine.resources.get(name, factory)

    def resource_now(self, name: str, factory: Callable[[], Any]) -> Any:
        """`resource` for an object a plain function makes, from a sync step."""
        return self.engine.resources.get_now(name, factory)

    async def run_pipeline(self, name: str, input: Any, facts: Any = None) -> Any:
        """Run another loaded pipeline as part of this run (same request id and deadline).

        With `facts` (an engine.types.Facts), the sub-run's `access:` fields are handed up into
        it, read whenever they are asked for (a stream's usage is known once it ended)."""
        return await self.engine.run(name, input, parent=self, facts=facts)

    async def aclose(self) -> None:
        """Close every stream this run opened that its consumer did not finish (idempotent)."""
        pending, self.streams[:] = list(self.streams), []
        for stream in reversed(pending):
            await aclose_quietly(stream)
