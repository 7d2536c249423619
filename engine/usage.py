"""Metering: the tokens and cost each request used, by model.

A step that knows what a call used (a conversion step reading the upstream's usage, say) adds
it up with `add(used, model, tokens, cost_usd)` into a usage mapping it tells as a fact
(`${{ facts.STEP.usage }}`); a step that runs several turns (a tool loop) `merge`s theirs. The
pipeline declares the request's usage and session in its `access:` mapping (`usage`,
`session`), and when the request ends the HTTP layer reads them and calls `settle` once: the
total goes into the access line, the Prometheus counters `engine_tokens_total{model,kind}` and
`engine_cost_usd_total{model}`, the capture record, and the per-session table behind
`GET /usage?session=ID`. `engine usage` adds up access logs and capture files afterwards.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USAGE_FACT = "usage"
SESSION_FACT = "session"
COST = "cost_usd"
MAX_SESSIONS = 4096
"""Sessions `GET /usage` remembers per process (least recently used ones are forgotten)."""
MAX_SESSION_LENGTH = 128


# -- in a run ---------------------------------------------------------------------------------


def add(used: dict[str, dict[str, Any]], model: str, tokens: Mapping[str, int], cost_usd: float | None = None) -> dict[str, dict[str, Any]]:
    """Add what one call of `model` used to `used` (tokens by kind, and its USD cost if known); returns `used`."""
    entry = used.setdefault(str(model), {})
    for kind, n in tokens.items():
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            entry[kind] = entry.get(kind, 0) + n
        else:
            entry.setdefault(kind, 0)
    cost = entry.pop(COST, None)  # re-added last, so a line reads tokens first
    if cost_usd is not None:
        cost = round((cost or 0.0) + float(cost_usd), 10)
    entry[COST] = cost
    return used


def merge(*usages: Any) -> dict[str, dict[str, Any]] | None:
    """Several runs' usage (None where a run reported none) added up; None when none reported."""
    total: dict[str, dict[str, Any]] = {}
    for used in usages:
        if not isinstance(used, Mapping):
            continue
        for model, entry in used.items():
            if isinstance(entry, Mapping):
                add(total, model, {k: v for k, v in entry.items() if k != COST}, entry.get(COST))
    return total or None


def session_name(session: Any) -> str | None:
    """A client session id fit to key `GET /usage?session=` and to log, else None."""
    if isinstance(session, str) and 0 < len(session) <= MAX_SESSION_LENGTH and session.isprintable():
        return session
    return None


def settle(used: Any, session: str | None = None) -> dict[str, dict[str, Any]] | None:
    """Count a finished request's usage in the metrics and its session's total (call once)."""
    if not isinstance(used, dict) or not used:
        return None
    usage = used
    for model, entry in usage.items():
        for kind, n in entry.items():
            if n and kind != COST:
                _counter("TOKENS", model, kind).inc(n)
        if entry.get(COST):
            _counter("COST", model).inc(entry[COST])
    if session:
        SESSIONS.add(session, usage)
    return usage


_children: dict[tuple[str, ...], Any] = {}


def _counter(name: str, *labels: str) -> Any:
    """A labelled Prometheus counter, kept: `labels()` costs a lock and a tuple every call."""
    child = _children.get((name, *labels))
    if child is None:
        from engine import metrics

        child = _children[(name, *labels)] = getattr(metrics, name).labels(*labels)
    return child


# -- totals -----------------------------------------------------------------------------------


@dataclass
class Total:
    """Requests, tokens by kind and cost of a group of requests."""

    requests: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    unpriced: int = 0  # requests in the group whose cost was not known

    def add(self, entry: Mapping[str, Any], priced: bool | None = None) -> None:
        """Count one request: `entry` is tokens by kind plus `cost_usd` (None: not known).
        `priced=False` marks a cost that is only partly known."""
        self.requests += 1
        for kind, n in entry.items():
            if kind != COST and isinstance(n, int) and not isinstance(n, bool):
                self.tokens[kind] = self.tokens.get(kind, 0) + n
        cost = entry.get(COST)
        known = isinstance(cost, (int, float)) and not isinstance(cost, bool)
        if known:
            self.cost_usd += cost
        if not known or priced is False:
            self.unpriced += 1

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "tokens": dict(self.tokens), COST: round(self.cost_usd, 6), "unpriced": self.unpriced}


def add_by_model(by_model: dict[str, Total], usage: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Count one request's usage in `by_model`; return its totals over models and whether
    its whole cost is known."""
    merged: dict[str, Any] = {COST: 0.0}
    priced = True
    for model, entry in usage.items():
        if not isinstance(entry, Mapping):
            continue
        total = by_model.get(model)
        if total is None:
            total = by_model[model] = Total()
        total.add(entry)
        for kind, n in entry.items():
            if kind != COST and isinstance(n, int) and not isinstance(n, bool):
                merged[kind] = merged.get(kind, 0) + n
        cost = entry.get(COST)
        if isinstance(cost, (int, float)) and not isinstance(cost, bool):
            merged[COST] += cost
        else:
            priced = False
    return merged, priced


@dataclass
class Record:
    """One request's usage as an access log line or a capture record tells it."""

    day: str  # YYYY-MM-DD, UTC
    usage: dict[str, dict[str, Any]]
    session: str | None = None


@dataclass
class Summary:
    by_model: dict[str, Total] = field(default_factory=dict)
    by_day: dict[str, Total] = field(default_factory=dict)
    total: Total = field(default_factory=Total)
    records: int = 0
    skipped: int = 0  # lines that were neither an access line nor a capture record
    problems: list[str] = field(default_factory=list)

    def add(self, record: Record) -> None:
        self.records += 1
        merged, priced = add_by_model(self.by_model, record.usage)
        self.by_day.setdefault(record.day, Total()).add(merged, priced)
        self.total.add(merged, priced)

    def as_dict(self) -> dict[str, Any]:
        return {
            "by_model": {m: t.as_dict() for m, t in sorted(self.by_model.items())},
            "by_day": {d: t.as_dict() for d, t in sorted(self.by_day.items())},
            "total": self.total.as_dict(),
            "records": self.records,
        }


class SessionBook:
    """Usage totals by session for `GET /usage`, bounded, least recently used forgotten first.

    Per process: with `engine serve --workers N` each worker knows the requests it served."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self.limit = limit
        self._items: OrderedDict[str, tuple[dict[str, Total], Total, float]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, session: str, usage: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            found = self._items.pop(session, None)
            models, total = (found[0], found[1]) if found is not None else ({}, Total())
            merged, priced = add_by_model(models, usage)
            total.add(merged, priced)
            self._items[session] = (models, total, time.time())
            if len(self._items) > self.limit:
                self._items.popitem(last=False)

    def get(self, session: str) -> dict[str, Any] | None:
        """`{"session", "models": {model: totals}, "total": totals, "updated_at"}`, or None."""
        with self._lock:
            found = self._items.get(session)
            if found is None:
                return None
            models, total, updated = found
            return {
                "session": session,
                "models": {m: t.as_dict() for m, t in models.items()},
                "total": total.as_dict(),
                "updated_at": updated,
            }


SESSIONS = SessionBook()


async def endpoint(request: Any) -> Any:
    """`GET /usage?session=ID`: one session's totals. Only by id (the client's own, unguessable):
    there is no listing of other sessions."""
    import orjson
    from starlette.responses import Response

    session = request.query_params.get("session", "")
    if not session:
        return Response(orjson.dumps({"error": "send ?session=ID"}), status_code=400, media_type="application/json")
    found = SESSIONS.get(session)
    if found is None:
        return Response(orjson.dumps({"error": "no usage recorded for this session (yet)", "session": session}), status_code=404, media_type="application/json")
    return Response(orjson.dumps(found), media_type="application/json")


# -- reading logs and captures ----------------------------------------------------------------


def _day_of_timestamp(value: Any) -> str | None:
    if isinstance(value, str) and len(value) >= 10:
        return value[:10]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _dt.datetime.fromtimestamp(value, _dt.timezone.utc).strftime("%Y-%m-%d")
    return None


def parse_line(data: Any) -> Record | None:
    """A Record from one parsed JSON line (an access line or a capture record), else None."""
    if not isinstance(data, dict):
        return None
    usage = data.get(USAGE_FACT)
    if not isinstance(usage, dict) or not usage:
        return None
    if str(data.get("format", "")).startswith("engine-capture/"):
        day = _day_of_timestamp(data.get("started_at"))
    elif data.get("event") == "request":
        day = _day_of_timestamp(data.get("timestamp"))
    else:
        return None
    session = data.get(SESSION_FACT)
    return Record(day or "unknown", usage, session if isinstance(session, str) else None)


def files_of(paths: Iterable[str | Path]) -> Iterator[Path]:
    """The files named, and every regular file directly inside the directories named."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        else:
            yield p


def summarise(paths: Iterable[str | Path], session: str | None = None, since: str | None = None) -> Summary:
    """Add up the usage in JSON access logs and capture files (or directories of them).

    Lines that are not JSON, or JSON without usage (console log lines, other events), are
    skipped and counted; `session` keeps one client session's requests, `since` (YYYY-MM-DD)
    the days from then on."""
    import orjson

    summary = Summary()
    for f in files_of(paths):
        try:
            handle = open(f, "rb")
        except OSError as exc:
            summary.problems.append(f"{f}: cannot read: {exc.strerror}")
            continue
        with handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = parse_line(orjson.loads(line))
                except orjson.JSONDecodeError:
                    record = None
                if record is None:
                    summary.skipped += 1
                    continue
                if session is not None and record.session != session:
                    continue
                if since is not None and record.day < since:
                    continue
                summary.add(record)
    return summary


# -- showing ----------------------------------------------------------------------------------

KIND_ORDER = ("input", "output", "cache_read", "cache_write")


def kinds_of(summary: Summary) -> list[str]:
    seen = {k for t in summary.by_model.values() for k in t.tokens}
    return [k for k in KIND_ORDER if k in seen] + sorted(seen - set(KIND_ORDER))


def money(value: float) -> str:
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def table(summary: Summary) -> str:
    """The summary as two aligned tables, by model and by day, with a total line."""
    kinds = kinds_of(summary) or list(KIND_ORDER[:2])
    head = ["requests", *(k.replace("_", " ") for k in kinds), "cost"]

    def rows(title: str, groups: Mapping[str, Total]) -> list[list[str]]:
        out = [[title, *head]]
        for name, t in sorted(groups.items()):
            cost = money(t.cost_usd) + ("*" if t.unpriced else "")
            out.append([name, f"{t.requests:,}", *(f"{t.tokens.get(k, 0):,}" for k in kinds), cost])
        return out

    t = summary.total
    total = ["total", f"{t.requests:,}", *(f"{t.tokens.get(k, 0):,}" for k in kinds), money(t.cost_usd) + ("*" if t.unpriced else "")]
    blocks = [rows("model", summary.by_model), rows("day (UTC)", summary.by_day) + [total]]
    widths = [max(len(r[i]) for b in blocks for r in b) for i in range(len(head) + 1)]
    lines: list[str] = []
    for block in blocks:
        for r in block:
            lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip())
        lines.append("")
    if t.unpriced:
        lines.append(f"* {t.unpriced} request{'s' if t.unpriced != 1 else ''} with no known cost (no upstream cost, no price in the model profile): costs shown are a lower bound")
    return "\n".join(lines).rstrip() + "\n"


def compact(n: int) -> str:
    """1234 -> 1.2k, 1234567 -> 1.2M."""
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"
