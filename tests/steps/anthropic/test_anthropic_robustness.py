"""Seeded random mutations of real bodies: parse → tool_changes → clean → validate → estimate only ever raise AnthropicError 4xx."""

from __future__ import annotations

import copy
import random

import orjson

from steps.anthropic.clean import clean
from steps.anthropic.errors import AnthropicError
from steps.anthropic.parse import parse_body
from steps.anthropic.tokens import estimate_tokens
from steps.anthropic.tool_changes import tool_changes
from steps.anthropic.validate import validate
from tests.fixtures import CLAUDE_CODE as FIXTURES

REPLACEMENTS = [None, 0, -1, 5, 1.5, True, "", " ", "x", "true", [], {}, [{}], [5], {"type": "foo"}, {"type": "text", "text": ""}, [[[]]],
                {"role": "system", "clear_at": "next_user_message"}, {"type": "tool_removal", "tool": {"type": "tool_reference", "name": "Bash"}},
                {"type": "compaction", "content": "s", "tool_changes": [5]}, {"type": "mcp_tool_result", "tool_use_id": 5}]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate(body: dict, rng: random.Random) -> dict:
    body = copy.deepcopy(body)
    paths = [p for p in _paths(body) if p and not (len(p) > 2 and p[0] == "tools" and "input_schema" in p)]
    path = rng.choice(paths)
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(REPLACEMENTS))
    return body


def test_mutated_bodies_only_raise_client_errors():
    """300 single-field mutations of Claude Code bodies end in success or a 4xx AnthropicError, never another exception."""
    rng = random.Random(20261125)
    bases = [orjson.loads((FIXTURES / name).read_bytes()) for name in ("tool_result_turn.json", "thinking_tool_result_turn.json", "small_model_call.json")]
    outcomes = {"ok": 0, "400": 0}
    for i in range(300):
        mutated = _mutate(bases[i % len(bases)], rng)
        try:
            body = validate(body=clean(body=tool_changes(body=parse_body(orjson.dumps(mutated)))))
            estimate_tokens(body)
            outcomes["ok"] += 1
        except AnthropicError as exc:
            assert 400 <= exc.status < 500, exc
            assert exc.message
            outcomes["400"] += 1
    assert outcomes["ok"] and outcomes["400"]
