"""Steps every pipeline may use, whatever it serves.

Plain functions, listed in `CORE_STEPS` with their registration options. The registry
registers them when it is imported: this module sits below the registry and imports nothing of
it, so the registry can name it without an import cycle.
"""

from __future__ import annotations

from typing import Any

from engine.run import RunContext
from engine.types import Facts, PipelineName


def value(value: Any) -> Any:
    """Return `value` as given: a constant, or a reference passed through under a new name."""
    return value


async def run(pipeline: PipelineName, input: Any, ctx: RunContext, facts: Facts) -> Any:
    """Run another pipeline on `input` and return its output: a shared part as one step.

    The sub-run shares the request id, deadline, ids and captures of the run that calls it;
    what its pipeline declares under `access:` are this step's facts (`${{ facts.STEP.KEY }}`),
    read when asked for, so a stream's usage is there once the stream ended. `engine graph
    PIPELINE` draws the inside.
    """
    return await ctx.run_pipeline(pipeline, input, facts=facts)


CORE_STEPS: dict[str, tuple[Any, dict[str, Any]]] = {
    "core.value": (value, {"blocking": False}),
    "core.run": (run, {}),
}
"""Step name -> (function, options for `registry.step`)."""
