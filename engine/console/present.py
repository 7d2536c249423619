"""A run record shaped for the run page, the pipelines' check result, and browser replays.

Everything rendered from a record passes through `scrubbed` (registered secret values and
secret-looking strings masked) on top of the redaction the record got when it was made, so
no key reaches a page even when a step put one where no name gives it away.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from markupsafe import Markup

from engine import logs
from engine.check import Plan
from engine.console import svg
from engine.console.runs import RunEntry
from engine.errors import SpecErrors

MAX_BLOCK = 200_000
"""Characters of one JSON block shown on a page; the rest is cut (the capture keeps it all)."""
MAX_ITEMS = 400
"""Stream items or events listed per stream."""


def scrubbed(text: str) -> str:
    return logs.scrub(text)


def pretty(value: Any, *, compact: bool = False) -> str:
    """JSON of a recorded value, indented unless `compact` (a text body that is JSON is shown as JSON)."""
    value = _decoded(value)
    try:
        text = orjson.dumps(value, option=0 if compact else orjson.OPT_INDENT_2, default=str).decode()
    except TypeError:
        text = repr(value)
    text = scrubbed(text)
    if len(text) > MAX_BLOCK:
        text = text[:MAX_BLOCK] + f"\n… cut here: {len(text) - MAX_BLOCK:,} more characters are in the record"
    return text


def _decoded(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$bytes"}:
        value = value["$bytes"]
    if isinstance(value, str) and value[:1] in {"{", "["}:
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def fact(value: Any) -> str:
    """An access-line value as a table cell shows it."""
    if isinstance(value, float):
        return f"{value:,.6f}".rstrip("0").rstrip(".") if abs(value) < 1 else f"{value:,.2f}"
    if isinstance(value, (dict, list)):
        return scrubbed(orjson.dumps(value).decode())
    return scrubbed(str(value))


def _events(chunks: list[Any]) -> list[dict[str, Any]]:
    """Stream chunks `[offset, text]` as events with the offset of the chunk that ended each."""
    out: list[dict[str, Any]] = []
    buffer = ""
    for chunk in chunks[: MAX_ITEMS * 4]:
        offset, item = (chunk[0], chunk[1]) if isinstance(chunk, list) and len(chunk) == 2 else (None, chunk)
        if not isinstance(item, str):
            out.append({"at": offset, "event": "", "data": pretty(item, compact=True)})
            continue
        buffer += item.replace("\r\n", "\n")
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            if not block.strip():
                continue
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                name, _, value = line.partition(":")
                fields[name] = fields.get(name, "") + value.removeprefix(" ")
            data = fields.get("data", block)
            out.append({"at": offset, "event": fields.get("event", ""), "data": pretty(data, compact=True)})
    if buffer.strip():
        out.append({"at": None, "event": "", "data": scrubbed(buffer)})
    return out[:MAX_ITEMS]


def _attempt(n: int, call: dict[str, Any]) -> dict[str, Any]:
    error = call.get("error") or None
    attrs = (error or {}).get("attrs") or {}
    status = attrs.get("status") if isinstance(attrs, dict) else None
    view: dict[str, Any] = {
        "n": n,
        "at_ms": float(call.get("at") or 0) * 1000,
        "ok": error is None,
        "status": status,
        "kind": attrs.get("kind") if isinstance(attrs, dict) else None,
        "error": scrubbed(str(error.get("message", ""))) if error else None,
        "error_class": str(error.get("class", "")).rpartition(":")[2] if error else None,
        "input": pretty(call.get("input")),
        "output": pretty(call["output"]) if "output" in call else None,
        "stream_items": [{"at_ms": float(i[0]) * 1000, "data": pretty(i[1], compact=True)} for i in (call.get("items") or [])[:MAX_ITEMS]],
        "item_count": len(call.get("items") or []),
        "end": call.get("end"),
        "items_not_recorded": call.get("stream") == "not recorded",
    }
    return view


def run_view(entry: RunEntry, plans: dict[str, Plan]) -> dict[str, Any]:
    """What the run page shows of one run."""
    record = entry.full_record() or {}
    if entry.running and entry.live_trace is not None:  # what it did so far
        record = {**record, "trace": entry.live_trace(), "duration": max(time.time() - entry.started_at, 0.0)}
    trace = record.get("trace") or []
    ran = list(dict.fromkeys([record.get("pipeline", entry.pipeline), *[t.get("pipeline") for t in trace]]))
    graphs = []
    for name in ran:
        plan = plans.get(name)
        if plan is not None:
            graphs.append({"name": name, "svg": svg.pipeline_svg(plan, svg.states(record, name) if record else None)})
    steps = []
    for t in trace:
        start, end = float(t.get("start") or 0), float(t.get("end") or 0)
        state = svg.StepState(str(t.get("outcome")), int(t.get("attempts") or 0), (end - start) * 1000)
        ident = f"{t.get('pipeline')}.{t.get('step')}"
        # A candidate's or a retry's failed attempt (`fallback:503`, `retry:429`, `open`) has a
        # row of its own before the step's final one, which keeps the step's anchor.
        attempt_row = ":" in state.outcome or state.outcome == "open"
        row = f"{ident}-attempt-{state.attempts}" if attempt_row else ident
        steps.append({"id": ident, "row": row, "pipeline": t.get("pipeline"), "step": t.get("step"), "outcome": state.outcome, "attempts": state.attempts, "start_ms": start * 1000, "ms": state.ms, "css": state.css})
    calls: dict[str, list[dict[str, Any]]] = {}
    for c in record.get("calls") or []:
        ident = f"{c.get('pipeline')}.{c.get('step')}"
        calls.setdefault(ident, []).append(_attempt(len(calls.get(ident, [])) + 1, c))
    failed = [s["id"] for s in steps if s["css"] == "failed"]
    output = record.get("output") if isinstance(record.get("output"), dict) else None
    answer = None
    if output is not None:
        answer = {"status": output.get("status"), "headers": pretty(output.get("headers") or {})}
        if "stream" in output:
            answer["events"] = _events(output.get("stream") or [])
        else:
            answer["body"] = pretty(output.get("body"))
    inp = record.get("input") if isinstance(record.get("input"), dict) else None
    request = None
    if inp is not None:
        request = {
            "line": f"{inp.get('method', '')} {inp.get('path', '')}".strip(),
            "headers": pretty(inp.get("headers") or {}),
            "query": inp.get("query") or {},
            "body": pretty(inp.get("body")),
            "client": inp.get("client"),
        }
    elif record:
        request = {"line": "", "headers": "", "query": {}, "body": pretty(record.get("input")), "client": None}
    return {
        "entry": entry,
        "summary": entry.summary(),
        "has_record": bool(record),
        "graphs": graphs,
        "waterfall": svg.waterfall_svg(record) if trace else Markup(""),
        "steps": steps,
        "calls": calls,
        "failed": failed,
        "request": request,
        "answer": answer,
        "duration_ms": float(record["duration"]) * 1000 if isinstance(record.get("duration"), (int, float)) else entry.facts.get("duration_ms"),
    }


def plan_dirs(plans: dict[str, Plan]) -> list[str]:
    """The directories the loaded pipelines came from."""
    return sorted({str(Path(p.file).parent) for p in plans.values()})


def check_files(paths: list[str], env: dict[str, str] | None) -> dict[str, Any]:
    """`engine check` on the pipeline files as they are on disk now (blocking: in a thread)."""
    from engine.executor import load_plans

    try:
        plans = load_plans(paths, env=env)
    except SpecErrors as exc:
        return {"ok": False, "paths": paths, "errors": [scrubbed(str(e)) for e in exc.errors]}
    except Exception as exc:  # a file that cannot be read at all
        return {"ok": False, "paths": paths, "errors": [scrubbed(f"{type(exc).__name__}: {exc}")]}
    return {"ok": True, "paths": paths, "lines": [f"{p.file}: OK ({len(p.nodes)} steps{', ' + ', '.join(f'{m} {r}' for m, r in p.routes) if p.routes else ''})" for p in plans]}


async def replay(engine: Any, entries: list[RunEntry]) -> list[dict[str, Any]]:
    """Replay runs against a private engine with the currently loaded pipelines, as `engine replay`."""
    from engine.executor import Engine
    from engine.replay import Captured, replay_one

    copy = Engine(list(engine.plans.values()))
    copy.env = engine.env
    results = []
    try:
        for e in entries:
            label = f"{e.request_id} ({e.pipeline})"
            record = e.full_record()
            if record is None:
                results.append({"key": e.key, "label": label, "skipped": "its record is no longer kept in memory", "same": False, "changes": [], "ms": 0.0})
                continue
            r = await replay_one(copy, Captured(e.source, 0, record))
            changes = [scrubbed(c) for c in r.changes]  # the lines `engine replay` prints
            results.append({"key": e.key, "label": label, "skipped": r.skipped, "same": r.same and not r.skipped, "changes": changes, "ms": r.seconds * 1000})
    finally:
        await copy.aclose()
    return results
