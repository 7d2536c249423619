"""Candidates, breakers and `retry.on` statuses: the engine's failure policy, declared in YAML
and carried out generically (the steps' errors only say what a failure means)."""

from __future__ import annotations

import textwrap
from typing import Any

import anyio
import pytest

from engine.check import check
from engine.errors import StepError, StepTimeout
from engine.executor import Engine
from engine.loader import load_text
from tests.engine import toysteps

PIPELINE = """
name: ask
breakers:
  models: {failures: 2, cooldown: 60s}
steps:
  list:
    uses: toy.const
    with:
      value:
        - {with: {model: a}, key: k-a, name: a}
        - {with: {model: b}, key: k-b, name: b}
  ask:
    uses: toy.answer
    candidates: ${{ steps.list }}
    breaker: models
    timeout: 0.3s
    retry: {attempts: 2, backoff: 1ms, max_backoff: 2ms}
    with: {question: hi}
output: ${{ steps.ask }}
"""


def make_engine(text: str = PIPELINE) -> Engine:
    plans, errors = check([load_text(textwrap.dedent(text), "ask.yaml")])
    assert not errors, "\n".join(map(str, errors))
    return Engine(plans)


def run(engine: Engine) -> tuple[Any, list[tuple]]:
    async def go() -> tuple[Any, list[tuple]]:
        ctx = engine.context("ask", None)
        try:
            return await engine.run("ask", None, ctx=ctx), ctx.trace
        finally:
            await ctx.aclose()

    return anyio.run(go)


@pytest.fixture(autouse=True)
def fresh() -> None:
    toysteps.answers.clear()
    toysteps.asked.clear()


def outcomes(trace: list[tuple]) -> list[str]:
    return [t[2] for t in trace if t[1] == "ask"]


def test_the_first_candidate_answers() -> None:
    out, trace = run(make_engine())
    assert out == "a: hi" and toysteps.asked == ["a"] and outcomes(trace) == ["ok"]


def test_a_failure_that_allows_it_moves_to_the_next_candidate_and_is_traced() -> None:
    toysteps.answers["a"] = "503"
    out, trace = run(make_engine())
    assert out == "b: hi" and toysteps.asked == ["a", "b"]
    assert outcomes(trace) == ["fallback:503", "ok"]


def test_a_failure_that_does_not_allow_it_stops_at_once() -> None:
    toysteps.answers["a"] = "400"
    with pytest.raises(StepError) as info:
        run(make_engine())
    assert info.value.status == 400 and toysteps.asked == ["a"]  # type: ignore[attr-defined]


def test_retries_go_over_the_whole_list_again() -> None:
    toysteps.answers.update(a="503", b="503")
    engine = make_engine()
    with pytest.raises(StepError) as info:
        run(engine)
    assert toysteps.asked == ["a", "b", "a", "b"] and info.value.attempts == 4


def test_the_breaker_skips_an_open_candidate_but_never_the_last_one() -> None:
    """Two failures of `a` open its key: the next run goes straight to `b`; with `b` open too
    the last candidate is still tried (panic mode)."""
    engine = make_engine()
    toysteps.answers["a"] = "503"
    run(engine)
    run(engine)
    assert toysteps.asked == ["a", "b", "a", "b"]
    assert set(engine.breakers.state()["models"]) == {"k-a"}
    toysteps.asked.clear()
    out, trace = run(engine)
    assert out == "b: hi" and toysteps.asked == ["b"] and outcomes(trace) == ["open", "ok"]
    toysteps.answers["b"] = "503"
    for _ in range(2):
        with pytest.raises(StepError):
            run(engine)
    toysteps.asked.clear()
    with pytest.raises(StepError):
        run(engine)
    assert toysteps.asked == ["b", "b"]  # `a` skipped; `b`, open too, tried anyway (and retried)


def test_a_failure_that_says_nothing_about_the_candidate_does_not_count() -> None:
    engine = make_engine()
    toysteps.answers["a"] = "404"
    for _ in range(3):
        assert run(engine)[0] == "b: hi"
    assert toysteps.asked == ["a", "b"] * 3 and engine.breakers.state() == {}


def test_a_timed_out_candidate_moves_on_and_is_not_asked_again() -> None:
    toysteps.answers.update(a="slow", b="slow")
    with pytest.raises(StepTimeout) as info:
        run(make_engine())
    assert toysteps.asked == ["a", "b"] and not info.value.retryable


def test_retry_on_names_statuses() -> None:
    """`on: [429]` retries a 429 that does not call itself retryable; `on: [retryable]` does not."""
    toysteps.answers["a"] = "429x"
    one = PIPELINE.replace("    breaker: models\n", "").replace("- {with: {model: b}, key: k-b, name: b}", "")
    with pytest.raises(StepError):
        run(make_engine(one))
    assert toysteps.asked == ["a"]
    toysteps.asked.clear()
    with pytest.raises(StepError):
        run(make_engine(one.replace("max_backoff: 2ms}", "max_backoff: 2ms, on: [429, timeout]}")))
    assert toysteps.asked == ["a", "a"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("breaker: models", "breaker: nope"), "unknown breaker 'nope'"),
        (("    candidates: ${{ steps.list }}\n", ""), "a breaker needs `candidates`"),
        (("candidates: ${{ steps.list }}", "candidates: [1, 2]"), "`candidates` must be a reference"),
    ],
)
def test_check_refuses_a_wrong_policy(edit: tuple[str, str], message: str) -> None:
    plans, errors = check([load_text(textwrap.dedent(PIPELINE).replace(*edit), "ask.yaml")])
    assert any(message in str(e) for e in errors), errors


def test_the_retry_budget_counts_fallbacks_too() -> None:
    """With no retry budget left, a failed candidate is not followed by the next one: every
    attempt after the first, a fallback as much as a retry, is a retry for the budget."""
    toysteps.answers["a"] = "503"
    engine = make_engine(PIPELINE.replace("breakers:", "retry_budget: {ratio: 0, min: 0}\nbreakers:"))
    with pytest.raises(StepError) as info:
        run(engine)
    assert toysteps.asked == ["a"] and info.value.status == 503  # type: ignore[attr-defined]
    assert engine.retry_budget.refused == 1
