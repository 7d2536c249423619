"""The tool sequence: run the server-side calls of an upstream turn, feed the results back, repeat.

After each upstream turn the calls are split by `tools.detect`'s plan: client calls stay
`tool_use` blocks for the client, server-side calls run here (independent ones concurrently,
bounded) and appear to the client as `server_tool_use` + a result block. Their results go
back to the upstream through a sub-pipeline (`turn_pipeline`: pipelines/turn.yaml, the same
upstream turn every route runs), and the loop repeats until a turn has no server-side call, a turn also
has client calls (the client must answer those: `stop_reason: tool_use`), or `max_rounds`
upstream turns have run and their calls with them: then the reply ends with `pause_turn`, as
the API pauses a long server-side turn. Its last blocks are server tool results, so a client
that sends the reply back as-is (what the SDKs and Claude Code do on `pause_turn`) gets the
loop going again from there, and the upstream reads the results it has not answered yet.

A tool search (`tool_search_tool_regex` / `_bm25`, steps/tools/tool_search.py) runs here over
the plan's deferred tools; the tools it finds are offered to the upstream from the next turn on.

Nothing that ran is ever run twice because of a failure: once a server-side call has run,
every later failure of the loop is raised as `AfterSideEffects` (steps/tools/effects.py),
which tells the client what ran and not to retry. JSON replies stop just before the run's
deadline for the same reason (the engine's own deadline error could not say what ran).

JSON replies gather every turn into one message. Streams stay one message too: one
`message_start`, block indices renumbered to stay consecutive across turns, text of later
turns streamed as it arrives, and one `message_delta` + `message_stop` at the very end with
the usage of all turns and `server_tool_use` counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import orjson

from engine import streams
from engine import usage as metering
from engine.errors import DeadlineExceeded, RunCancelled
from engine.registry import step
from engine.run import RunContext
from engine.types import Facts, PipelineName
from steps.tools import tool_search
from steps.tools.effects import AfterSideEffects
from steps.tools.runner import Result, Runner, run_all

_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
DEADLINE_MARGIN = 0.1
"""Seconds before the run's deadline at which a JSON tool loop stops itself (see `json`)."""


class _Usage:
    def __init__(self, server: dict[str, str]) -> None:
        self.total = dict.fromkeys(_USAGE_KEYS, 0)
        self.web = {k: 0 for k in ("web_search", "web_fetch") if k in server.values()}

    def add(self, usage: Any) -> None:
        if isinstance(usage, dict):
            for k in _USAGE_KEYS:
                v = usage.get(k)
                if isinstance(v, int):
                    self.total[k] += v

    def count(self, kind: str) -> None:
        if kind in self.web:
            self.web[kind] += 1

    def out(self) -> dict:
        usage: dict[str, Any] = dict(self.total)
        usage["output_tokens"] = max(1, usage["output_tokens"])
        if self.web:
            usage["server_tool_use"] = {f"{k}_requests": v for k, v in self.web.items()}
        return usage


def _tell_usage(out: Facts, turns: list[Any]) -> None:
    """Tell in `out` the usage of every turn (each a core.run's or a sub-run's Facts), added up
    when asked for: the list grows as the loop runs further turns."""
    out.defer("usage", lambda: metering.merge(*(t.get("usage") for t in turns)))


@step("tools.execute_sequence", side_effects=True, facts=("usage",))
async def execute_sequence(
    message: Any,
    plan: dict,
    ctx: RunContext,
    model: str = "",
    request: Any = None,
    turn_pipeline: PipelineName = PipelineName("turn"),
    tool_pipeline: PipelineName = PipelineName("tool"),
    max_rounds: int = 25,
    concurrency: int = 4,
    workspace: str = "",
    files: dict | None = None,
    bash: dict | None = None,
    fetch: dict | None = None,
    web_search: dict | None = None,
    turn: dict | None = None,
    facts: Facts | None = None,
) -> Any:
    """Run server-side tool calls and continue the upstream turn until none is left or a bound is reached.

    `message` is the converted first turn (a Message dict, or a stream of Anthropic events);
    `plan` comes from tools.detect. With no server-side tool in the plan the message passes
    through untouched. `files`, `bash`, `fetch` and `web_search` are the settings of the
    server-side tools (caps, the Bash allowlist, the search backend); `workspace` is the
    directory the file tools and Bash are confined to. Each admitted call runs as a run of
    `tool_pipeline` (pipelines/tool.yaml), whose recorded step replay answers from a capture.

    `turn` is what the first turn told (`${{ facts.turn }}`); this step tells the `usage` of
    every turn it ran, the first included, so the access line counts the whole loop.
    """
    turns: list[Any] = [turn if turn is not None else {}]
    if facts is not None:
        _tell_usage(facts, turns)
    server = plan.get("server") or {}
    if not server:
        return message
    if int(max_rounds) < 1:
        raise ValueError("max_rounds must be at least 1")
    runner = Runner.from_settings(ctx, workspace, files, bash, fetch, web_search, plan.get("max_uses") or {}, request, tool_pipeline)
    seq = _Sequence(ctx, plan, model, request, turn_pipeline, int(max_rounds), int(concurrency), runner, turns)
    if isinstance(message, dict):
        return await seq.json(message)
    return seq.stream(message)


class _Sequence:
    def __init__(self, ctx: RunContext, plan: dict, model: str, request: Any, turn: str, max_rounds: int,
                 concurrency: int, runner: Runner, turns: list[Any] | None = None) -> None:
        self.ctx = ctx
        self.turns = turns if turns is not None else []  # each turn's facts, the first one's included
        self.body = plan["body"]
        self.server: dict[str, str] = plan["server"]
        self.model = model
        self.request = request
        self.turn = turn
        self.max_rounds = max_rounds
        self.concurrency = concurrency
        self.runner = runner
        self.history = list(self.body.get("messages") or [])
        self.usage = _Usage(self.server)
        self.citations: list[dict] = []  # for the next text block after a search
        self.ran: list[str] = []  # names of the server-side calls started so far, in order
        self.deferred: list[dict] = list(plan.get("deferred") or ())  # what a tool search runs over

    def is_server(self, block: dict) -> bool:
        return block.get("type") == "tool_use" and block.get("name") in self.server

    async def execute(self, calls: list[dict]) -> list[Result]:
        self.ran += [c["name"] for c in calls]  # before running: a call that fails half-way may have acted
        results: list[Result | None] = [None] * len(calls)
        found: list[str] = []
        others = []
        for i, c in enumerate(calls):
            kind = self.server[c["name"]]
            if kind in tool_search.SEARCH_TOOLS.values():
                results[i], names = tool_search.run(kind, c.get("input"), self.deferred)
                found += names
            else:
                others.append(i)
        ran = await run_all(self.runner, [(calls[i]["name"], self.server[calls[i]["name"]], calls[i].get("input")) for i in others],
                            self.concurrency) if others else []
        for i, r in zip(others, ran):
            results[i] = r
        for c, r in zip(calls, results):
            self.usage.count(self.server[c["name"]])
            if r is not None and r.citations:
                self.citations = r.citations
        if found:
            self.load(found)
        return [r for r in results if r is not None]

    def load(self, names: list[str]) -> None:
        """Offer the deferred tools a search found from the next upstream turn on."""
        wanted = set(names)
        loaded = [t for t in self.deferred if t["name"] in wanted]
        self.deferred = [t for t in self.deferred if t["name"] not in wanted]
        self.body = {**self.body, "tools": [*(self.body.get("tools") or ()), *loaded]}

    async def next_turn(self, blocks: list[dict], calls: list[dict], results: list[Result], stream: bool) -> Any:
        self.history.append({"role": "assistant", "content": blocks})
        tool_results = []
        for call, res in zip(calls, results):
            item: dict[str, Any] = {"type": "tool_result", "tool_use_id": call["id"], "content": res.text or "(no output)"}
            if res.is_error:
                item["is_error"] = True
            tool_results.append(item)
        self.history.append({"role": "user", "content": tool_results})
        body = {**self.body, "messages": self.history, "stream": stream}
        told = Facts()
        self.turns.append(told)
        return await self.ctx.run_pipeline(self.turn, {"body": body, "model": self.model, "request": self.request}, facts=told)

    def server_blocks(self, call: dict, result: Result | None) -> tuple[dict, dict | None, str]:
        srv_id = self.ctx.new_id("srvtoolu_")
        use = {"type": "server_tool_use", "id": srv_id, "name": call["name"], "input": call.get("input") or {}}
        block = None if result is None else {"type": result.block["type"], "tool_use_id": srv_id, "content": result.block["content"]}
        return use, block, srv_id

    @contextlib.contextmanager
    def told(self) -> Iterator[None]:
        """Once a server-side call has run, a failure says what ran and is not retried."""
        try:
            yield
        except RunCancelled:
            raise  # nobody is listening
        except Exception as exc:
            if not self.ran:
                raise
            raise AfterSideEffects(exc, self.ran) from exc

    # -- JSON -----------------------------------------------------------------------------

    async def json(self, first: dict) -> dict:
        """The loop for a JSON reply, ended by itself just before the run's deadline.

        The engine's deadline cancels the step from outside and reports a bare timeout the
        client would retry; stopping a moment earlier lets `told` say what already ran.
        """
        with self.told():
            remaining = self.ctx.remaining() if not self.ctx.response_started() else None
            with anyio.move_on_after(remaining - DEADLINE_MARGIN if remaining is not None else None):
                return await self.loop(first)
            raise DeadlineExceeded("the run's deadline passed during the server-side tool loop")

    async def loop(self, first: dict) -> dict:
        content: list[dict] = []
        msg = first
        rounds = 1
        while True:
            self.usage.add(msg.get("usage"))
            blocks = msg.get("content") or []
            calls = [b for b in blocks if self.is_server(b)]
            if not calls:
                content += self.cite(blocks)
                stop, stop_seq = msg.get("stop_reason"), msg.get("stop_sequence")
                break
            results = await self.execute(calls)
            by_id = {c["id"]: r for c, r in zip(calls, results)}
            client_calls = False
            done: list[dict] = []
            # Same order as the stream: the turn's blocks (server calls as server_tool_use),
            # then the results of its server-side calls.
            for b in blocks:
                if self.is_server(b):
                    use, res, _ = self.server_blocks(b, by_id[b["id"]])
                    content.append(use)
                    done.append(res)
                else:
                    client_calls = client_calls or b.get("type") == "tool_use"
                    content += self.cite([b])
            content += done
            if client_calls:
                stop, stop_seq = "tool_use", None
                break
            if rounds >= self.max_rounds:
                stop, stop_seq = "pause_turn", None  # the client sends it back to go on
                break
            msg = await self.next_turn(blocks, calls, results, stream=False)
            rounds += 1
        return {**first, "content": content, "stop_reason": stop, "stop_sequence": stop_seq, "usage": self.usage.out()}

    def cite(self, blocks: list[dict]) -> list[dict]:
        """Attach pending search citations to the first text block."""
        if not self.citations:
            return blocks
        out = list(blocks)
        for i, b in enumerate(out):
            if b.get("type") == "text":
                out[i] = {**b, "citations": self.citations}
                self.citations = []
                break
        return out

    # -- stream ---------------------------------------------------------------------------

    async def stream(self, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
        index = 0
        started = False
        rounds = 1
        with self.told():  # after the commit point: the SSE error event says what ran
            while True:
                blocks: list[dict] = []  # this turn's content, rebuilt for the history
                calls: list[dict] = []
                open_blocks: dict[int, dict] = {}  # upstream index → {"block", "out" index or None, "parts"}
                stop: tuple[Any, Any] = ("end_turn", None)
                try:
                    async for batch in events:  # the turn's events come in batches (engine/streams.py): so do ours
                        out: list[dict] = []
                        for ev in streams.elements(batch):
                            kind = ev.get("type")
                            if kind == "message_start":
                                if not started:
                                    started = True
                                    out.append(ev)
                            elif kind == "content_block_start":
                                cb = dict(ev["content_block"])
                                if self.is_server(cb):
                                    open_blocks[ev["index"]] = {"block": cb, "out": None, "parts": []}
                                    continue
                                open_blocks[ev["index"]] = {"block": cb, "out": index, "parts": []}
                                out.append({**ev, "index": index})
                                if cb.get("type") == "text" and self.citations:
                                    for citation in self.citations:
                                        out.append({"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "citations_delta", "citation": citation}})
                                    cb["citations"], self.citations = self.citations, []
                                index += 1
                            elif kind == "content_block_delta":
                                entry = open_blocks.get(ev["index"])
                                if entry is None:
                                    continue
                                _accumulate(entry, ev["delta"])
                                if entry["out"] is not None:
                                    out.append({**ev, "index": entry["out"]})
                            elif kind == "content_block_stop":
                                entry = open_blocks.pop(ev["index"], None)
                                if entry is None:
                                    continue
                                block = _finish(entry)
                                blocks.append(block)
                                if entry["out"] is not None:
                                    out.append({**ev, "index": entry["out"]})
                                    continue
                                calls.append(block)
                                use, _, srv_id = self.server_blocks(block, None)
                                block["_srv_id"] = srv_id
                                out.append({"type": "content_block_start", "index": index, "content_block": {**use, "input": {}}})
                                out.append({"type": "content_block_delta", "index": index,
                                            "delta": {"type": "input_json_delta", "partial_json": orjson.dumps(use["input"]).decode()}})
                                out.append({"type": "content_block_stop", "index": index})
                                index += 1
                            elif kind == "message_delta":
                                self.usage.add(ev.get("usage"))
                                delta = ev.get("delta") or {}
                                stop = (delta.get("stop_reason"), delta.get("stop_sequence"))
                            elif kind == "message_stop":
                                pass
                            else:
                                out.append(ev)
                        if out:
                            yield out
                finally:
                    await streams.close(events)
                if not calls:
                    for ev in self.end(*stop):
                        yield ev
                    return
                results = await self.execute(calls)
                for call, res in zip(calls, results):
                    srv_id = call.pop("_srv_id")
                    yield {"type": "content_block_start", "index": index,
                           "content_block": {"type": res.block["type"], "tool_use_id": srv_id, "content": res.block["content"]}}
                    yield {"type": "content_block_stop", "index": index}
                    index += 1
                if any(b.get("type") == "tool_use" and not self.is_server(b) for b in blocks):
                    for ev in self.end("tool_use", None):
                        yield ev
                    return
                if rounds >= self.max_rounds:
                    for ev in self.end("pause_turn", None):  # the client sends it back to go on
                        yield ev
                    return
                events = await self.next_turn(blocks, calls, results, stream=True)
                rounds += 1

    def end(self, stop_reason: Any, stop_sequence: Any) -> list[dict]:
        delta = {"stop_reason": stop_reason or "end_turn", "stop_sequence": stop_sequence}
        return [{"type": "message_delta", "delta": delta, "usage": self.usage.out()}, {"type": "message_stop"}]


def _accumulate(entry: dict, delta: dict) -> None:
    kind = delta.get("type")
    block = entry["block"]
    if kind == "text_delta":
        block["text"] = (block.get("text") or "") + delta.get("text", "")
    elif kind == "input_json_delta":
        entry["parts"].append(delta.get("partial_json") or "")
    elif kind == "thinking_delta":
        block["thinking"] = (block.get("thinking") or "") + delta.get("thinking", "")
    elif kind == "signature_delta":
        block["signature"] = delta.get("signature", "")


def _finish(entry: dict) -> dict:
    block = entry["block"]
    if block.get("type") in ("tool_use", "server_tool_use"):
        raw = "".join(entry["parts"])
        try:
            value = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            value = {}
        block["input"] = value if isinstance(value, dict) else {}
    return block
