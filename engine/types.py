"""The small typed contracts between pipelines, steps and the HTTP layer, written down once.

A *step* is a plain function, sync or async, that takes keyword inputs and returns one
output. The output may be an async iterator: then it is a *stream*, pulled lazily by whoever
consumes it, and closed (``aclose``) when that consumer goes away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NewType, TypeAlias

JSON: TypeAlias = dict[str, Any] | list[Any] | str | int | float | bool | None
"""A value that came from, or will go to, JSON."""

StepFn: TypeAlias = Callable[..., Any] | Callable[..., Awaitable[Any]]
"""A step function: keyword inputs in, one output out (possibly an async iterator)."""

Stream: TypeAlias = AsyncIterator[Any]
"""What a streaming step returns; items flow to the consumer one by one."""

PipelineName = NewType("PipelineName", str)
"""Annotate a step parameter with this and `engine check` verifies the name is a loaded pipeline.

That is how a step that runs a sub-pipeline (a loop, say) gets told which one, in YAML.
"""


@dataclass(slots=True)
class Request:
    """What the HTTP layer hands a routed pipeline as its `input`.

    The body stays bytes: parsing it is the domain's job, so that a malformed body is answered
    in the served protocol's own error format.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes = b""
    path_params: Mapping[str, str] = field(default_factory=dict)
    client: str = ""


@dataclass(slots=True)
class Reply:
    """What a routed pipeline returns: a status, headers and a body or a stream.

    `body` is sent as JSON unless it is `bytes`/`str`. `stream` items are `bytes` or `str`
    written as they come (the domain encodes its own Server-Sent Events). `heartbeat`, when
    set, is written whenever the stream has been silent for `heartbeat_interval` seconds.
    """

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    stream: Stream | None = None
    media_type: str = "application/json"
    heartbeat: bytes | None = None
    heartbeat_interval: float = 10.0
