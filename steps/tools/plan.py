"""Which tools of a request run on the gateway, and the request the upstream sees because of it.

Client tools (everything the client declares) are returned to the client as `tool_use`.
Server-side tools are of two kinds: Anthropic's server tools (`web_search_*`, `web_fetch_*`
in the request's `tools`), and the agent tools a pipeline opts into in YAML (Read, Write,
Bash, ...). Both are declared to the upstream as plain functions by the gateway, whether or
not the client sent them; an agent tool replaces a client tool of the same name (Claude
Code pointed at `/agent` declares Read, Bash, ... itself, and the point of that route is
that the gateway runs them). Server-side work that a client sends back in its history
(`server_tool_use` + `*_tool_result` blocks) becomes `tool_use` + `tool_result` again, so
the upstream remembers what it did.

Tools marked `defer_loading` stay out of the upstream request until the conversation loads
them, and the API's tool-search server tools are run here over them (steps/tools/tool_search.py).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from engine.registry import step
from steps.tools import tool_search
from steps.tools.web import decode_result

_STR = {"type": "string"}
_INT = {"type": "integer", "minimum": 0}
_BOOL = {"type": "boolean"}


def _schema(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


_EDIT = {"old_string": _STR, "new_string": _STR, "replace_all": _BOOL}

AGENT_TOOLS: dict[str, tuple[str, dict]] = {
    "Read": ("Read a text file in the workspace (cat -n format). Paths are relative to the workspace root.",
             _schema({"file_path": _STR, "offset": _INT, "limit": _INT}, ["file_path"])),
    "Write": ("Create or overwrite a file in the workspace.", _schema({"file_path": _STR, "content": _STR}, ["file_path", "content"])),
    "Edit": ("Replace old_string with new_string in a workspace file (exactly one occurrence unless replace_all).",
             _schema({"file_path": _STR, **_EDIT}, ["file_path", "old_string", "new_string"])),
    "MultiEdit": ("Apply several edits to one workspace file, all or nothing.",
                  _schema({"file_path": _STR, "edits": {"type": "array", "items": _schema(_EDIT, ["old_string", "new_string"])}},
                          ["file_path", "edits"])),
    "LS": ("List a directory of the workspace.", _schema({"path": _STR, "ignore": {"type": "array", "items": _STR}}, [])),
    "Glob": ("Find workspace files by glob pattern (** matches directories).", _schema({"pattern": _STR, "path": _STR}, ["pattern"])),
    "Grep": ("Search workspace files with a regular expression.",
             _schema({"pattern": _STR, "path": _STR, "glob": _STR,
                      "output_mode": {"type": "string", "enum": ["content", "files_with_matches", "count"]},
                      "-i": _BOOL, "-n": _BOOL, "-A": _INT, "-B": _INT, "-C": _INT, "head_limit": _INT, "multiline": _BOOL},
                     ["pattern"])),
    "Bash": ("Run one allowlisted program in the workspace, without a shell (no pipes, redirections or ;).",
             _schema({"command": _STR, "timeout": _INT, "description": _STR}, ["command"])),
    "WebFetch": ("Fetch a public http(s) URL and return its content as Markdown.",
                 _schema({"url": _STR, "prompt": _STR}, ["url"])),
    "NotebookRead": ("Read the cells of a Jupyter notebook in the workspace.", _schema({"notebook_path": _STR, "cell_id": _STR}, ["notebook_path"])),
    "NotebookEdit": ("Replace, insert or delete a cell of a Jupyter notebook in the workspace.",
                     _schema({"notebook_path": _STR, "cell_id": _STR, "new_source": _STR,
                              "cell_type": {"type": "string", "enum": ["code", "markdown"]},
                              "edit_mode": {"type": "string", "enum": ["replace", "insert", "delete"]}}, ["notebook_path"])),
    "TodoRead": ("Read the todo list.", _schema({}, [])),
    "TodoWrite": ("Replace the todo list.",
                  _schema({"todos": {"type": "array", "items": {"type": "object", "properties": {
                      "content": _STR, "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                      "activeForm": _STR, "id": _STR, "priority": _STR}, "required": ["content"]}}}, ["todos"])),
}

AgentTool = Literal[
    "Read", "Write", "Edit", "MultiEdit", "LS", "Glob", "Grep", "Bash", "WebFetch",
    "NotebookRead", "NotebookEdit", "TodoRead", "TodoWrite",
]  # fmt: skip
"""The names `agent_tools` accepts: `engine check` refuses any other at load time, located."""
assert set(get_args(AgentTool)) == set(AGENT_TOOLS), "AgentTool and AGENT_TOOLS must name the same tools"

WEB_TOOLS: dict[str, tuple[str, dict]] = {
    "web_search": ("Search the web. Returns result titles, URLs and snippets.", _schema({"query": _STR}, ["query"])),
    "web_fetch": ("Fetch the content of a web page by URL.", _schema({"url": _STR}, ["url"])),
}


def _declare(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "description": description, "input_schema": schema}


@step("tools.detect", blocking=False)
def detect(body: dict, agent_tools: list[AgentTool] | None = None, web: bool = True, tool_search_tools: bool = True) -> dict:
    """Split a request's tools into client, server-side and deferred tools; declare the server-side ones upstream.

    Returns `{"body": ..., "server": {name: kind}, "max_uses": {name: n}, "deferred": [tool]}`:
    `body` is the request to convert (server tools as functions, server history as tool calls,
    `defer_loading` tools left out until the conversation references them), `server` maps each
    tool name the gateway runs to its kind (`agent`, `web_search`, `web_fetch`,
    `tool_search_regex`, `tool_search_bm25`), `deferred` is the catalogue a tool search runs over.
    `agent_tools` lists the agent tools this pipeline runs (none by default); `web: false`
    leaves Anthropic's web server tools alone (the converter then drops them), and so does
    `tool_search_tools: false` for the tool-search server tools.
    """
    wanted = [t for t in agent_tools or () if t in AGENT_TOOLS]
    unknown = [t for t in agent_tools or () if t not in AGENT_TOOLS]
    if unknown:
        raise ValueError(f"unknown agent tools {unknown}; known: {', '.join(AGENT_TOOLS)}")
    server: dict[str, str] = {name: "agent" for name in wanted}
    max_uses: dict[str, int] = {}
    declared: list[dict] = []
    searches: list[tuple[str, str, int]] = []  # (kind, name, position in declared)
    tools, deferred = tool_search.split(body.get("tools"), body.get("messages"), body.get("tool_choice"))
    for tool in tools:
        kind = tool.get("type") or ""
        search = tool_search.search_kind(tool) if tool_search_tools else None
        if web and (kind.startswith("web_search_") or kind.startswith("web_fetch_")):
            name = "web_search" if kind.startswith("web_search_") else "web_fetch"
            server[name] = name
            if isinstance(tool.get("max_uses"), int):
                max_uses[name] = tool["max_uses"]
            # Marked, so that routing (a later pipeline) still sees a web search in this
            # request; converters read only name, description and schema.
            declared.append({**_declare(name, *WEB_TOOLS[name]), "server_tool": name})
        elif search is not None:
            name = next(n for n, k in tool_search.SEARCH_TOOLS.items() if k == search)
            server[name] = search
            searches.append((search, name, len(declared)))
            declared.append({})
        elif tool.get("name") in server and server[tool.get("name")] == "agent":
            continue  # the gateway runs it: its own declaration replaces the client's
        else:
            declared.append(tool)
    for search, name, at in searches:
        declared[at] = tool_search.declaration(search, name, len(deferred))
    if not server:
        if not deferred:
            return {"body": body, "server": {}, "max_uses": {}, "deferred": []}
        return {"body": {**body, "tools": declared}, "server": {}, "max_uses": {}, "deferred": deferred}
    declared += [_declare(name, *AGENT_TOOLS[name]) for name in wanted]
    out = dict(body)
    out["tools"] = declared
    out["messages"] = restore_history(body.get("messages") or [])
    return {"body": out, "server": server, "max_uses": max_uses, "deferred": deferred}


def restore_history(messages: list[dict]) -> list[dict]:
    """`server_tool_use` + `*_tool_result` in assistant turns → `tool_use`, then a user turn
    with the `tool_result`, then the rest of the assistant turn (order kept)."""
    if not any(
        m.get("role") == "assistant" and isinstance(m.get("content"), list)
        and any(isinstance(b, dict) and b.get("type") == "server_tool_use" for b in m["content"])
        for m in messages
    ):
        return messages
    out: list[dict] = []
    for m in messages:
        content = m.get("content")
        if m.get("role") != "assistant" or not isinstance(content, list):
            out.append(m)
            continue
        segment: list[dict] = []
        for b in content:
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "server_tool_use":
                segment.append({"type": "tool_use", "id": b.get("id"), "name": b.get("name"), "input": b.get("input") or {}})
            elif isinstance(kind, str) and kind.endswith("_tool_result") and "tool_use_id" in b:
                text, is_error = tool_search.result_text(b) if kind == "tool_search_tool_result" else decode_result(b)
                if segment:
                    out.append({"role": "assistant", "content": segment})
                    segment = []
                result: dict[str, Any] = {"type": "tool_result", "tool_use_id": b["tool_use_id"], "content": text or "(no output)"}
                if is_error:
                    result["is_error"] = True
                out.append({"role": "user", "content": [result]})
            else:
                segment.append(b)
        if segment:
            out.append({"role": "assistant", "content": segment})
    return _merge_users(out)


def _merge_users(messages: list[dict]) -> list[dict]:
    """A restored tool_result turn followed by the client's own user turn become one turn,
    tool results first (as the API requires)."""
    out: list[dict] = []
    for m in messages:
        if out and m.get("role") == "user" and out[-1].get("role") == "user":
            prev = out[-1]
            a = prev["content"] if isinstance(prev["content"], list) else [{"type": "text", "text": prev["content"]}]
            b = m["content"] if isinstance(m.get("content"), list) else [{"type": "text", "text": m.get("content") or ""}]
            results = [x for x in a + b if isinstance(x, dict) and x.get("type") == "tool_result"]
            rest = [x for x in a + b if not (isinstance(x, dict) and x.get("type") == "tool_result")]
            out[-1] = {**prev, "content": results + rest}
        else:
            out.append(m)
    return out
