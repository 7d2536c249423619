"""Drawing a pipeline: plain text, Mermaid (renders on GitHub), Graphviz dot, and SVG/PNG.

Every drawing has the run input, each step (its name and the step it uses, with `if`,
`retry`, `timeout`, `limit` and `record` noted) and the output, with an edge wherever a
value flows. The renderings are deterministic (steps in file order), so they can be
compared with golden files in tests.
"""

from __future__ import annotations

import shutil
import subprocess

from engine.check import Node, Plan, iter_refs


def _notes(node: Node) -> list[str]:
    notes = []
    if node.cond is not None:
        notes.append(f"if {node.cond.text.removeprefix('${{').removesuffix('}}').strip()}")
    if node.retry is not None:
        notes.append(f"retry x{node.retry.attempts}")
    if node.timeout is not None:
        notes.append(f"timeout {node.timeout:g}s")
    if node.limit is not None:
        notes.append(f"limit {node.limit}")
    if node.record:
        notes.append("record")
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


def to_text(plan: Plan) -> str:
    lines = [f"pipeline {plan.name}" + (f"  ({', '.join(f'{m} {p}' for m, p in plan.routes)})" if plan.routes else "")]
    for name in plan.order:
        node = plan.nodes[name]
        src = [d for d in node.deps] + (["input"] if name in _uses_input(plan) else [])
        notes = _notes(node)
        lines.append(
            f"  {name} = {node.info.name}"
            + (f"  <- {', '.join(src)}" if src else "")
            + (f"  [{'; '.join(notes)}]" if notes else "")
        )
    lines.append(f"  output <- {', '.join(_output_deps(plan))}")
    return "\n".join(lines) + "\n"


def _mermaid_id(name: str) -> str:
    return "s_" + "".join(c if c.isalnum() else "_" for c in name)


def to_mermaid(plan: Plan) -> str:
    lines = ["flowchart TD", '  input(["input"])']
    for name in _file_order(plan):
        node = plan.nodes[name]
        label = f"{name}<br/><small>{node.info.name}</small>"
        notes = _notes(node)
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
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(plan: Plan) -> str:
    lines = [f"digraph {_dot_quote(plan.name)} {{", "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    lines.append('  "input" [shape=oval];')
    for name in _file_order(plan):
        node = plan.nodes[name]
        label = "\n".join([name, node.info.name] + _notes(node))
        shape = ", shape=diamond" if node.cond is not None else ""
        lines.append(f"  {_dot_quote(name)} [label={_dot_quote(label)}{shape}];")
    lines.append('  "output" [shape=oval];')
    for name in _uses_input(plan):
        lines.append(f'  "input" -> {_dot_quote(name)};')
    for a, b in _edges(plan):
        lines.append(f"  {_dot_quote(a)} -> {_dot_quote(b)};")
    for d in _output_deps(plan):
        lines.append(f'  {_dot_quote(d)} -> "output";')
    lines.append("}")
    return "\n".join(lines) + "\n"


class GraphvizMissing(RuntimeError):
    """The `dot` program is not installed, so SVG/PNG cannot be drawn."""


def render_image(plan: Plan, fmt: str) -> bytes:
    """SVG or PNG bytes drawn by Graphviz's `dot` program."""
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissing(
            f"drawing {fmt} needs Graphviz's `dot` program, which is not installed "
            "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz). "
            "Without it, use --format mermaid (renders on GitHub) or --format dot."
        )
    proc = subprocess.run([dot, f"-T{fmt}"], input=to_dot(plan).encode(), capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
