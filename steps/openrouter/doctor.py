"""`engine doctor` checks for the upstream: configuration, reachability, key validity.

Each check talks to the configured upstream once with a short timeout and says, in one line,
what it found and what to do about it; the last finding is what Claude Code needs to be set.
"""

from __future__ import annotations

import os

from engine.registry import Finding, doctor_check

DEFAULT_BASE = "https://openrouter.ai/api/v1"


def _base() -> str:
    return (os.environ.get("OPENROUTER_BASE_URL") or DEFAULT_BASE).rstrip("/")


@doctor_check
def configuration() -> list[Finding]:
    """What the environment configures."""
    found = [Finding("ok", f"upstream base URL: {_base()}" + (" (default)" if not os.environ.get("OPENROUTER_BASE_URL") else ""))]
    if os.environ.get("OPENROUTER_API_KEY"):
        found.append(Finding("ok", "OPENROUTER_API_KEY is set: the gateway uses it for every request"))
    else:
        found.append(
            Finding(
                "warn",
                "OPENROUTER_API_KEY is not set: each client's own key (x-api-key or Bearer) is forwarded upstream",
                "export OPENROUTER_API_KEY=sk-or-... to keep the key on the server",
            )
        )
    for name, default in (("BIG_MODEL", "anthropic/claude-sonnet-4.5"), ("SMALL_MODEL", "anthropic/claude-haiku-4.5")):
        value = os.environ.get(name)
        found.append(Finding("ok", f"{name} = {value or default}" + ("" if value else " (default)")))
    if os.environ.get("ENGINE_API_KEYS"):
        found.append(Finding("ok", "ENGINE_API_KEYS is set: clients must present one of those keys"))
    return found


async def upstream() -> list[Finding]:
    """Is the upstream reachable, and does it accept the key?"""
    base, key = _base(), os.environ.get("OPENROUTER_API_KEY", "")
    found: list[Finding] = []
    import httpx  # a tenth of a second: only when the doctor really calls the upstream

    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0), trust_env=False) as client:
        try:
            r = await client.get(f"{base}/models")
        except httpx.HTTPError as exc:
            return [Finding("fail", f"upstream {base} is not reachable: {type(exc).__name__}", "check OPENROUTER_BASE_URL and the network (proxies, firewalls)")]
        if r.status_code >= 500:
            found.append(Finding("fail", f"upstream {base}/models answered {r.status_code}", "the upstream is having trouble; try again later"))
        else:
            try:
                count = len(r.json().get("data") or [])
                found.append(Finding("ok", f"upstream {base} is reachable ({count} models listed)"))
            except ValueError:
                found.append(Finding("warn", f"upstream {base}/models did not answer JSON ({r.status_code})", "is OPENROUTER_BASE_URL an OpenAI-compatible base URL ending in /v1?"))
        if not key:
            return found
        probe = f"{base}/key" if "openrouter.ai" in base else f"{base}/models"
        try:
            r = await client.get(probe, headers={"Authorization": f"Bearer {key}"})
        except httpx.HTTPError as exc:
            found.append(Finding("fail", f"could not check the key: {type(exc).__name__}"))
            return found
        if r.status_code in (401, 403):
            found.append(Finding("fail", f"the upstream refuses OPENROUTER_API_KEY ({r.status_code})", "create a new key (openrouter.ai/keys) and export it"))
        elif r.status_code < 400:
            found.append(Finding("ok", "the upstream accepts OPENROUTER_API_KEY"))
        else:
            found.append(Finding("warn", f"key check answered {r.status_code}"))
    return found


doctor_check(upstream)


@doctor_check
def claude_code() -> list[Finding]:
    """What to set in the shell that runs Claude Code."""
    host = os.environ.get("ENGINE_HOST", "127.0.0.1")
    port = os.environ.get("ENGINE_PORT", "8082")
    token = "one of ENGINE_API_KEYS" if os.environ.get("ENGINE_API_KEYS") else ("anything (the server has the key)" if os.environ.get("OPENROUTER_API_KEY") else "your OpenRouter key")
    lines = [
        f"export ANTHROPIC_BASE_URL=http://{host}:{port}",
        f"export ANTHROPIC_AUTH_TOKEN=...   # {token}",
        "export ANTHROPIC_MODEL=claude-sonnet-5-5   # optional; author/slug ids go upstream as is",
        "claude",
    ]
    return [Finding("ok", "Claude Code needs:", "\n".join(lines))]
