"""The executor's behaviour, as a catalogue of pipeline shapes (the spec of the executor)."""

from __future__ import annotations

import textwrap
import time
from typing import Any

import anyio
import pytest

from engine.check import check
from engine.errors import DeadlineExceeded, StepError, StepTimeout
from engine.executor import Engine
from engine.loader import load_text
from tests.engine import toysteps


def make_engine(*yamls: str) -> Engine:
    loaded = [load_text(textwrap.dedent(y), f"case{i}.yaml") for i, y in enumerate(yamls)]
    plans, errors = check(loaded)
    assert not errors, "\n".join(map(str, errors))
    return Engine(plans)


def run(engine: Engine, name: str, input: Any = None) -> Any:
    async def go() -> Any:
        ctx = engine.context(name, input)
        try:
            return await engine.run(name, input, ctx=ctx)
        finally:
            await ctx.aclose()

    return anyio.run(go)


SHAPES = {
    "linear": (
        """
        name: linear
        steps:
          a: {uses: toy.add, with: {a: "${{ input.x }}", b: 1}}
          b: {uses: toy.add, with: {a: "${{ steps.a }}", b: 10}}
          c: {uses: toy.add, with: {a: "${{ steps.b }}", b: 100}}
        output: ${{ steps.c }}
        """,
        {"x": 1},
        112,
    ),
    "diamond": (
        """
        name: diamond
        steps:
          top: {uses: toy.const, with: {value: "${{ input }}"}}
          left: {uses: toy.add, with: {a: "${{ steps.top }}", b: 1}}
          right: {uses: toy.add, with: {a: "${{ steps.top }}", b: 2}}
          bottom: {uses: toy.add, with: {a: "${{ steps.left }}", b: "${{ steps.right }}"}}
        output: ${{ steps.bottom }}
        """,
        5,
        13,
    ),
    "nested references in lists and maps": (
        """
        name: nested
        steps:
          a: {uses: toy.const, with: {value: "x"}}
          b: {uses: toy.concat, with: {parts: ["${{ steps.a }}", "-", "${{ input.y }}"]}}
        output: {joined: "${{ steps.b }}", raw: "${{ input }}"}
        """,
        {"y": "z"},
        {"joined": "x-z", "raw": {"y": "z"}},
    ),
    "skipped branch with fallback": (
        """
        name: skip
        steps:
          base: {uses: toy.const, with: {value: 1}}
          extra:
            uses: toy.add
            if: ${{ input.more }}
            else: ${{ steps.base }}
            with: {a: "${{ steps.base }}", b: 100}
          last: {uses: toy.add, with: {a: "${{ steps.extra }}", b: 1}}
        output: ${{ steps.last }}
        """,
        {"more": False},
        2,
    ),
    "branch taken": (
        """
        name: taken
        steps:
          base: {uses: toy.const, with: {value: 1}}
          extra:
            uses: toy.add
            if: ${{ input.more }}
            else: ${{ steps.base }}
            with: {a: "${{ steps.base }}", b: 100}
        output: ${{ steps.extra }}
        """,
        {"more": True},
        101,
    ),
    "negated condition": (
        """
        name: negated
        steps:
          a:
            uses: toy.const
            if: ${{ !input.quiet }}
            else: silent
            with: {value: loud}
        output: ${{ steps.a }}
        """,
        {"quiet": True},
        "silent",
    ),
    "step with only the context": (
        """
        name: ctxonly
        steps:
          who: {uses: toy.who}
        output: {id: "${{ steps.who }}"}
        """,
        None,
        None,
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_shape(shape: str) -> None:
    """Each pipeline shape produces its expected output."""
    yaml_text, input, expected = SHAPES[shape]
    engine = make_engine(yaml_text)
    name = next(iter(engine.plans))
    out = run(engine, name, input)
    if expected is None:
        assert out["id"].startswith("req_")
    else:
        assert out == expected


def test_skipped_step_is_not_called() -> None:
    """A step whose `if` is false is never called."""
    engine = make_engine(SHAPES["skipped branch with fallback"][0])
    run(engine, "skip", {"more": False})
    assert ("add", (1, 100)) not in toysteps.calls


def test_independent_branches_overlap() -> None:
    """Two independent 0.3 s steps finish in about 0.3 s, not 0.6 s."""
    engine = make_engine(
        """
        name: parallel
        steps:
          a: {uses: toy.sleep, with: {value: 1, seconds: 0.3, label: a}}
          b: {uses: toy.sleep, with: {value: 2, seconds: 0.3, label: b}}
          sum: {uses: toy.add, with: {a: "${{ steps.a }}", b: "${{ steps.b }}"}}
        output: ${{ steps.sum }}
        """
    )
    assert run(engine, "parallel") == 3
    starts = {label: t for label, what, t in toysteps.events if what == "start"}
    ends = {label: t for label, what, t in toysteps.events if what == "end"}
    # Overlap is proven by order, not by timing: b started before a ended.
    assert starts["b"] < ends["a"] and starts["a"] < ends["b"]


def test_failure_cancels_siblings() -> None:
    """When one branch fails, a slow sibling is cancelled rather than awaited."""
    engine = make_engine(
        """
        name: failfast
        steps:
          slow: {uses: toy.sleep, with: {value: 1, seconds: 30, label: slow}}
          bad: {uses: toy.fail, with: {message: nope}}
          sum: {uses: toy.add, with: {a: "${{ steps.slow }}", b: "${{ steps.bad }}"}}
        output: ${{ steps.sum }}
        """
    )
    with pytest.raises(StepError, match="nope") as info:
        run(engine, "failfast")
    assert info.value.step == "bad"
    assert ("slow", "end") not in [(label, what) for label, what, _ in toysteps.events]


RETRY = """
name: retry
steps:
  f:
    uses: toy.flaky
    with: {key: k, failures: FAILURES}
    retry: {attempts: 3, backoff: 1ms, max_backoff: 5ms}
output: ${{ steps.f }}
"""


def test_retry_then_success() -> None:
    """A retryable failure is retried until the step succeeds within its attempts."""
    engine = make_engine(RETRY.replace("FAILURES", "2"))
    assert run(engine, "retry") == "ok"
    assert toysteps._flaky_counts["k"] == 3


def test_retry_exhausted() -> None:
    """After the last attempt the error is raised, annotated with step and attempts."""
    engine = make_engine(RETRY.replace("FAILURES", "5"))
    with pytest.raises(StepError) as info:
        run(engine, "retry")
    assert (info.value.step, info.value.attempts) == ("f", 3)
    assert toysteps._flaky_counts["k"] == 3


def test_retry_only_listed_kinds() -> None:
    """An error whose kind the policy does not list is not retried."""
    engine = make_engine(
        """
        name: kinds
        steps:
          f:
            uses: toy.fail
            with: {kind: fatal, retryable: false}
            retry: {attempts: 5, backoff: 1ms, on: [timeout]}
        output: ${{ steps.f }}
        """
    )
    with pytest.raises(StepError) as info:
        run(engine, "kinds")
    assert info.value.attempts == 1


def test_retry_after_beyond_deadline_is_not_waited() -> None:
    """A Retry-After longer than the remaining deadline returns the error at once."""
    engine = make_engine(
        """
        name: ra
        deadline: 1s
        steps:
          f:
            uses: toy.flaky
            with: {key: ra, failures: 5, retry_after: 5}
            retry: {attempts: 3, backoff: 1ms}
        output: ${{ steps.f }}
        """
    )
    t0 = time.monotonic()
    with pytest.raises(StepError):
        run(engine, "ra")
    assert toysteps._flaky_counts["ra"] == 1
    assert time.monotonic() - t0 < 1.0


def test_timeout() -> None:
    """A step slower than its timeout fails with StepTimeout."""
    engine = make_engine(
        """
        name: slow
        steps:
          s: {uses: toy.sleep, with: {value: 1, seconds: 10}, timeout: 50ms}
        output: ${{ steps.s }}
        """
    )
    with pytest.raises(StepTimeout):
        run(engine, "slow")


def test_run_deadline() -> None:
    """The run's deadline bounds every step, even one without a timeout."""
    engine = make_engine(
        """
        name: dl
        deadline: 50ms
        steps:
          s: {uses: toy.sleep, with: {value: 1, seconds: 10}}
        output: ${{ steps.s }}
        """
    )
    with pytest.raises(DeadlineExceeded):
        run(engine, "dl")


def test_error_renderer() -> None:
    """A pipeline with `errors:` returns the rendered error instead of raising."""
    engine = make_engine(
        """
        name: rendered
        steps:
          f: {uses: toy.fail, with: {message: broken, kind: custom}}
        output: ${{ steps.f }}
        errors: toy.render_error
        """
    )
    out = run(engine, "rendered")
    assert out["error"] == "broken" and out["kind"] == "custom" and out["request_id"].startswith("req_")


STREAM = """
name: stream
steps:
  numbers: {uses: toy.count, with: {n: 1000, delay: 0.001}}
  doubled: {uses: toy.double_stream, with: {items: "${{ steps.numbers }}"}}
output: ${{ steps.doubled }}
"""


def test_stream_flows_lazily_and_is_cancelled_by_its_consumer() -> None:
    """A consumer that stops after 3 items closes the whole chain; the producer never finishes."""
    engine = make_engine(STREAM)

    async def go() -> list[int]:
        ctx = engine.context("stream")
        out = await engine.run("stream", None, ctx=ctx)
        got = []
        async for x in out:
            got.append(x)
            if len(got) == 3:
                break
        await out.aclose()
        await ctx.aclose()
        return got

    assert anyio.run(go) == [0, 2, 4]
    whats = [what for label, what, _ in toysteps.events if label == "count"]
    assert whats == ["closed"]


def test_stream_consumed_by_a_later_step() -> None:
    """A downstream step may consume a stream and stop early; the producer is closed."""
    engine = make_engine(
        """
        name: collect
        steps:
          numbers: {uses: toy.count, with: {n: 100000}}
          firsts: {uses: toy.collect, with: {items: "${{ steps.numbers }}", limit: 4}}
        output: ${{ steps.firsts }}
        """
    )
    assert run(engine, "collect") == [0, 1, 2, 3]
    assert [what for label, what, _ in toysteps.events if label == "count"] == ["closed"]


def test_stream_idle_timeout() -> None:
    """A stream silent for longer than idle_timeout fails with StepTimeout."""
    engine = make_engine(
        """
        name: idle
        steps:
          numbers: {uses: toy.count, with: {n: 5, delay: 0.2}, idle_timeout: 50ms}
          all: {uses: toy.collect, with: {items: "${{ steps.numbers }}"}}
        output: ${{ steps.all }}
        """
    )
    with pytest.raises(StepTimeout, match="sent nothing"):
        run(engine, "idle")


def test_stream_first_item_retried() -> None:
    """A stream that fails before its first item is retried like any step."""
    engine = make_engine(
        """
        name: sretry
        steps:
          f:
            uses: tests.engine.test_executor:flaky_stream
            retry: {attempts: 3, backoff: 1ms}
          all: {uses: toy.collect, with: {items: "${{ steps.f }}"}}
        output: ${{ steps.all }}
        """
    )
    assert run(engine, "sretry") == [1, 2]
    assert toysteps._flaky_counts["stream"] == 2


async def flaky_stream():
    """Fails before its first item once, then streams 1, 2."""
    n = toysteps._flaky_counts.get("stream", 0)
    toysteps._flaky_counts["stream"] = n + 1
    if n == 0:
        raise toysteps.Flaky("not yet")
    yield 1
    yield 2


def test_sub_pipeline_loop() -> None:
    """A step runs another pipeline repeatedly: a loop without a cycle in any graph."""
    engine = make_engine(
        """
        name: outer
        steps:
          loop: {uses: toy.loop, with: {value: "${{ input }}", until: 10, body: inner}}
        output: ${{ steps.loop }}
        """,
        """
        name: inner
        steps:
          inc: {uses: toy.add, with: {a: "${{ input.value }}", b: 3}}
        output: ${{ steps.inc }}
        """,
    )
    assert run(engine, "outer", 0) == 12


def test_sub_runs_after_the_response_started_have_no_deadline() -> None:
    """The deadline bounds a run until its output is ready (the response starts); a stream
    that runs sub-pipelines later (the tool loop) is not cut off by it."""
    engine = make_engine(
        """
        name: streamer
        deadline: 100ms
        steps:
          r: {uses: toy.rounds, with: {value: "${{ input }}", rounds: 2, gap: 0.12, body: inner}}
        output: ${{ steps.r }}
        """,
        """
        name: inner
        steps:
          inc: {uses: toy.add, with: {a: "${{ input.value }}", b: 1}}
        output: ${{ steps.inc }}
        """,
    )

    async def go() -> list[int]:
        ctx = engine.context("streamer", 0)
        try:
            out = await engine.run("streamer", 0, ctx=ctx)
            return [x async for x in out]
        finally:
            await ctx.aclose()

    assert anyio.run(go) == [0, 1, 2]  # 240 ms of rounds under a 100 ms deadline


def test_named_limit_is_shared_across_runs() -> None:
    """With `limit` max 1, two concurrent runs of a slow step never overlap."""
    engine = make_engine(
        """
        name: limited
        limits: {one: {max: 1}}
        steps:
          s: {uses: toy.sleep, with: {value: "${{ input }}", seconds: 0.05, label: "${{ input }}"}, limit: one}
        output: ${{ steps.s }}
        """
    )

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            for i in ("a", "b", "c"):
                tg.start_soon(engine.run, "limited", i)

    anyio.run(go)
    sequence = [what for _, what, _ in sorted(toysteps.events, key=lambda e: e[2])]
    assert sequence == ["start", "end"] * 3


def test_limit_queue_timeout() -> None:
    """Waiting longer than queue_timeout for a full limit fails with kind 'overloaded'."""
    engine = make_engine(
        """
        name: queue
        limits: {one: {max: 1, queue_timeout: 20ms}}
        steps:
          s: {uses: toy.sleep, with: {value: 1, seconds: 0.3}, limit: one}
        output: ${{ steps.s }}
        """
    )
    errors = []

    async def one() -> None:
        try:
            await engine.run("queue")
        except StepError as exc:
            errors.append(exc.kind)

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)

    anyio.run(go)
    assert errors == ["overloaded"]


def test_trace_records_each_step() -> None:
    """The run's trace says which steps ran, were skipped, and how many attempts each took."""
    engine = make_engine(SHAPES["skipped branch with fallback"][0])

    async def go() -> list[tuple[str, str, int]]:
        ctx = engine.context("skip", {"more": False})
        await engine.run("skip", {"more": False}, ctx=ctx)
        return [(name, outcome, attempts) for _, name, outcome, attempts, _, _ in ctx.trace]

    assert anyio.run(go) == [("base", "ok", 1), ("extra", "skipped", 0), ("last", "ok", 1)]


def test_retry_budget_caps_retries_across_runs() -> None:
    """With a budget of one retry in flight, only one of three failing concurrent runs retries."""
    engine = make_engine(
        """
        name: budget
        retry_budget: {ratio: 0, min: 1}
        steps:
          f:
            uses: toy.flaky
            with: {key: "${{ input }}", failures: 1}
            retry: {attempts: 2, backoff: 300ms, max_backoff: 300ms}
        output: ${{ steps.f }}
        """
    )
    outcomes: list[str] = []

    async def one(key: str) -> None:
        try:
            outcomes.append(await engine.run("budget", key))
        except StepError:
            outcomes.append("failed")

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            for key in ("a", "b", "c"):
                tg.start_soon(one, key)

    # Full jitter can pick a tiny wait; make it deterministic for this test.
    from engine import retry

    original = retry._rng.uniform
    retry._rng.uniform = lambda a, b: b  # type: ignore[method-assign]
    try:
        anyio.run(go)
    finally:
        retry._rng.uniform = original  # type: ignore[method-assign]
    assert sorted(outcomes) == ["failed", "failed", "ok"]
    assert engine.retry_budget.active_retries == 0 and engine.retry_budget.refused == 2
