"""The Host and Origin check every request passes before any route: the DNS-rebinding wall.

A web page whose name its attacker points at 127.0.0.1 (DNS rebinding, the attack behind
Ollama's CVE-2024-28224) makes the browser talk to a loopback server as if it were the page's
own site: same-origin, so the browser lets the page read the answers, and the server spends
its upstream key for it. What the browser cannot forge is the `Host` header: it carries the
attacker's name. So a request is served only when its Host is a name or address of this
server:

- a loopback name or address (`localhost`, `127.0.0.0/8`, `::1`) with the bound port or none;
- when the server binds a non-loopback address: that address (the one the connection came
  in on) and, for a bind by name, that name;
- an entry of the allowlist (`ENGINE_ALLOWED_HOSTS`): `name`, `name:port`, `*.domain`, or
  `*` for any (something in front checks it).

A page on another site (or another local port) can still send a request that needs no
preflight; a browser marks it with `Origin`. A request with an `Origin` is served only when
the origin is this server as the request names it (the same host and port as `Host`) or in
`ENGINE_ALLOWED_ORIGINS` (`scheme://host[:port]`, or `*`). No `Origin` means no browser page
sent it, which is fine: programs can send any Host they like and do not need a rebinding trick.

A refused request reaches no pipeline and no route (`/health` and `/metrics` included): the
`refuse` callback renders a 403 in the served protocol's format and writes the access line.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import Scope

_WILDCARD_BINDS = {"", "0.0.0.0", "::", "[::]", "*"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SHOWN = 100  # at most this much of a refused header goes into messages and logs
_REMEMBERED = 256  # allowed (Host, Origin, socket) combinations kept; then forgotten at once


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: `reason` for the access line, `message` for the client."""

    reason: str
    message: str
    header: str


def split_host(value: str) -> tuple[str, int | None] | None:
    """`host[:port]` -> (lower-case host without brackets or a final dot, port); None if malformed."""
    value = value.strip().lower()
    if not value:
        return None
    port: int | None = None
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port = _port(rest[1:])
            if port is None:
                return None
        return host, port
    if value.count(":") == 1:
        host, _, raw = value.partition(":")
        port = _port(raw)
        if port is None:
            return None
        value = host
    elif ":" in value:  # a bare IPv6 address is not a valid Host, but harmless to read
        return value, None
    return value.rstrip("."), port


def _port(raw: str) -> int | None:
    if not raw.isdigit() or len(raw) > 5:
        return None
    port = int(raw)
    return port if 0 < port < 65536 else None


def is_loopback(host: str) -> bool:
    """`localhost`, or an address in 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """Which `Host` and `Origin` values this server answers (see the module docstring)."""

    def __init__(self, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = (), bind_host: str | None = None) -> None:
        self.any_host = False
        self.any_origin = False
        self.names: set[str] = set()  # any port
        self.exact: set[tuple[str, int]] = set()  # this port only
        self.suffixes: list[str] = []  # "*.example.com" -> ".example.com"
        for entry in (e.strip().lower() for e in allowed_hosts):
            if not entry:
                continue
            if entry == "*":
                self.any_host = True
            elif entry.startswith("*."):
                self.suffixes.append(entry[1:])
            else:
                parsed = split_host(entry)
                if parsed is None:
                    raise ValueError(f"ENGINE_ALLOWED_HOSTS entry '{entry}' is not host or host:port")
                host, port = parsed
                if port is None:
                    self.names.add(host)
                else:
                    self.exact.add((host, port))
        self.origins: set[str] = set()
        for entry in (e.strip().lower().rstrip("/") for e in allowed_origins):
            if entry == "*":
                self.any_origin = True
            elif entry:
                if "://" not in entry:
                    raise ValueError(f"ENGINE_ALLOWED_ORIGINS entry '{entry}' is not scheme://host[:port]")
                self.origins.add(entry)
        self._allowed: set[tuple[Any, ...]] = set()
        bind = (bind_host or "").strip().lower().strip("[]")
        self.bind_name = bind if bind not in _WILDCARD_BINDS and not is_loopback(bind) else None

    def own(self, host: str, port: int | None, server: tuple[str, int] | None) -> bool:
        """Whether `host[:port]` names this server itself: loopback, or the bound address or name."""
        if server is not None and port is not None and port != server[1]:
            return False
        if is_loopback(host):
            return True
        if server is not None and not is_loopback(server[0]) and host == server[0].lower():
            return True  # bound to a non-loopback address: the one this connection came in on
        return host == self.bind_name

    def host_allowed(self, host: str, port: int | None, server: tuple[str, int] | None) -> bool:
        if self.any_host or self.own(host, port, server) or host in self.names:
            return True
        if port is not None and (host, port) in self.exact:
            return True
        return any(host.endswith(s) for s in self.suffixes)

    def origin_allowed(self, origin: str, host_header: tuple[str, int | None]) -> bool:
        """The origin is this server as the request addressed it, or allowlisted."""
        origin = origin.strip().lower()
        if self.any_origin or origin.rstrip("/") in self.origins:
            return True
        scheme, sep, authority = origin.partition("://")
        if not sep or scheme not in _DEFAULT_PORTS:
            return False  # "null" (a file or a sandboxed frame), or another scheme
        parsed = split_host(authority)
        if parsed is None:
            return False
        default = _DEFAULT_PORTS[scheme]
        host, port = parsed
        return (host, port or default) == (host_header[0], host_header[1] or default)

    def check(self, scope: Scope) -> Refusal | None:
        """None when the request may go on, else why not.

        The decision depends only on the two headers and the socket, so allowed combinations
        are remembered (a few, in practice): a repeat costs a header scan and a set lookup.
        """
        host_raw = origin_raw = None
        for name, value in scope["headers"]:  # a repeated header is ambiguous: read as empty, refused
            if name == b"host":
                host_raw = value if host_raw is None else b""
            elif name == b"origin":
                origin_raw = value if origin_raw is None else b""
        server = scope.get("server")
        key = (host_raw, origin_raw, *server) if server else (host_raw, origin_raw)
        if key in self._allowed:
            return None
        refusal = self._decide(host_raw, origin_raw, server)
        if refusal is None:
            if len(self._allowed) >= _REMEMBERED:
                self._allowed.clear()
            self._allowed.add(key)
        return refusal

    def _decide(self, host_raw: bytes | None, origin_raw: bytes | None, server: Any) -> Refusal | None:
        host_value = host_raw.decode("latin-1") if host_raw is not None else None
        origin_value = origin_raw.decode("latin-1") if origin_raw is not None else None
        server = (str(server[0]), int(server[1])) if server and server[1] is not None else None
        parsed = split_host(host_value) if host_value is not None else None
        if parsed is None or not self.host_allowed(parsed[0], parsed[1], server):
            shown = (host_value or "")[:_SHOWN]
            return Refusal(
                "host_not_allowed",
                f"Host '{shown}' is not a name of this server: it answers localhost, 127.0.0.1 and [::1] "
                "on its own port, and the names in ENGINE_ALLOWED_HOSTS",
                shown,
            )
        if origin_value is not None and not self.origin_allowed(origin_value, parsed):
            shown = origin_value[:_SHOWN]
            return Refusal(
                "origin_not_allowed",
                f"Origin '{shown}' may not use this server: a web page may call it only from its own origin "
                "or an origin in ENGINE_ALLOWED_ORIGINS",
                shown,
            )
        return None


Refuse = Callable[[Scope, Refusal], Awaitable[Response]]
"""How a refused request is answered (engine/http.py Gateway renders it in the served protocol)."""


def code_exposure(plans: Iterable[Any], host: str, keys: bool) -> str | None:
    """Why serving `plans` on `host` would be unsafe, or None.

    A served pipeline marked `runs_code` on a non-loopback address without inbound keys lets
    anyone who can reach the port run code on this machine: no flag makes that acceptable.
    Checked by `engine serve` before binding and again by every live reload.
    """
    running = [p.name for p in plans if p.runs_code and p.enabled]
    if keys or not running or is_loopback(host.strip("[]").lower()):
        return None
    names = ", ".join(f"'{n}'" for n in running)
    return (
        f"refusing to serve {host} with server-side tools on ({names} runs code on this machine) and no inbound keys; "
        "--allow-unauthenticated does not cover that. Set ENGINE_API_KEYS=key1,key2, bind 127.0.0.1, or leave server-side tools off."
    )


def policy_from_env(env: Any) -> HostPolicy:
    """The policy `engine serve` uses: `ENGINE_ALLOWED_HOSTS`, `ENGINE_ALLOWED_ORIGINS`, `ENGINE_HOST`."""
    return HostPolicy(
        allowed_hosts=env.get("ENGINE_ALLOWED_HOSTS", "").split(","),
        allowed_origins=env.get("ENGINE_ALLOWED_ORIGINS", "").split(","),
        bind_host=env.get("ENGINE_HOST"),
    )
