"""engine.usage: reports add up per run, settle once, and logs/captures add up by model and day."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import usage


class TestReport:
    def test_reports_add_up_by_model(self) -> None:
        """Several calls add up; a model's cost stays unknown until one is known."""
        used: dict = {}
        usage.add(used, "m/a", {"input": 10, "output": 2}, None)
        assert used == {"m/a": {"input": 10, "output": 2, "cost_usd": None}}
        usage.add(used, "m/a", {"input": 5, "output": 1}, 0.25)
        usage.add(used, "m/b", {"input": 1, "output": 1, "cache_read": 0}, 0.5)
        assert used == {
            "m/a": {"input": 15, "output": 3, "cost_usd": 0.25},
            "m/b": {"input": 1, "output": 1, "cache_read": 0, "cost_usd": 0.5},
        }

    def test_turns_merge(self) -> None:
        """A tool loop's turns (each a sub-run's usage fact) add up; runs that told none count nothing."""
        first = {"m/a": {"input": 10, "output": 2, "cost_usd": None}}
        second = {"m/a": {"input": 5, "output": 1, "cost_usd": 0.25}, "m/b": {"input": 1, "output": 1, "cost_usd": 0.5}}
        assert usage.merge(first, None, second) == {
            "m/a": {"input": 15, "output": 3, "cost_usd": 0.25},
            "m/b": {"input": 1, "output": 1, "cost_usd": 0.5},
        }
        assert usage.merge(None, {}) is None
        assert first == {"m/a": {"input": 10, "output": 2, "cost_usd": None}}  # the parts are not changed

    def test_nonsense_counts_are_ignored(self) -> None:
        used: dict = {}
        usage.add(used, "m", {"input": -3, "output": True, "cache_read": "7"}, None)  # type: ignore[dict-item]
        assert used == {"m": {"input": 0, "output": 0, "cache_read": 0, "cost_usd": None}}

    def test_session_names_are_bounded_printable_strings(self) -> None:
        for bad in (None, "", "x" * 200, "a\nb", 42):
            assert usage.session_name(bad) is None
        assert usage.session_name("00000000-0000-4000-8000-000000000001") == "00000000-0000-4000-8000-000000000001"


class TestSessionBook:
    def test_totals_by_session_and_model(self) -> None:
        book = usage.SessionBook()
        book.add("s", {"m/a": {"input": 3, "output": 1, "cost_usd": 0.5}})
        book.add("s", {"m/a": {"input": 2, "output": 1, "cost_usd": None}, "m/b": {"input": 1, "output": 1, "cost_usd": 1.0}})
        found = book.get("s")
        assert found is not None and book.get("t") is None
        assert found["total"] == {"requests": 2, "tokens": {"input": 6, "output": 3}, "cost_usd": 1.5, "unpriced": 1}
        assert found["models"]["m/a"]["requests"] == 2 and found["models"]["m/a"]["unpriced"] == 1

    def test_least_recently_used_sessions_are_forgotten(self) -> None:
        book = usage.SessionBook(limit=2)
        for s in ("a", "b", "a", "c"):
            book.add(s, {"m": {"input": 1, "cost_usd": 0.0}})
        assert book.get("b") is None and book.get("a") is not None and book.get("c") is not None


class TestSummarise:
    def test_access_lines_and_capture_records_by_model_and_day(self, tmp_path: Path) -> None:
        """JSON access lines and capture records are both read; everything else is skipped."""
        log = tmp_path / "access.log"
        log.write_text(
            "\n".join(
                [
                    json.dumps({"event": "request", "timestamp": "2026-12-01T10:00:00Z", "usage": {"m/a": {"input": 10, "output": 5, "cost_usd": 0.1}}, "session": "s1"}),
                    "2026-12-01 console line, not JSON",
                    json.dumps({"event": "step.end", "usage": {"m/a": {"input": 99}}}),
                    json.dumps({"event": "request", "timestamp": "2026-12-02T10:00:00Z", "status": 400}),
                ]
            )
            + "\n"
        )
        captures = tmp_path / "captures"
        captures.mkdir()
        (captures / "capture-1.jsonl").write_text(
            json.dumps({"format": "engine-capture/1", "started_at": 1796169600.0, "usage": {"m/b": {"input": 1, "output": 2, "cost_usd": None}, "m/a": {"input": 1, "output": 1, "cost_usd": 0.2}}}) + "\n"
        )
        s = usage.summarise([log, captures])
        assert s.records == 2 and s.skipped == 3
        assert s.by_model["m/a"].as_dict() == {"requests": 2, "tokens": {"input": 11, "output": 6}, "cost_usd": 0.3, "unpriced": 0}
        assert s.by_model["m/b"].unpriced == 1
        assert sorted(s.by_day) == ["2026-12-01", "2026-12-02"]
        assert s.total.requests == 2 and s.total.cost_usd == pytest.approx(0.3) and s.total.unpriced == 1
        assert usage.summarise([log], session="s1").records == 1
        assert usage.summarise([log, captures], since="2026-12-02").records == 1
        text = usage.table(s)
        assert "m/a" in text and "2026-12-02" in text and "lower bound" in text

    def test_compact_numbers(self) -> None:
        assert [usage.compact(n) for n in (999, 1234, 1_234_567)] == ["999", "1.2k", "1.2M"]
