"""The upstream side: the OpenAI-compatible chat-completions call and the model map."""

import os

from engine.logs import register_secret_env
from engine.registry import serving_note
from steps.openrouter import doctor, model_map, profiles, routing, upstream  # noqa: F401

register_secret_env("OPENROUTER_API_KEY")  # the upstream key never reaches a log line


@serving_note
def _upstream_note() -> str:
    base = os.environ.get("OPENROUTER_BASE_URL") or "https://openrouter.ai/api/v1"
    if os.environ.get("OPENROUTER_API_KEY"):
        key = "key from OPENROUTER_API_KEY"
    else:
        key = "no OPENROUTER_API_KEY: each client's own x-api-key / bearer token is forwarded"
    models = f"BIG_MODEL={os.environ.get('BIG_MODEL') or '(default)'} SMALL_MODEL={os.environ.get('SMALL_MODEL') or '(default)'}"
    return f"upstream {base} ({key}); {models}"
