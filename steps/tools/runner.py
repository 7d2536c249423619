"""Runs one server-side tool call and shapes its result twice: as the `tool_result` text the
upstream reads, and as the block the client sees (Anthropic's server-tool result types).

Client-facing shapes:

- `web_search` → `web_search_tool_result` (results, or `web_search_tool_result_error`);
- `web_fetch` → `web_fetch_tool_result` (`web_fetch_result` with a text document, or
  `web_fetch_tool_error`);
- agent tools (Read, Bash, ...) → `code_execution_tool_result` with a
  `code_execution_result{stdout, stderr, return_code}`: the one generic "the server ran
  something" result the SDKs know; a refusal is `return_code: 1` with the reason in stderr.

Every failure is a result with `is_error`, never an exception: a tool cannot crash a request.

A call is first admitted here (its input's shape, `max_uses`: pure checks, which replay
repeats), then run as the one step of the tool pipeline (pipelines/tool.yaml, `tools.run`,
`record: true`): a capture keeps each execution's call and result, and `engine replay`
answers it from there, so a replay never writes a file, runs a command or fetches a page
again, and a changed tool input shows up as a difference.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import anyio
import anyio.to_thread

from engine.capture import value_type
from engine.registry import serving_note, step
from engine.run import RunContext
from engine.types import Request
from steps.tools import bash as bash_tool
from steps.tools import fetch as fetch_tool
from steps.tools import files, sandbox, web
from steps.tools.workspace import ToolRefused, Workspace

_FILE_TOOLS: dict[str, Callable[[Workspace, files.FileLimits, dict], str]] = {
    "Read": files.read,
    "Write": files.write,
    "Edit": files.edit,
    "MultiEdit": files.multi_edit,
    "LS": files.ls,
    "Glob": files.glob,
    "Grep": files.grep,
    "NotebookRead": files.notebook_read,
    "NotebookEdit": files.notebook_edit,
    "TodoRead": files.todo_read,
    "TodoWrite": files.todo_write,
}


def _words(value: Any) -> tuple[str, ...]:
    """A YAML list, or a comma/space separated string from an environment variable."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(p for p in value.replace(",", " ").split() if p)
    return tuple(str(v) for v in value)


def _build(cls: type, values: dict | None, seconds: tuple[str, ...] = (), lists: tuple[str, ...] = ()) -> Any:
    known = {f.name for f in fields(cls)}
    values = values or {}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings {sorted(unknown)}; known: {sorted(known)}")
    kw: dict[str, Any] = {}
    for k, v in values.items():
        if v is None or v == "":
            continue
        kw[k] = _words(v) if k in lists else float(v) if k in seconds else v
    return cls(**kw)


def limits_for_bash(settings: dict | None) -> bash_tool.BashLimits:
    """The `bash:` block of a tools.execute_sequence step, as limits."""
    return _build(bash_tool.BashLimits, settings, seconds=("timeout",), lists=("allow", "allow_paths"))


@serving_note
def bash_note() -> str:
    """Whether server-side Bash can run in the pipelines being served, and if not, why."""
    from engine.executor import load_plans  # the pipelines `engine serve` is about to serve

    where = os.environ.get("ENGINE_PIPELINES")
    if not where:
        return "server-side Bash: no pipelines to inspect"
    try:
        plans = load_plans([where])
    except Exception as exc:  # noqa: BLE001 - serve reports load errors itself
        return f"server-side Bash: not inspected ({type(exc).__name__})"
    lines = []
    for plan in plans:
        if not plan.routes or not plan.enabled:
            continue
        for node in plan.nodes.values():
            if node.info.name != "tools.execute_sequence" or "bash" not in node.static:
                continue
            try:
                box = limits_for_bash(node.static.get("bash")).sandbox()
                verdict = sandbox.probe(box)
                detail = box.describe() if verdict.ok else verdict.reason
            except (ValueError, TypeError, sandbox.SandboxUnavailable) as exc:
                verdict, detail = sandbox.Verdict(False, str(exc)), str(exc)
            if verdict.ok:
                lines.append(f"server-side Bash in pipeline {plan.name}: sandboxed by {verdict.reason} ({detail})")
            else:
                lines.append(f"server-side Bash in pipeline {plan.name} is OFF: {detail}; every Bash call answers is_error with that reason")
    return "\n  ".join(lines) or "server-side Bash: not used by any served pipeline"


@value_type  # a recorded step's output: a capture holds it, replay rebuilds it
@dataclass(slots=True)
class Result:
    text: str
    is_error: bool
    block: dict  # the client-facing result block, without tool_use_id
    citations: list[dict] = field(default_factory=list)


@dataclass
class Runner:
    """The server-side tools of one request, configured from YAML."""

    ctx: RunContext
    pipeline: str = "tool"  # runs one admitted call (pipelines/tool.yaml)
    settings: dict = field(default_factory=dict)  # as given, for that pipeline to build its Runner
    workspace: str | None = None
    file_limits: files.FileLimits = field(default_factory=files.FileLimits)
    bash_limits: bash_tool.BashLimits = field(default_factory=bash_tool.BashLimits)
    fetch_limits: fetch_tool.FetchLimits = field(default_factory=fetch_tool.FetchLimits)
    search: dict = field(default_factory=dict)
    max_uses: dict = field(default_factory=dict)
    request: Any = None
    uses: dict = field(default_factory=lambda: {"web_search": 0, "web_fetch": 0})
    _ws: Workspace | None = None

    @classmethod
    def from_settings(cls, ctx: RunContext, workspace: str, file_settings: dict | None, bash_settings: dict | None,
                      fetch_settings: dict | None, search: dict | None, max_uses: dict, request: Any,
                      pipeline: str = "tool") -> Runner:
        return cls(
            ctx=ctx,
            pipeline=pipeline,
            settings={"workspace": workspace, "files": file_settings, "bash": bash_settings, "fetch": fetch_settings, "web_search": search},
            workspace=workspace or None,
            file_limits=_build(files.FileLimits, file_settings, seconds=("walk_seconds", "grep_seconds")),
            bash_limits=limits_for_bash(bash_settings),
            fetch_limits=_build(fetch_tool.FetchLimits, fetch_settings, seconds=("timeout",), lists=("allow_hosts",)),
            search=dict(search or {}),
            max_uses=dict(max_uses),
            request=request,
        )

    def ws(self) -> Workspace:
        if self._ws is None:
            if not self.workspace:
                raise ToolRefused("no workspace is configured for server-side tools")
            self._ws = Workspace.at(self.workspace)
        return self._ws

    async def run(self, name: str, kind: str, args: Any) -> Result:
        """One call: refused here if `admit` says so, else executed by the tool pipeline."""
        refused = self.admit(name, kind, args)
        if refused is not None:
            return refused
        call = {"name": name, "kind": kind, "input": args}
        return await self.ctx.run_pipeline(self.pipeline, {"call": call, "settings": self.settings, "request": _headers_only(self.request)})

    def admit(self, name: str, kind: str, args: Any) -> Result | None:
        """The refusal a call gets before anything runs (bad input, over `max_uses`), or None.

        Pure and counted per request, so replay, which runs it again, refuses the same calls."""
        if not isinstance(args, dict):
            return _refused(kind, "tool input must be an object")
        if kind == "web_search":
            query = args.get("query")
            if not isinstance(query, str) or not query.strip():
                return _search_error("invalid_tool_input", "query must be a non-empty string")
            if len(query) > 500:
                return _search_error("query_too_long", "query is longer than 500 characters")
            if self._over("web_search"):
                return _search_error("max_uses_exceeded", "web_search was used more often than max_uses allows")
        if kind == "web_fetch" and self._over("web_fetch"):
            return _fetch_error("max_uses_exceeded", "web_fetch was used more often than max_uses allows")
        return None

    async def act(self, name: str, kind: str, args: dict) -> Result:
        """Execute an admitted call: the side effect itself (files, a command, the network)."""
        try:
            if kind == "web_search":
                return await self._web_search(args)
            if kind == "web_fetch":
                return await self._web_fetch(args)
            text, is_error = await self._agent(name, args)
        except ToolRefused as exc:
            return _refused(kind, str(exc))
        except Exception as exc:  # noqa: BLE001 - a tool failure is a result, never a crash
            self.ctx.log.warning("tools.failed", tool=name, error=repr(exc)[:300])
            if kind == "web_search":
                return _search_error("unavailable", f"{type(exc).__name__}")
            if kind == "web_fetch":
                return _fetch_error("unavailable", f"{type(exc).__name__}")
            text, is_error = f"internal error in {name}: {type(exc).__name__}", True
        self.ctx.log.info("tools.ran", tool=name, is_error=is_error, chars=len(text))
        return _executed(text, is_error)

    async def _agent(self, name: str, args: dict) -> tuple[str, bool]:
        if name == "Bash":
            return await bash_tool.run(self.ws(), self.bash_limits, args)
        if name == "WebFetch":
            fetched = await self._fetch(args.get("url"))
            head = f"{fetched.url} ({fetched.status}, {fetched.content_type or 'unknown type'})"
            return f"{head}\n\n{fetched.text}", fetched.status >= 400
        fn = _FILE_TOOLS.get(name)
        if fn is None:
            raise ToolRefused(f"{name} is not a server-side tool")
        ws = self.ws()
        text = await anyio.to_thread.run_sync(functools.partial(fn, ws, self.file_limits, args))
        return files.cap_text(text, self.file_limits.output_chars), False

    async def _fetch(self, url: Any) -> fetch_tool.Fetched:
        client = await self.ctx.resource("tools.fetch.client", fetch_tool.client_factory)
        return await fetch_tool.fetch(url, self.fetch_limits, client)

    def _over(self, kind: str) -> bool:
        self.uses[kind] += 1
        limit = self.max_uses.get(kind)
        return limit is not None and self.uses[kind] > limit

    async def _web_search(self, args: dict) -> Result:
        query = args["query"]  # admitted: a non-empty string
        backend = self.search.get("backend") or "tools.web_search_openrouter"
        options = dict(self.search.get("options") or {})
        results = await _call(backend, self.ctx, query=query, max_results=int(self.search.get("max_results") or 5),
                              request=self.request, **options)
        items = web.search_result_blocks(list(results or ()))
        self.ctx.log.info("tools.ran", tool="web_search", results=len(items))
        return Result(text=web.results_text(items), is_error=False,
                      block={"type": "web_search_tool_result", "content": items}, citations=web.citations_for(items))

    async def _web_fetch(self, args: dict) -> Result:
        url = args.get("url")
        fetched = await self._fetch(url)
        retrieved = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": fetched.text},
               "title": fetched.title, "citations": None}
        return Result(text=f"{fetched.url}\n\n{fetched.text}", is_error=False,
                      block={"type": "web_fetch_tool_result",
                             "content": {"type": "web_fetch_result", "url": fetched.url, "content": doc, "retrieved_at": retrieved}})


async def _call(backend: str, ctx: RunContext, **kwargs: Any) -> Any:
    return await web.call_backend(backend, ctx, **kwargs)


@step("tools.run", side_effects=True, sends=("call",))
async def run_tool(call: dict, settings: dict, ctx: RunContext, request: Any = None) -> Result:
    """Execute one admitted server-side tool call (pipelines/tool.yaml; record it there).

    `call` is {name, kind, input} from the tool loop; `settings` the tools' YAML settings as
    tools.execute_sequence was given them. Replay compares `call` (what the tool was asked
    to do) and answers the result from the capture.
    """
    s = settings or {}
    runner = Runner.from_settings(ctx, s.get("workspace") or "", s.get("files"), s.get("bash"), s.get("fetch"), s.get("web_search"), {}, request)
    return await runner.act(str(call.get("name")), str(call.get("kind")), call.get("input") or {})


def _headers_only(request: Any) -> Any:
    """The request without its body: the tools read only headers (web search may use the
    client's key), and the body, the whole conversation, would be copied into every
    recorded tool call."""
    return dataclasses.replace(request, body=b"") if isinstance(request, Request) else request


def _executed(text: str, is_error: bool) -> Result:
    """An agent tool's result as the client sees it: `code_execution_tool_result`."""
    return Result(
        text=text,
        is_error=is_error,
        block={
            "type": "code_execution_tool_result",
            "content": {
                "type": "code_execution_result",
                "stdout": "" if is_error else text,
                "stderr": text if is_error else "",
                "return_code": 1 if is_error else 0,
                "content": [],
            },
        },
    )


def _refused(kind: str, reason: str) -> Result:
    """A call refused before or while running, in its kind's result shape."""
    if kind == "web_search":
        return _search_error("invalid_tool_input", reason)
    if kind == "web_fetch":
        return _fetch_error("url_not_accessible", reason)
    return _executed(reason, True)


def _search_error(code: str, reason: str) -> Result:
    return Result(text=f"web_search failed: {reason}", is_error=True,
                  block={"type": "web_search_tool_result", "content": {"type": "web_search_tool_result_error", "error_code": code}})


def _fetch_error(code: str, reason: str) -> Result:
    return Result(text=f"web_fetch failed: {reason}", is_error=True,
                  block={"type": "web_fetch_tool_result", "content": {"type": "web_fetch_tool_error", "error_code": code}})


async def run_all(runner: Runner, calls: list[tuple[str, str, Any]], concurrency: int) -> list[Result]:
    """Run independent calls concurrently, at most `concurrency` at a time; results in call order."""
    results: list[Result | None] = [None] * len(calls)
    limiter = anyio.Semaphore(max(1, concurrency))

    async def one(i: int, name: str, kind: str, args: Any) -> None:
        async with limiter:
            results[i] = await runner.run(name, kind, args)

    if len(calls) == 1:
        name, kind, args = calls[0]
        return [await runner.run(name, kind, args)]
    async with anyio.create_task_group() as tg:
        for i, (name, kind, args) in enumerate(calls):
            tg.start_soon(one, i, name, kind, args)
    return [r for r in results if r is not None]

