"""Streams between steps: priming, idle timeouts, and closing what nobody will read.

A step that returns an async iterator is *primed*: the engine pulls its first item inside the
step's attempt, so failures before the first item (connect errors, an error status, a stalled
upstream) are ordinary step failures that retry and time out like any other. After the first
item the stream belongs to its consumer: nothing is retried, an `idle_timeout` bounds the gap
between items, and closing the stream (the consumer went away) closes everything under it.

An item may be a *batch*: a list stands for its elements, in order. A stream whose source
delivers many items at once (one network read holds dozens of upstream chunks) hands them on
as one list, so every layer between the socket and the client resumes once per read instead
of once per item; `follow` counts a batch as its length, and `each` gives the elements one by
one to a consumer that wants them so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from engine.errors import StepTimeout


def is_stream(value: Any) -> bool:
    return hasattr(value, "__anext__")


def elements(item: Any) -> list[Any] | tuple[Any]:
    """What a stream item holds: a batch (a list) its elements, anything else itself alone
    (a stream recorded before batches, or one that never batches)."""
    return item if type(item) is list else (item,)


def size(item: Any) -> int:
    """How many items `item` stands for: a batch (a list) its length, anything else one."""
    return len(item) if type(item) is list else 1


async def each(it: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The elements of a stream whose items may be batches, one at a time (closes `it`)."""
    try:
        async for item in it:
            for element in elements(item):
                yield element
    finally:
        await aclose_quietly(it)


async def close(it: Any) -> None:
    """Close the async iterator a stream layer read from, when the layer ends: nothing to do
    for one without `aclose` or an async generator that already finished; a failure to close
    is the caller's to see (`aclose_quietly` is for cleanup that must not raise)."""
    closer = getattr(it, "aclose", None)
    if closer is not None and getattr(it, "ag_frame", False) is not None:
        await closer()


async def aclose_quietly(it: Any) -> None:
    """Close an async iterator even while the caller is being cancelled."""
    closer = getattr(it, "aclose", None)
    if closer is None or getattr(it, "ag_frame", False) is None:
        return  # nothing to close, or an async generator that has already finished: no scope
    with anyio.CancelScope(shield=True):
        try:
            await closer()
        except Exception:
            pass


async def _empty() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover


async def prime(it: AsyncIterator[Any]) -> tuple[bool, Any]:
    """Pull the first item: (True, item), or (False, None) for an empty stream."""
    try:
        return True, await it.__anext__()
    except StopAsyncIteration:
        return False, None
    except BaseException:
        await aclose_quietly(it)
        raise


async def follow(
    first: Any,
    it: AsyncIterator[Any],
    *,
    step: str,
    idle_timeout: float | None,
    on_end: Callable[[str, int], None],
) -> AsyncIterator[Any]:
    """Yield `first`, then the rest of `it`, enforcing `idle_timeout` between items.

    A stream may time its own gaps by offering `enforce_idle_timeout(seconds)` and returning
    True; it must then raise `StepTimeout` (or an error of its own) when that long passes
    without an item. Returning False leaves the timing to this function.

    `on_end(outcome, items)` runs exactly once: "ok", "error", "timeout" or "closed" (the
    consumer stopped early); `items` counts a batch as its elements (`size`).
    """
    outcome, count = "closed", 0
    enforce = getattr(it, "enforce_idle_timeout", None)
    if idle_timeout is not None and enforce is not None and enforce(idle_timeout):
        # The stream times its own gaps (cheaper than a cancel scope per item): it raises
        # StepTimeout itself when `idle_timeout` passes without an item.
        idle_timeout = None
    try:
        count = size(first)
        yield first
        if idle_timeout is None:
            async for item in it:
                count += size(item)
                yield item
        else:
            while True:
                with anyio.move_on_after(idle_timeout) as scope:
                    try:
                        item = await it.__anext__()
                    except StopAsyncIteration:
                        break
                if scope.cancelled_caught:
                    outcome = "timeout"
                    raise StepTimeout(f"step '{step}' sent nothing for {idle_timeout:g} s", retryable=False)
                count += size(item)
                yield item
        outcome = "ok"
    except GeneratorExit:
        outcome = "closed"
        raise
    except BaseException:
        if outcome != "timeout":
            outcome = "error"
        raise
    finally:
        await aclose_quietly(it)
        on_end(outcome, count)


def empty() -> AsyncIterator[Any]:
    """An async iterator with no items (what a primed empty stream becomes)."""
    return _empty()
