"""Small steps the engine tests wire into pipelines of every shape."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import structlog

from engine.errors import StepError
from engine.registry import step
from engine.run import RunContext
from engine.types import Facts, PipelineName

log = structlog.get_logger("toy")
calls: list[tuple[str, Any]] = []
events: list[tuple[str, str, float]] = []


@step("toy.const", blocking=False)
def const(value: Any) -> Any:
    """Return `value` unchanged."""
    calls.append(("const", value))
    return value


@step("toy.add", blocking=False)
def add(a: int, b: int = 0) -> int:
    """Add two numbers."""
    calls.append(("add", (a, b)))
    return a + b


@step("toy.concat")
def concat(parts: list[str], sep: str = "") -> str:
    """Join texts (a blocking sync step: runs in a worker thread)."""
    log.info("concat", n=len(parts), thread=threading.current_thread().name)
    return sep.join(parts)


@step("toy.sleep")
async def sleep(value: Any, seconds: float, label: str = "") -> Any:
    """Wait, then return `value`; records when it started and ended."""
    events.append((label, "start", anyio.current_time()))
    await anyio.sleep(seconds)
    events.append((label, "end", anyio.current_time()))
    return value


class Flaky(StepError):
    kind = "flaky"
    retryable = True


_flaky_counts: dict[str, int] = {}


@step("toy.flaky")
async def flaky(key: str, failures: int, value: Any = "ok", retry_after: float | None = None) -> Any:
    """Fail `failures` times per key with a retryable error, then return `value`."""
    n = _flaky_counts.get(key, 0)
    _flaky_counts[key] = n + 1
    if n < failures:
        raise Flaky(f"flaky failure {n + 1}", retry_after=retry_after)
    return value


@step("toy.fail")
async def fail(message: str = "boom", retryable: bool = False, kind: str = "error") -> Any:
    """Always fail."""
    raise StepError(message, kind=kind, retryable=retryable)


@step("toy.count")
async def count(n: int, delay: float = 0.0) -> AsyncIterator[int]:
    """Stream the numbers 0..n-1 (optionally slowly); records when it is closed."""
    try:
        for i in range(n):
            if delay:
                await anyio.sleep(delay)
            yield i
        events.append(("count", "done", anyio.current_time()))
    finally:
        events.append(("count", "closed", anyio.current_time()))


@step("toy.double_stream")
async def double_stream(items: AsyncIterator[int]) -> AsyncIterator[int]:
    """Stream each item doubled, lazily."""
    async for x in items:
        yield x * 2


@step("toy.collect")
async def collect(items: AsyncIterator[Any], limit: int = 1000) -> list[Any]:
    """Collect up to `limit` stream items into a list (then stop consuming)."""
    out = []
    async for x in items:
        out.append(x)
        if len(out) >= limit:
            break
    return out


@step("toy.loop")
async def loop(value: int, until: int, body: PipelineName, ctx: RunContext) -> int:
    """Run the sub-pipeline `body` on `value` until it reaches `until` (a loop without a cycle)."""
    rounds = 0
    while value < until and rounds < 100:
        value = await ctx.run_pipeline(body, {"value": value})
        rounds += 1
    return value


@step("toy.render_error", blocking=False)
def render_error(error: BaseException, ctx: RunContext) -> dict[str, Any]:
    """Turn a failure into an output."""
    return {"error": str(error), "kind": getattr(error, "kind", None), "request_id": ctx.request_id}


@step("toy.who", blocking=False)
def who(ctx: RunContext) -> str:
    """Return the request id (shows the context reaches steps)."""
    return ctx.request_id


@step("toy.rounds")
async def rounds(value: int, rounds: int, gap: float, body: PipelineName, ctx: RunContext) -> AsyncIterator[int]:
    """Stream `value`, then each `gap` seconds the result of running `body` on the last one
    (a tool loop that keeps going after the response started)."""
    yield value
    for _ in range(rounds):
        await anyio.sleep(gap)
        value = await ctx.run_pipeline(body, {"value": value})
        yield value


@step("toy.told", blocking=False, facts=("seen", "doubled"))
def told(value: Any, facts: Facts) -> Any:
    """Return `value`, and tell what it saw and its double (facts)."""
    facts["seen"] = value
    facts["doubled"] = value * 2
    return value


@step("toy.told_stream", facts=("count",))
async def told_stream(n: int, facts: Facts) -> AsyncIterator[int]:
    """Yield 0..n-1, and tell how many items went out once the stream ended (a late fact)."""
    for i in range(n):
        yield i
    facts["count"] = n


@step("toy.told_failure", facts=("attempts",))
async def told_failure(facts: Facts) -> Any:
    """Fail every time, telling how many attempts it made (the facts outlive the failure)."""
    facts["attempts"] = facts.get("attempts", 0) + 1
    raise StepError("always fails", kind="status", retryable=True)


class Refused(StepError):
    """A toy upstream failure with the attributes the engine's candidates read."""

    def __init__(self, status: int, *, retryable: bool, fallback: bool, about: bool) -> None:
        super().__init__(f"refused with {status}", kind="status", retryable=retryable, fallback=fallback, about_candidate=about)
        self.status = status


#: what toy.answer does per model: "ok", "503" (retryable, fall back, counts), "404" (fall
#: back, says nothing about the model), "400" (the caller's fault), "429x" (a 429 that says
#: it is not retryable), "slow" (sleeps 5 s)
answers: dict[str, str] = {}
asked: list[str] = []


@step("toy.answer")
async def answer(model: str, question: str = "") -> str:
    """Answer as `model` would, per `answers` (see there)."""
    asked.append(model)
    mode = answers.get(model, "ok")
    if mode == "slow":
        await anyio.sleep(5)
    if mode == "503":
        raise Refused(503, retryable=True, fallback=True, about=True)
    if mode == "404":
        raise Refused(404, retryable=False, fallback=True, about=False)
    if mode == "400":
        raise Refused(400, retryable=False, fallback=False, about=False)
    if mode == "429x":
        raise Refused(429, retryable=False, fallback=False, about=True)
    return f"{model}: {question}"
