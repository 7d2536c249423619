"""What step authors use, in one place: `from engine import step, RunContext, Reply, ...`.

The modules stay importable on their own (`engine.registry`, `engine.types`, ...); this face
only re-exports from them, and no engine module imports from it, so it adds no import cycle.
The names load on first use (PEP 562): `engine statusline` and `engine --version` import
`engine.cli`, which runs this file first, and must not pay for structlog, anyio and pydantic.
`tests/engine/test_public_api.py` pins `__all__`: a name leaves it only on purpose.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.capture import value_type
    from engine.errors import DeadlineExceeded, EngineError, HttpError, LimitTimeout, RunCancelled, StepError, StepTimeout
    from engine.keys import KeyHeader, key_header
    from engine.logs import register_secret, register_secret_env, register_secret_names, register_secret_values
    from engine.registry import Finding, doctor_check, serving_note, step
    from engine.run import RunContext
    from engine.streams import aclose_quietly, is_stream
    from engine.types import JSON, Facts, PipelineName, Reply, Request, Stream

_HOMES = {
    # declaring steps and what `engine serve` / `engine doctor` say about them
    "step": "engine.registry",
    "serving_note": "engine.registry",
    "doctor_check": "engine.registry",
    "Finding": "engine.registry",
    # what a step receives and returns
    "RunContext": "engine.run",
    "Request": "engine.types",
    "Reply": "engine.types",
    "Stream": "engine.types",
    "JSON": "engine.types",
    "PipelineName": "engine.types",
    "Facts": "engine.types",
    # errors a step raises (what retry policies and error steps read)
    "EngineError": "engine.errors",
    "StepError": "engine.errors",
    "HttpError": "engine.errors",
    "StepTimeout": "engine.errors",
    "DeadlineExceeded": "engine.errors",
    "LimitTimeout": "engine.errors",
    "RunCancelled": "engine.errors",
    # streams
    "is_stream": "engine.streams",
    "aclose_quietly": "engine.streams",
    # captures: a value or error class a recorded step returns or raises
    "value_type": "engine.capture",
    # what a protocol tells the engine: its key header and its secrets
    "KeyHeader": "engine.keys",
    "key_header": "engine.keys",
    "register_secret": "engine.logs",
    "register_secret_names": "engine.logs",
    "register_secret_values": "engine.logs",
    "register_secret_env": "engine.logs",
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'engine' has no attribute '{name}'")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
