"""`engine graph` renderings compared with golden files."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.engine.toysteps  # noqa: F401
from engine import graph
from engine.executor import load_plans

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize(("render", "suffix"), [(graph.to_text, "txt"), (graph.to_mermaid, "mmd"), (graph.to_dot, "dot")])
def test_rendering_matches_golden(render, suffix: str) -> None:
    """The diamond pipeline draws exactly as its golden file."""
    plan = load_plans([GOLDEN / "diamond.yaml"])[0]
    assert render(plan) == (GOLDEN / f"diamond.{suffix}").read_text()


def test_image_without_graphviz_explains_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for SVG without the `dot` program says what to install and what works without it."""
    monkeypatch.setenv("PATH", "/nonexistent")
    plan = load_plans([GOLDEN / "diamond.yaml"])[0]
    with pytest.raises(graph.GraphvizMissing, match="apt-get install graphviz.*--format mermaid"):
        graph.render_image(plan, "svg")
