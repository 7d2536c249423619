"""Steps every pipeline may use, whatever it serves."""

from __future__ import annotations

from typing import Any

from engine.registry import step
from engine.run import RunContext
from engine.types import Facts, PipelineName


@step("core.value", blocking=False)
def value(value: Any) -> Any:
    """Return `value` as given: a constant, or a reference passed through under a new name."""
    return value


@step("core.run")
async def run(pipeline: PipelineName, input: Any, ctx: RunContext, facts: Facts) -> Any:
    """Run another pipeline on `input` and return its output: a shared part as one step.

    The sub-run shares the request id, deadline, ids and captures of the run that calls it;
    what its pipeline declares under `access:` are this step's facts (`${{ facts.STEP.KEY }}`),
    read when asked for, so a stream's usage is there once the stream ended. `engine graph
    PIPELINE` draws the inside.
    """
    return await ctx.run_pipeline(pipeline, input, facts=facts)
