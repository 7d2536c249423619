"""Replay drops the heartbeat the reply declares (its count depends on timing), nothing else."""

from __future__ import annotations

from engine.replay import compare_outputs

BEAT = "event: beat\ndata: {}\n\n"


def _stream(*texts: str) -> list[list[object]]:
    return [[0.0, t] for t in texts]


def test_heartbeats_are_not_compared_but_other_events_are() -> None:
    captured = {"status": 200, "headers": {}, "stream": _stream('event: a\ndata: {"n": 1}\n\n', BEAT, 'event: b\ndata: {"n": 2}\n\n')}
    now = {"status": 200, "headers": {}, "heartbeat": BEAT, "stream": _stream('event: a\ndata: {"n": 1}\n\n', 'event: b\ndata: {"n": 2}\n\n')}
    assert compare_outputs(captured, now) == []
    without_heartbeat = {k: v for k, v in now.items() if k != "heartbeat"}
    assert compare_outputs(captured, without_heartbeat) != []
