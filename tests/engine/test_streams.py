"""engine/streams.py: a list item is a batch of items (one per upstream network read)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio

from engine.streams import each, follow, size


async def _items(items: list[Any], closed: list[bool]) -> AsyncIterator[Any]:
    try:
        for item in items:
            yield item
    finally:
        closed.append(True)


def test_follow_counts_a_batch_as_its_items() -> None:
    """The step's `items` (step.end, the trace) count the elements of batches, not the batches."""
    ended: list[tuple[str, int]] = []
    closed: list[bool] = []

    async def main() -> list[Any]:
        rest = _items([[2, 3, 4], 5, []], closed)
        return [i async for i in follow([0, 1], rest, step="s", idle_timeout=None, on_end=lambda o, n: ended.append((o, n)))]

    assert anyio.run(main) == [[0, 1], [2, 3, 4], 5, []]
    assert ended == [("ok", 6)] and closed == [True]
    assert (size([1, 2]), size([]), size({"a": 1}), size(b"xy")) == (2, 0, 1, 1)


def test_follow_with_its_own_idle_timeout_counts_batches_too() -> None:
    ended: list[tuple[str, int]] = []

    async def main() -> list[Any]:
        rest = _items([[2, 3]], [])
        return [i async for i in follow(1, rest, step="s", idle_timeout=30.0, on_end=lambda o, n: ended.append((o, n)))]

    assert anyio.run(main) == [1, [2, 3]]
    assert ended == [("ok", 3)]


def test_each_gives_the_elements_one_by_one_and_closes_the_source() -> None:
    closed: list[bool] = []

    async def main() -> list[Any]:
        out = []
        gen = each(_items([[1, 2], 3, [], [4]], closed))
        async for item in gen:
            out.append(item)
            if item == 3:
                await gen.aclose()
                break
        return out

    assert anyio.run(main) == [1, 2, 3]
    assert closed == [True]
