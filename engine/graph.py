"""Drawing a pipeline: plain text, Mermaid (renders on GitHub), Graphviz dot, and SVG/PNG.

Every drawing has the run input, each step (its name and the step it uses, with `if`,
`retry`, `timeout`, `limit`, `record` and the `vars` it reads noted) and the output, with an edge wherever a
value flows. The renderings are deterministic (steps in file order), so they can be
compared with golden files in tests.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from engine.check import Node, Plan, iter_refs


@dataclass(frozen=True, slots=True)
class StepRun:
    outcome: str
    attempts: int
    ms: float


@dataclass(frozen=True, slots=True)
class Trace:
    """What happened to each step in one captured run (see `engine graph --trace`)."""

    request_id: str
    steps: dict[str, StepRun]

    @classmethod
    def from_record(cls, record: dict[str, Any], pipeline: str) -> Trace:
        """The steps of `pipeline` in one captured run (a sub-pipeline's too, when it ran)."""
        steps = {}
        for t in record.get("trace") or []:
            if t.get("pipeline", record.get("pipeline")) == pipeline:
                steps[t["step"]] = StepRun(t["outcome"], int(t.get("attempts") or 0), (t["end"] - t["start"]) * 1000)
        return cls(record.get("request_id", "?"), steps)

    def describe(self, name: str) -> str:
        run = self.steps.get(name)
        if run is None:
            return "did not run"
        if run.outcome == "skipped":
            return "skipped"
        retried = f", {run.attempts} attempts" if run.attempts > 1 else ""
        return f"{run.outcome} {run.ms:.1f} ms{retried}"

    def css_class(self, name: str) -> str:
        run = self.steps.get(name)
        if run is None:
            return "notrun"
        if run.outcome == "skipped":
            return "skipped"
        if run.outcome in {"error", "timeout"}:
            return "failed"
        return "retried" if run.attempts > 1 else "ran"


_CLASS_STYLES = {
    "ran": ("fill:#d9f2d9,stroke:#2e7d32", "#d9f2d9"),
    "retried": ("fill:#ffe9c6,stroke:#ef6c00", "#ffe9c6"),
    "failed": ("fill:#f8d0d0,stroke:#c62828", "#f8d0d0"),
    "skipped": ("fill:#eeeeee,stroke:#9e9e9e,stroke-dasharray: 4 4", "#eeeeee"),
    "notrun": ("fill:#ffffff,stroke:#bdbdbd", "#ffffff"),
}


def _notes(node: Node) -> list[str]:
    notes = []
    if node.cond is not None:
        notes.append(f"if {node.cond.text.removeprefix('${{').removesuffix('}}').strip()}")
    if node.candidates is not None:
        notes.append(f"over {node.candidates.text.removeprefix('${{').removesuffix('}}').strip()}")
    if node.breaker is not None:
        notes.append(f"breaker {node.breaker}")
    if node.retry is not None:
        notes.append(f"retry x{node.retry.attempts}")
    if node.timeout is not None:
        notes.append(f"timeout {node.timeout:g}s")
    if node.limit is not None:
        notes.append(f"limit {node.limit}")
    if node.record:
        notes.append("record")
    if node.vars:
        notes.append("vars " + ", ".join(node.vars))
    return notes


def _uses_input(plan: Plan) -> list[str]:
    users = []
    for name in _file_order(plan):
        node = plan.nodes[name]
        values = [ref for _, ref in node.refs] + [r for _, v in node.nested for r in iter_refs(v)]
        if node.cond is not None:
            values.append(node.cond)
        values += list(iter_refs(node.else_value))
        if any(r.step is None for r in values):
            users.append(name)
    return users


def _file_order(plan: Plan) -> list[str]:
    return [n for n in plan.graph.nodes if n in plan.nodes]


def _edges(plan: Plan) -> list[tuple[str, str]]:
    return [(d, name) for name in _file_order(plan) for d in plan.nodes[name].deps]


def _output_deps(plan: Plan) -> list[str]:
    return list(dict.fromkeys(r.step for r in iter_refs(plan.output) if r.step is not None))


def _access_sources(plan: Plan) -> dict[str, list[str]]:
    """The access line's fields by where they come from (a step, or `input`), in file order."""
    out: dict[str, list[str]] = {}
    for field_name, value in plan.access.items():
        for r in iter_refs(value):
            out.setdefault(r.step if r.step is not None else "input", []).append(field_name)
    return out


def to_text(plan: Plan, trace: Trace | None = None) -> str:
    lines = [f"pipeline {plan.name}" + (f"  ({', '.join(f'{m} {p}' for m, p in plan.routes)})" if plan.routes else "")]
    if trace is not None:
        lines[0] += f"  run {trace.request_id}"
    for name in plan.order:
        node = plan.nodes[name]
        src = [d for d in node.deps] + (["input"] if name in _uses_input(plan) else [])
        notes = _notes(node)
        lines.append(
            f"  {name} = {node.info.name}"
            + (f"  <- {', '.join(src)}" if src else "")
            + (f"  [{'; '.join(notes)}]" if notes else "")
            + (f"  -- {trace.describe(name)}" if trace is not None else "")
        )
    lines.append(f"  output <- {', '.join(_output_deps(plan))}")
    if plan.access:
        sources = [f"{src} ({', '.join(fields)})" for src, fields in _access_sources(plan).items()]
        lines.append(f"  access <- {'; '.join(sources)}")
    return "\n".join(lines) + "\n"


def _mermaid_id(name: str) -> str:
    return "s_" + "".join(c if c.isalnum() else "_" for c in name)


def to_mermaid(plan: Plan, trace: Trace | None = None) -> str:
    lines = ["flowchart TD", '  input(["input"])']
    for name in _file_order(plan):
        node = plan.nodes[name]
        label = f"{name}<br/><small>{node.info.name}</small>"
        notes = _notes(node) + ([trace.describe(name)] if trace is not None else [])
        if notes:
            label += f"<br/><small>{'; '.join(notes)}</small>"
        shape = ('{{"', '"}}') if node.cond is not None else ('["', '"]')
        lines.append(f"  {_mermaid_id(name)}{shape[0]}{label}{shape[1]}")
    lines.append('  output(["output"])')
    for name in _uses_input(plan):
        lines.append(f"  input --> {_mermaid_id(name)}")
    for a, b in _edges(plan):
        lines.append(f"  {_mermaid_id(a)} --> {_mermaid_id(b)}")
    for d in _output_deps(plan):
        lines.append(f"  {_mermaid_id(d)} --> output")
    if plan.access:
        lines.append('  access(["access line"])')
        for src, fields in _access_sources(plan).items():
            lines.append(f"  {'input' if src == 'input' else _mermaid_id(src)} -. \"{', '.join(fields)}\" .-> access")
    if trace is not None:
        for css, (style, _) in _CLASS_STYLES.items():
            lines.append(f"  classDef {css} {style}")
        for name in _file_order(plan):
            lines.append(f"  class {_mermaid_id(name)} {trace.css_class(name)}")
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(plan: Plan, trace: Trace | None = None) -> str:
    lines = [f"digraph {_dot_quote(plan.name)} {{", "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    lines.append('  "input" [shape=oval];')
    for name in _file_order(plan):
        node = plan.nodes[name]
        label = "\n".join([name, node.info.name] + _notes(node) + ([trace.describe(name)] if trace is not None else []))
        shape = ", shape=diamond" if node.cond is not None else ""
        if trace is not None:
            shape += f', style=filled, fillcolor="{_CLASS_STYLES[trace.css_class(name)][1]}"'
        lines.append(f"  {_dot_quote(name)} [label={_dot_quote(label)}{shape}];")
    lines.append('  "output" [shape=oval];')
    for name in _uses_input(plan):
        lines.append(f'  "input" -> {_dot_quote(name)};')
    for a, b in _edges(plan):
        lines.append(f"  {_dot_quote(a)} -> {_dot_quote(b)};")
    for d in _output_deps(plan):
        lines.append(f'  {_dot_quote(d)} -> "output";')
    if plan.access:
        lines.append('  "access" [shape=oval, label="access line"];')
        for src, fields in _access_sources(plan).items():
            lines.append(f'  {_dot_quote(src)} -> "access" [style=dashed, label={_dot_quote(", ".join(fields))}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


class GraphvizMissing(RuntimeError):
    """The `dot` program is not installed, so SVG/PNG cannot be drawn."""


def render_image(plan: Plan, fmt: str, trace: Trace | None = None) -> bytes:
    """SVG or PNG bytes drawn by Graphviz's `dot` program."""
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissing(
            f"drawing {fmt} needs Graphviz's `dot` program, which is not installed "
            "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz). "
            "Without it, use --format mermaid (renders on GitHub) or --format dot."
        )
    proc = subprocess.run([dot, f"-T{fmt}"], input=to_dot(plan, trace).encode(), capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
