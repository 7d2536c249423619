"""The streamed reply's writer: batching, the first item at once, heartbeats, backpressure."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.outbox import Outbox


class Sink:
    """An ASGI `send` that records body writes; `block` holds writes back (a slow client)."""

    def __init__(self) -> None:
        self.writes: list[tuple[bytes, bool]] = []
        self.block: asyncio.Event | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.block is not None:
            await self.block.wait()
        self.writes.append((message["body"], message["more_body"]))


def run(main: Any) -> Any:
    return asyncio.run(main())


def test_items_ready_together_go_out_in_one_write_and_the_first_at_once() -> None:
    async def main() -> list[tuple[bytes, bool]]:
        sink = Sink()
        box = Outbox(sink, max_delay=60)  # no slicing by time in this test
        writer = asyncio.create_task(box.run())
        for i in range(50):  # a burst: the producer never waits for anything else
            box.put(b"%d;" % i)
            await box.room()
        box.end()
        await writer
        return sink.writes

    writes = run(main)
    assert writes[0] == (b"0;", True)  # the first item was not held back behind the burst
    assert b"".join(w for w, _ in writes) == b"".join(b"%d;" % i for i in range(50))
    assert len(writes) == 2 and writes[-1][1] is False  # the rest, with the end of the body


def test_items_arriving_apart_are_each_written_when_the_producer_waits() -> None:
    async def main() -> list[tuple[bytes, bool]]:
        sink = Sink()
        box = Outbox(sink)
        writer = asyncio.create_task(box.run())
        for i in range(3):
            box.put(b"%d;" % i)
            await box.room()
            await asyncio.sleep(0.01)  # the upstream is slow: the writer runs meanwhile
            assert sink.writes[-1] == (b"%d;" % i, True)
        box.end()
        await writer
        return sink.writes

    assert run(main) == [(b"0;", True), (b"1;", True), (b"2;", True), (b"", False)]


def test_a_busy_producer_lets_the_writer_run_every_max_delay() -> None:
    async def main() -> int:
        sink = Sink()
        box = Outbox(sink, max_delay=0.001)
        writer = asyncio.create_task(box.run())
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.05
        while loop.time() < end:  # 50 ms of busy production, no waiting of its own
            box.put(b"x")
            await box.room()
        box.end()
        await writer
        return len(sink.writes)

    assert run(main) >= 10  # without the bound this is 2 (the first item, then everything)


def test_heartbeat_after_silence_only() -> None:
    async def main() -> list[tuple[bytes, bool]]:
        sink = Sink()
        box = Outbox(sink, heartbeat=b"ping;", heartbeat_interval=0.05)
        writer = asyncio.create_task(box.run())
        box.start_heartbeat()
        for _ in range(6):  # items every 20 ms: never 50 ms of silence
            box.put(b"a;")
            await box.room()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.13)  # silence: two beats
        box.end()
        await writer
        return sink.writes

    writes = run(main)
    bodies = [w for w, _ in writes if w]
    assert bodies[:6] == [b"a;"] * 6
    assert bodies[6:] in ([b"ping;"] * 2, [b"ping;"] * 3)  # 150 ms of silence at the end
    assert writes[-1][1] is False


def test_a_slow_client_makes_the_producer_wait_at_high_water() -> None:
    async def main() -> tuple[int, int]:
        sink = Sink()
        sink.block = asyncio.Event()
        box = Outbox(sink, high_water=100)
        writer = asyncio.create_task(box.run())
        produced = 0

        async def produce() -> None:
            nonlocal produced
            for _ in range(100):
                box.put(b"0123456789")
                await box.room()
                produced += 1

        producer = asyncio.create_task(produce())
        await asyncio.sleep(0.05)
        stalled_at = produced  # the client reads nothing: the producer stops at high water
        sink.block.set()
        await producer
        box.end()
        await writer
        return stalled_at, sum(len(w) for w, _ in sink.writes)

    stalled_at, total = run(main)
    assert stalled_at <= 12  # 100 bytes of queue (+ the one write in flight), not 1,000
    assert total == 1000
