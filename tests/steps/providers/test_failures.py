"""Each server's error body, sent by a real (fake) upstream on loopback, through the real call
step, classified once and rendered the way an Anthropic client (and Claude Code) reads it."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import anyio
import orjson
import pytest

from engine.run import Resources, RunContext
from engine.types import Request
from steps.anthropic.errors import classify as render
from steps.openrouter.errors import UpstreamError
from steps.openrouter.upstream import call
from steps.providers.config import Provider, Providers
from steps.providers.failures import classify
from tests.support.fake_openrouter import FakeOpenRouter


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter() as f:
        yield f


class _Engine:
    """What a run context needs of an engine here: shared resources (and to be weakly referenced)."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources


def _error(fake: FakeOpenRouter, dialect: str, status: int, body: dict, profiles: dict | None = None, input_tokens: int = 0) -> UpstreamError:
    fake.script(f"raw;status={status};body={quote(orjson.dumps(body).decode())}")
    providers = Providers("p", {"p": Provider("p", fake.base_url, "sk-test-key-123", dialect=dialect)})

    async def go() -> UpstreamError:
        resources = Resources()
        ctx = RunContext(request_id="req_test", pipeline="test", engine=_Engine(resources))  # type: ignore[arg-type]
        try:
            with pytest.raises(UpstreamError) as info:
                await call({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}, Request("POST", "/v1/messages", {}, {}), ctx,
                           providers=providers, profiles=profiles, input_tokens=input_tokens)
            return info.value
        finally:
            await resources.aclose()

    return anyio.run(go)


# (dialect declared, status, body as that server sends it, Anthropic status, type, message)
BODIES = [
    pytest.param("llamacpp", 400,
                 {"error": {"code": 400, "message": "request (4476 tokens) exceeds the available context size (4096 tokens)",
                            "type": "exceed_context_size_error", "n_prompt_tokens": 4476, "n_ctx": 4096}},
                 400, "invalid_request_error", "prompt is too long: 4476 tokens > 4096 maximum", id="llamacpp-context"),
    pytest.param("openai", 400,  # declared wrong: the shape names itself
                 {"error": {"code": 400, "message": "request (9000 tokens) exceeds the available context size (8192 tokens)",
                            "type": "exceed_context_size_error", "n_prompt_tokens": 9000, "n_ctx": 8192}},
                 400, "invalid_request_error", "prompt is too long: 9000 tokens > 8192 maximum", id="llamacpp-shape-any-dialect"),
    pytest.param("vllm", 400,
                 {"object": "error", "message": "This model's maximum context length is 32768 tokens. However, you requested 40000 tokens "
                  "(39000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.",
                  "type": "BadRequestError", "param": None, "code": 400},
                 400, "invalid_request_error", "prompt is too long: 39000 tokens > 32768 maximum", id="vllm-flat-context"),
    pytest.param("vllm", 400,
                 {"error": {"message": "This model's maximum context length is 32768 tokens. However, your request has 40000 input tokens. "
                            "Please reduce the length of the input messages.", "type": "BadRequestError", "param": None, "code": 400}},
                 400, "invalid_request_error", "prompt is too long: 40000 tokens > 32768 maximum", id="vllm-input-tokens"),
    pytest.param("vllm", 400,
                 {"error": {"message": "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length is "
                            "4096 tokens and your request has 2778 input tokens (8000 > 4096 - 2778).", "type": "BadRequestError", "code": 400}},
                 400, "invalid_request_error",
                 "input length and `max_tokens` exceed context limit: 2778 + 8000 > 4096, decrease input length or `max_tokens` and try again",
                 id="vllm-max-tokens"),
    pytest.param("deepseek", 400,
                 {"error": {"message": "This model's maximum context length is 65536 tokens. However, you requested 70000 tokens "
                            "(62000 in the messages, 8000 in the completion). Please reduce the length of the messages or completion.",
                            "type": "invalid_request_error", "param": None, "code": "invalid_request_error"}},
                 400, "invalid_request_error",
                 "input length and `max_tokens` exceed context limit: 62000 + 8000 > 65536, decrease input length or `max_tokens` and try again",
                 id="deepseek-context"),
    pytest.param("openai", 400,
                 {"error": {"message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. "
                            "Please reduce the length of the messages.", "type": "invalid_request_error", "param": "messages",
                            "code": "context_length_exceeded"}},
                 400, "invalid_request_error", "prompt is too long: 130000 tokens > 128000 maximum", id="openai-context"),
    pytest.param("openai", 429,
                 {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                            "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}},
                 402, "billing_error", "You exceeded your current quota, please check your plan and billing details.", id="openai-quota"),
    pytest.param("deepseek", 402, {"error": {"message": "Insufficient Balance", "type": "unknown_error", "param": None, "code": "invalid_request_error"}},
                 402, "billing_error", "Insufficient Balance", id="deepseek-balance"),
    pytest.param("llamacpp", 503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
                 529, "overloaded_error", "Overloaded", id="llamacpp-loading"),
    pytest.param("ollama", 404, {"error": {"message": "model \"qwen3:8b\" not found, try pulling it first", "type": "api_error", "param": None, "code": None}},
                 404, "not_found_error", "model \"qwen3:8b\" not found, try pulling it first", id="ollama-not-found"),
    pytest.param("ollama", 500, {"error": "llama runner process has terminated: exit status 2"},
                 500, "api_error", "Internal server error", id="ollama-native-500"),
]


@pytest.mark.parametrize(("dialect", "status", "body", "want_status", "want_type", "want_message"), BODIES)
def test_each_servers_error_body(fake: FakeOpenRouter, dialect: str, status: int, body: dict, want_status: int, want_type: str, want_message: str) -> None:
    exc = _error(fake, dialect, status, body)
    got_status, got_type, got_message, _ = render(exc)
    assert (got_status, got_type, got_message) == (want_status, want_type, want_message)


def test_ollama_context_error_gets_its_numbers_from_the_profile(fake: FakeOpenRouter) -> None:
    """Ollama says only that the input does not fit: the window comes from the model's profile
    and the prompt's size from the request's estimate, so Claude Code can still compact."""
    from steps.openrouter.profiles import Profile

    body = {"error": {"message": "the input length exceeds the context length", "type": "api_error", "param": None, "code": None}}
    exc = _error(fake, "ollama", 400, body, profiles={"m": Profile("m", "m", context_length=8192)}, input_tokens=9100)
    status, etype, message, _ = render(exc)
    assert (status, etype) == (400, "invalid_request_error")
    assert message.startswith("prompt is too long: ") and message.endswith(" tokens > 8192 maximum")
    assert exc.failure.falls_back and not exc.failure.about_model


@pytest.mark.parametrize(
    ("status", "kind", "category", "retryable", "falls_back", "about_model"),
    [
        (400, "status", "invalid_request", False, False, False),
        (401, "status", "authentication", False, False, False),
        (402, "status", "billing", False, False, False),
        (403, "status", "permission", False, False, False),
        (413, "status", "too_large", False, False, False),
        (404, "status", "not_found", False, True, False),
        (408, "status", "timeout", True, True, True),
        (429, "status", "rate_limited", True, True, True),
        (500, "status", "server", True, True, True),
        (501, "status", "bad_gateway", False, True, True),
        (503, "status", "overloaded", True, True, True),
        (None, "connect", "unreachable", True, True, True),
        (None, "protocol", "protocol", False, True, True),
    ],
)
def test_the_one_table(status, kind, category, retryable, falls_back, about_model) -> None:  # noqa: ANN001
    """What each failure means for the retry, the candidates and the breaker, in one place:
    the breaker is never tripped by a failure that says nothing about the model."""
    f = classify(status=status, kind=kind)
    assert (f.category, f.retryable, f.falls_back, f.about_model) == (category, retryable, falls_back, about_model)
