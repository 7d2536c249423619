"""Which upstream model serves a Claude model id, and which Claude-named ids we advertise.

Claude Code only ever asks for Claude ids (`claude-opus-5-5`, `claude-haiku-5-5`, dated ids
such as `claude-sonnet-4-5-20250929`) unless the user sets `ANTHROPIC_MODEL` to something
else, so the gateway maps families onto configured upstream models and lets explicit
`author/slug` ids through untouched (PROTOCOL.md §7.1, §8.1).
"""

from __future__ import annotations

from engine.registry import step
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


@step("openrouter.model_list", blocking=False)
def model_list(
    big_model: str,
    small_model: str,
    middle_model: str = "",
    aliases: dict | None = None,
    limit: int = 20,
) -> dict:
    """An Anthropic `GET /v1/models` page listing the Claude-named ids this gateway maps.

    Claude Code's gateway model discovery drops every id without "claude"/"anthropic", so
    we list the three tier ids plus the Claude-named alias keys (each display name says
    which upstream model answers), never the raw upstream ids.
    """
    targets = {"big": big_model, "middle": middle_model or big_model, "small": small_model or big_model}
    data: list[dict] = []
    seen: set[str] = set()
    for model_id, label, tier in _TIER_IDS:
        seen.add(model_id)
        data.append(_model_info(model_id, f"{label} ({targets[tier]})"))
    for alias, target in (aliases or {}).items():
        if alias in seen or "claude" not in alias.lower():
            continue
        seen.add(alias)
        data.append(_model_info(alias, f"{alias} ({target})"))
    limit = max(1, min(int(limit), 1000))
    page = data[:limit]
    return {
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(data) > limit,
    }


def _model_info(model_id: str, display_name: str) -> dict:
    return {"type": "model", "id": model_id, "display_name": display_name, "created_at": _CREATED_AT}
