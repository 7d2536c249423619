"""The console's parts without a server: the graph layout, the runs ring, the capture index."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import orjson
import pytest

from engine.console import enabled
from engine.console.runs import CaptureIndex, Runs, ordered_facts
from engine.console.svg import NODE_H, NODE_W, layout, pipeline_svg
from engine.executor import load_plans
from tests.console.conftest import PIPELINES, REPO

PLANS = load_plans([PIPELINES])


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name)
def test_every_step_is_drawn_and_no_two_boxes_overlap(plan) -> None:
    coords, edges, width, height = layout(plan)
    assert set(plan.nodes) <= set(coords)
    for (a, (ax, ay)), (b, (bx, by)) in itertools.combinations(coords.items(), 2):
        assert abs(ax - bx) >= NODE_W or abs(ay - by) >= NODE_H, f"{a} and {b} overlap"
    for x, y in coords.values():
        assert NODE_W / 2 <= x <= width - NODE_W / 2 and NODE_H / 2 <= y <= height - NODE_H / 2
    svg = str(pipeline_svg(plan))
    assert len(re.findall(r'<g class="step plain"', svg)) == len(plan.nodes)
    assert svg.count('class="edge"') == len(edges)


def test_a_run_colours_each_step_by_what_it_did() -> None:
    turn = next(p for p in PLANS if p.name == "turn")
    record = {"trace": [
        {"pipeline": "turn", "step": "model", "outcome": "ok", "attempts": 1, "start": 0.0, "end": 0.001},
        {"pipeline": "turn", "step": "call", "outcome": "error", "attempts": 3, "start": 0.001, "end": 0.5},
        {"pipeline": "turn", "step": "answer", "outcome": "skipped", "attempts": 0, "start": 0, "end": 0},
        {"pipeline": "turn", "step": "route", "outcome": "ok", "attempts": 2, "start": 0.001, "end": 0.002},
    ]}
    from engine.console.svg import states

    svg = str(pipeline_svg(turn, states(record, "turn")))
    state = dict(re.findall(r'id="node-turn\.(\w+)" data-step="\w+" data-state="(\w+)"', svg))
    assert state["model"] == "ran" and state["call"] == "failed" and state["answer"] == "skipped"
    assert state["route"] == "retried" and state["prices"] == "notrun"


def test_the_ring_is_bounded_and_old_runs_drop_their_record() -> None:
    runs = Runs(keep=5, detailed=2)
    for i in range(8):
        runs.add({"request_id": f"r{i}", "pipeline": "p", "status": 200, "outcome": "ok"}, {"trace": [], "started_at": 1000.0 + i})
    kept = runs.all()
    assert [e.request_id for e in kept] == ["r3", "r4", "r5", "r6", "r7"]
    assert [e.record is not None for e in kept] == [False, False, False, True, True]
    assert [e.request_id for e in runs.after(6)] == ["r6", "r7"]


def test_known_facts_come_first_then_usage_then_the_rest() -> None:
    facts = {"request_id": "x", "pipeline": "p", "stream": True, "cost_usd": 0.1, "outcome": "ok", "model": "m", "status": 200, "input_tokens": 5}
    assert [k for k, _ in ordered_facts(facts)] == ["model", "status", "outcome", "cost_usd", "input_tokens", "stream"]


def test_the_capture_index_reads_only_what_was_appended(tmp_path: Path) -> None:
    lines = (REPO / "tests" / "captures" / "gateway.jsonl").read_bytes().splitlines(keepends=True)
    f = tmp_path / "capture-x.jsonl"
    f.write_bytes(b"".join(lines[:3]) + lines[3][:40])  # the fourth record is half written
    index = CaptureIndex(tmp_path)
    assert len(index.refresh()) == 3
    with f.open("ab") as out:
        out.write(lines[3][40:] + lines[4])
    entries = index.refresh()
    assert len(entries) == 5
    opened = index.load(entries[-1].key)
    assert opened is not None and opened.record == orjson.loads(lines[4])
    assert index.load("../capture-x.jsonl@0") is None and index.load("capture-x.jsonl@1") is None


@pytest.mark.parametrize(("value", "on"), [("on", True), ("1", True), ("TRUE", True), ("off", False), ("", False), (None, False), ("banana", False)])
def test_console_switch_values(value, on) -> None:
    assert enabled(value) is on


def test_usage_adds_up_whatever_token_and_cost_fields_the_access_line_carries() -> None:
    from engine.console.usage import summarize

    runs = Runs()
    now = 1_800_000_000.0
    for i, (model, status) in enumerate([("a/x", 200), ("a/x", 200), ("b/y", 502)]):
        facts = {"request_id": f"r{i}", "pipeline": "messages", "model": model, "status": status, "outcome": "ok" if status < 400 else "error", "input_tokens": 100, "output_tokens": 10 * (i + 1), "cost_usd": 0.25}
        runs.add(facts, {"started_at": now - 90 * i, "trace": []})
    u = summarize(runs.all(), now + 1)
    assert u["token_fields"] == ["input_tokens", "output_tokens"] and u["cost_fields"] == ["cost_usd"]
    assert u["totals"] == {"cost_usd": 0.75, "input_tokens": 300.0, "output_tokens": 60.0}
    assert u["hour_requests"] == 3 and u["hour_errors"] == 1 and round(u["error_rate"], 1) == 33.3
    by_model = {c["title"]: str(c["svg"]) for c in u["charts_model"]}
    assert "a/x: 200" in by_model["input_tokens by model"] and "b/y: 100" in by_model["input_tokens by model"]
    assert [c["title"] for c in u["charts_day"]] == ["cost_usd by day", "input_tokens by day", "output_tokens by day"]


def test_usage_without_token_fields_says_so() -> None:
    from engine.console.usage import summarize

    runs = Runs()
    runs.add({"request_id": "r", "pipeline": "p", "status": 200, "outcome": "ok"}, None)
    u = summarize(runs.all(), 0.0)
    assert u["totals"] == {} and u["charts_model"] == [] and u["hour_requests"] == 0


def test_kept_records_are_bounded_by_size_too() -> None:
    """Big requests: fewer records are kept, the newest always."""
    runs = Runs(detailed=50, detail_bytes=1_000_000)
    body = {"$bytes": "x" * 200_000}  # weighs 3 x 200 KB + 4 KB
    for i in range(5):
        runs.add({"request_id": f"r{i}", "pipeline": "p", "status": 200, "outcome": "ok"}, {"input": {"body": body}, "trace": []})
    assert [e.record is not None for e in runs.all()] == [False, False, False, False, True]


def test_a_running_run_keeps_its_record_and_the_oldest_finished_ones_go_first() -> None:
    """Records are dropped oldest-finished first, never while the run is running, and the
    newest run keeps its record however many are in flight."""
    runs = Runs(detailed=2)
    records = [{"trace": [], "started_at": 1000.0 + i} for i in range(4)]
    running = [runs.started({"request_id": f"r{i}", "pipeline": "p"}, records[i], lambda: []) for i in range(3)]
    assert all(e.record is not None and e.running for e in running)  # 3 in flight > 2: none dropped
    runs.add({"request_id": "r1", "pipeline": "p", "status": 200, "outcome": "ok"}, records[1])
    runs.add({"request_id": "r0", "pipeline": "p", "status": 200, "outcome": "ok"}, records[0])
    assert all(e.record is not None for e in running)  # nothing is dropped when a run ends
    runs.started({"request_id": "r3", "pipeline": "p"}, records[3], lambda: [])
    # r2 and r3 run; r1 finished first, then r0: both go, r1 first, as two are running.
    assert [e.request_id for e in runs.all() if e.record is not None] == ["r2", "r3"]
    runs.add({"request_id": "r2", "pipeline": "p", "status": 500, "outcome": "error"}, records[2])
    runs.add({"request_id": "late", "pipeline": "p", "status": 200, "outcome": "ok"}, {"trace": [], "started_at": 1010.0})
    assert [e.request_id for e in runs.all() if e.record is not None] == ["r3", "late"]
    assert not any(e.running for e in runs.all() if e.request_id != "r3")


def test_a_deferred_record_gives_its_size_model_and_failed_steps_unconverted() -> None:
    """The runs list reads the requested model, the record's weight and the failed steps from
    a record whose values are still deferred, exactly as from the converted record."""
    from engine.capture import RunRecorder, resolve
    from engine.console.runs import RunEntry, _failed_steps, _weight, requested_model
    from engine.types import Request

    for body in (b'{"model": "m-\xc3\xa9", "x": 1}', b"\xff\xfe not utf-8", b"", b'{"model": 3}'):
        recorder = RunRecorder(None, "p", "r", Request("POST", "/v1/messages", {"x-api-key": "k"}, {}, body))
        recorder.finish(output={"status": 200}, outcome="ok", trace=[("p", "a", "error", 1, recorder.t0, recorder.t0), ("p", "b", "ok", 1, recorder.t0, recorder.t0)])
        record = recorder.record
        lazy = (_weight(record), requested_model(record), _failed_steps(record))
        entry = RunEntry("1", 0.0, {}, record)
        entry.summary()
        assert record.pending  # nothing was converted
        resolve(record)
        assert not record.pending and (_weight(record), requested_model(record), _failed_steps(record)) == lazy
        assert lazy[2] == ["p.a"]
    assert requested_model(resolve(RunRecorder(None, "p", "r", Request("POST", "/", {}, {}, b'{"model": "m"}')).record)) == "m"
