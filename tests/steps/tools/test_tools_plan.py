"""tools.detect's configuration is checked when the pipeline loads, not when a request arrives."""

from __future__ import annotations

from engine.check import check
from engine.loader import load_text


def check_errors(agent_tools: str) -> list[str]:
    """The located errors of a one-step pipeline that runs tools.detect with `agent_tools`."""
    yaml_text = (
        "name: agent\n"
        "steps:\n"
        "  detect:\n"
        "    uses: tools.detect\n"
        "    with:\n"
        "      body: ${{ input }}\n"
        f"      agent_tools: {agent_tools}\n"
        "output: ${{ steps.detect }}\n"
    )
    _, errors = check([load_text(yaml_text, "agent.yaml")])
    return [str(e) for e in errors]


def test_unknown_agent_tool_is_a_located_load_error() -> None:
    errors = check_errors("[Read, Reed]")
    assert len(errors) == 1
    assert errors[0].startswith("agent.yaml:7:20: step 'detect': 'agent_tools'")
    assert "got ['Read', 'Reed']" in errors[0] and "input should be 'Read', 'Write'" in errors[0]


def test_known_agent_tools_load() -> None:
    assert check_errors("[Read, Write, Bash, TodoWrite]") == []
