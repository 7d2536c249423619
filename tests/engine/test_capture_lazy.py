"""A run's record converts its recorded values when it is read, not when they are recorded.

That is only right while the values passed along the graph's edges stay as they were when a
recorded step got them (or returned them). The shipped pipelines are held to it here: every
recorded value (and every item of a recorded stream) is converted at call time too, and must
equal what the record shows when the console or the capture writer converts it at the end,
for JSON and streamed Messages requests, count_tokens, the model list and the /agent tool
loop (whose turns and tool runs are recorded).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine import capture
from engine.capture import RunRecorder, jsonable, redact_named, resolve, serialize
from engine.streams import aclose_quietly
from engine.types import Request
from tests.console.conftest import console_gateway


_Deferred = capture.Deferred


class _Snapshot(_Deferred):
    """A deferred value that also keeps the conversion it would have had at call time."""

    __slots__ = ("at_call",)
    made: list[_Snapshot] = []
    seen: list[tuple[_Snapshot, Any]] = []
    streams: list[tuple[dict[str, Any], list[Any]]] = []  # (call entry, its items converted as they came)

    def __init__(self, value: Any, how: str) -> None:
        super().__init__(value, how)
        self.at_call = _Deferred(value, how).convert({}) if how != "items" else None  # items: see `streams`
        _Snapshot.made.append(self)

    def convert(self, memo: dict[tuple[int, bool], Any]) -> Any:
        out = super().convert(memo)
        _Snapshot.seen.append((self, out))
        return out


@pytest.fixture
def snapshots(monkeypatch: pytest.MonkeyPatch) -> type[_Snapshot]:
    _Snapshot.made, _Snapshot.seen, _Snapshot.streams = [], [], []
    monkeypatch.setattr(capture, "Deferred", _Snapshot)
    recording_stream = capture.recording_stream

    def spied(it: Any, entry: dict[str, Any], recorder: RunRecorder) -> Any:
        came: list[Any] = []
        _Snapshot.streams.append((entry, came))

        async def items() -> Any:
            try:
                async for item in it:
                    came.append(jsonable(item))
                    yield item
            finally:
                await aclose_quietly(it)

        return recording_stream(items(), entry, recorder)

    monkeypatch.setattr(capture, "recording_stream", spied)
    return _Snapshot


def _assert_unchanged_since_call(snap: type[_Snapshot], streams: int) -> None:
    assert snap.made and len(snap.seen) == len(snap.made), "every deferred value was converted once"
    changed = [(s.how, s.at_call, out) for s, out in snap.seen if s.how != "items" and out != s.at_call]
    assert not changed, f"recorded values changed after the call: {changed[:2]}"
    recorded = {(s.how, type(s.value).__name__) for s in snap.made}
    assert ("named", "Request") in recorded and ("inputs", "dict") in recorded and ("trace", "tuple") in recorded
    assert len(snap.streams) == streams
    for entry, came in snap.streams:
        assert came and [item for _at, item in entry["items"]] == came, "stream items changed after they came"


@pytest.mark.parametrize("capturing", [False, True], ids=["console", "capture"])
def test_messages_count_tokens_and_models_records_show_values_as_at_call_time(tmp_path: Path, snapshots: type[_Snapshot], capturing: bool) -> None:
    """Console only (capture off): the record is converted when its run page is asked for.
    Capture on: the writer converts it on its thread, stream items included."""
    with console_gateway(**({"capture": tmp_path / "c"} if capturing else {})) as gw, gw.http() as client:
        assert gw.message(client, "lazy-json").status_code == 200
        with client.stream("POST", "/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status_code == 200 and "message_stop" in r.read().decode()
        r = client.post("/v1/messages/count_tokens", json={"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "count me"}]})
        assert r.status_code == 200
        assert client.get("/v1/models").status_code == 200
        runs = gw.engine.console.runs
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (len(runs.all()) < 4 or any(e.running for e in runs.all())):
            time.sleep(0.02)
        entries = runs.all()
        assert len(entries) == 4 and all(e.record is not None for e in entries)
        if capturing:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and gw.engine.capture.written < 4:
                time.sleep(0.02)
            assert gw.engine.capture.written == 4
        else:
            assert not snapshots.seen  # nothing converted while nobody looked
        summaries = [e.summary() for e in entries]  # what the runs list shows needs no conversion
        assert len(snapshots.seen) == (len(snapshots.made) if capturing else 0)
        assert [s["requested"] for s in summaries] == ["claude-sonnet-4-5", "claude-sonnet-4-5", "claude-sonnet-4-5", None]
        for e in entries:
            record = e.full_record()
            assert record is not None and not record.pending
            assert client.get(f"/console/runs/{e.key}").status_code == 200
        calls = {(c["pipeline"], c["step"]) for e in entries for c in e.full_record()["calls"]}
        assert {("turn", "profiles"), ("turn", "prices"), ("turn", "calibration"), ("turn", "call"), ("count_tokens", "calibration"), ("models", "profiles")} <= calls
    _assert_unchanged_since_call(snapshots, streams=1 if capturing else 0)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_tool_loop_records_show_values_as_at_call_time(tmp_path: Path, snapshots: type[_Snapshot], stream: bool) -> None:
    """Capture on: the writer converts the record on its thread once the run is done; the
    tool loop runs the turn pipeline again with a history that grows between turns."""
    from tests.pipelines.test_agent_replay import captured_agent_run

    path, _env, _ws = captured_agent_run(tmp_path, stream)
    [record] = [orjson.loads(line) for line in path.read_text().splitlines()]
    steps = [(c["pipeline"], c["step"]) for c in record["calls"]]
    assert steps.count(("tool", "run")) == 2 and steps.count(("turn", "call")) == 3
    _assert_unchanged_since_call(snapshots, streams=3 if stream else 0)
    if stream:
        assert [c.get("items") for c in record["calls"] if c["step"] == "call"] == [entry["items"] for entry, _ in snapshots.streams]


def _request(body: bytes = b'{"model": "claude-x"}') -> Request:
    return Request(method="POST", path="/v1/messages", headers={"x-api-key": "sk-secret", "accept": "application/json"}, query={}, body=body)


def _eager(request: Request, providers: dict[str, Any]) -> dict[str, Any]:
    """The record as it was made before conversion was deferred (call-time jsonable)."""
    named = lambda v: redact_named(jsonable(v))  # noqa: E731
    return {
        "input": named(request),
        "calls": [
            {"pipeline": "p", "step": "a", "input": named({"request": request, "providers": providers})},
            {"pipeline": "p", "step": "b", "input": named({"request": request, "providers": providers, "api_key": "sk-2"}), "output": jsonable(providers)},
        ],
    }


def _recorded(request: Request, providers: dict[str, Any]) -> dict[str, Any]:
    recorder = RunRecorder(None, "p", "req_1", request)
    recorder.call("p", "a", {"request": request, "providers": providers})
    entry = recorder.call("p", "b", {"request": request, "providers": providers, "api_key": "sk-2"})
    recorder.returned(entry, providers)
    recorder.finish(output={"status": 200}, outcome="ok", trace=[("p", "a", "ok", 1, recorder.t0 + 0.25, recorder.t0 + 0.5)])
    return recorder.record


def test_an_object_recorded_several_times_is_converted_once_per_run() -> None:
    request, providers = _request(), {"base_url": "http://up", "api_key": "sk-up", "models": ["a", "b"]}
    first, second = resolve(_recorded(request, providers)), resolve(_recorded(request, providers))
    eager = _eager(request, providers)
    for record in (first, second):
        assert record["input"] == eager["input"] and [{k: c[k] for k in c if k != "at"} for c in record["calls"]] == eager["calls"]
        assert record["input"]["headers"]["x-api-key"] == "[REDACTED]" and record["calls"][1]["input"]["api_key"] == "[REDACTED]"
        assert record["calls"][1]["output"]["api_key"] == "sk-up"  # outputs are not redacted by name, as before
        assert record["trace"] == [{"pipeline": "p", "step": "a", "outcome": "ok", "attempts": 1, "start": 0.25, "end": 0.5}]
        # Within the run, one conversion is shared by every place that recorded the object.
        assert record["calls"][0]["input"]["request"] is record["input"] is record["calls"][1]["input"]["request"]
        assert record["calls"][0]["input"]["providers"] is record["calls"][1]["input"]["providers"]
        assert record["calls"][1]["output"] is not record["calls"][1]["input"]["providers"]  # redacted and not: two forms
    # Across runs, nothing is shared: each run's record is its own.
    assert first["input"] == second["input"] and first["input"] is not second["input"]
    assert first["calls"][0]["input"]["providers"] is not second["calls"][0]["input"]["providers"]
    line = orjson.loads(serialize(_recorded(request, providers)))
    assert line["input"] == orjson.loads(orjson.dumps(eager["input"])) and "[REDACTED]" in str(line["calls"][1]["input"])


def test_objects_jsonable_can_only_describe_are_recorded_at_once() -> None:
    """A `$repr` may change with the object's state, so such a value is not deferred."""

    class Counter:
        def __init__(self) -> None:
            self.n = 1

        def __repr__(self) -> str:
            return f"Counter({self.n})"

    counter = Counter()
    recorder = RunRecorder(None, "p", "req_1", _request())
    entry = recorder.call("p", "a", {"counter": counter, "n": 2})
    recorder.returned(entry, counter)
    counter.n = 5
    record = resolve(recorder.record)
    assert record["calls"][0]["input"] == {"counter": {"$repr": "Counter(1)"}, "n": 2}
    assert record["calls"][0]["output"] == {"$repr": "Counter(1)"}


def test_a_value_that_cannot_be_converted_breaks_neither_the_page_nor_the_writer() -> None:
    class Bad:
        def model_dump(self, mode: str) -> Any:
            raise RuntimeError("no")

    recorder = RunRecorder(None, "p", "req_1", _request())
    entry = recorder.call("p", "a", {"bad": [Bad()]})  # nested: deferred, fails when converted
    record = resolve(recorder.record)
    assert record["calls"][0]["input"] == {"$repr": "not recordable: RuntimeError: no"} and entry is record["calls"][0]
    assert orjson.loads(serialize(record))["calls"][0]["input"]["$repr"].startswith("not recordable")


def test_the_console_and_the_writer_resolving_one_record_together_see_it_whole() -> None:
    """The writer converts on its thread while a page asks for the same record: whoever comes
    second waits, and neither sees a value still deferred."""
    import threading

    big = {"messages": [{"role": "user", "content": f"message {i}", "n": list(range(20))} for i in range(3000)]}
    for _ in range(5):
        recorder = RunRecorder(None, "p", "req_1", _request())
        for i in range(4):
            recorder.returned(recorder.call("p", f"s{i}", {"body": big, "request": _request()}), big)
        record = recorder.record
        seen: list[Any] = []
        writer = threading.Thread(target=lambda: seen.append(orjson.loads(serialize(record))))
        writer.start()
        page = resolve(record)
        writer.join()
        assert not any(isinstance(v, capture.Deferred) for c in page["calls"] for v in c.values())
        assert page["calls"][3]["output"] == jsonable(big) and seen[0]["calls"][3]["output"] == jsonable(big)


class _Marker:
    """A recorded value whose end can be watched (a weak reference)."""


def test_a_record_is_freed_without_the_cyclic_collector() -> None:
    """A run's record, read or not, is freed as soon as nothing holds it: no reference cycle.

    A record that noted its own deferred keys as (record, key) pairs was a cycle; `engine
    serve` collects cycles rarely (engine/http.py tune_gc), so kept-then-dropped records piled
    up (RSS grew ~30 KB a stream in tests/pipelines/test_load.py)."""
    import gc
    import weakref

    def run(read: bool) -> weakref.ref[_Marker]:
        given, returned = _Marker(), _Marker()
        recorder = RunRecorder(None, "p", "req_1", {"body": given}, stream_items=False)
        entry = recorder.call("p", "s", {"x": given})
        recorder.returned(entry, {"out": returned})
        recorder.finish(output=None, outcome="ok", trace=[("p", "s", "ok", 1, recorder.t0, recorder.t0)])
        if read:
            resolve(recorder.record)
        return weakref.ref(returned)

    enabled = gc.isenabled()
    gc.disable()
    try:
        for read in (False, True):
            assert run(read)() is None, f"the record outlived its run (read={read}): a reference cycle"
    finally:
        if enabled:
            gc.enable()
