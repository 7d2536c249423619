"""providers.yaml: loading, model references and dialects, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import TypeAdapter

from engine.errors import SpecErrors
from steps.providers.config import Providers, ProvidersFile, Target, load_providers
from steps.providers.dialects import DIALECTS

REPO = Path(__file__).resolve().parents[3]

THREE = """\
default: openrouter
providers:
  openrouter:
    base_url: ${OR_URL:-https://openrouter.ai/api/v1/}
    api_key: ${OR_KEY:-}
    forward_client_key: true
    dialect: openrouter
  local:
    base_url: http://127.0.0.1:11434/v1
    dialect: ollama
  deepseek:
    base_url: https://api.deepseek.com/v1
    api_key: ${DEEPSEEK_API_KEY}
    dialect: deepseek
"""


@pytest.fixture
def three(tmp_path: Path) -> Providers:
    path = tmp_path / "providers.yaml"
    path.write_text(THREE)
    return load_providers(path, {"DEEPSEEK_API_KEY": "sk-ds"})


def test_references_pick_a_declared_provider_else_the_default(three: Providers) -> None:
    assert three.resolve("local:qwen2.5-coder:7b") == Target("local", "qwen2.5-coder:7b", "local:qwen2.5-coder:7b")
    assert three.resolve("deepseek:deepseek-chat").provider == "deepseek"
    for ref in ("anthropic/claude-sonnet-4.5", "deepseek/deepseek-r1:free", "qwen2.5-coder:7b", "claude-opus-5-5"):
        assert three.resolve(ref) == Target("openrouter", ref, ref)
    assert three.shown(three.resolve("anthropic/claude-sonnet-4.5")) == "anthropic/claude-sonnet-4.5"
    assert three.shown(three.resolve("local:qwen2.5-coder:7b")) == "local:qwen2.5-coder:7b"


def test_environment_and_keys(three: Providers) -> None:
    openrouter, local, deepseek = (three.get(n) for n in ("openrouter", "local", "deepseek"))
    assert openrouter.base_url == "https://openrouter.ai/api/v1"  # trailing slash dropped
    assert openrouter.key_for("client-key") == "client-key" and local.key_for("client-key") == ""
    assert deepseek.key_for("client-key") == "sk-ds"


def test_a_missing_variable_and_an_undeclared_default_are_located(tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(THREE)
    with pytest.raises(SpecErrors) as info:
        load_providers(path, {})
    assert f"{path}:13:14: environment variable 'DEEPSEEK_API_KEY' is not set" in str(info.value)
    path.write_text(THREE.replace("default: openrouter", "default: nowhere"))
    with pytest.raises(SpecErrors) as info:
        load_providers(path, {"DEEPSEEK_API_KEY": "k"})
    assert "default provider 'nowhere' is not declared under providers (openrouter, local, deepseek)" in str(info.value)


def test_the_parameter_type_reads_the_file_beside_the_pipeline(tmp_path: Path) -> None:
    (tmp_path / "providers.yaml").write_text(THREE)
    loaded = TypeAdapter(ProvidersFile).validate_python("providers.yaml", context={"file": str(tmp_path / "turn.yaml"), "env": {"DEEPSEEK_API_KEY": "k"}})
    assert set(loaded.providers) == {"openrouter", "local", "deepseek"}


def test_the_shipped_file_keeps_todays_configuration() -> None:
    shipped = load_providers(REPO / "pipelines" / "providers.yaml", {"OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1"})
    (only,) = shipped.providers.values()
    assert (shipped.default, only.base_url, only.api_key, only.forward_client_key, only.dialect) == ("openrouter", "http://127.0.0.1:9/v1", "", True, "openrouter")
    assert only.headers["x-title"] == "engine gateway"


def test_dialects_adapt_the_payload() -> None:
    payload = {"model": "m", "max_tokens": 4096, "reasoning": {"max_tokens": 3000}, "messages": []}
    assert DIALECTS["openrouter"].adapt(payload) is payload
    assert DIALECTS["openai"].adapt(payload) == {"model": "m", "max_completion_tokens": 4096, "reasoning_effort": "medium", "messages": []}
    assert DIALECTS["deepseek"].adapt(payload) == {"model": "m", "max_tokens": 4096, "messages": []}
    assert DIALECTS["vllm"].adapt(payload)["chat_template_kwargs"] == {"enable_thinking": True}
    assert DIALECTS["ollama"].adapt({**payload, "reasoning": {"effort": "xhigh"}})["reasoning_effort"] == "high"
    plain = {"model": "m", "messages": []}
    assert DIALECTS["llamacpp"].adapt(plain) == {"model": "m", "messages": [], "chat_template_kwargs": {"enable_thinking": False}}
    assert "reasoning" in payload  # the caller's payload is never changed


def test_the_model_map_lets_provider_references_through(three: Providers) -> None:
    """A client's `NAME:MODEL` is an upstream model, even when its id says haiku or claude."""
    from steps.openrouter.model_map import model_map

    tiers = {"big_model": "anthropic/claude-sonnet-4.5", "small_model": "local:qwen2.5-coder:7b"}
    assert model_map("local:claude-haiku-distill", providers=three, **tiers) == "local:claude-haiku-distill"
    assert model_map("claude-haiku-5-5", providers=three, **tiers) == "local:qwen2.5-coder:7b"
    assert model_map("nowhere:claude-haiku", providers=three, **tiers) == "local:qwen2.5-coder:7b"  # not a provider
