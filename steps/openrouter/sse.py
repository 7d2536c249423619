"""Server-Sent Events decoding for the upstream's stream, tuned for OpenAI-style chunk streams.

`SSEDecoder` is a small incremental parser over raw bytes, kept free of I/O so it is cheap and
easy to test: feed it whatever the socket delivered and it returns the `data` payloads of the
events completed so far, as bytes (orjson parses bytes directly, so no decode step).

What it follows from the SSE spec (html.spec.whatwg.org, "event stream interpretation"):

- lines end with LF, CRLF or a lone CR (a CR at the end of a network read is held back until the
  next read shows whether an LF follows);
- a line starting with ':' is a comment (OpenRouter's `: OPENROUTER PROCESSING`): skipped;
- `data:` lines append to the event's data (one leading space stripped; several lines join
  with "\\n"); a blank line dispatches the event;
- any other field (`event`, `id`, `retry`, or a line with no known field name at all, such as a
  bare JSON line without `data:`) is ignored. The last event name is kept in `last_event`.

One leniency: at end of input, `flush()` dispatches data lines that were never followed by a
blank line (some servers end with `data: [DONE]\\n`). A final line without any line ending is
reported through `partial` rather than parsed: it is what a connection cut mid-line leaves.
"""

from __future__ import annotations

__all__ = ["DONE", "SSEDecoder", "SSEError"]

DONE = b"[DONE]"

_LF = b"\n"
_CR = b"\r"
_COLON = 58  # ord(":")


class SSEError(ValueError):
    """The byte stream cannot be an event stream (a line longer than the decoder allows)."""


class SSEDecoder:
    """Incremental SSE decoder: `feed(bytes) -> list[data bytes]`, then `flush()` at EOF."""

    __slots__ = ("_pending", "_pending_len", "_data", "_cr_held", "max_line", "last_event")

    def __init__(self, max_line: int = 16 * 1024 * 1024) -> None:
        self._pending: list[bytes] = []  # pieces of an unfinished line
        self._pending_len = 0
        self._data: bytes | None = None  # data of the event being built
        self._cr_held = False  # the previous read ended with CR
        self.max_line = max_line
        self.last_event: bytes | None = None

    @property
    def partial(self) -> bytes:
        """Bytes of an unfinished last line (non-empty after a cut in the middle of a line)."""
        return b"".join(self._pending)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes; return the data of every event they completed (possibly none)."""
        if not chunk:
            return []
        if self._cr_held:
            self._cr_held = False
            if chunk[:1] == _LF:  # CRLF split across two reads: the CR already ended the line
                chunk = chunk[1:]
                if not chunk:
                    return []
        if _CR in chunk:
            if chunk[-1:] == _CR:
                self._cr_held = True
            chunk = chunk.replace(b"\r\n", _LF).replace(_CR, _LF)
        if _LF not in chunk:
            self._pending.append(chunk)
            self._pending_len += len(chunk)
            if self._pending_len > self.max_line:
                raise SSEError(f"SSE line longer than {self.max_line} bytes")
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending.clear()
            self._pending_len = 0
        lines = chunk.split(_LF)
        rest = lines.pop()
        if rest:
            if len(rest) > self.max_line:
                raise SSEError(f"SSE line longer than {self.max_line} bytes")
            self._pending.append(rest)
            self._pending_len = len(rest)
        out: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:  # blank line: dispatch
                if data is not None:
                    out.append(data)
                    data = None
                continue
            if line[0] == _COLON:  # comment
                continue
            if line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                data = value if data is None else data + _LF + value
            elif line[:6] == b"event:":
                self.last_event = line[6:].strip()
            # id:, retry: and unknown fields (including lines without a field name) are ignored
        self._data = data
        return out

    def flush(self) -> list[bytes]:
        """End of input: dispatch data lines never closed by a blank line. `partial` keeps the
        unterminated last line, if any (it is not parsed)."""
        data, self._data = self._data, None
        return [] if data is None else [data]
