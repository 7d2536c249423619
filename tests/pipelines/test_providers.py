"""Two providers at once: two fake upstreams on loopback declared in one providers.yaml.

The repo's pipelines, served under uvicorn, with `ENGINE_PROVIDERS` pointing at a file that
declares `main` (the default: the gateway fixture's fake) and `second` (another fake, its own
key, DeepSeek's dialect). Model references pick the provider; a fallback crosses providers;
the breaker is per provider and model; `engine check` and `engine doctor` see the same file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pipelines.conftest import REPO, Gateway
from tests.pipelines.faults import body, gateway_with, post
from tests.support.fake_openrouter import FakeOpenRouter

PROVIDERS = """\
default: main
providers:
  main:
    base_url: ${OPENROUTER_BASE_URL}
    api_key: ${OPENROUTER_API_KEY:-}
    forward_client_key: true
    dialect: openrouter
  second:
    base_url: ${SECOND_BASE_URL}
    api_key: sk-second-provider-key
    dialect: deepseek
"""
FAST = {"UPSTREAM_RETRY_BACKOFF": "0.05", "OPENROUTER_MODELS_FETCH": "false"}


@pytest.fixture(scope="module")
def second() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter() as fake:
        yield fake


@pytest.fixture(scope="module")
def providers_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("providers") / "providers.yaml"
    path.write_text(PROVIDERS)
    return path


def two(second: FakeOpenRouter, providers_file: Path, **env: str):  # noqa: ANN201
    second.clear()
    second.default_mode = "ok"
    second.model_modes = {}
    return gateway_with({**FAST, "ENGINE_PROVIDERS": str(providers_file), "SECOND_BASE_URL": second.base_url, **env})


def models(fake: FakeOpenRouter) -> list[str]:
    return [q.json["model"] for q in fake.requests]


def test_a_provider_prefix_routes_to_that_provider(second: FakeOpenRouter, providers_file: Path) -> None:
    """BIG_MODEL=second:deepseek-chat sends opus-class turns to the second upstream (its own key,
    the bare model id, its dialect: no OpenRouter `reasoning` object); haiku-class turns stay on
    the default provider; a client may name `second:...` itself."""
    with two(second, providers_file, BIG_MODEL="second:deepseek-chat") as g:
        r = post(g, body(thinking={"type": "enabled", "budget_tokens": 2048}, max_tokens=4096))
        assert r.status_code == 200, r.text
        assert r.headers["x-upstream-model"] == "second:deepseek-chat"
        (sent,) = second.requests
        assert sent.json["model"] == "deepseek-chat" and "reasoning" not in sent.json
        assert sent.headers["authorization"] == "Bearer sk-second-provider-key"
        assert post(g, body(model="claude-haiku-5-5")).headers["x-upstream-model"] == "test/small"
        assert models(g.fake) == ["test/small"]
        assert g.fake.requests[0].headers["authorization"] == "Bearer sk-ant-test-client-key"  # forwarded
        r = post(g, body(model="second:other-model", stream=True))
        assert r.status_code == 200 and r.headers["x-upstream-model"] == "second:other-model"
        assert models(second) == ["deepseek-chat", "other-model"]


def test_a_fallback_crosses_providers(second: FakeOpenRouter, providers_file: Path) -> None:
    """The default provider's model fails before anything reached the client: the fallback on
    the other provider answers, JSON and stream alike."""
    with two(second, providers_file, ROUTER_FALLBACK_MODELS="second:backup") as g:
        g.fake.model_modes = {"test/big": "503"}
        for stream in (False, True):
            r = post(g, body(stream=stream))
            assert r.status_code == 200 and r.headers["x-upstream-model"] == "second:backup", r.text
        assert models(g.fake) == ["test/big", "test/big"]
        assert models(second) == ["backup", "backup"]
        g.fake.model_modes = {}


def test_the_breaker_opens_for_one_provider_and_leaves_the_other(second: FakeOpenRouter, providers_file: Path) -> None:
    """The same model id on two providers has two breakers: three rate limits open `main`'s,
    requests then go straight to `second`'s, and `main`'s other models are untouched."""
    env = {"UPSTREAM_COOLDOWN": "30", "UPSTREAM_COOLDOWN_FAILURES": "3", "ROUTER_FALLBACK_MODELS": "second:test/big", "OPENROUTER_API_KEY": "sk-or-server-key"}
    with two(second, providers_file, **env) as g:
        g.fake.model_modes = {"test/big": "429"}
        for _ in range(3):
            assert post(g, body()).headers["x-upstream-model"] == "second:test/big"
        g.fake.model_modes = {}
        g.fake.clear()
        second.clear()
        for stream in (False, True):
            assert post(g, body(stream=stream)).headers["x-upstream-model"] == "second:test/big"
        assert models(g.fake) == [] and models(second) == ["test/big", "test/big"]
        assert post(g, body(model="claude-haiku-5-5")).headers["x-upstream-model"] == "test/small"
        assert models(g.fake) == ["test/small"]


def test_the_web_search_rule_sees_the_web_search_tool(second: FakeOpenRouter, providers_file: Path) -> None:
    """ROUTER_WEB_SEARCH_MODEL applies to a request carrying Anthropic's web search tool, although
    tools.detect declares it as a gateway-run function before routing looks."""
    with two(second, providers_file, ROUTER_WEB_SEARCH_MODEL="second:searcher") as g:
        tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]
        r = post(g, body(tools=tools))
        assert r.status_code == 200 and r.headers["x-upstream-model"] == "second:searcher", r.text
        assert models(second) == ["searcher"]
        assert post(g, body()).headers["x-upstream-model"] == "test/big"  # no tool: no rule


def engine_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_", "ENGINE_", "ROUTER_")) and k not in ("BIG_MODEL", "SMALL_MODEL", "MIDDLE_MODEL")}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_doctor_checks_every_model_against_its_providers_listing(second: FakeOpenRouter, providers_file: Path) -> None:
    """`engine doctor --providers FILE`: both upstreams reachable, both keys checked, each
    configured model looked up in its own provider's listing, a misspelt one with a suggestion."""
    with FakeOpenRouter() as main:
        main.models = [{"id": "vendor/big-model"}, {"id": "vendor/small-model"}]
        second.models = [{"id": "deepseek-chat"}, {"id": "deepseek-reasoner"}]
        env = {
            "OPENROUTER_BASE_URL": main.base_url, "OPENROUTER_API_KEY": "sk-or-test", "SECOND_BASE_URL": second.base_url,
            "BIG_MODEL": "vendor/big-modle", "SMALL_MODEL": "vendor/small-model", "ROUTER_FALLBACK_MODELS": "second:deepseek-chat",
            "WEB_SEARCH_MODEL": "vendor/small-model",
        }
        r = engine_cli("doctor", "--providers", str(providers_file), env=env)
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert f"upstream {main.base_url} is reachable (2 models listed)" in out
    assert f"upstream {second.base_url} is reachable (2 models listed)" in out
    assert "the upstream main accepts its api_key" in out and "the upstream second accepts its api_key" in out
    assert "provider main does not list model vendor/big-modle" in out and "did you mean vendor/big-model" in out
    assert "✓ vendor/small-model (" in out and ") is listed by main" in out
    assert "✓ second:deepseek-chat (turn.yaml route.rules.fallback.0) is listed by second" in out


def test_a_broken_providers_file_is_reported_located(tmp_path: Path) -> None:
    """`engine check` reads providers.yaml with the pipelines: each mistake names file:line:col."""
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    for f in (REPO / "pipelines").glob("*.yaml"):
        (pipelines / f.name).write_text(f.read_text())
    (pipelines / "providers.yaml").write_text(
        "default: main\nproviders:\n  main:\n    base_url: ftp://nowhere\n    dialect: olama\n    api_kye: x\n"
    )
    r = engine_cli("check", str(pipelines), env={})
    assert r.returncode == 1
    path = pipelines / "providers.yaml"
    assert f"{path}:4:15: 'providers.main.base_url': must start with http:// or https://" in r.stdout + r.stderr
    assert f"{path}:5:14: 'providers.main.dialect': unknown dialect 'olama'; did you mean 'ollama'?" in r.stdout + r.stderr
    assert f"{path}:6:5: unknown field 'api_kye' in providers.main; did you mean 'api_key'?" in r.stdout + r.stderr
    assert (r.stdout + r.stderr).count("unknown dialect") == 1  # three pipelines read the file: reported once


def test_gateway_module_gateway_still_serves_from_the_shipped_file(gateway: Gateway) -> None:
    """Today's configuration (OPENROUTER_BASE_URL, no providers file of one's own) keeps working."""
    r = post(gateway, body())
    assert r.status_code == 200 and r.headers["x-upstream-model"] == "test/big"
