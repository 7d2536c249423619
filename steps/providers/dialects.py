"""Dialects: what differs between OpenAI-compatible servers, as data a provider declares.

The gateway converts an Anthropic request into one OpenAI chat-completions payload in
OpenRouter's shape (steps/convert/request.py). A provider's `dialect` says how that payload
differs for its server and what the server's answers look like:

| dialect    | asks for reasoning with                          | sends reasoning back as | cache_control | key check  |
| ---------- | ------------------------------------------------ | ----------------------- | ------------- | ---------- |
| openrouter | `reasoning: {effort \\| max_tokens}`              | `reasoning_details`     | per model     | GET /key   |
| openai     | `reasoning_effort`; `max_completion_tokens`      | nothing                 | no            | GET /models|
| deepseek   | nothing (deepseek-reasoner always reasons)       | `reasoning_content`     | no            | GET /models|
| vllm       | `reasoning_effort` + `chat_template_kwargs`      | `reasoning_content`     | no            | GET /models|
| ollama     | `reasoning_effort`                               | nothing                 | no            | GET /models|
| llamacpp   | `chat_template_kwargs.enable_thinking`           | `reasoning_content`     | no            | GET /models|

Sources: OpenRouter's reasoning-tokens guide; OpenAI's chat API reference (reasoning_effort,
max_completion_tokens); DeepSeek's thinking-mode guide (reasoning_content; with tool calls the
current turn's reasoning goes back, and the converter restores it only within one family);
vLLM's reasoning-outputs docs (reasoning_content; chat_template_kwargs.enable_thinking for
Qwen3-style templates); Ollama's OpenAI-compatibility page (reasoning_effort); llama.cpp's
tools/server README (reasoning_format, chat_template_kwargs).

What is not here on purpose: answers and errors. Reasoning arrives as `reasoning`,
`reasoning_details` or `reasoning_content`, usage with OpenAI's `prompt_tokens_details` or
DeepSeek's `prompt_cache_hit_tokens`, listings with OpenRouter's `context_length` or vLLM's
`max_model_len`, errors in each server's body (steps/providers/failures.py): each of those
shapes names itself, so it is read whatever dialect a provider declares, and a misdeclared
dialect never hides a field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DIALECTS", "Dialect"]

_EFFORTS = ("minimal", "low", "medium", "high")


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one kind of server takes a chat-completions request (see the module table)."""

    name: str
    reasoning: str  # object | effort | effort+template | template | none: how thinking is asked for
    reasoning_back: str  # details | content | none: Profile.reasoning for this server's models
    cache_control: bool  # part-level cache_control may be sent (the model profile decides)
    max_tokens_field: str = "max_tokens"
    key_check: str = "/models"  # GET path that tells whether a key is accepted

    def adapt(self, payload: dict) -> dict:
        """The payload as this server takes it (OpenRouter's shape goes through untouched)."""
        if self.name == "openrouter":
            return payload
        out = dict(payload)
        reasoning = out.pop("reasoning", None)
        thinking = isinstance(reasoning, dict) and not reasoning.get("exclude", False) and reasoning.get("enabled", True) is not False
        if self.reasoning in ("effort", "effort+template") and thinking:
            out["reasoning_effort"] = _effort(reasoning)
        if self.reasoning in ("template", "effort+template"):
            kwargs = dict(out.get("chat_template_kwargs") or {})
            kwargs.setdefault("enable_thinking", bool(thinking))
            out["chat_template_kwargs"] = kwargs
        if self.max_tokens_field != "max_tokens" and "max_tokens" in out:
            out[self.max_tokens_field] = out.pop("max_tokens")
        return out


def _effort(reasoning: dict[str, Any]) -> str:
    """OpenRouter's `reasoning` as one `reasoning_effort` word: an effort as is (clamped to what
    OpenAI-style servers take), a token budget by its size."""
    effort = reasoning.get("effort")
    if isinstance(effort, str):
        return effort if effort in _EFFORTS else ("high" if effort in ("xhigh", "max") else "medium")
    budget = reasoning.get("max_tokens")
    if isinstance(budget, int) and not isinstance(budget, bool):
        return "low" if budget <= 2048 else "medium" if budget <= 8192 else "high"
    return "medium"


DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        Dialect("openrouter", reasoning="object", reasoning_back="details", cache_control=True, key_check="/key"),
        Dialect("openai", reasoning="effort", reasoning_back="none", cache_control=False, max_tokens_field="max_completion_tokens"),
        Dialect("deepseek", reasoning="none", reasoning_back="content", cache_control=False),
        Dialect("vllm", reasoning="effort+template", reasoning_back="content", cache_control=False),
        Dialect("ollama", reasoning="effort", reasoning_back="none", cache_control=False),
        Dialect("llamacpp", reasoning="template", reasoning_back="content", cache_control=False),
    )
}
