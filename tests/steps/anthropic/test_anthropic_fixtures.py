"""Real Claude Code request bodies, every recorded release, pass parse → clean → validate (tests/fixtures/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.types import Request
from steps.anthropic.clean import clean
from steps.anthropic.parse import parse
from steps.anthropic.tokens import count_tokens, estimate_tokens
from steps.anthropic.validate import validate, validate_count_tokens
from tests.fixtures import CLAUDE_CODE_RELEASES

NOT_BODIES = {"requests_meta.json", "sequences.json"}
BODIES = [p for folder in CLAUDE_CODE_RELEASES.values() for p in sorted(folder.glob("*.json")) if p.name not in NOT_BODIES]


def _run(path: Path) -> dict:
    request = Request(
        method="POST", path="/v1/messages", headers={"content-type": "application/json"}, query={"beta": "true"}, body=path.read_bytes()
    )
    body = clean(body=parse(request=request))
    checker = validate_count_tokens if path.name == "count_tokens.json" else validate
    return checker(body=body)


def test_fixtures_are_present():
    """The fixture directory holds the request bodies the other tests use."""
    assert len(BODIES) >= 8 * len(CLAUDE_CODE_RELEASES)


@pytest.mark.parametrize("path", BODIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fixture_passes_parse_clean_validate(path):
    """Each captured Claude Code body is accepted by parse, clean and validate."""
    assert _run(path)["messages"]


@pytest.mark.parametrize("path", BODIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fixture_has_no_system_role_after_clean(path):
    """After clean no `role: system` message is left inside messages."""
    assert all(m["role"] in ("user", "assistant") for m in _run(path)["messages"])


@pytest.mark.parametrize("path", BODIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fixture_has_no_blank_text_after_clean(path):
    """After clean no empty or whitespace-only text block or string content is left."""
    body = _run(path)
    for m in body["messages"]:
        content = m["content"]
        if isinstance(content, str):
            assert content.strip()
            continue
        for block in content:
            if block["type"] == "text":
                assert block["text"].strip()


@pytest.mark.parametrize("path", BODIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fixture_roles_alternate_after_clean(path):
    """After clean no two consecutive messages share a role."""
    roles = [m["role"] for m in _run(path)["messages"]]
    assert all(a != b for a, b in zip(roles, roles[1:]))


@pytest.mark.parametrize("folder", list(CLAUDE_CODE_RELEASES.values()), ids=list(CLAUDE_CODE_RELEASES))
def test_system_message_content_lands_in_system(folder):
    """first_turn's in-messages system text (the environment) ends up in the top-level system."""
    body = _run(folder / "first_turn.json")
    assert len(body["system"]) == 4
    assert body["system"][3]["text"].startswith("# Environment")
    assert body["system"][3].get("cache_control") == {"type": "ephemeral"}


@pytest.mark.parametrize("folder", list(CLAUDE_CODE_RELEASES.values()), ids=list(CLAUDE_CODE_RELEASES))
def test_tool_result_turn_keeps_pairing(folder):
    """tool_result_turn.json keeps its tool_use / tool_result pair after clean."""
    body = _run(folder / "tool_result_turn.json")
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    tool_use = [b for b in body["messages"][1]["content"] if b["type"] == "tool_use"]
    assert body["messages"][2]["content"][0]["tool_use_id"] == tool_use[0]["id"]


@pytest.mark.parametrize("folder", list(CLAUDE_CODE_RELEASES.values()), ids=list(CLAUDE_CODE_RELEASES))
def test_small_model_call_loses_empty_tools(folder):
    """The title side call's `tools: []` is removed by clean."""
    assert "tools" not in _run(folder / "small_model_call.json")


@pytest.mark.parametrize("folder", list(CLAUDE_CODE_RELEASES.values()), ids=list(CLAUDE_CODE_RELEASES))
def test_count_tokens_fixture_estimate_is_plausible(folder):
    """count_tokens.json (11 tools, one short message) estimates to thousands of tokens, not zero."""
    n = count_tokens(body=_run(folder / "count_tokens.json"))["input_tokens"]
    assert 3_000 < n < 30_000


@pytest.mark.parametrize("folder", list(CLAUDE_CODE_RELEASES.values()), ids=list(CLAUDE_CODE_RELEASES))
def test_first_turn_estimate_is_plausible(folder):
    """first_turn.json (a ~50 kB body) estimates between 5k and 30k tokens."""
    assert 5_000 < estimate_tokens(_run(folder / "first_turn.json")) < 30_000
