"""`engine doctor` checks for the upstreams: configuration, reachability, keys and model ids.

Each declared provider (providers.yaml) is asked once, with a short timeout, for its model
listing and, when it has a key, whether the key is accepted. Every model reference the
pipelines configure (the model map and its aliases, routing rules and fallbacks, the web
search model) is then looked up in its provider's listing: a misspelt id is the most common
mistake, so an unknown one fails with the closest ids the provider does list.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import SpecErrors
from engine.registry import Finding, doctor_check
from steps.providers.config import Provider, Providers, load_providers

if TYPE_CHECKING:
    import httpx

LISTING_CONNECT_TIMEOUT, LISTING_TIMEOUT = 5.0, 10.0


def _providers() -> tuple[Providers | None, str, list[Finding]]:
    from steps.openrouter import providers_path

    path = providers_path()
    try:
        return load_providers(path), str(path), []
    except SpecErrors as exc:
        return None, str(path), [Finding("fail", f"{len(exc.errors)} errors in {path}: {exc.errors[0]}", "run `engine check` to see them all, located")]


@doctor_check
def configuration() -> list[Finding]:
    """What providers.yaml and the environment configure."""
    providers, path, found = _providers()
    if providers is None:
        return found
    for p in providers.providers.values():
        mark = " (default)" if p.name == providers.default else ""
        found.append(Finding("ok", f"provider {p.name}{mark}: {p.base_url} ({p.dialect})"))
        if p.api_key:
            found.append(Finding("ok", f"provider {p.name} has a key: the gateway uses it for every request"))
        elif p.forward_client_key:
            if p.name == "openrouter":
                what, hint = "OPENROUTER_API_KEY is not set", "export OPENROUTER_API_KEY=sk-or-... to keep the key on the server"
            else:
                what, hint = f"provider {p.name} has no api_key", f"set api_key of {p.name} in {path} to keep the key on the server"
            found.append(Finding("warn", f"{what}: each client's own key (x-api-key or Bearer) is forwarded to {p.name}", hint))
    if os.environ.get("ENGINE_API_KEYS"):
        found.append(Finding("ok", "ENGINE_API_KEYS is set: clients must present one of those keys"))
    return found


def configured_models(pipelines: str | None = None) -> list[tuple[str, str]]:
    """(where, model reference) for every model the pipelines configure, first use of each."""
    from engine.executor import load_plans

    directory = pipelines or os.environ.get("ENGINE_PIPELINES") or "pipelines"
    try:
        plans = load_plans([directory])
    except SpecErrors:
        return []
    seen: dict[str, str] = {}
    for plan in plans:
        for node in plan.nodes.values():
            for param, ref in _model_params(node.info.name, node.static):
                if isinstance(ref, str) and ref.strip() and ref not in seen:
                    seen[ref] = f"{Path(plan.file).name} {node.name}.{param}"
    return [(where, ref) for ref, where in seen.items()]


def _model_params(step: str, static: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    if step in ("openrouter.model_map", "openrouter.model_list"):
        for name in ("big_model", "middle_model", "small_model"):
            yield name, static.get(name)
        for alias, target in (static.get("aliases") or {}).items():
            yield f"aliases.{alias}", target
    elif step == "openrouter.route":
        rules = static.get("rules")
        if rules is not None:
            for name in ("default", "background", "think", "long_context", "web_search", "image"):
                yield f"rules.{name}", getattr(rules, name, None)
            for i, model in enumerate(getattr(rules, "fallback", None) or ()):
                yield f"rules.fallback.{i}", model
    elif step == "providers.endpoint":
        yield "model", static.get("model")


async def _listing(client: httpx.AsyncClient, provider: Provider) -> tuple[dict[str, dict] | None, list[Finding]]:
    import httpx

    base = provider.base_url
    headers = {"authorization": f"Bearer {provider.api_key}"} if provider.api_key else {}
    try:
        r = await client.get(f"{base}/models", headers=headers)
    except httpx.HTTPError as exc:
        fix = f"check base_url of provider {provider.name} (the shipped openrouter reads OPENROUTER_BASE_URL) and the network (proxies, firewalls)"
        return None, [Finding("fail", f"upstream {base} is not reachable: {type(exc).__name__}", fix)]
    if r.status_code >= 500:
        return None, [Finding("fail", f"upstream {base}/models answered {r.status_code}", "the upstream is having trouble; try again later")]
    try:
        data = r.json().get("data")
        entries = {e["id"]: e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)}
    except (ValueError, AttributeError, TypeError):
        return None, [Finding("warn", f"upstream {base}/models did not answer a model list ({r.status_code})", "is base_url an OpenAI-compatible base URL ending in /v1?")]
    return entries, [Finding("ok", f"upstream {base} is reachable ({len(entries)} models listed)")]


async def _key_check(client: httpx.AsyncClient, provider: Provider) -> list[Finding]:
    import httpx

    if not provider.api_key:
        return []
    try:
        r = await client.get(provider.base_url + provider.speaks.key_check, headers={"authorization": f"Bearer {provider.api_key}"})
    except httpx.HTTPError as exc:
        return [Finding("fail", f"could not check the key of {provider.name}: {type(exc).__name__}")]
    if r.status_code in (401, 403):
        return [Finding("fail", f"upstream {provider.name} refuses its api_key ({r.status_code})", "create a new key (for OpenRouter: openrouter.ai/keys) and export it")]
    if r.status_code < 400:
        return [Finding("ok", f"the upstream {provider.name} accepts its api_key")]
    return [Finding("warn", f"key check of {provider.name} answered {r.status_code}")]


def check_models(providers: Providers, listings: dict[str, list[str] | None], models: list[tuple[str, str]]) -> list[Finding]:
    """One finding per configured model: listed by its provider, unknown (with the closest
    listed ids), or not checkable (its provider's listing is unavailable)."""
    found = []
    for where, ref in models:
        target = providers.resolve(ref)
        ids = listings.get(target.provider)
        if ids is None:
            found.append(Finding("warn", f"{ref} ({where}): not checked, provider {target.provider} has no model listing"))
        elif target.model in ids or target.model.split(":", 1)[0] in ids:  # OpenRouter's :free, :thinking variants
            found.append(Finding("ok", f"{ref} ({where}) is listed by {target.provider}"))
        else:
            close = difflib.get_close_matches(target.model, ids, n=3, cutoff=0.6)
            fix = f"did you mean {' or '.join(close)}?" if close else f"`curl {providers.get(target.provider).base_url}/models` lists what {target.provider} serves"
            found.append(Finding("fail", f"{ref} ({where}): provider {target.provider} does not list model {target.model}", fix))
    return found


async def upstream() -> list[Finding]:
    """Is each provider reachable, does it accept its key, and does it serve the configured models?"""
    providers, _, found = _providers()
    if providers is None:
        return found
    listings: dict[str, list[str] | None] = {}
    windows: dict[tuple[str, str], int] = {}  # (provider, model) -> context window, from the listings
    import httpx  # a tenth of a second: only when the doctor really calls the upstreams

    async with httpx.AsyncClient(timeout=httpx.Timeout(LISTING_TIMEOUT, connect=LISTING_CONNECT_TIMEOUT), trust_env=False) as client:
        for provider in providers.providers.values():
            entries, findings = await _listing(client, provider)
            listings[provider.name] = list(entries) if entries is not None else None
            windows.update({(provider.name, m): e["context_length"] for m, e in (entries or {}).items() if isinstance(e.get("context_length"), int)})
            found += findings
            if entries is not None:
                found += await _key_check(client, provider)
    return found + check_models(providers, listings, configured_models()) + _context_window(providers, windows)


def _context_window(providers: Providers, windows: dict[tuple[str, str], int]) -> list[Finding]:
    """Claude Code sizes its context meter and auto-compaction by its own model table, which
    knows no non-Anthropic model (it assumes 1M tokens; 2.1.332 reads only ids and names from
    a gateway's /v1/models). CLAUDE_CODE_MAX_CONTEXT_TOKENS tells it the real window."""
    big = os.environ.get("BIG_MODEL") or "anthropic/claude-sonnet-4.5"
    target = providers.resolve(big)
    window = windows.get((target.provider, target.model))
    if window is None:
        return []
    return [Finding("ok", f"{big} has a {window}-token context window", f"export CLAUDE_CODE_MAX_CONTEXT_TOKENS={window}   # so Claude Code compacts before the upstream refuses")]


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
