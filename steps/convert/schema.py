"""JSON Schema cleaning for providers that reject parts of it (PROTOCOL.md §5.2, §8.4).

Claude Code's tool schemas are JSON Schema 2020-12 (`$schema`, `additionalProperties`,
`propertyNames`, `exclusiveMinimum`, `const`, `format: "uri"`...). Gemini answers 400
`Invalid JSON payload received. Unknown name "$schema"` to those, so for profiles with a
`schema_drop` list the schemas are rebuilt without them. The request is never touched: the
cleaned schema is a new object. Results are memoised on the schema's bytes, since Claude
Code sends the same 12–24 tool schemas on every turn.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

# Keywords whose value is a schema, a list of schemas, or a map of name → schema.
_SUB_SCHEMA = frozenset({"items", "not", "additionalItems", "contains", "if", "then", "else", "additionalProperties"})
_SCHEMA_LISTS = frozenset({"anyOf", "allOf", "oneOf", "prefixItems"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def clean_schema(schema: Any, drop: frozenset[str], formats: frozenset[str] | None) -> Any:
    """A copy of `schema` without the `drop` keywords and with only `formats` string formats.

    `const: v` becomes `enum: [v]` when `const` is dropped (the same constraint in words the
    provider takes); an `enum` of strings without `type` gets `type: "string"` (Gemini wants it).
    """
    if not drop and formats is None:
        return schema
    try:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _clean(schema, drop, formats)
    return _clean_cached(key, drop, formats)


@lru_cache(maxsize=1024)
def _clean_cached(key: bytes, drop: frozenset[str], formats: frozenset[str] | None) -> Any:
    return _clean(orjson.loads(key), drop, formats)


def _clean(node: Any, drop: frozenset[str], formats: frozenset[str] | None) -> Any:
    if isinstance(node, list):
        return [_clean(v, drop, formats) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in drop:
            if k == "const" and "enum" not in node:
                out["enum"] = [v]
            continue
        if k == "format" and formats is not None and (not isinstance(v, str) or v not in formats):
            continue
        if k in _SCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: _clean(sub, drop, formats) for name, sub in v.items()}
        elif k in _SUB_SCHEMA or k in _SCHEMA_LISTS:
            out[k] = _clean(v, drop, formats)
        else:
            out[k] = v
    enum = out.get("enum")
    if "type" not in out and isinstance(enum, list) and enum and all(isinstance(e, str) for e in enum):
        out["type"] = "string"
    if "required" in out and isinstance(out.get("properties"), dict) and isinstance(out["required"], list):
        # keep `required` consistent with what is left (a dropped $ref target, say)
        out["required"] = [r for r in out["required"] if r in out["properties"]]
    return out
