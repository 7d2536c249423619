"""Tool schemas fitted to the provider (steps/convert/schema.py): `$ref` inlined where `$defs`
is refused, Gemini's nullable, OpenAI's object root (issue 16, item 7)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from steps.convert.schema import MAX_NODES, clean_schema, inline_refs

GEMINI_DROP = frozenset({"$schema", "$defs", "definitions", "additionalProperties", "const"})
NONE: frozenset[str] = frozenset()


def _walk(node: Any):
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _keys(node: Any) -> set[str]:
    return {k for n in _walk(node) if isinstance(n, dict) for k in n}


MCP_SCHEMA = {  # what pydantic writes for a nested model, as MCP servers send it
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "issue": {"$ref": "#/$defs/Issue", "description": "the issue to file"},
        "labels": {"type": "array", "items": {"$ref": "#/$defs/Label"}},
    },
    "required": ["issue"],
    "$defs": {
        "Issue": {"type": "object", "properties": {"title": {"type": "string"}, "label": {"$ref": "#/$defs/Label"}}, "required": ["title"]},
        "Label": {"type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": False},
    },
}


def test_refs_are_inlined_where_defs_are_refused() -> None:
    out = clean_schema(MCP_SCHEMA, GEMINI_DROP, None, "google")
    assert not _keys(out) & {"$ref", "$defs", "$schema", "additionalProperties"}
    issue = out["properties"]["issue"]
    assert issue["description"] == "the issue to file"  # the sibling keyword wins over the target's
    assert issue["properties"]["label"]["properties"]["name"] == {"type": "string"}
    assert out["properties"]["labels"]["items"]["properties"]["name"] == {"type": "string"}
    assert out["required"] == ["issue"]


def test_refs_are_kept_where_defs_are_taken() -> None:
    assert clean_schema(MCP_SCHEMA, NONE, None, "anthropic") is MCP_SCHEMA
    assert "$ref" in orjson.dumps(clean_schema(MCP_SCHEMA, frozenset({"$schema"}), None, "qwen")).decode()


def test_a_recursive_type_is_cut_where_it_recurs() -> None:
    tree = {
        "type": "object",
        "properties": {"root": {"$ref": "#/definitions/Node"}},
        "definitions": {"Node": {"type": "object", "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/definitions/Node"}}}}},
    }
    out = inline_refs(tree)
    node = out["properties"]["root"]
    assert node["properties"]["name"] == {"type": "string"}
    cut = node["properties"]["children"]["items"]
    assert cut["type"] == "string" and "Node" in cut["description"]
    assert "$ref" not in _keys(out)


def test_a_self_reference_to_the_root_is_cut() -> None:
    out = inline_refs({"type": "object", "properties": {"again": {"$ref": "#"}}})
    assert out["properties"]["again"]["type"] == "string"


def test_inlining_is_bounded() -> None:
    """Fan-out without a cycle (each level references the next twice) would double per level:
    the node budget cuts it."""
    defs = {f"L{i}": {"type": "object", "properties": {"a": {"$ref": f"#/$defs/L{i + 1}"}, "b": {"$ref": f"#/$defs/L{i + 1}"}}} for i in range(30)}
    defs["L30"] = {"type": "string"}
    out = inline_refs({"type": "object", "properties": {"x": {"$ref": "#/$defs/L0"}}, "$defs": defs})
    assert sum(1 for _ in _walk(out)) < 4 * MAX_NODES


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("#/$defs/a~1b", {"type": "integer"}), ("#/$defs/with%20space", {"type": "boolean"}), ("https://example.com/s.json", None)],
)
def test_json_pointers(ref: str, expected: dict | None) -> None:
    schema = {"type": "object", "properties": {"p": {"$ref": ref}}, "$defs": {"a/b": {"type": "integer"}, "with space": {"type": "boolean"}}}
    p = inline_refs(schema)["properties"]["p"]
    if expected is None:
        assert p["type"] == "string"  # a remote reference cannot be read: cut
    else:
        assert p == expected


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": ["string", "null"]}, {"type": "string", "nullable": True}),
        ({"type": ["integer", "string"]}, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        ({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}], "description": "when"},
         {"type": "string", "format": "date-time", "description": "when", "nullable": True}),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
         {"anyOf": [{"type": "string"}, {"type": "integer"}], "nullable": True}),
    ],
)
def test_gemini_nullable(schema: dict, expected: dict) -> None:
    out = clean_schema({"type": "object", "properties": {"p": schema}}, GEMINI_DROP, None, "google")
    assert out["properties"]["p"] == expected


def test_openai_object_root_from_a_union() -> None:
    schema = {
        "description": "Find a file",
        "anyOf": [
            {"type": "object", "properties": {"path": {"type": "string"}, "deep": {"type": "boolean"}}, "required": ["path"]},
            {"type": "object", "properties": {"glob": {"type": "string"}, "deep": {"type": "boolean"}}, "required": ["glob"]},
        ],
    }
    out = clean_schema(schema, NONE, None, "openai")
    assert out["type"] == "object" and not set(out) & {"anyOf", "oneOf", "allOf", "enum", "not"}
    assert set(out["properties"]) == {"path", "deep", "glob"}
    assert "required" not in out  # nothing is required by every branch
    assert out["description"].startswith("Find a file") and "{path} | {glob}" in out["description"]


def test_openai_object_root_from_all_of_and_one_of() -> None:
    schema = {
        "type": "object",
        "properties": {"id": {"type": "string"}},
        "required": ["id"],
        "allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]}],
        "oneOf": [{"properties": {"b": {"type": "string"}}, "required": ["b", "c"]}, {"properties": {"b": {"type": "string"}}, "required": ["b"]}],
    }
    out = clean_schema(schema, NONE, None, "openai")
    assert set(out["properties"]) == {"id", "a", "b"}
    assert out["required"] == ["id", "a", "b"]


def test_openai_object_root_leaves_objects_and_nested_unions_alone() -> None:
    schema = {"type": "object", "properties": {"v": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}}
    assert clean_schema(schema, NONE, None, "openai") is schema
    enum_root = clean_schema({"enum": ["a", "b"]}, NONE, None, "openai")
    assert enum_root == {"type": "object", "properties": {}}
