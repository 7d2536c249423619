"""Minimal request values built from the installed `anthropic` SDK's own type definitions.

The compatibility tests iterate what the SDK defines, not a list written here: raising the SDK
pin in the dev group brings every new content block, tool type and request field into them,
and a type the gateway refuses shows up as a failing test named after it.

`minimal(tp)` fills the required keys of a TypedDict (or the required fields of a response
model, which the beta content union also accepts) by their declared types: the first literal,
the first member of a union, one item for an iterable. `variants(tp)` adds one value per member
of every required union whose members are tagged by `type` (image and document sources, the
tool of a tool_addition, ...), so each alternative is sent at least once.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pydantic
import typing_extensions

TOOL_USE_ID = "toolu_compat_01"
"""Every `id` / `tool_use_id` gets this value, so a result always has a call to answer."""

_ITERABLES = {list, collections.abc.Iterable, collections.abc.Sequence, typing.Iterable, typing.List}
_DEPTH = 8


def _strip(tp: Any) -> Any:
    """`Required[X]`, `NotRequired[X]`, `Annotated[X, ...]` → X."""
    while True:
        origin = get_origin(tp)
        if origin is typing.Annotated or getattr(origin, "_name", None) in ("Required", "NotRequired", "ReadOnly"):
            tp = get_args(tp)[0]
        elif str(origin).endswith(("Required", "NotRequired", "ReadOnly")):
            tp = get_args(tp)[0]
        else:
            return tp


def members(tp: Any) -> list[Any]:
    """The members of a union (flattened, None left out), or [tp]."""
    tp = _strip(tp)
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        out: list[Any] = []
        for a in get_args(tp):
            if a is not type(None):
                out.extend(members(a))
        return out
    return [tp]


def item_type(tp: Any) -> Any | None:
    """X for `Iterable[X]` / `List[X]`, else None."""
    tp = _strip(tp)
    if get_origin(tp) in _ITERABLES:
        args = get_args(tp)
        return args[0] if args else Any
    return None


def is_typed_dict(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "__required_keys__") and hasattr(tp, "__annotations__")


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def hints(tp: Any) -> dict[str, Any]:
    if is_model(tp):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    return get_type_hints(tp)


def required_keys(tp: Any) -> list[str]:
    """Required keys, read from the annotations: the SDK's modules use postponed annotations,
    so `__required_keys__` misses every `Required[...]` written as a string."""
    if is_model(tp):
        return [f.alias or name for name, f in tp.model_fields.items() if f.is_required()]
    out = []
    for k, v in typing_extensions.get_type_hints(tp, include_extras=True).items():
        qualifier = getattr(typing_extensions.get_origin(v), "_name", None)
        if qualifier == "Required" or (tp.__total__ and qualifier != "NotRequired"):
            out.append(k)
    return sorted(out)


def _field_type(tp: Any, key: str) -> Any:
    if is_model(tp):
        for name, f in tp.model_fields.items():
            if (f.alias or name) == key:
                return f.annotation
    return hints(tp)[key]


def type_tags(tp: Any) -> tuple[str, ...]:
    """The `type` literals a TypedDict or model declares (() when it has no `type` key)."""
    if not (is_typed_dict(tp) or is_model(tp)):
        return ()
    t = hints(tp).get("type")
    if t is None:
        return ()
    return tuple(a for m in members(t) if get_origin(m) is Literal for a in get_args(m) if isinstance(a, str))


def minimal(tp: Any, key: str = "", depth: int = 0) -> Any:
    """The smallest value of type `tp`: required keys only, filled by type."""
    tp = _strip(tp)
    if depth > _DEPTH:
        return {}
    if is_typed_dict(tp) or is_model(tp):
        return {k: minimal(_field_type(tp, k), k, depth + 1) for k in required_keys(tp)}
    inner = item_type(tp)
    if inner is not None:
        return [minimal(inner, key, depth + 1)]
    origin = get_origin(tp)
    if origin is Literal:
        return get_args(tp)[0]
    if origin is Union or origin is types.UnionType:
        return minimal(members(tp)[0], key, depth + 1)
    if origin in (dict, collections.abc.Mapping, typing.Dict) or tp in (dict, object, Any):
        return {}
    if tp is str:
        return TOOL_USE_ID if key in ("id", "tool_use_id") else "x"
    if tp is bool:
        return False
    if tp is int:
        return 1
    if tp is float:
        return 0.5
    if tp is type(None):
        return None
    return {}


def variants(tp: Any, depth: int = 0, optional: bool = False) -> Iterator[Any]:
    """`minimal(tp)`, then one value for every other member of each tagged union among its
    required keys (recursively), the rest minimal. With `optional`, also one value per member of
    each tagged union among the optional keys of `tp` itself (a tool_result's content blocks)."""
    base = minimal(tp)
    yield base
    if depth > 3 or not (is_typed_dict(tp) or is_model(tp)):
        return
    if optional:
        required = set(required_keys(tp))
        for k, ft in hints(tp).items():
            inner = item_type(ft)
            alts = members(inner if inner is not None else ft)
            if k in required or not any(type_tags(a) for a in alts):
                continue
            for alt in alts:
                if is_typed_dict(alt) or is_model(alt):
                    for v in variants(alt, depth + 1):
                        yield {**base, k: [v] if inner is not None else v}
    for k in required_keys(tp):
        ft = _field_type(tp, k)
        inner = item_type(ft)
        alts = members(inner if inner is not None else ft)
        if len(alts) < 2 and alts and (is_typed_dict(alts[0]) or is_model(alts[0])):
            for v in list(variants(alts[0], depth + 1))[1:]:
                yield {**base, k: [v] if inner is not None else v}
            continue
        if not any(type_tags(a) for a in alts):
            continue
        for alt in alts[1:] if len(alts) > 1 else ():
            if not (is_typed_dict(alt) or is_model(alt)):
                continue
            for v in variants(alt, depth + 1):
                yield {**base, k: [v] if inner is not None else v}


def label(value: Any) -> str:
    """A short name for a value in test ids: its type tags, outermost first."""
    if isinstance(value, dict):
        inner = [label(v) for v in value.values() if isinstance(v, (dict, list))]
        own = value.get("type") if isinstance(value.get("type"), str) else ""
        parts = [p for p in [own, *inner] if p]
        return "/".join(parts)
    if isinstance(value, list):
        return "/".join(p for p in (label(v) for v in value) if p)
    return ""
