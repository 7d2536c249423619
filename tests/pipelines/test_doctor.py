"""`engine doctor` against the fake upstream on loopback (never the real one)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.pipelines.conftest import REPO
from tests.support.fake_openrouter import FakeOpenRouter
from tests.support.servers import free_port


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_", "ENGINE_", "ROUTER_")) and not k.endswith("_MODEL")}
    return subprocess.run([sys.executable, "-m", "engine", "doctor"], cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=60)


def test_doctor_all_good() -> None:
    """With a reachable upstream and a key it accepts, doctor passes and prints Claude Code's settings."""
    with FakeOpenRouter() as fake:
        fake.models = [{"id": m} for m in ("vendor/big", "vendor/small", "openai/gpt-4o-mini")]
        fake.models[0]["context_length"] = 131072
        r = doctor({"OPENROUTER_BASE_URL": fake.base_url, "OPENROUTER_API_KEY": "sk-or-test", "BIG_MODEL": "vendor/big", "SMALL_MODEL": "vendor/small"})
    assert r.returncode == 0, r.stdout + r.stderr
    # Claude Code would assume a 1M window for a model it does not know: doctor says what to set.
    assert "vendor/big has a 131072-token context window" in r.stdout and "export CLAUDE_CODE_MAX_CONTEXT_TOKENS=131072" in r.stdout
    assert f"upstream {fake.base_url} is reachable" in r.stdout
    assert "the upstream openrouter accepts its api_key" in r.stdout
    assert "vendor/big (" in r.stdout and "is listed by openrouter" in r.stdout
    assert "export ANTHROPIC_BASE_URL=http://127.0.0.1:8082" in r.stdout


def test_doctor_unreachable_upstream_fails_with_a_fix() -> None:
    """An unreachable upstream is a failure (exit 1) with what to check."""
    r = doctor({"OPENROUTER_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"})
    assert r.returncode == 1
    assert "is not reachable" in r.stdout and "OPENROUTER_BASE_URL" in r.stdout
    assert "OPENROUTER_API_KEY is not set" in r.stdout


def test_doctor_names_a_misspelt_model_with_the_closest_listed_ids() -> None:
    """A model id the provider does not list is a failure, with "did you mean" (issue 14 item 5)."""
    with FakeOpenRouter() as fake:
        fake.models = [{"id": m} for m in ("vendor/big", "vendor/small", "openai/gpt-4o-mini")]
        r = doctor({"OPENROUTER_BASE_URL": fake.base_url, "BIG_MODEL": "foo/not-a-model", "SMALL_MODEL": "vendor/smal"})
    assert r.returncode == 1
    assert "foo/not-a-model (" in r.stdout and "provider openrouter does not list model foo/not-a-model" in r.stdout
    assert "provider openrouter does not list model vendor/smal" in r.stdout and "did you mean vendor/small" in r.stdout
    assert "✓ BIG_MODEL = foo/not-a-model" not in r.stdout
