"""`engine statusline`: one line for Claude Code's `statusLine` setting.

Claude Code runs the command after each assistant message with a JSON object on stdin
(`session_id`, `model`, `cost`, ...) and shows the first line printed. Its own `cost` is priced
at Anthropic's list prices for the model it asked for; the gateway knows the upstream model that
answered and what it cost, so this asks the gateway (`GET /usage?session=ID`, the requests that
carried `x-claude-code-session-id: ID`), or reads access logs / captures with `--from`.

It must be quick and never blank the line: stdlib only (urllib), a short timeout, and every
failure is printed as a short status with exit 0.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from engine.usage import COST, compact, money

DEFAULT_URL = "http://127.0.0.1:8082"
TIMEOUT = 1.5


def gateway_url(url: str | None) -> str:
    """`url`, else Claude Code's `ANTHROPIC_BASE_URL` (the gateway it talks to), else the default;
    reduced to scheme://host:port, since `/usage` is served at the root."""
    chosen = url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_URL
    parts = urllib.parse.urlsplit(chosen)
    return f"{parts.scheme or 'http'}://{parts.netloc or parts.path}"


def fetch(url: str, session: str, timeout: float = TIMEOUT) -> dict[str, Any] | None:
    """The gateway's usage of `session`, None when it has none; OSError when unreachable."""
    query = urllib.parse.urlencode({"session": session})
    try:
        with urllib.request.urlopen(f"{url}/usage?{query}", timeout=timeout) as response:  # noqa: S310 - the user's own gateway
            return json.loads(response.read(1_000_000))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise OSError(f"HTTP {exc.code}") from None


def from_files(paths: list[str], session: str) -> dict[str, Any] | None:
    from engine.usage import summarise

    summary = summarise(paths, session=session)
    if not summary.records:
        return None
    return {"models": {m: t.as_dict() for m, t in summary.by_model.items()}, "total": summary.total.as_dict()}


def render(found: dict[str, Any]) -> str:
    """`model +N · in 1.2k · out 345 · cache 12k read/1k written · $0.0123 · 3 req`."""
    models: dict[str, Any] = found.get("models") or {}
    total: dict[str, Any] = found.get("total") or {}
    tokens: dict[str, int] = total.get("tokens") or {}
    main = max(models, key=lambda m: ((models[m].get("tokens") or {}).get("output", 0), m)) if models else "?"
    parts = [main + (f" +{len(models) - 1}" if len(models) > 1 else "")]
    parts.append(f"in {compact(tokens.get('input', 0))}")
    parts.append(f"out {compact(tokens.get('output', 0))}")
    read, written = tokens.get("cache_read", 0), tokens.get("cache_write", 0)
    if read or written:
        parts.append(f"cache {compact(read)} read/{compact(written)} written")
    requests, unpriced = total.get("requests", 0), total.get("unpriced", 0)
    if unpriced and unpriced >= requests:
        parts.append("cost unknown")
    else:
        parts.append(money(float(total.get(COST) or 0.0)) + ("+" if unpriced else ""))
    parts.append(f"{requests} req")
    return " · ".join(parts)


def status_line(stdin_text: str, url: str | None = None, sources: list[str] | None = None) -> str:
    """The line to print for one statusLine call (never raises)."""
    try:
        data = json.loads(stdin_text) if stdin_text.strip() else {}
    except json.JSONDecodeError:
        data = {}
    session = data.get("session_id") if isinstance(data, dict) else None
    if not isinstance(session, str) or not session:
        return "gateway: no session_id on stdin"
    if sources:
        found = from_files(sources, session)
    else:
        base = gateway_url(url)
        try:
            found = fetch(base, session)
        except (OSError, ValueError) as exc:
            return f"gateway unreachable at {base} ({getattr(exc, 'reason', exc)})"
    if found is None:
        return "gateway: no requests yet in this session"
    return render(found)
