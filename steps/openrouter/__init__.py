"""The upstream side: the OpenAI-compatible chat-completions call, routing and the model map."""

import os
from pathlib import Path

from engine.errors import SpecErrors
from engine.logs import register_secret_env
from engine.registry import serving_note, startup_check
from steps.openrouter import candidates, doctor, model_map, profiles, routing, upstream  # noqa: F401
from steps.providers.config import PROVIDERS_FILE, load_providers


def providers_path() -> Path:
    """The providers file `engine serve`/`doctor` use: $ENGINE_PROVIDERS (relative to the
    pipeline directory, as the pipelines read it), else providers.yaml in $ENGINE_PIPELINES."""
    pipelines = Path(os.environ.get("ENGINE_PIPELINES") or "pipelines")
    named = Path(os.environ.get("ENGINE_PROVIDERS") or PROVIDERS_FILE).expanduser()
    return named if named.is_absolute() else pipelines / named


register_secret_env("OPENROUTER_API_KEY")  # the shipped provider's key never reaches a log line


@serving_note
def _upstream_note() -> str:
    try:
        providers = load_providers(providers_path())
    except SpecErrors as exc:
        return f"providers: {exc.errors[0]}"
    parts = []
    for p in providers.providers.values():
        if p.api_key:
            key = "own key"
        elif p.forward_client_key:
            key = "each client's own x-api-key / bearer token is forwarded"
        else:
            key = "no key"
        parts.append(f"upstream {p.base_url} ({p.name}, {p.dialect}, {key})" + (" default" if p.name == providers.default else ""))
    models = f"BIG_MODEL={os.environ.get('BIG_MODEL') or '(default)'} SMALL_MODEL={os.environ.get('SMALL_MODEL') or '(default)'}"
    return "; ".join(parts) + f"; {models}"


@startup_check
def _inbound_keys_need_upstream_keys() -> str | None:
    """Inbound keys are removed before any step sees the request, so a provider that forwards
    the client's key would get none: every request routed to it would be a 401."""
    if not os.environ.get("ENGINE_API_KEYS", "").strip(" ,"):
        return None
    try:
        providers = load_providers(providers_path())
    except SpecErrors:
        return None  # serve reports a broken providers file itself, located
    forwarding = [p.name for p in providers.providers.values() if p.forward_client_key and not p.api_key]
    if not forwarding:
        return None
    return (
        f"ENGINE_API_KEYS is set but provider(s) {', '.join(forwarding)} have no api_key and forward the client's key: "
        "inbound keys are the gateway's and never go upstream, so every request to them would be refused. "
        "Give them an api_key (OPENROUTER_API_KEY for the shipped openrouter; any value for an upstream that needs "
        "none), or unset ENGINE_API_KEYS to forward each client's own key."
    )
