"""tools.detect's configuration is checked when the pipeline loads, not when a request arrives."""

from __future__ import annotations

import textwrap

from engine.check import check
from engine.loader import load_text


def check_errors(yaml_text: str) -> list[str]:
    _, errors = check([load_text(textwrap.dedent(yaml_text).lstrip("\n"), "agent.yaml")])
    return [str(e) for e in errors]


def test_unknown_agent_tool_is_a_located_load_error() -> None:
    errors = check_errors(
        """
        name: agent
        steps:
          detect:
            uses: tools.detect
            with:
              body: ${{ input }}
              agent_tools: [Read, Reed]
        output: ${{ steps.detect }}
        """
    )
    assert len(errors) == 1
    assert errors[0].startswith("agent.yaml:7:20: step 'detect': 'agent_tools'")
    assert "got ['Read', 'Reed']" in errors[0] and "input should be 'Read', 'Write'" in errors[0]


def test_known_agent_tools_load() -> None:
    assert check_errors(
        """
        name: agent
        steps:
          detect:
            uses: tools.detect
            with:
              body: ${{ input }}
              agent_tools: [Read, Write, Bash, TodoWrite]
        output: ${{ steps.detect }}
        """
    ) == []
