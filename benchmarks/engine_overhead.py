"""Engine overhead per step and per run, for 10-step pipelines of trivial steps.

    uv run python -m benchmarks.engine_overhead

Prints the time per run through the engine, the time of calling the same functions directly,
and the difference per step: that difference is the engine's own cost (binding inputs, log
scope, trace, scheduling). Not a test: it asserts nothing.
"""

from __future__ import annotations

import time

import anyio

from engine.check import check
from engine.executor import Engine
from engine.loader import load_text
from engine.registry import step

STEPS = 10


@step("bench.inc_async")
async def inc_async(x: int) -> int:
    """Add one (async)."""
    return x + 1


@step("bench.inc_inline", blocking=False)
def inc_inline(x: int) -> int:
    """Add one (sync, inline)."""
    return x + 1


def linear(uses: str) -> str:
    lines = ["name: linear", "steps:", f"  s0: {{uses: {uses}, with: {{x: '${{{{ input }}}}'}}}}"]
    for i in range(1, STEPS):
        lines.append(f"  s{i}: {{uses: {uses}, with: {{x: '${{{{ steps.s{i - 1} }}}}'}}}}")
    lines.append(f"output: ${{{{ steps.s{STEPS - 1} }}}}")
    return "\n".join(lines)


def fanout(uses: str) -> str:
    """One root, 8 independent branches, one join (10 steps, exercises the task group)."""
    lines = ["name: fanout", "steps:", f"  root: {{uses: {uses}, with: {{x: '${{{{ input }}}}'}}}}"]
    for i in range(8):
        lines.append(f"  b{i}: {{uses: {uses}, with: {{x: '${{{{ steps.root }}}}'}}}}")
    parts = ", ".join(f"'${{{{ steps.b{i} }}}}'" for i in range(8))
    lines.append(f"  join: {{uses: bench.sum, with: {{xs: [{parts}]}}}}")
    lines.append("output: ${{ steps.join }}")
    return "\n".join(lines)


@step("bench.sum", blocking=False)
def total(xs: list[int]) -> int:
    """Sum numbers."""
    return sum(xs)


async def measure(engine: Engine, name: str, runs: int) -> float:
    for _ in range(200):
        await engine.run(name, 0)
    t0 = time.perf_counter()
    for _ in range(runs):
        await engine.run(name, 0)
    return (time.perf_counter() - t0) / runs


async def direct(fn, runs: int) -> float:
    t0 = time.perf_counter()
    for _ in range(runs):
        x = 0
        for _ in range(STEPS):
            r = fn(x)
            x = await r if hasattr(r, "__await__") else r
    return (time.perf_counter() - t0) / runs


async def main() -> None:
    runs = 20000
    print(f"engine overhead, {STEPS}-step pipelines of trivial steps, {runs} runs each")
    for label, uses, fn, maker in (
        ("linear, async steps", "bench.inc_async", inc_async, linear),
        ("linear, inline sync steps", "bench.inc_inline", inc_inline, linear),
        ("fan-out 1+8+1, async steps", "bench.inc_async", inc_async, fanout),
        ("fan-out 1+8+1, inline sync steps", "bench.inc_inline", inc_inline, fanout),
    ):
        plans, errors = check([load_text(maker(uses), "bench.yaml")])
        assert not errors, errors
        engine = Engine(plans)
        name = plans[0].name
        per_run = await measure(engine, name, runs)
        base = await direct(fn, runs)
        per_step = (per_run - base) / STEPS
        print(f"  {label:30s} {per_run * 1e6:8.1f} us/run   direct calls {base * 1e6:6.1f} us   overhead {per_step * 1e6:6.2f} us/step")


if __name__ == "__main__":
    from engine import logs

    logs.configure("json", "info")  # step-end lines are debug: off, as in production
    anyio.run(main)
