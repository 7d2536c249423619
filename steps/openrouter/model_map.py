"""Which upstream model serves a Claude model id, and which Claude-named ids we advertise.

Claude Code only ever asks for Claude ids (`claude-opus-5-5`, `claude-haiku-5-5`, dated ids
such as `claude-sonnet-4-5-20250929`) unless the user sets `ANTHROPIC_MODEL` to something
else, so the gateway maps families onto configured upstream models and lets explicit
`author/slug` ids through untouched (PROTOCOL.md §7.1, §8.1).
"""

from __future__ import annotations

from typing import Any

from engine.errors import HttpError
from engine.registry import step
from engine.types import Request
from steps.providers.config import Providers

# Claude Code's discovery (`GET /v1/models`) keeps only ids containing "claude" or
# "anthropic" (PROTOCOL.md §4), so these are the names we expose for the three tiers.
_TIER_IDS = (
    ("claude-opus-5-5", "Claude Opus 5.5", "big"),
    ("claude-sonnet-5-5", "Claude Sonnet 5.5", "middle"),
    ("claude-haiku-5-5", "Claude Haiku 5.5", "small"),
)
# RFC 3339; the epoch is the documented "unknown" creation date (PROTOCOL.md §4).
_CREATED_AT = "1970-01-01T00:00:00Z"


@step("openrouter.model_map", blocking=False)
def model_map(
    model: str,
    big_model: str,
    small_model: str,
    middle_model: str = "",
    aliases: dict[str, str] | None = None,
    providers: Providers | None = None,
) -> str:
    """Map a requested model id to the upstream model: aliases, then Claude family, else as is.

    An exact `aliases` entry wins (so an operator can re-point any id, even `author/slug`).
    Ids with a `/`, and `NAME:MODEL` references to a provider declared in `providers`, are
    already upstream models and pass through (`local:claude-haiku-distill` stays itself).
    Every target here may be such a reference. Otherwise the family decides:
    `haiku` → small_model, `sonnet` → middle_model (or big_model when unset), `opus` and
    any other `claude-*` id → big_model; a non-Claude id (a custom `ANTHROPIC_MODEL`) passes
    through. Empty tier settings fall back to big_model so a half-filled config still works.
    """
    if aliases:
        target = aliases.get(model)
        if target:
            return target
    if "/" in model:
        return model
    prefix, sep, _ = model.partition(":")
    if sep and providers is not None and prefix in providers.providers:
        return model
    lowered = model.lower()
    if "haiku" in lowered:
        return small_model or big_model
    if "sonnet" in lowered:
        return middle_model or big_model
    if "opus" in lowered or lowered.startswith("claude"):
        return big_model
    return model


@step("openrouter.request_fallbacks", blocking=False)
def request_fallbacks(
    body: dict[str, Any],
    big_model: str,
    small_model: str,
    middle_model: str = "",
    aliases: dict[str, str] | None = None,
    providers: Providers | None = None,
) -> list[str]:
    """The request's own `fallbacks` (Anthropic's server-side fallback chain) as upstream models.

    Each entry's `model` goes through the model map like the request's model, so
    `claude-sonnet-5-5` falls back to the configured tier. `"default"` (the server's own chain)
    adds nothing: the routing rules' `fallback` list is this gateway's default chain. Per-entry
    overrides (`max_tokens`, `thinking`, `output_config`, `speed`) are not applied: every
    candidate gets the request's own parameters, clamped to its profile.
    """
    chain = body.get("fallbacks")
    if not isinstance(chain, list):
        return []
    models = [e.get("model") for e in chain if isinstance(e, dict)]
    return [model_map(m, big_model, small_model, middle_model, aliases, providers) for m in models if isinstance(m, str) and m]


@step("openrouter.model_catalogue", blocking=False)
def model_catalogue(
    big_model: str,
    small_model: str,
    middle_model: str = "",
    aliases: dict[str, str] | None = None,
    providers: Providers | None = None,
    request: Request | None = None,
) -> dict[str, Any]:
    """The model ids this gateway answers to, each with the upstream model that serves it.

    Listed: the three Claude tier ids, the Claude-named alias keys (what Claude Code's gateway
    model discovery keeps), then every configured upstream model (tier targets and alias
    targets, `NAME:MODEL` references included), so a client that asks for `openai/gpt-4o`
    finds it too. A `GET /v1/models/{id}` for any other id is mapped as a request naming it
    would be. `models`/`candidates` feed `openrouter.profiles`, whose figures give each entry
    its window (`openrouter.model_page`).
    """
    targets = {"big": big_model, "middle": middle_model or big_model, "small": small_model or big_model}
    entries: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(model_id: str, display: str, target: str) -> None:
        if model_id and model_id not in seen:
            seen.add(model_id)
            entries.append({"id": model_id, "display_name": display, "target": target})

    for model_id, label, tier in _TIER_IDS:
        add(model_id, f"{label} ({targets[tier]})", targets[tier])
    for alias, target in (aliases or {}).items():
        if "claude" in alias.lower():
            add(alias, f"{alias} ({target})", target)
    for target in [*targets.values(), *(aliases or {}).values()]:
        add(target, target, target)
    asked = (request.path_params or {}).get("model_id") if request is not None else None
    if asked and asked not in seen:
        add(asked, asked, model_map(asked, big_model, small_model, middle_model, aliases, providers))
    resolved = [providers.resolve(e["target"]) if providers is not None else None for e in entries]
    candidates = [{"provider": t.provider, "model": t.model, "ref": t.ref} if t else {"provider": None, "model": e["target"], "ref": e["target"]} for e, t in zip(entries, resolved, strict=True)]
    for entry, candidate in zip(entries, candidates, strict=True):
        entry["model"] = candidate["model"]
    return {"entries": entries, "asked": asked, "models": [c["model"] for c in candidates], "candidates": candidates}


@step("openrouter.model_page", blocking=False)
def model_page(catalogue: dict[str, Any], profiles: dict[str, Any], request: Request | None = None) -> dict[str, Any]:
    """`GET /v1/models` as Anthropic pages it (`limit` 1-1000, default 20; `after_id`,
    `before_id`), or one `GET /v1/models/{id}`; each model with `max_input_tokens` and
    `max_tokens` from its profile (null when no listing or profile knows them)."""
    infos = [_model_info(e["id"], e["display_name"], profiles.get(e["model"])) for e in catalogue["entries"]]
    if catalogue.get("asked"):
        return next(i for i in infos if i["id"] == catalogue["asked"])
    query = request.query if request is not None else {}
    try:
        limit = max(1, min(int(query.get("limit") or 20), 1000))
    except ValueError:
        raise HttpError(400, "limit: must be an integer from 1 to 1000") from None
    ids = [i["id"] for i in infos]
    after, before = query.get("after_id"), query.get("before_id")
    if before:
        end = ids.index(before) if before in ids else 0
        page = infos[max(0, end - limit) : end]
        has_more = end - limit > 0
    else:
        start = ids.index(after) + 1 if after in ids else (len(ids) if after else 0)
        page = infos[start : start + limit]
        has_more = start + limit < len(infos)
    return {"data": page, "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None, "has_more": has_more}


def _model_info(model_id: str, display_name: str, profile: Any = None) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model_id,
        "display_name": display_name,
        "created_at": _CREATED_AT,
        "lifecycle": "active",
        "max_input_tokens": getattr(profile, "context_length", None),
        "max_tokens": getattr(profile, "max_output", None),
    }
