"""Wrap a pipeline's result into the HTTP reply: a JSON message, or an SSE stream of events.

The stream is the hot path, so the wrapper does the minimum: events come in batches (one per
upstream network read, engine/streams.py) and each batch is encoded into one bytes item. Its one other job is the commit-point rule (RELIABILITY §1/§2): once the 200
headers are out, a failure can only be told as one `event: error`, after which the stream ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio

from engine.registry import step
from engine.run import RunContext
from engine.types import Facts, Reply
from steps.anthropic.errors import error_event
from steps.anthropic.sse import PING, encode, encode_all

SSE_MEDIA_TYPE = "text/event-stream; charset=utf-8"
HEARTBEAT_INTERVAL = 10.0
"""Seconds of silence before a ping: Claude Code aborts a stream silent for 300 s (PROTOCOL §3.4.11)."""
CLOSE_TIMEOUT = 5.0
"""Longest wait for the upstream iterator to close after the client left or the stream ended."""

OUTCOME_FACT = "outcome"
"""The fact naming how a committed stream failed, e.g. `upstream_cut` (RELIABILITY §2.1): the
pipelines declare it as the access line's `outcome`, which then replaces the HTTP layer's."""

STREAM_OUTCOMES = {
    "cut": "upstream_cut",  # the upstream connection closed or reset mid-stream
    "protocol": "upstream_invalid",  # a malformed chunk
    "timeout": "upstream_timeout",  # the upstream fell silent for the idle timeout
    "error_chunk": "upstream_error",  # the upstream reported an error inside the stream
}


def stream_outcome(error: BaseException) -> str:
    """The access-log outcome of a stream that failed after the commit point."""
    return STREAM_OUTCOMES.get(getattr(error, "kind", None) or "", "stream_error")


async def sse_stream(
    events: AsyncIterator[dict[str, Any]], request_id: str, log: Any = None, facts: dict[str, Any] | None = None
) -> AsyncIterator[bytes]:
    """Encode Anthropic event dicts (or batches of them) as SSE; on a failure, one `error`
    event and the end.

    Cancellation and GeneratorExit are not caught: they mean the client went away, and the
    finally block closes the inner iterator (shielded, bounded) so the upstream connection is
    released and billing stops. A failure's outcome (`stream_outcome`) goes into `facts` (the
    reply step's, which the access line declares).
    """
    _encode, _encode_all = encode, encode_all
    it = aiter(events)
    try:
        async for item in it:
            if type(item) is list:  # a batch of events (engine/streams.py): one bytes item
                if item:
                    yield _encode_all(item)
            else:
                yield _encode(item)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the protocol's error event
        outcome = stream_outcome(exc)
        if facts is not None:
            facts[OUTCOME_FACT] = outcome
        if log is not None:
            log.warning(
                "anthropic.stream_error",
                outcome=outcome,
                error_class=type(exc).__name__,
                kind=getattr(exc, "kind", None),
                status=getattr(exc, "status", None),
            )
        yield _encode(error_event(exc, request_id))
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None and getattr(it, "ag_frame", False) is not None:  # not a finished generator
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await aclose()


@step("anthropic.reply", blocking=False, facts=(OUTCOME_FACT,))
def reply(message: Any, ctx: RunContext, ping_interval: float = HEARTBEAT_INTERVAL, facts: Facts | None = None) -> Reply:
    """Make the HTTP reply: a message dict as JSON, or an event stream as Server-Sent Events.

    Streams get `cache-control: no-cache`, a `ping` event after every `ping_interval` seconds
    of silence (Claude Code aborts a stream silent for 300 s), and on any failure
    after the 200 one `event: error` (Anthropic's error object) and then the end of the stream.
    Every reply carries `request-id`. How a committed stream failed is the fact `outcome`.
    """
    if isinstance(message, dict):
        return Reply(body=message, headers={"request-id": ctx.request_id})
    if hasattr(message, "__aiter__"):
        return Reply(
            stream=sse_stream(message, ctx.request_id, getattr(ctx, "log", None), facts),
            media_type=SSE_MEDIA_TYPE,
            headers={"request-id": ctx.request_id, "cache-control": "no-cache"},
            heartbeat=PING,
            heartbeat_interval=ping_interval,
        )
    raise TypeError(f"anthropic.reply expects a message dict or an async iterator of events, got {type(message).__name__}")
