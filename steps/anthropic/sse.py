"""Server-Sent Events framing for Anthropic streams.

Every event carries an `event:` line naming its type: the Python SDK silently drops an event
without one (PROTOCOL §3.1). The data is one line of JSON (orjson never emits a raw newline), so
no `data:` splitting is needed. There is no `[DONE]` terminator in Anthropic streams.
"""

from __future__ import annotations

from typing import Any

import orjson

_dumps = orjson.dumps
_prefixes: dict[str, bytes] = {}


def _prefix(event_type: str) -> bytes:
    prefix = _prefixes.get(event_type)
    if prefix is None:
        if "\n" in event_type or "\r" in event_type:
            raise ValueError("event type must not contain a line break")
        prefix = b"event: " + event_type.encode() + b"\ndata: "
        if len(_prefixes) < 256:  # the set of event names is small; never grow without bound
            _prefixes[event_type] = prefix
    return prefix


def encode(event: dict[str, Any]) -> bytes:
    """`event: <type>\\ndata: <one-line json>\\n\\n` for one Anthropic event dict."""
    t = event["type"]
    prefix = _prefixes.get(t) or _prefix(t)
    return prefix + _dumps(event) + b"\n\n"


def encode_all(events: list[dict[str, Any]]) -> bytes:
    """A batch of events (engine/streams.py) as one piece of SSE text: one write, not one per event."""
    parts: list[bytes] = []
    add = parts.append
    for event in events:
        t = event["type"]
        add(_prefixes.get(t) or _prefix(t))
        add(_dumps(event))
        add(b"\n\n")
    return b"".join(parts)


PING: bytes = encode({"type": "ping"})
"""The keep-alive event, written when the stream has been silent for a while."""
