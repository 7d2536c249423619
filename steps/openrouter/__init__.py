"""The upstream side: the OpenAI-compatible chat-completions call and the model map."""

import os

from engine.registry import serving_note, startup_check
from steps.openrouter import doctor, model_map, profiles, routing, upstream  # noqa: F401


@serving_note
def _upstream_note() -> str:
    base = os.environ.get("OPENROUTER_BASE_URL") or "https://openrouter.ai/api/v1"
    if os.environ.get("OPENROUTER_API_KEY"):
        key = "key from OPENROUTER_API_KEY"
    else:
        key = "no OPENROUTER_API_KEY: each client's own x-api-key / bearer token is forwarded"
    models = f"BIG_MODEL={os.environ.get('BIG_MODEL') or '(default)'} SMALL_MODEL={os.environ.get('SMALL_MODEL') or '(default)'}"
    return f"upstream {base} ({key}); {models}"


@startup_check
def _inbound_keys_need_an_upstream_key() -> str | None:
    """Inbound keys are removed before any step sees the request, so with them set and no
    OPENROUTER_API_KEY no request could carry an upstream key: every one would be a 401."""
    if os.environ.get("ENGINE_API_KEYS", "").strip(" ,") and not os.environ.get("OPENROUTER_API_KEY"):
        return (
            "ENGINE_API_KEYS is set but OPENROUTER_API_KEY is not: inbound keys are the gateway's and never go "
            "upstream, so every request would be refused. Set OPENROUTER_API_KEY (any value for an upstream "
            "that needs none), or unset ENGINE_API_KEYS to forward each client's own key."
        )
    return None
