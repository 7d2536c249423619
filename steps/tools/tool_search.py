"""Deferred tools and the API's tool-search server tools, for any upstream model.

A client that marks a tool `defer_loading: true` (beta `advanced-tool-use-2025-11-20`) asks
for its schema to stay out of the prompt until a search finds it: with tens of MCP tools
that is most of every request's bytes. No upstream knows the flag, so the gateway does it:

- `split` keeps a deferred tool out of the tools sent upstream until something in the
  conversation names it: a `tool_reference` in any earlier `tool_result` (a client's own
  search, Claude Code's `ToolSearch` included) or in a `tool_search_tool_result`, a
  `tool_use` of it (it was loaded once, the model called it), or `tool_choice`. A tool
  without the flag is never touched, so a client that defers nothing sees no change.
- `tool_search_tool_regex_*` and `tool_search_tool_bm25_*` are answered here, in the
  server-side tool loop (steps/tools/sequence.py), over the deferred tools' names,
  descriptions and parameter names: the result is the API's `tool_search_tool_result` with
  `tool_reference` blocks, and from the next upstream turn on a found tool is offered.

The regex variant is Python's regular-expression syntax run with the `regex` package (it
accepts `re`'s syntax) under a timeout, the pattern capped at 200 characters as the API
caps it: a client's pattern is data, and a catastrophic one costs a bounded slice of time.
BM25 is the usual Okapi formula (k1 1.2, b 0.75) over name, description and parameter
tokens; it is twenty lines, and the maintained libraries for it (bm25s, rank-bm25) bring
numpy for a corpus that is a few hundred short documents at most.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from steps.tools.runner import Result

SEARCH_TOOLS = {"tool_search_tool_regex": "tool_search_regex", "tool_search_tool_bm25": "tool_search_bm25"}
"""Server tool name (and type prefix) → the kind the tool loop runs."""

MAX_PATTERN = 200
REGEX_TIMEOUT = 0.25  # seconds per search over the whole catalogue
DEFAULT_LIMIT = 5
MAX_LIMIT = 20
DOC_CHARS = 20_000  # of one tool's searchable text

DESCRIPTIONS = {
    "tool_search_regex": (
        "Search the {n} tools that are not loaded yet by a regular expression (Python re.search syntax, "
        "at most 200 characters, e.g. \"weather\", \"get_.*_data\", \"(?i)slack\") over their names, "
        "descriptions and parameter names. The tools found can be called from your next turn on."
    ),
    "tool_search_bm25": (
        "Search the {n} tools that are not loaded yet with a natural-language query over their names, "
        "descriptions and parameter names. The best matches can be called from your next turn on."
    ),
}


def search_kind(tool: dict) -> str | None:
    """The loop's kind for a tool-search server tool (`tool_search_tool_regex_20251119`, ...), else None."""
    kind = tool.get("type")
    if type(kind) is not str:
        return None
    for prefix, name in SEARCH_TOOLS.items():
        if kind == prefix or kind.startswith(prefix + "_"):
            return name
    return None


def declaration(kind: str, name: str, deferred: int) -> dict:
    """The plain function an upstream sees in place of a tool-search server tool."""
    key = "pattern" if kind == "tool_search_regex" else "query"
    props = {
        key: {"type": "string", "description": "regular expression" if key == "pattern" else "what the tool should do"},
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "description": f"most tools to return (default {DEFAULT_LIMIT})"},
    }
    schema = {"type": "object", "properties": props, "required": [key], "additionalProperties": False}
    return {"name": name, "description": DESCRIPTIONS[kind].format(n=deferred), "input_schema": schema}


def _deferred(tool: Any) -> bool:
    return (
        type(tool) is dict
        and tool.get("defer_loading") is True
        and tool.get("type") in (None, "custom")
        and type(tool.get("name")) is str
    )


def referenced(messages: Any, tool_choice: Any = None) -> set[str]:
    """Names the conversation has loaded: tool_reference blocks anywhere in it, tool_use names, tool_choice."""
    names: set[str] = set()
    if type(tool_choice) is dict and tool_choice.get("type") == "tool" and type(tool_choice.get("name")) is str:
        names.add(tool_choice["name"])
    for m in messages if type(messages) is list else ():
        content = m.get("content") if type(m) is dict else None
        if type(content) is list:
            _collect(content, names, 0)
    return names


def _collect(blocks: list, names: set[str], depth: int) -> None:
    if depth > 3:
        return
    for b in blocks:
        if type(b) is not dict:
            continue
        t = b.get("type")
        if t == "tool_reference" and type(b.get("tool_name")) is str:
            names.add(b["tool_name"])
        elif t == "tool_use" and type(b.get("name")) is str:
            names.add(b["name"])
        inner = b.get("content")
        if type(inner) is list:
            _collect(inner, names, depth + 1)
        elif type(inner) is dict:
            refs = inner.get("tool_references")
            if type(refs) is list:
                _collect(refs, names, depth + 1)


def split(tools: Any, messages: Any, tool_choice: Any = None) -> tuple[list, list[dict]]:
    """(tools to offer upstream, deferred tools not loaded yet), declared order kept."""
    if type(tools) is not list or not any(_deferred(t) for t in tools):
        return (tools if type(tools) is list else []), []
    loaded = referenced(messages, tool_choice)
    offered: list = []
    deferred: list[dict] = []
    for t in tools:
        if _deferred(t) and t["name"] not in loaded:
            deferred.append(t)
        else:
            offered.append(t)
    return offered, deferred


# -- search --------------------------------------------------------------------------------


def _document(tool: dict) -> str:
    parts = [tool["name"], str(tool.get("description") or "")]
    schema = tool.get("input_schema")
    props = schema.get("properties") if type(schema) is dict else None
    if type(props) is dict:
        for key, spec in list(props.items())[:100]:
            parts.append(str(key))
            if type(spec) is dict and type(spec.get("description")) is str:
                parts.append(spec["description"])
    return "\n".join(parts)[:DOC_CHARS]


def _limit(args: dict) -> int:
    value = args.get("limit")
    if type(value) is int and value > 0:
        return min(value, MAX_LIMIT)
    return DEFAULT_LIMIT


def regex_search(pattern: str, catalog: list[dict], limit: int) -> list[str]:
    """Names of the tools whose searchable text matches `pattern` (re.search), in declared order.

    Raises ValueError for a pattern that does not compile and TimeoutError past the time slice."""
    import regex  # with the first search: commands that serve nothing stay light

    try:
        compiled = regex.compile(pattern)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
    found: list[str] = []
    for tool in catalog:
        if compiled.search(_document(tool), timeout=REGEX_TIMEOUT):
            found.append(tool["name"])
            if len(found) >= limit:
                break
    return found


_WORD = re.compile(r"[A-Za-z]+|\d+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def tokens(text: str) -> list[str]:
    """Lower-case words; `get_weather`, `getWeather` and `get-weather` all give get, weather."""
    return [w.lower() for part in _CAMEL.split(text) for w in _WORD.findall(part)]


def bm25_search(query: str, catalog: list[dict], limit: int, k1: float = 1.2, b: float = 0.75) -> list[str]:
    """Names of the best-scoring tools for `query` (Okapi BM25), best first; ties in declared order."""
    terms = set(tokens(query))
    if not terms or not catalog:
        return []
    docs = [Counter(tokens(_document(t))) for t in catalog]
    avg = sum(sum(d.values()) for d in docs) / len(docs) or 1.0
    df = Counter(term for d in docs for term in terms if term in d)
    n = len(docs)
    scored: list[tuple[float, int]] = []
    for i, d in enumerate(docs):
        length = sum(d.values())
        score = 0.0
        for term in terms:
            tf = d.get(term, 0)
            if tf:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg))
        if score > 0:
            scored.append((-score, i))
    scored.sort()
    return [catalog[i]["name"] for _, i in scored[:limit]]


def run(kind: str, args: Any, catalog: list[dict]) -> tuple[Result, list[str]]:
    """Answer one tool-search call: (its result, the names found). Never raises."""
    if type(args) is not dict:
        return _error("invalid_tool_input", "tool input must be an object"), []
    key, other = ("pattern", "query") if kind == "tool_search_regex" else ("query", "pattern")
    query = args.get(key) if type(args.get(key)) is str else args.get(other)
    if type(query) is not str or not query.strip():
        return _error("invalid_tool_input", f"`{key}` must be a non-empty string"), []
    limit = _limit(args)
    if kind == "tool_search_regex":
        if len(query) > MAX_PATTERN:
            return _error("invalid_tool_input", f"the pattern is longer than {MAX_PATTERN} characters"), []
        try:
            found = regex_search(query, catalog, limit)
        except ValueError as exc:
            return _error("invalid_tool_input", f"invalid regular expression: {str(exc)[:200]}"), []
        except TimeoutError:
            return _error("execution_time_exceeded", "the regular expression took too long"), []
    else:
        found = bm25_search(query[:2000], catalog, limit)
    refs = [{"type": "tool_reference", "tool_name": name} for name in found]
    text = (
        "Tools found, callable from now on: " + ", ".join(found) + "."
        if found
        else "No tool matched. Try another search."
    )
    block = {"type": "tool_search_tool_result", "content": {"type": "tool_search_tool_search_result", "tool_references": refs}}
    return Result(text=text, is_error=False, block=block), found


def _error(code: str, message: str) -> Result:
    return Result(
        text=f"tool search failed: {message}",
        is_error=True,
        block={"type": "tool_search_tool_result",
               "content": {"type": "tool_search_tool_result_error", "error_code": code, "error_message": message}},
    )


def result_text(block: dict) -> tuple[str, bool]:
    """A `tool_search_tool_result` from a client's history → (text for the upstream, is_error)."""
    content = block.get("content")
    if type(content) is not dict:
        return "tool search failed", True
    if content.get("type") == "tool_search_tool_result_error":
        return f"tool search failed: {content.get('error_code') or 'unavailable'}", True
    refs = content.get("tool_references")
    names = [r["tool_name"] for r in refs or () if type(r) is dict and type(r.get("tool_name")) is str]
    if not names:
        return "No tool matched. Try another search.", False
    return "Tools found, callable from now on: " + ", ".join(names) + ".", False
