"""Drawings the console serves as inline SVG: a pipeline with a run over it, a waterfall of
a run's steps, and the small charts of the usage page.

All drawn here, server-side, from networkx and arithmetic: no Graphviz (which `engine graph
--format svg` needs), no chart library, nothing a browser has to download. The layout is the
classic layered one: each step sits one layer below the deepest step it uses, and a layer's
steps are ordered by the mean position of what they use (two passes), which keeps the
pipelines this project ships free of crossings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
from markupsafe import Markup, escape

from engine.check import Plan
from engine.graph import _edges, _file_order, _notes, _output_deps, _uses_input

NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 184, 56, 28, 44, 16
COLORS = {  # fill, stroke: the same states `engine graph --trace` colours
    "ran": ("#d9f2d9", "#2e7d32"),
    "retried": ("#ffe9c6", "#ef6c00"),
    "failed": ("#f8d0d0", "#c62828"),
    "skipped": ("#eeeeee", "#9e9e9e"),
    "notrun": ("#ffffff", "#bdbdbd"),
    "plain": ("#eef3fb", "#4a6fa5"),
    "io": ("#f5f5f5", "#616161"),
}


@dataclass(frozen=True, slots=True)
class StepState:
    """What one step did in a run: outcome, attempts, milliseconds (see `state_class`)."""

    outcome: str
    attempts: int
    ms: float

    @property
    def css(self) -> str:
        if self.outcome == "skipped":
            return "skipped"
        if self.outcome in {"error", "timeout"}:
            return "failed"
        if ":" in self.outcome or self.outcome == "open":  # an attempt the step went past (fallback:503, retry:429)
            return "retried"
        return "retried" if self.attempts > 1 else "ran"

    def describe(self) -> str:
        if self.outcome == "skipped":
            return "skipped"
        retried = f", {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{self.outcome} {self.ms:.1f} ms{retried}"


def states(record: dict[str, Any] | None, pipeline: str) -> dict[str, StepState]:
    """Each step of `pipeline` in a run record's trace (a step run twice: its last run)."""
    out: dict[str, StepState] = {}
    for t in (record or {}).get("trace") or []:
        if t.get("pipeline") == pipeline:
            ms = (float(t.get("end") or 0) - float(t.get("start") or 0)) * 1000
            out[str(t.get("step"))] = StepState(str(t.get("outcome")), int(t.get("attempts") or 0), max(ms, 0.0))
    return out


def _esc(text: Any) -> str:
    return str(escape(str(text)))


def _clip(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


DUMMY_W = 14


def layout(plan: Plan) -> tuple[dict[str, tuple[float, float]], list[list[tuple[float, float]]], float, float]:
    """Node centres, edges as point lists (bends where an edge crosses a layer), width, height.

    An edge that spans several layers gets a virtual point in each layer it crosses; the
    points take part in ordering like steps, so long edges go around boxes, not through them.
    Long edges from one step share their points: one trunk that branches where it arrives.
    """
    g = nx.DiGraph()
    steps = _file_order(plan)
    g.add_nodes_from(["input", *steps, "output"])
    g.add_edges_from([("input", n) for n in _uses_input(plan)] + _edges(plan) + [(d, "output") for d in _output_deps(plan)])
    if g.degree("input") == 0:
        g.remove_node("input")
    layer: dict[str, int] = {}
    for n in nx.topological_sort(g):
        preds = list(g.predecessors(n))
        layer[n] = 1 + max(layer[p] for p in preds) if preds else (0 if n == "input" or "input" not in g else 1)
    chains: list[list[str]] = []  # each edge as the nodes it passes, virtual ones included
    h = nx.DiGraph()
    h.add_nodes_from(g.nodes)
    for a, b in g.edges:
        chain = [a] + [f"\0{a}\0{d}" for d in range(layer[a] + 1, layer[b])] + [b]  # one trunk per source
        for d, v in enumerate(chain[1:-1], layer[a] + 1):
            layer[v] = d
        nx.add_path(h, chain)
        chains.append(chain)
    rows: dict[int, list[str]] = {}
    for n in h.nodes:  # file order within a layer to begin with
        rows.setdefault(layer[n], []).append(n)
    for _ in range(3):
        pos = {n: i for row in rows.values() for i, n in enumerate(row)}
        for depth in sorted(rows)[1:]:
            def centre(n: str) -> float:
                preds = list(h.predecessors(n))
                return sum(pos[p] for p in preds) / len(preds) if preds else pos[n]

            rows[depth].sort(key=centre)
            pos.update({n: i for i, n in enumerate(rows[depth])})

    def w(n: str) -> float:
        return DUMMY_W if n.startswith("\0") else NODE_W

    spans = {d: sum(w(n) for n in row) + (len(row) - 1) * GAP_X for d, row in rows.items()}
    width = MARGIN * 2 + max(spans.values())
    coords: dict[str, tuple[float, float]] = {}
    for depth, row in rows.items():
        x = (width - spans[depth]) / 2
        for n in row:
            coords[n] = (x + w(n) / 2, MARGIN + depth * (NODE_H + GAP_Y) + NODE_H / 2)
            x += w(n) + GAP_X
    height = MARGIN * 2 + (max(rows) + 1) * NODE_H + max(rows) * GAP_Y
    paths = [[coords[n] for n in chain] for chain in chains]
    return {n: c for n, c in coords.items() if not n.startswith("\0")}, paths, width, height


def _edge_path(points: list[tuple[float, float]]) -> str:
    """A smooth path from the bottom of the first box through the bends to the top of the last."""
    (x, y), rest = points[0], points[1:]
    d = [f"M{x:.1f},{y + NODE_H / 2:.1f}"]
    py = y + NODE_H / 2
    for i, (nx_, ny) in enumerate(rest):
        last = i == len(rest) - 1
        ty = ny - NODE_H / 2 - (1 if last else 0)
        mid = (py + ty) / 2
        d.append(f"C{x:.1f},{mid:.1f} {nx_:.1f},{mid:.1f} {nx_:.1f},{ty:.1f}")
        if not last:  # straight down through the layer the edge crosses
            d.append(f"L{nx_:.1f},{ny + NODE_H / 2:.1f}")
            ty = ny + NODE_H / 2
        x, py = nx_, ty
    return " ".join(d)


def pipeline_svg(plan: Plan, run: dict[str, StepState] | None = None, *, anchor: str = "step") -> Markup:
    """`plan` as SVG; with `run`, each step coloured by what it did, its time under its name.

    Every step is a link to `#{anchor}-{pipeline}.{step}` (the run page's row for it) and
    carries `id="node-{pipeline}.{step}"` and `data-state`, so a page (and a test) can find it.
    """
    coords, edges, width, height = layout(plan)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="pipeline-graph" data-pipeline="{_esc(plan.name)}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" role="img" aria-label="pipeline {_esc(plan.name)}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#78909c"/></marker></defs>',
    ]
    for points in edges:
        out.append(f'<path class="edge" d="{_edge_path(points)}" fill="none" stroke="#90a4ae" stroke-width="1.4" marker-end="url(#arrow)"/>')
    for name, (cx, cy) in coords.items():
        x, y = cx - NODE_W / 2, cy - NODE_H / 2
        if name in {"input", "output"}:
            fill, stroke = COLORS["io"]
            out.append(f'<g class="io"><rect x="{x:.1f}" y="{y + 12:.1f}" width="{NODE_W}" height="{NODE_H - 24}" rx="16" fill="{fill}" stroke="{stroke}"/>')
            out.append(f'<text x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle" class="label">{name}</text></g>')
            continue
        node = plan.nodes[name]
        state = run.get(name) if run is not None else None
        css = state.css if state is not None else ("notrun" if run is not None else "plain")
        fill, stroke = COLORS[css]
        notes = _notes(node)
        line3 = state.describe() if state is not None else ("not run" if run is not None else "; ".join(notes))
        ident = f"{plan.name}.{name}"
        dash = ' stroke-dasharray="4 3"' if css == "skipped" or node.cond is not None and run is None else ""
        title = "\n".join([f"{name} = {node.info.name}", *notes, *([line3] if run is not None else [])])
        out.append(
            f'<a href="#{anchor}-{_esc(ident)}" class="step-link"><g class="step {css}" id="node-{_esc(ident)}" data-step="{_esc(name)}" data-state="{css}">'
            f"<title>{_esc(title)}</title>"
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="{2.2 if css == "failed" else 1.4}"{dash}/>'
            f'<text x="{cx:.1f}" y="{y + 17:.1f}" text-anchor="middle" class="label">{_esc(_clip(name))}</text>'
            f'<text x="{cx:.1f}" y="{y + 32:.1f}" text-anchor="middle" class="uses">{_esc(_clip(node.info.name, 30))}</text>'
            f'<text x="{cx:.1f}" y="{y + 47:.1f}" text-anchor="middle" class="state">{_esc(_clip(line3, 30))}</text>'
            "</g></a>"
        )
    out.append("</svg>")
    return Markup("".join(out))


def waterfall_svg(record: dict[str, Any]) -> Markup:
    """Each step of a run as a bar on the run's time axis; recorded calls as ticks on their row."""
    trace = [t for t in record.get("trace") or [] if t.get("outcome") != "skipped"]
    skipped = [t for t in record.get("trace") or [] if t.get("outcome") == "skipped"]
    rows = sorted(trace, key=lambda t: (float(t.get("start") or 0), float(t.get("end") or 0))) + skipped
    if not rows:
        return Markup('<p class="muted">No step ran.</p>')
    total = max([float(record.get("duration") or 0)] + [float(t.get("end") or 0) for t in rows]) or 1e-6
    label_w, bar_w, row_h, top = 210, 560, 20, 22
    height = top + row_h * len(rows) + 8
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="waterfall" viewBox="0 0 {label_w + bar_w + 110} {height}" width="{label_w + bar_w + 110}" height="{height}">']
    for i in range(5):  # the time axis
        x = label_w + bar_w * i / 4
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 4}" stroke="#eceff1"/>')
        out.append(f'<text x="{x:.1f}" y="{top - 9}" text-anchor="middle" class="axis">{total * 1000 * i / 4:.1f} ms</text>')
    calls: dict[str, list[dict[str, Any]]] = {}
    for c in record.get("calls") or []:
        calls.setdefault(f"{c.get('pipeline')}.{c.get('step')}", []).append(c)
    for i, t in enumerate(rows):
        ident = f"{t.get('pipeline')}.{t.get('step')}"
        y = top + i * row_h
        start, end = float(t.get("start") or 0), float(t.get("end") or 0)
        state = StepState(str(t.get("outcome")), int(t.get("attempts") or 0), (end - start) * 1000)
        fill, stroke = COLORS[state.css]
        out.append(f'<a href="#step-{_esc(ident)}"><text x="{label_w - 8}" y="{y + 14}" text-anchor="end" class="wf-label">{_esc(_clip(ident, 30))}</text></a>')
        if state.outcome == "skipped":
            out.append(f'<text x="{label_w + 4}" y="{y + 14}" class="axis">skipped</text>')
            continue
        x = label_w + bar_w * start / total
        w = max(bar_w * (end - start) / total, 2.0)
        out.append(f'<rect class="wf-bar {state.css}" x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="{fill}" stroke="{stroke}"><title>{_esc(ident)}: {_esc(state.describe())}</title></rect>')
        for n, c in enumerate(calls.get(ident, []), 1):
            cx = label_w + bar_w * float(c.get("at") or 0) / total
            colour = "#c62828" if c.get("error") else "#1565c0"
            out.append(f'<path d="M{cx:.1f},{y + 2} l4,-4 l-8,0 z" fill="{colour}"><title>attempt {n} at {float(c.get("at") or 0) * 1000:.1f} ms</title></path>')
        out.append(f'<text x="{x + w + 4:.1f}" y="{y + 14}" class="axis">{_esc(state.describe())}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def bar_chart(items: Sequence[tuple[str, float]], *, unit: str = "", empty: str = "nothing yet", css: str = "bars") -> Markup:
    """Horizontal bars, one per (label, value), longest first."""
    items = sorted(items, key=lambda kv: -kv[1])[:20]
    if not items or all(v == 0 for _, v in items):
        return Markup(f'<p class="muted chart-empty">{_esc(empty)}</p>')
    top = max(v for _, v in items) or 1
    label_w, bar_w, row_h = 220, 380, 22
    height = row_h * len(items) + 6
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {css}" viewBox="0 0 {label_w + bar_w + 120} {height}" width="{label_w + bar_w + 120}" height="{height}">']
    for i, (label, value) in enumerate(items):
        y = i * row_h + 3
        w = max(bar_w * value / top, 1.0)
        out.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end" class="wf-label">{_esc(_clip(label, 34))}</text>')
        out.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 6}" fill="#5c8dd6"><title>{_esc(label)}: {_fmt(value)}{unit}</title></rect>')
        out.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 14}" class="axis">{_fmt(value)}{_esc(unit)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def column_chart(columns: Sequence[tuple[str, float, float]], *, labels_every: int = 1, legend: tuple[str, str] = ("requests", "errors"), empty: str = "nothing yet") -> Markup:
    """Vertical columns over time: (label, total, part), the part (errors, say) drawn inside."""
    if not columns or all(t == 0 for _, t, _ in columns):
        return Markup(f'<p class="muted chart-empty">{_esc(empty)}</p>')
    top = max(t for _, t, _ in columns) or 1
    col_w = max(6, min(40, 600 // len(columns)))
    plot_h, left, bottom = 120, 48, 30
    width, height = left + col_w * len(columns) + 10, plot_h + bottom + 18
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart columns" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    out.append(f'<text x="{left - 6}" y="22" text-anchor="end" class="axis">{_fmt(top)}</text><text x="{left - 6}" y="{plot_h + 18}" text-anchor="end" class="axis">0</text>')
    out.append(f'<line x1="{left}" y1="{plot_h + 18}" x2="{width - 6}" y2="{plot_h + 18}" stroke="#b0bec5"/>')
    for i, (label, total, part) in enumerate(columns):
        x = left + i * col_w
        h = plot_h * total / top
        ph = plot_h * part / top
        out.append(f'<rect x="{x + 1}" y="{plot_h + 18 - h:.1f}" width="{col_w - 2}" height="{h:.1f}" fill="#5c8dd6"><title>{_esc(label)}: {_fmt(total)} {legend[0]}, {_fmt(part)} {legend[1]}</title></rect>')
        if part:
            out.append(f'<rect x="{x + 1}" y="{plot_h + 18 - ph:.1f}" width="{col_w - 2}" height="{ph:.1f}" fill="#d84343"/>')
        if i % labels_every == 0:
            out.append(f'<text x="{x + col_w / 2:.1f}" y="{plot_h + 32}" text-anchor="middle" class="axis">{_esc(label)}</text>')
    out.append(f'<rect x="{left}" y="{height - 10}" width="9" height="9" fill="#5c8dd6"/><text x="{left + 13}" y="{height - 2}" class="axis">{_esc(legend[0])}</text>')
    out.append(f'<rect x="{left + 90}" y="{height - 10}" width="9" height="9" fill="#d84343"/><text x="{left + 103}" y="{height - 2}" class="axis">{_esc(legend[1])}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.2f}"
