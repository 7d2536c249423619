"""JSON bodies: parsed fast and strictly, a refusal explained in terms a client can act on.

orjson parses (strict RFC 8259: no NaN or Infinity, no lone surrogates, no number that
overflows a double). Its error says only where, in characters: "line 1 column 60". When it
refuses a body, the body is read a second time by the standard library, which accepts those
values, and the first one found is named by its field:
`messages.0.content.1.input.x: NaN is not valid JSON`. A body that is not JSON even to the
standard library is described by byte offset, line and column, and what was expected there.
The second reading happens only for refused bodies, and only up to `EXPLAIN_LIMIT` bytes.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

__all__ = ["EXPLAIN_LIMIT", "InvalidJson", "loads"]

EXPLAIN_LIMIT = 8 * 1024 * 1024
"""Largest refused body read again to find the field (the standard library is ~5x slower)."""

_PLAIN_KEY = re.compile(r"[^.\s\[\]\"]+")


class InvalidJson(ValueError):
    """A body that is not strict JSON.

    `field` is the dotted path of the offending value (`messages.0.content`) when one is
    known, `offset` the byte offset where reading stopped otherwise; `reason` says what is
    wrong. `str()` gives all of it in one sentence.
    """

    def __init__(self, reason: str, *, field: str | None = None, offset: int | None = None, line: int | None = None, column: int | None = None) -> None:
        self.reason = reason
        self.field = field
        self.offset = offset
        self.line = line
        self.column = column
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.field:
            return f"{self.field}: {self.reason}"
        if self.offset is None:
            return self.reason
        where = f"byte {self.offset}" + (f" (line {self.line}, column {self.column})" if self.line is not None else "")
        return f"{self.reason} at {where}"


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse `data` as strict JSON, or raise `InvalidJson` naming the field or the offset."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise explain(data, exc) from None


def explain(data: bytes | bytearray | memoryview | str, exc: orjson.JSONDecodeError) -> InvalidJson:
    """Why orjson refused `data`, as precisely as can be found."""
    raw = data.encode("utf-8", errors="surrogatepass") if isinstance(data, str) else bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return _at(raw, bad.start, "invalid UTF-8 (the body must be UTF-8)")
    reason = exc.msg
    if len(raw) <= EXPLAIN_LIMIT:
        try:
            tree = json.loads(text, parse_constant=_Constant)
        except json.JSONDecodeError:
            pass  # not JSON to anyone: orjson's own words and position are the best there is
        except RecursionError:
            reason = "nesting is too deep (more than 1024 levels)"
        else:
            found = _first_invalid(tree, ())
            if found is not None and found[0]:
                return InvalidJson(found[1], field=".".join(_segment(p) for p in found[0]))
            if found is not None:
                reason = found[1]
    offset = len(text[: exc.pos].encode("utf-8", errors="surrogatepass"))
    return _at(raw, offset, reason)


def _at(raw: bytes, offset: int, reason: str) -> InvalidJson:
    before = raw[:offset]
    line = before.count(b"\n") + 1
    column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", errors="replace")) + 1
    return InvalidJson(reason, offset=offset, line=line, column=column)


class _Constant:
    """What the standard library's parser makes of NaN, Infinity and -Infinity."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def _first_invalid(value: Any, path: tuple[str | int, ...]) -> tuple[tuple[str | int, ...], str] | None:
    """The path of the first value strict JSON cannot hold, in document order, and why."""
    if isinstance(value, _Constant):
        return path, f"{value.name} is not valid JSON (send a number, a string or null)"
    if isinstance(value, float) and math.isinf(value):
        return path, "the number is too large (it overflows a double)"
    if isinstance(value, str):
        return None if _utf8_ok(value) else (path, "a lone surrogate escape (\\ud800-\\udfff) is not valid Unicode")
    if isinstance(value, dict):
        for key, item in value.items():
            if not _utf8_ok(key):
                return path, "a key holds a lone surrogate escape (\\ud800-\\udfff), which is not valid Unicode"
            found = _first_invalid(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_invalid(item, (*path, i))
            if found is not None:
                return found
    return None


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _segment(part: str | int) -> str:
    if isinstance(part, int) or _PLAIN_KEY.fullmatch(part):
        return str(part)
    return json.dumps(part, ensure_ascii=False)
