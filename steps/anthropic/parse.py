"""Turn the raw HTTP request into a JSON object, refusing what no Anthropic client sends.

The body stays bytes until here so that a malformed one is answered in Anthropic's own error
format (RELIABILITY §3 rows 1, 2, 6, 7).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine import jsonbody
from engine.registry import step
from engine.types import Request
from steps.anthropic.errors import invalid_request

MAX_DEPTH = 64
"""Deepest nesting accepted. Later steps (pydantic, orjson.dumps at 255, recursive converters)
have their own limits; refusing here turns a would-be 500 into a clear 400."""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and type(headers) is dict:  # a plain dict may keep the sender's casing
        for k, v in headers.items():
            if k.lower() == name:
                return v
    return value


def _check_content_type(value: str | None) -> None:
    # Absent: accepted (no browser can send a body without one, so this is no CSRF hole).
    if value is None or not value.strip():
        return
    media, _, params = value.partition(";")
    if media.strip().lower() != "application/json":
        raise invalid_request(
            f"Unsupported Content-Type '{media.strip()[:100]}': the request body must be application/json",
            status=415,
        )
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise invalid_request("Unsupported charset: the request body must be UTF-8 JSON", status=415)


def _depth_ok(obj: Any, depth: int = 2) -> bool:
    # Only containers are visited; strings and numbers are skipped by a type check.
    if depth > MAX_DEPTH:
        return False
    for v in obj.values() if type(obj) is dict else obj:
        tv = type(v)
        if (tv is dict or tv is list) and v and not _depth_ok(v, depth + 1):
            return False
    return True


def parse_body(body: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """Decode a request body into a JSON object or raise a 400 AnthropicError saying why."""
    if not body:
        raise invalid_request("The request body is empty: expected a JSON object")
    if body[:3] == b"\xef\xbb\xbf":
        raise invalid_request("The request body starts with a byte order mark (BOM): send UTF-8 JSON without it")
    try:
        data = jsonbody.loads(body)
    except jsonbody.InvalidJson as exc:
        # Names the field (NaN, Infinity, a lone surrogate) or the byte offset and what was
        # expected there; never a traceback.
        raise invalid_request(f"The request body is not valid JSON: {exc}") from None
    if type(data) is not dict:
        raise invalid_request("The request body must be a JSON object")
    if not _depth_ok(data):
        raise invalid_request(f"The request body is nested too deeply (more than {MAX_DEPTH} levels)")
    return data


@step("anthropic.parse", blocking=False)
def parse(request: Request) -> dict:
    """Parse an Anthropic request body (JSON object) and refuse non-JSON content types.

    No Content-Type is accepted; `application/json` (any parameters, UTF-8) is accepted;
    anything else is 415, which also stops cross-site form posts. Invalid JSON or UTF-8, a BOM,
    NaN/Infinity, lone surrogates, nesting deeper than 64 or a non-object body are 400
    invalid_request_error with a message and no traceback.
    """
    _check_content_type(_header(request.headers, "content-type"))
    return parse_body(request.body)
