"""Inbound API keys: which request headers carry them, and the check that consumes them.

The engine knows HTTP's own way (`Authorization: Bearer KEY`, RFC 6750); a served protocol
that has another (a header of its own, say) declares it with `key_header` when its step package
is imported, and `create_app(key_headers=...)` can name the set outright. Every declared header
is taken out of the request before any pipeline sees it, presented or not, so an inbound key can
never be forwarded upstream, and its name is masked in logs and captures like other secrets.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from engine import logs
from engine.errors import HttpError


@dataclass(frozen=True, slots=True)
class KeyHeader:
    """A header that carries an inbound key: its name, and the scheme before the key if any."""

    name: str
    scheme: str | None = None  # "Bearer": the header's value is "Bearer KEY"

    def describe(self) -> str:
        return f"{self.name}: {self.scheme} KEY" if self.scheme else self.name


BEARER = KeyHeader("authorization", "Bearer")
_declared: list[KeyHeader] = []


def key_header(name: str, scheme: str | None = None) -> KeyHeader:
    """Declare a header that carries inbound keys (e.g. a protocol's own `x-...-key` header)."""
    header = KeyHeader(name.lower(), scheme)
    if header not in _declared:
        _declared.append(header)
        logs.register_secret_names(re.escape(header.name))
    return header


def key_headers() -> tuple[KeyHeader, ...]:
    """The declared key headers in declaration order, then Bearer (checked in this order)."""
    return (*_declared, BEARER)


def authorize(headers: dict[str, str], keys: list[bytes], carriers: tuple[KeyHeader, ...]) -> None:
    """Check an inbound key in constant time, then drop it: it is the gateway's, not upstream's.

    Every carrier header is removed from `headers` whether or not it held the key. The first
    carrier with a value is the one checked; `HttpError` 401 when it matches no key."""
    presented = ""
    for carrier in carriers:
        raw = headers.pop(carrier.name, "")
        if presented or not raw:
            continue
        if carrier.scheme is None:
            presented = raw.strip()
        elif raw[: len(carrier.scheme) + 1].lower() == carrier.scheme.lower() + " ":
            presented = raw[len(carrier.scheme) + 1 :].strip()
    candidate = presented.encode("utf-8", errors="replace")
    if not any(hmac.compare_digest(candidate, k) for k in keys):  # no early exit on a match
        ways = " or ".join(c.describe() for c in carriers)
        raise HttpError(401, "invalid API key" if presented else f"missing API key: send it as {ways}")
