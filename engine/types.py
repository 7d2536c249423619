"""The small typed contracts between pipelines, steps and the HTTP layer, written down once.

A *step* is a plain function, sync or async, that takes keyword inputs and returns one
output. The output may be an async iterator: then it is a *stream*, pulled lazily by whoever
consumes it, and closed (``aclose``) when that consumer goes away.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NewType, TypeAlias

from engine.errors import HttpError
from engine.jsonbody import InvalidJson, loads

JSON: TypeAlias = dict[str, Any] | list[Any] | str | int | float | bool | None
"""A value that came from, or will go to, JSON."""

StepFn: TypeAlias = Callable[..., Any] | Callable[..., Awaitable[Any]]
"""A step function: keyword inputs in, one output out (possibly an async iterator)."""

Stream: TypeAlias = AsyncIterator[Any]
"""What a streaming step returns; items flow to the consumer one by one."""

class Facts(dict):  # type: ignore[type-arg]
    """What a step tells about its work besides its output: which model answered, how many
    attempts it took, what a stream used by the time it ended.

    A step declares a parameter annotated `Facts` (and the keys it may write, in `@step(...,
    facts=(...))`); the engine hands it one fresh `Facts` per step (kept across its retries),
    and a pipeline reads it with `${{ facts.STEP.KEY }}`, an edge like any other: in another
    step's input, or in the pipeline's `access:` mapping, which is read when the request ends,
    so a value a stream writes as it ends is there. A sub-run (`core.run`) hands its pipeline's
    `access:` values up as its own facts, read when they are asked for (`defer`).
    """

    __slots__ = ("_deferred",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: dict[str, Callable[[], Any]] = {}

    def defer(self, key: str, read: Callable[[], Any]) -> None:
        """Make `key` read `read()` whenever it is asked for (a sub-run's late values)."""
        self._deferred[key] = read

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        read = self._deferred.get(key)
        if read is not None:
            value = read()
            return default if value is None else value
        return super().get(key, default)

    def resolved(self) -> dict[str, Any]:
        """Every fact as it stands now, deferred ones read."""
        return {**self, **{k: self.get(k) for k in self._deferred}}


PipelineName = NewType("PipelineName", str)
"""Annotate a step parameter with this and `engine check` verifies the name is a loaded pipeline.

That is how a step that runs a sub-pipeline (a loop, say) gets told which one, in YAML.
"""


@dataclass
class Request:
    """What the HTTP layer hands a routed pipeline as its `input`.

    A pipeline reads it with references: `${{ input.method }}`, `${{ input.path }}`,
    `${{ input.headers.x-tenant }}` (names lower-case), `${{ input.query.page }}`,
    `${{ input.path_params.id }}` (from a route such as `GET /items/{id}`), `${{ input.client }}`
    (the peer's address), `${{ input.body }}` (bytes, as received) and `${{ input.json }}`,
    the body parsed as JSON (`${{ input.json.text }}` is one field of it).

    The body stays bytes so that a domain can parse it itself and answer a malformed one in
    its protocol's own error format. `json` parses it once, on first
    use; a body that is not JSON raises `HttpError` 400, which the pipeline's `errors:` step
    renders like any other error, naming the field or byte offset that is wrong.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes = b""
    path_params: Mapping[str, str] = field(default_factory=dict)
    client: str = ""

    @functools.cached_property
    def json(self) -> JSON:
        """The body parsed as JSON (strict: no NaN or Infinity); `HttpError` 400 if it is not."""
        if not self.body:
            raise HttpError(400, "The request body is empty: expected JSON")
        try:
            return loads(self.body)
        except InvalidJson as exc:
            raise HttpError(400, f"The request body is not valid JSON: {exc}") from None


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
