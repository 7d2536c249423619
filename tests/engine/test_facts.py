"""Facts and the declared access line: what steps tell besides their output is an edge.

A step that tells facts declares a `Facts` parameter and the keys it writes; pipelines read
them as `${{ facts.STEP.KEY }}` in other steps and in `access:`, which is checked like any
reference, drawn by `engine graph`, and read when the request ends (so a stream's late facts
are there). A sub-run's `access:` values are its `core.run` step's facts.
"""

from __future__ import annotations

import textwrap
from typing import Any

import anyio

from engine.check import check
from engine.executor import Engine, access_of
from engine.graph import to_mermaid, to_text
from engine.loader import load_text
from tests.engine import toysteps  # noqa: F401 - registers the toy steps


def plans(*yamls: str) -> tuple[list, list[str]]:
    loaded = [load_text(textwrap.dedent(y), f"case{i}.yaml") for i, y in enumerate(yamls)]
    found, errors = check(loaded)
    return found, [str(e) for e in errors]


def engine(*yamls: str) -> Engine:
    found, errors = plans(*yamls)
    assert not errors, "\n".join(errors)
    return Engine(found)


def run(e: Engine, name: str, input: Any = None, drain: bool = False) -> tuple[Any, dict[str, Any]]:
    """Run `name`; return its output (a drained stream as a list) and its access fields."""

    async def go() -> tuple[Any, dict[str, Any]]:
        ctx = e.context(name, input)
        try:
            out = await e.run(name, input, ctx=ctx)
            if drain:
                out = [item async for item in out]
            return out, access_of(ctx)
        finally:
            await ctx.aclose()

    return anyio.run(go)


TOLD = """
name: told
steps:
  first:
    uses: toy.told
    with:
      value: ${{ input.n }}
  second:
    uses: toy.add
    with:
      a: ${{ steps.first }}
      b: ${{ facts.first.doubled }}
output: ${{ steps.second }}
access:
  seen: ${{ facts.first.seen }}
  total: ${{ steps.second }}
  asked: ${{ input.n }}
"""


def test_a_fact_is_an_edge_and_the_access_line_reads_references() -> None:
    e = engine(TOLD)
    out, access = run(e, "told", {"n": 3})
    assert out == 9  # 3 + its double, a fact
    assert access == {"seen": 3, "total": 9, "asked": 3}
    text = to_text(e.plans["told"])
    assert "second = toy.add  <- first" in text
    assert "access <- first (seen); second (total); input (asked)" in text
    assert 's_first -. "seen" .-> access' in to_mermaid(e.plans["told"])


def test_a_stream_tells_its_facts_when_it_ended() -> None:
    e = engine("""
        name: streamed
        steps:
          items:
            uses: toy.told_stream
            with: {n: 4}
        output: ${{ steps.items }}
        access:
          count: ${{ facts.items.count }}
        """)
    out, access = run(e, "streamed", drain=True)
    assert out == [0, 1, 2, 3] and access == {"count": 4}


def test_a_sub_run_hands_its_access_fields_up_as_facts() -> None:
    e = engine(
        TOLD,
        """
        name: outer
        steps:
          inner:
            uses: core.run
            with:
              pipeline: told
              input:
                n: ${{ input.n }}
          echo:
            uses: toy.const
            with:
              value: ${{ facts.inner.seen }}
        output: ${{ steps.inner }}
        access:
          inner_seen: ${{ facts.inner.seen }}
          inner_total: ${{ facts.inner.total }}
          echoed: ${{ steps.echo }}
        """,
    )
    out, access = run(e, "outer", {"n": 5})
    assert out == 15 and access == {"inner_seen": 5, "inner_total": 15, "echoed": 5}


def test_a_failed_run_still_tells_what_its_steps_told() -> None:
    e = engine("""
        name: failing
        steps:
          call:
            uses: toy.told_failure
            retry: {attempts: 3, backoff: 1ms, max_backoff: 1ms}
        output: ${{ steps.call }}
        errors: toy.render_error
        access:
          attempts: ${{ facts.call.attempts }}
        """)
    _, access = run(e, "failing")
    assert access == {"attempts": 3}  # one Facts for all the step's attempts


def test_a_skipped_step_tells_the_facts_of_the_step_it_yields() -> None:
    e = engine("""
        name: skipping
        steps:
          first:
            uses: toy.told
            with: {value: 2}
          maybe:
            uses: toy.told
            if: ${{ input.again }}
            else: ${{ steps.first }}
            with: {value: 7}
        output: ${{ steps.maybe }}
        access:
          seen: ${{ facts.maybe.seen }}
        """)
    assert run(e, "skipping", {"again": False}) == (2, {"seen": 2})
    assert run(e, "skipping", {"again": True}) == (7, {"seen": 7})


def test_facts_and_access_are_checked_when_the_pipeline_loads() -> None:
    _, errors = plans("""
        name: broken
        steps:
          first:
            uses: toy.told
            with: {value: 1}
          plain:
            uses: toy.add
            with:
              a: ${{ facts.first.sen }}
        output: ${{ steps.plain }}
        access:
          sum: ${{ facts.plain.total }}
          fixed: 42
          gone: ${{ steps.nowhere }}
        """)
    assert errors == [
        "case0.yaml:14:10: access field 'fixed' is no reference; write e.g. model: ${{ facts.call.model }}; a constant tells nothing about a request",
        "case0.yaml:15:9: access field 'gone' uses '${{ steps.nowhere }}', but step 'nowhere' does not exist; steps are: first, plain",
        "case0.yaml:10:10: step 'plain' uses '${{ facts.first.sen }}', but toy.told tells no fact 'sen'; did you mean 'seen'?",
        "case0.yaml:13:8: access field 'sum' uses '${{ facts.plain.total }}', but toy.add ('plain') tells no facts; use its output, ${{ steps.plain }}",
    ]


def test_a_step_read_only_by_the_access_line_contributes() -> None:
    _, errors = plans("""
        name: side
        steps:
          main:
            uses: toy.const
            with: {value: 1}
          counted:
            uses: toy.told
            with: {value: 2}
        output: ${{ steps.main }}
        access:
          counted: ${{ facts.counted.seen }}
        """)
    assert errors == []
