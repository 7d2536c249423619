"""Prometheus metrics for runs, steps and streams, served at `GET /metrics`.

The engine measures what every pipeline has (requests, latency, steps, retries, streams);
a step package adds its own domain figures with `prometheus_client` directly (they land in
the same default registry). With several workers each process exposes its own figures, as
DESIGN.md's "Scale" section says: scrape each replica.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class _LoopHistogramChild:
    """One label set's buckets: plain integers, since only the event loop thread observes."""

    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1  # the first bucket with amount <= le
        self.sum += amount


class LoopHistogram:
    """A Prometheus histogram for observations made on the event loop, without locks.

    `prometheus_client.Histogram.observe` takes a lock for the sum and one for the bucket and
    walks the bounds in Python: about 1.5 us, paid once per step of every run (17 steps a
    request: ~4% of a small request's CPU under py-spy). Here an observation is a bisect and two
    additions; the exposition (`engine_step_duration_seconds_bucket`, `_count`, `_sum`,
    `_created`, same names, labels and buckets) is built when /metrics is scraped. Only for
    figures observed from the event loop thread: a worker thread must use prometheus_client's.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float], registry: CollectorRegistry | None = REGISTRY) -> None:
        self._name, self._documentation, self._labelnames = name, documentation, list(labelnames)
        self._bounds = tuple(float(b) for b in buckets)
        self._children: dict[tuple[str, ...], _LoopHistogramChild] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> _LoopHistogramChild:
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = _LoopHistogramChild(self._bounds)
        return child

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        les = [floatToGoString(b) for b in (*self._bounds, math.inf)]
        for key, child in list(self._children.items()):
            running, buckets = 0, []
            for le, count in zip(les, child.counts, strict=True):
                running += count
                buckets.append((le, running))
            family.add_metric(list(key), buckets, child.sum)
            family.samples.append(Sample(self._name + "_created", dict(zip(self._labelnames, key, strict=True)), child.created))
        yield family


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_STEP_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600)

REQUESTS = Counter("engine_requests_total", "HTTP requests answered, by pipeline, status and outcome", ["pipeline", "status", "outcome"])
REQUEST_SECONDS = LoopHistogram("engine_request_duration_seconds", "Time from request to the last byte of the response", ["pipeline"], buckets=_LATENCY_BUCKETS)
STEP_SECONDS = LoopHistogram("engine_step_duration_seconds", "Step duration (a stream step: until its stream ends)", ["pipeline", "step", "outcome"], buckets=_STEP_BUCKETS)
RETRIES = Counter("engine_step_retries_total", "Step attempts retried, by error kind", ["pipeline", "step", "kind"])
ACTIVE_STREAMS = Gauge("engine_active_streams", "Responses currently streaming to clients", ["pipeline"])
CAPTURE_FAILURES = Counter("engine_capture_failures_total", "Capture records lost (disk full, I/O error, queue full); requests are unaffected")
RELOADS = Counter("engine_pipeline_reloads_total", "Pipeline reloads (--reload), by result", ["result"])


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
