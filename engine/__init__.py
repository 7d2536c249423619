"""What step authors use, in one place: `from engine import step, RunContext, Reply, ...`.

The modules stay importable on their own (`engine.registry`, `engine.types`, ...); this face
only re-exports from them, and no engine module imports from it, so it adds no import cycle.
`tests/engine/test_public_api.py` pins `__all__`: a name leaves it only on purpose.
"""

from engine.capture import value_type
from engine.errors import DeadlineExceeded, EngineError, HttpError, LimitTimeout, RunCancelled, StepError, StepTimeout
from engine.keys import KeyHeader, key_header
from engine.logs import register_secret, register_secret_env, register_secret_names, register_secret_values
from engine.registry import Finding, doctor_check, serving_note, step
from engine.run import RunContext
from engine.streams import aclose_quietly, is_stream
from engine.types import JSON, PipelineName, Reply, Request, Stream

__all__ = [
    # declaring steps and what `engine serve` / `engine doctor` say about them
    "step",
    "serving_note",
    "doctor_check",
    "Finding",
    # what a step receives and returns
    "RunContext",
    "Request",
    "Reply",
    "Stream",
    "JSON",
    "PipelineName",
    # errors a step raises (what retry policies and error steps read)
    "EngineError",
    "StepError",
    "HttpError",
    "StepTimeout",
    "DeadlineExceeded",
    "LimitTimeout",
    "RunCancelled",
    # streams
    "is_stream",
    "aclose_quietly",
    # captures: a value or error class a recorded step returns or raises
    "value_type",
    # what a protocol tells the engine: its key header and its secrets
    "KeyHeader",
    "key_header",
    "register_secret",
    "register_secret_names",
    "register_secret_values",
    "register_secret_env",
]
