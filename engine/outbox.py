"""The write side of a streamed reply: items are queued, and a writer task sends them in batches.

Why a queue and a second task: a write to the client socket is a system call, and on the
benchmark it was the largest single cost of a stream (about a third of its CPU). When the
upstream hands over many events at once (one network read holds dozens of chunks), the
producer converts them all without ever waiting, and the writer, which runs only when the
producer waits, sends them as one write. When events arrive one by one, each is written as
soon as the producer waits for the next, so nothing is held back: the latency added is one
turn of the event loop. A busy producer still lets the writer run for the stream's first
item and whenever the oldest queued item has waited `max_delay` (a quarter of a
millisecond), so a burst goes out in slices and the client sees the first event at once.

The queue is bounded (`high_water` bytes): past it the producer waits for the writer, so a
slow client slows the upstream read instead of growing memory. Heartbeats come from a timer,
not a task: when nothing was queued for `heartbeat_interval` seconds, the heartbeat is queued.

Runs under uvicorn, so it uses asyncio's primitives directly (one `Event` reused for the
whole stream, a `call_later` timer): they cost a fraction of anyio's per-wait cancel scopes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

HIGH_WATER = 256 * 1024
"""Bytes queued before the producer waits for the writer (a slow client)."""
MAX_DELAY = 0.00025
"""Seconds the oldest queued item may wait while the producer is still busy."""


class Outbox:
    """Queue of body chunks for one streamed HTTP response; `run` is its writer task."""

    def __init__(
        self,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        heartbeat: bytes | None = None,
        heartbeat_interval: float = 10.0,
        high_water: int = HIGH_WATER,
        max_delay: float = MAX_DELAY,
    ) -> None:
        self._send = send
        self._parts: list[bytes] = []
        self._size = 0
        self._high_water = high_water
        self._max_delay = max_delay
        self._since = 0.0  # when the oldest queued item was queued
        self._first = True  # nothing was queued yet: the first item goes out at once
        self._wake = asyncio.Event()  # set: the writer has something to do
        self._room = asyncio.Event()  # set: the queue is below high water
        self._room.set()
        self._closing = False
        self._heartbeat = heartbeat
        self._interval = heartbeat_interval
        self._last = time.monotonic()  # when something was last queued
        self._timer: asyncio.TimerHandle | None = None

    def start_heartbeat(self) -> None:
        if self._heartbeat and self._interval > 0:
            self._last = time.monotonic()
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._beat)

    def _beat(self) -> None:
        self._timer = None
        if self._closing:
            return
        silent = time.monotonic() - self._last
        if silent >= self._interval:
            self.put(self._heartbeat)  # type: ignore[arg-type]
            silent = 0.0
        self._timer = asyncio.get_running_loop().call_later(self._interval - silent, self._beat)

    def put(self, data: bytes) -> None:
        """Queue `data`; the writer sends it when the producer next waits (see `room`)."""
        now = time.monotonic()
        if not self._parts:
            self._since = now
            self._wake.set()
        self._parts.append(data)
        self._size += len(data)
        self._last = now
        if self._size >= self._high_water:
            self._room.clear()

    async def room(self) -> None:
        """Call after `put`: waits while the queue is above high water (a slow client), and
        yields to the writer when the first item or one queued `max_delay` ago is waiting."""
        if not self._room.is_set():
            await self._room.wait()
        elif self._parts and (self._first or self._last - self._since >= self._max_delay):
            self._first = False
            await asyncio.sleep(0)

    def end(self) -> None:
        """No more items: the writer sends what is queued, ends the body, and returns."""
        self._closing = True
        self._wake.set()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def run(self) -> None:
        """The writer: send each batch as one body chunk; the last one ends the body."""
        send, parts = self._send, self._parts
        try:
            while True:
                if not parts:
                    if self._closing:
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                parts.clear()
                self._size = 0
                self._room.set()
                last = self._closing  # end() comes after the producer's last put
                await send({"type": "http.response.body", "body": data, "more_body": not last})
                if last:
                    return
        finally:
            self._cancel_timer()  # the timer lives as long as the writer
