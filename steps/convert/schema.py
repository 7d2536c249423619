"""JSON Schema cleaning for providers that reject parts of it (PROTOCOL.md §5.2, §8.4).

Claude Code's tool schemas are JSON Schema 2020-12 (`$schema`, `additionalProperties`,
`propertyNames`, `exclusiveMinimum`, `const`, `format: "uri"`...). Gemini answers 400
`Invalid JSON payload received. Unknown name "$schema"` to those, so for profiles with a
`schema_drop` list the schemas are rebuilt without them. What a provider family needs beyond
dropping keywords (issue 16):

- `$ref`: a provider that rejects `$defs` / `definitions` (they are in its `schema_drop`) gets
  every local `$ref` replaced by the schema it points to, before those are dropped; otherwise
  MCP tool schemas (pydantic writes `$defs` for every nested model) would point at nothing. A
  reference back into its own expansion (a recursive type) is cut there, and so is anything
  past `MAX_REF_DEPTH` nested references or `MAX_NODES` nodes: the cut becomes a string that
  holds the value as JSON text, which every provider takes (Gemini refuses an object schema
  without properties).
- `google` (Gemini's OpenAPI subset): `type: [x, "null"]` and `anyOf: [X, {type: null}]` become
  `x` / `X` with `nullable: true`; a list of several types becomes an `anyOf` of them.
- `openai`: tool parameters must be an object at the top level, and `anyOf`, `oneOf`, `allOf`,
  `enum` and `not` are refused there. A top-level union of objects is flattened into one object
  with every branch's properties (required: what every branch requires) and a description of
  the alternatives, so the arguments keep the shape the client's tool expects and nothing has
  to be unwrapped on the way back.

The request is never touched: a cleaned schema is a new object. Results are memoised on the
schema's bytes, since Claude Code sends the same 12–24 tool schemas on every turn.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import orjson

# Keywords whose value is a schema, a list of schemas, or a map of name → schema.
_SUB_SCHEMA = frozenset({"items", "not", "additionalItems", "contains", "if", "then", "else", "additionalProperties"})
_SCHEMA_LISTS = frozenset({"anyOf", "allOf", "oneOf", "prefixItems"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_DEFS = frozenset({"$defs", "definitions"})
_ROOT_REFUSED = ("anyOf", "oneOf", "allOf", "enum", "not")

MAX_REF_DEPTH = 16
"""Nested `$ref` expansions along one path before the rest is cut."""
MAX_NODES = 10_000
"""Schema nodes one inlining may produce before further references are cut."""


def clean_schema(schema: Any, drop: frozenset[str], formats: frozenset[str] | None, family: str = "") -> Any:
    """A copy of `schema` fit for a provider: without the `drop` keywords, with only `formats`
    string formats, references inlined when `$defs` is dropped, and the `family`'s own rules.

    `const: v` becomes `enum: [v]` when `const` is dropped (the same constraint in words the
    provider takes); an `enum` of strings without `type` gets `type: "string"` (Gemini wants it).
    """
    if not drop and formats is None:
        if family == "openai":
            return _object_root(schema)  # the same object unless the root needs it: no key to build
        if family not in _FAMILY_RULES:
            return schema
    try:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _prepare(schema, drop, formats, family)
    return _clean_cached(key, drop, formats, family)


@lru_cache(maxsize=1024)
def _clean_cached(key: bytes, drop: frozenset[str], formats: frozenset[str] | None, family: str) -> Any:
    return _prepare(orjson.loads(key), drop, formats, family)


def _prepare(schema: Any, drop: frozenset[str], formats: frozenset[str] | None, family: str) -> Any:
    if drop & _DEFS and isinstance(schema, dict):
        schema = inline_refs(schema)
    if drop or formats is not None:
        schema = _clean(schema, drop, formats)
    rule = _FAMILY_RULES.get(family)
    return rule(schema) if rule is not None else schema


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


# -- $ref inlining ----------------------------------------------------------------------------


def inline_refs(root: dict) -> dict:
    """`root` with every local `$ref` (`#`, `#/$defs/X`, any JSON pointer into `root`) replaced
    by its target, sibling keywords kept over it; cycles and what is past the bounds are cut."""
    budget = [MAX_NODES]

    def resolve(ref: str) -> Any:
        if ref == "#":
            return root
        if not ref.startswith("#/"):
            return None  # a remote reference: nothing to read it from
        node: Any = root
        for raw in ref[2:].split("/"):
            part = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node

    def walk(node: Any, stack: tuple[str, ...]) -> Any:
        budget[0] -= 1
        if isinstance(node, list):
            return [walk(v, stack) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            target = resolve(ref)
            if not isinstance(target, dict) or ref in stack or len(stack) >= MAX_REF_DEPTH or budget[0] <= 0:
                return {**_cut(ref), **walk_keys(siblings, stack)}
            return {**walk(target, (*stack, ref)), **walk_keys(siblings, stack)}
        return walk_keys(node, stack)

    def walk_keys(node: dict, stack: tuple[str, ...]) -> dict:
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k in _DEFS or k == "$ref":
                continue  # definitions are read through references, not kept
            if k in _SCHEMA_MAPS and isinstance(v, dict):
                out[k] = {name: walk(sub, stack) for name, sub in v.items()}
            elif k in _SUB_SCHEMA or k in _SCHEMA_LISTS:
                out[k] = walk(v, stack)
            else:
                out[k] = v
        return out

    return walk(root, ("#",))  # the root is being expanded: a `#` inside it recurs


def _cut(ref: str) -> dict:
    name = "value of this schema" if ref == "#" else ref.rsplit("/", 1)[-1]
    return {"type": "string", "description": f"a {name} as JSON text (a recursive or too deep schema, not expanded here)"}


# -- family rules -----------------------------------------------------------------------------


def _nullable(node: Any) -> Any:
    """Gemini: type lists and null branches → one type with `nullable: true` (or an anyOf)."""
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in _SCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: _nullable(sub) for name, sub in v.items()}
        elif k in _SUB_SCHEMA or k in _SCHEMA_LISTS:
            out[k] = _nullable(v)
        else:
            out[k] = v
    kind = out.get("type")
    if isinstance(kind, list):
        types = [t for t in kind if t != "null"]
        if len(types) < len(kind):
            out["nullable"] = True
        if len(types) == 1:
            out["type"] = types[0]
        elif not types:
            del out["type"]
        else:
            del out["type"]
            out["anyOf"] = [{"type": t} for t in types]
    for key in ("anyOf", "oneOf"):
        branches = out.get(key)
        if isinstance(branches, list) and any(_is_null(b) for b in branches):
            rest = [b for b in branches if not _is_null(b)]
            out["nullable"] = True
            if len(rest) == 1 and isinstance(rest[0], dict):
                del out[key]
                out = {**rest[0], **out}
            else:
                out[key] = rest
    return out


def _is_null(branch: Any) -> bool:
    return isinstance(branch, dict) and branch.get("type") == "null" and len(branch) == 1


def _object_root(schema: Any) -> Any:
    """OpenAI: the parameters are one object; a top-level union becomes one object holding
    every branch's properties."""
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") == "object" and not any(k in schema for k in _ROOT_REFUSED):
        return schema
    out = {k: v for k, v in schema.items() if k not in _ROOT_REFUSED and k != "type"}
    props: dict[str, Any] = dict(schema.get("properties") or {}) if isinstance(schema.get("properties"), dict) else {}
    required: list[str] = list(schema.get("required") or ()) if isinstance(schema.get("required"), list) else []
    forms: list[str] = []
    for key in ("allOf", "anyOf", "oneOf"):
        branches = [_object_root(b) for b in schema.get(key) or () if isinstance(b, dict)]
        if not branches:
            continue
        sets = []
        for b in branches:
            for name, sub in (b.get("properties") or {}).items():
                props.setdefault(name, sub)
            sets.append([r for r in b.get("required") or () if isinstance(r, str)])
        if key == "allOf":
            shared = [r for rs in sets for r in rs]
        else:
            shared = [r for r in sets[0] if all(r in rs for rs in sets[1:])]
            if len(branches) > 1:
                forms += ["{" + ", ".join(b.get("required") or list(b.get("properties") or ())) + "}" for b in branches]
        required += [r for r in shared if r not in required]
    out["type"] = "object"
    out["properties"] = props
    if required:
        out["required"] = required
    if forms:
        note = "The arguments take one of these forms: " + " | ".join(forms) + "."
        out["description"] = f"{out['description']} {note}" if isinstance(out.get("description"), str) else note
    return out


_FAMILY_RULES = {"google": _nullable, "openai": _object_root}
