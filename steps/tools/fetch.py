"""WebFetch, run by the gateway: http(s) only, public addresses only, bounded in size and time.

The SSRF defences from the OWASP cheat sheet and the fetch-MCP incidents
(modelcontextprotocol/servers PR #4773 and #4838, zcaceres/fetch-mcp PR #45):

- only `http` and `https`; `file:`, `gopher:`, `ftp:`, `data:` are refused;
- the host is resolved once (numeric hosts in any legacy spelling, `2130706433`, `0x7f.1`,
  `0177.0.0.1`, go through the same resolver); if any address is loopback, private,
  link-local (cloud metadata), unspecified, multicast, reserved or an IPv4-mapped form of
  those, the fetch is refused before a socket is opened;
- the connection goes to the checked address (the URL's host becomes that IP; `Host` and the
  TLS server name keep the name), so a second DNS answer cannot redirect it;
- redirects are followed by hand, each hop checked the same way, at most `max_redirects`;
- the body is read raw and decompressed here with a bounded output per step, so neither a
  10 MB body nor a gzip bomb grows memory past the cap; the whole fetch has a deadline.

A deployment may allow specific `host:port` pairs (tests allow one loopback server).
"""

from __future__ import annotations

import ipaddress
import socket
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import anyio

from steps.tools.workspace import ToolRefused

if TYPE_CHECKING:  # httpx loads with the first fetch, not when pipelines load
    import httpx

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class FetchLimits:
    timeout: float = 30.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    max_chars: int = 100_000
    allow_hosts: tuple[str, ...] = ()  # "host:port" pairs exempt from the address check


@dataclass(slots=True)
class Fetched:
    url: str
    status: int
    content_type: str
    text: str
    truncated: bool
    title: str | None = None


def address_class(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` may not be fetched ("loopback", "private", ...), or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or (ip.sixtofour if ip.sixtofour else None)
        if mapped is not None:
            inner = address_class(mapped)
            return f"IPv4-mapped {inner}" if inner else None
        if ip in _NAT64:
            inner = address_class(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
            return f"NAT64 {inner}" if inner else None
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata)" if str(ip).startswith("169.254.169.254") or str(ip) == "fd00:ec2::254" else "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT):
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (numeric hosts in legacy spellings included)."""
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ToolRefused(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


async def checked_target(url: str, lim: FetchLimits) -> tuple[httpx.URL, str]:
    """(URL to connect to, with the checked IP as host; the original host name)."""
    import httpx

    try:
        parts = urlsplit(url)
    except ValueError:
        raise ToolRefused(f"invalid URL {url!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ToolRefused(f"scheme {scheme + ':' if scheme else '(none)'} is not allowed; only http and https")
    host = parts.hostname
    if not host:
        raise ToolRefused(f"URL {url!r} has no host")
    if parts.username or parts.password:
        raise ToolRefused("URLs with credentials are not allowed")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ToolRefused(f"invalid port in {url!r}") from None
    host = host.rstrip(".")
    addresses = await resolve(host, port)
    if not addresses:
        raise ToolRefused(f"{host!r} has no address")
    allowed = f"{host}:{port}" in lim.allow_hosts
    if not allowed:
        for addr in addresses:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
            why = address_class(ip)
            if why is not None:
                raise ToolRefused(f"refused: {host} is a {why} address ({ip})")
    return httpx.URL(url).copy_with(host=addresses[0], port=port), host


class _Decoder:
    """gzip / deflate / identity, decompressing at most `room` bytes per call."""

    def __init__(self, encoding: str) -> None:
        enc = encoding.strip().lower()
        if enc in ("", "identity"):
            self.z = None
        elif enc in ("gzip", "x-gzip"):
            self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self.z = zlib.decompressobj()
        else:
            raise ToolRefused(f"unsupported content-encoding {encoding!r}")
        self.pending = b""

    def feed(self, data: bytes, room: int) -> bytes:
        if self.z is None:
            return data[:room]
        try:
            out = self.z.decompress(self.pending + data, room)
            self.pending = self.z.unconsumed_tail
        except zlib.error:
            raise ToolRefused("the response body is not valid compressed data") from None
        return out


async def fetch(url: str, lim: FetchLimits, client: httpx.AsyncClient) -> Fetched:
    """GET `url` under the rules above; redirects re-checked hop by hop."""
    import httpx

    if not isinstance(url, str) or not url:
        raise ToolRefused("'url' must be a non-empty string")
    current = url
    with anyio.move_on_after(lim.timeout) as scope:
        for _hop in range(lim.max_redirects + 1):
            target, host = await checked_target(current, lim)
            port = target.port
            default = 443 if target.scheme == "https" else 80
            headers = {
                "host": host if port in (None, default) else f"{host}:{port}",
                "accept": "text/html,text/plain,application/json;q=0.9,*/*;q=0.5",
                "accept-encoding": "gzip, deflate",
                "user-agent": "engine-gateway-webfetch/1",
            }
            request = client.build_request("GET", target, headers=headers, extensions={"sni_hostname": host})
            try:
                response = await client.send(request, stream=True, follow_redirects=False)
            except httpx.HTTPError as exc:
                raise ToolRefused(f"fetch failed: {type(exc).__name__}") from None
            try:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise ToolRefused(f"redirect {response.status_code} without a location")
                    current = urljoin(current, location)
                    continue
                return await _read(current, response, lim)
            finally:
                await response.aclose()
        raise ToolRefused(f"more than {lim.max_redirects} redirects")
    assert scope.cancelled_caught
    raise ToolRefused(f"fetch timed out after {lim.timeout:g} s")


async def _read(url: str, response: httpx.Response, lim: FetchLimits) -> Fetched:
    import httpx

    decoder = _Decoder(response.headers.get("content-encoding", ""))
    parts: list[bytes] = []
    size = 0
    raw = 0
    truncated = False
    try:
        async for data in response.aiter_raw():
            raw += len(data)
            room = lim.max_bytes - size
            out = decoder.feed(data, room)
            parts.append(out)
            size += len(out)
            while decoder.pending and size < lim.max_bytes:
                more = decoder.feed(b"", lim.max_bytes - size)
                if not more:
                    break
                parts.append(more)
                size += len(more)
            if size >= lim.max_bytes or raw >= lim.max_bytes * 2:
                truncated = True
                break
    except httpx.HTTPError as exc:
        if not parts:
            raise ToolRefused(f"fetch failed while reading: {type(exc).__name__}") from None
        truncated = True
    body = b"".join(parts)
    ctype = response.headers.get("content-type", "")
    charset = response.charset_encoding or "utf-8"
    try:
        text = body.decode(charset, "replace")
    except LookupError:
        text = body.decode("utf-8", "replace")
    title = None
    if "html" in ctype.lower():
        title = _title(text)
        from markdownify import markdownify  # with BeautifulSoup, a tenth of a second: only when a page comes

        text = markdownify(text, heading_style="ATX", strip=["script", "style"])
    if len(text) > lim.max_chars:
        text = text[: lim.max_chars]
        truncated = True
    if truncated:
        text += f"\n[truncated: the response was cut at the {lim.max_bytes}-byte / {lim.max_chars}-character cap]"
    return Fetched(url=url, status=response.status_code, content_type=ctype, text=text, truncated=truncated, title=title)


def _title(html: str) -> str | None:
    lower = html[:65536].lower()
    start = lower.find("<title")
    if start < 0:
        return None
    start = lower.find(">", start)
    end = lower.find("</title>", start)
    if start < 0 or end < 0:
        return None
    return " ".join(html[start + 1 : end].split())[:200] or None


def client_factory() -> Any:
    """The pooled client WebFetch uses: no redirects, no environment proxies, no decoding."""
    import httpx

    return httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=httpx.Timeout(30.0, connect=10.0))
