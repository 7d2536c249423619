"""The upstream side: the OpenAI-compatible chat-completions call, routing and the model map."""

import os
from pathlib import Path

from engine.errors import SpecErrors
from engine.registry import serving_note
from steps.openrouter import doctor, model_map, profiles, routing, upstream  # noqa: F401
from steps.providers.config import PROVIDERS_FILE, load_providers


def providers_path() -> Path:
    """The providers file `engine serve`/`doctor` use: $ENGINE_PROVIDERS (relative to the
    pipeline directory, as the pipelines read it), else providers.yaml in $ENGINE_PIPELINES."""
    pipelines = Path(os.environ.get("ENGINE_PIPELINES") or "pipelines")
    named = Path(os.environ.get("ENGINE_PROVIDERS") or PROVIDERS_FILE).expanduser()
    return named if named.is_absolute() else pipelines / named


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
