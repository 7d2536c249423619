"""Routing rules: which upstream models serve a request, in the order to try them.

Like claude-code-router's `Router` section: a request can go to a different model when it is
background work (a haiku-class id), asks for thinking, carries a long context, a web search
server tool or images, and a list of fallback models is tried in order when the chosen one
fails before anything reached the client (openrouter.call does the trying). The rules live in
the pipeline YAML under the step's `with: rules:` and are validated when the file loads.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.registry import step
from engine.types import Reply
from steps.providers.config import Providers

UPSTREAM_MODEL_HEADER = "x-upstream-model"


class RoutingRules(BaseModel):
    """Scenario → upstream model; empty strings (unset environment variables) mean "no rule"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str | None = None
    background: str | None = None
    think: str | None = None
    long_context: str | None = None
    long_context_threshold: int = Field(default=60000, ge=1)
    web_search: str | None = None
    image: str | None = None
    background_match: list[str] = Field(default_factory=lambda: ["haiku"])
    fallback: list[str] = Field(default_factory=list)

    @field_validator("default", "background", "think", "long_context", "web_search", "image", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("fallback", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):  # from an environment variable: "a/b, c/d"
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


def _has_image(body: dict) -> bool:
    """Images in the latest user turn (tool results included): what the next answer must see."""
    messages = body.get("messages") or ()
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            return False
        for block in content:
            kind = block.get("type")
            if kind == "image":
                return True
            if kind == "tool_result" and isinstance(block.get("content"), list):
                if any(isinstance(b, dict) and b.get("type") == "image" for b in block["content"]):
                    return True
        return False
    return False


def _has_web_search(body: dict) -> bool:
    """Anthropic's web search server tool, as the client sent it or as tools.detect declared it
    for the gateway to run (a function the detector marks with `server_tool`)."""
    for tool in body.get("tools") or ():
        if str(tool.get("type") or "").startswith("web_search") or tool.get("server_tool") == "web_search":
            return True
    return False


def _thinks(body: dict) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def choose(body: dict, model: str, input_tokens: int, rules: RoutingRules, providers: Providers | None = None) -> tuple[str, str]:
    """(scenario, upstream model) for a request; `model` is what openrouter.model_map chose."""
    requested = str(body.get("model") or "")
    if rules.long_context and input_tokens > rules.long_context_threshold:
        return "long_context", rules.long_context
    prefix, sep, _ = requested.partition(":")
    if "/" in requested or (sep and providers is not None and prefix in providers.providers):
        return "explicit", model  # an upstream id the client chose: only long context overrides it
    lowered = requested.lower()
    if rules.background and any(m in lowered for m in rules.background_match):
        return "background", rules.background
    if rules.web_search and _has_web_search(body):
        return "web_search", rules.web_search
    if rules.image and _has_image(body):
        return "image", rules.image
    if rules.think and _thinks(body):
        return "think", rules.think
    return "default", rules.default or model


@step("openrouter.route", blocking=False)
def route(
    body: dict,
    model: str,
    input_tokens: int = 0,
    rules: RoutingRules | None = None,
    providers: Providers | None = None,
    asked_fallbacks: list[str] | None = None,
) -> dict:
    """Pick the upstream model by routing rules: `{model, fallbacks, models, candidates, scenario}`.

    Scenarios, first match wins: `long_context` (input estimate over `long_context_threshold`),
    then, for Claude-named ids only (an explicit `author/slug` id is the client's choice),
    `background` (ids containing a `background_match` word, haiku by default), `web_search` (a
    web_search server tool), `image` (images in the latest user turn), `think` (thinking
    enabled or adaptive), else `default` (or the model map's pick). The request's own
    `fallbacks` (`asked_fallbacks`, already mapped) follow, then the rules' `fallback` models,
    without repeats; they are tried in order before the first byte is sent.

    Every model here is a reference (`NAME:MODEL` for a provider declared in `providers`,
    else a model of the default provider), so a fallback may be on another provider.
    `candidates` is the ordered list resolved: `{provider, model, ref}` each; `model`,
    `fallbacks` and `models` are the model ids the providers know (what the payloads carry).
    """
    rules = rules or RoutingRules()
    scenario, chosen = choose(body, model, input_tokens, rules, providers)
    refs = [chosen]
    for candidate in [*(asked_fallbacks or ()), *rules.fallback]:
        if candidate not in refs:
            refs.append(candidate)
    if providers is None:
        candidates = [{"provider": None, "model": r, "ref": r} for r in refs]
    else:
        candidates = [{"provider": t.provider, "model": t.model, "ref": t.ref} for t in map(providers.resolve, refs)]
    models = [c["model"] for c in candidates]
    return {"model": models[0], "fallbacks": models[1:], "models": models, "candidates": candidates, "scenario": scenario}


@step("openrouter.upstream_header", blocking=False)
def upstream_header(reply: Reply, model: str | None = None) -> Reply:
    """Add `x-upstream-model` (`model`: the model that actually answered, openrouter.call's fact) to a reply.

    The Message's `model` echoes the id the client asked for (PROTOCOL §7.3, §9.10: Claude Code
    keys context-window and cost logic on it), so the upstream id travels in this header and in
    the access log's `model` field instead.
    """
    answered = model
    if not isinstance(answered, str) or not answered:
        return reply
    return replace(reply, headers={**reply.headers, UPSTREAM_MODEL_HEADER: answered})
