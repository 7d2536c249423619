"""Thinking ⇄ reasoning: the request mapping and the signature round trip (PROTOCOL.md §5.3, §7.7).

Anthropic clients echo every thinking block verbatim, signature included, and never look
inside the signature. So the signature we emit is an opaque gateway token that carries what
the upstream needs to see again on the next turn:

    gw1.<base64url(JSON {"v":1, "m": upstream model, "y": family, "f": first detail format,
                         "d": [reasoning_details as received, fragments merged],
                         "t": plain reasoning text when the upstream sent no details})>

On the way back a token restores `reasoning_details` on its assistant message (OpenRouter)
or `reasoning_content` (DeepSeek-style routers) — only when the target model is of the same
family; a foreign token, a real Anthropic signature or anything else is dropped (a provider
answers a signature it did not make with 400 `Invalid signature in thinking block`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

PREFIX = "gw1."
_EFFORT_ORDER = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
MIN_BUDGET = 1024


# -- request: Anthropic thinking → OpenRouter reasoning --------------------------------------


def thinking_requested(body: dict) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def reasoning_param(body: dict, max_tokens: int | None, efforts: tuple[str, ...]) -> dict | None:
    """OpenRouter `reasoning` for the request's `thinking` (§7.1), or None to omit it.

    `enabled{budget_tokens}` → `{max_tokens: budget}` kept ≥ 1024 and below `max_tokens`
    (after clamping); `adaptive` → `{effort: output_config.effort or "medium"}`, clamped to
    the efforts the model takes. `display: "omitted"` does not set `exclude`: the reasoning is
    needed for the round trip, the converter just leaves the text out.
    """
    thinking = body.get("thinking")
    if not isinstance(thinking, dict):
        return None
    kind = thinking.get("type")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            return {"effort": clamp_effort("medium", efforts)}
        if max_tokens is not None and budget >= max_tokens:
            budget = max_tokens - 1
        if budget < MIN_BUDGET:
            return {"effort": clamp_effort("low", efforts)}
        return {"max_tokens": budget}
    if kind == "adaptive":
        effort = (body.get("output_config") or {}).get("effort") or "medium"
        return {"effort": clamp_effort(str(effort), efforts)}
    return None


def clamp_effort(effort: str, efforts: tuple[str, ...]) -> str:
    """`effort` if the model takes it, else the nearest lower one it takes (else the lowest)."""
    if not efforts or effort in efforts:
        return effort
    rank = _EFFORT_ORDER.index(effort) if effort in _EFFORT_ORDER else 3
    for candidate in reversed(_EFFORT_ORDER[: rank + 1]):
        if candidate in efforts:
            return candidate
    return efforts[0]


# -- upstream → client: accumulate reasoning, make the token ----------------------------------


class Reasoning:
    """The reasoning of one upstream turn: text for the client, details for the token.

    Streamed `reasoning.text` / `reasoning.summary` fragments with the same index and format
    are merged into one detail (text concatenated, the late signature kept), so the token holds
    whole details as a non-streamed response would have them.
    """

    __slots__ = ("details", "texts", "plain")

    def __init__(self) -> None:
        self.details: list[dict] = []
        self.texts: list[str] = []  # what the client sees (from details, or plain reasoning)
        self.plain = False  # text came as `reasoning`/`reasoning_content` without details

    def add_details(self, details: Any) -> str:
        """Merge streamed details; returns their new visible text."""
        shown: list[str] = []
        for d in details if isinstance(details, list) else ():
            if not isinstance(d, dict):
                continue
            kind = d.get("type")
            key = "text" if kind == "reasoning.text" else "summary" if kind == "reasoning.summary" else None
            piece = d.get(key) if key else None
            last = self.details[-1] if self.details else None
            if (
                key
                and last is not None
                and last.get("type") == kind
                and last.get("index") == d.get("index")
                and last.get("format") == d.get("format")
                and not last.get("signature")
            ):
                if isinstance(piece, str) and piece:
                    last[key] = (last.get(key) or "") + piece
                if d.get("signature"):
                    last["signature"] = d["signature"]
                if d.get("id") and not last.get("id"):
                    last["id"] = d["id"]
            else:
                self.details.append(dict(d))
            if isinstance(piece, str) and piece:
                shown.append(piece)
        text = "".join(shown)
        if text:
            self.texts.append(text)
        return text

    def add_text(self, text: str) -> None:
        self.plain = True
        self.texts.append(text)

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def encrypted_only(self) -> bool:
        return bool(self.details) and not self.text and all(d.get("type") == "reasoning.encrypted" for d in self.details)

    def empty(self) -> bool:
        return not self.details and not self.texts

    def token(self, model: str, family: str) -> str:
        payload: dict[str, Any] = {"v": 1, "m": model, "y": family}
        if self.details:
            payload["f"] = next((d.get("format") for d in self.details if d.get("format")), "unknown")
            payload["d"] = self.details
        else:
            payload["f"] = "text"
            payload["t"] = self.text
        return PREFIX + base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def decode(token: Any) -> dict | None:
    """The payload of a gateway token, or None for anything else (foreign, damaged)."""
    if not isinstance(token, str) or not token.startswith(PREFIX):
        return None
    raw = token[len(PREFIX):]
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(payload, dict) or payload.get("v") != 1 or not isinstance(payload.get("y"), str):
        return None
    return payload


# -- client → upstream: restore reasoning on an assistant message -----------------------------


class Replay:
    """What one assistant turn's thinking blocks give back to the upstream of `family`."""

    __slots__ = ("family", "style", "details", "texts", "seen_ids", "found")

    def __init__(self, family: str, style: str) -> None:
        self.family = family
        self.style = style  # details | content | none
        self.details: list[dict] = []
        self.texts: list[str] = []
        self.seen_ids: set[str] = set()
        self.found = False

    def add(self, block: dict) -> None:
        """A thinking / redacted_thinking block from the history; foreign ones are dropped."""
        if self.style == "none":
            return
        payload = decode(block.get("signature") if block.get("type") == "thinking" else block.get("data"))
        if payload is None or payload["y"] != self.family:
            return
        self.found = True
        details = payload.get("d")
        if isinstance(details, list):
            self._details(details)
        text = payload.get("t")
        if isinstance(text, str):
            self.texts.append(text)
        elif block.get("type") == "thinking":
            self.texts.append(_details_text(details) or block.get("thinking") or "")

    def _details(self, details: list) -> None:
        for d in details:
            if not isinstance(d, dict):
                continue
            kind, fmt = d.get("type"), d.get("format")
            if kind == "reasoning.text":
                if fmt == "anthropic-claude-v1" and not d.get("signature"):
                    continue  # Anthropic rejects unsigned thinking
                if fmt == "google-gemini-v1":
                    continue  # Gemini wants only its encrypted part back
            did = d.get("id")
            if isinstance(did, str) and did:
                if did in self.seen_ids:
                    continue  # "Duplicate item found with id"
                self.seen_ids.add(did)
            self.details.append(d)

    def apply(self, message: dict, thinking_on: bool) -> None:
        if self.style == "details" and self.details:
            message["reasoning_details"] = self.details
        elif self.style == "content" and (self.found or thinking_on):
            # DeepSeek wants reasoning_content on every thinking-mode assistant turn, even "".
            message["reasoning_content"] = "".join(self.texts)


def _details_text(details: Any) -> str:
    out = []
    for d in details if isinstance(details, list) else ():
        if isinstance(d, dict):
            piece = d.get("text") if d.get("type") == "reasoning.text" else d.get("summary") if d.get("type") == "reasoning.summary" else None
            if isinstance(piece, str):
                out.append(piece)
    return "".join(out)
