"""Steps every pipeline may use, whatever it serves."""

from __future__ import annotations

from typing import Any

from engine.registry import step
from engine.run import RunContext
from engine.types import PipelineName


@step("core.value", blocking=False)
def value(value: Any) -> Any:
    """Return `value` as given: a constant, or a reference passed through under a new name."""
    return value


@step("core.run")
async def run(pipeline: PipelineName, input: Any, ctx: RunContext) -> Any:
    """Run another pipeline on `input` and return its output: a shared part as one step.

    The sub-run shares the request id, deadline, ids, captures and access-log fields of the
    run that calls it; `engine graph PIPELINE` draws the inside.
    """
    return await ctx.run_pipeline(pipeline, input)
