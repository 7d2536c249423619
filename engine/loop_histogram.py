"""A Prometheus histogram for figures observed on the event loop, without locks.

Kept apart from engine/metrics.py because it imports prometheus_client, which that module
imports only when a metric is first used (commands that serve nothing never pay for it).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class _LoopHistogramChild:
    """One label set's buckets: plain integers, since only the event loop thread observes.

    An observation is appended as it comes and sorted into the buckets in batches (when a
    batch is full, and before the figures are read): a list append is a fifth of a bisect and
    two additions, and a run observes every step it runs.
    """

    __slots__ = ("bounds", "counts", "_sum", "created", "_pending")

    BATCH = 1024

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self.created = time.time()
        self._pending: list[float] = []

    def observe(self, amount: float) -> None:
        pending = self._pending
        pending.append(amount)
        if len(pending) >= self.BATCH:
            self.settle()

    def settle(self) -> None:
        """Sort the pending observations into the buckets, in the order they came."""
        pending, self._pending = self._pending, []
        counts, bounds, total = self.counts, self.bounds, self._sum
        for amount in pending:
            counts[bisect.bisect_left(bounds, amount)] += 1  # the first bucket with amount <= le
            total += amount
        self._sum = total

    @property
    def sum(self) -> float:
        self.settle()
        return self._sum


class LoopHistogram:
    """A Prometheus histogram for observations made on the event loop, without locks.

    `prometheus_client.Histogram.observe` takes a lock for the sum and one for the bucket and
    walks the bounds in Python: about 1.5 us, paid once per step of every run (17 steps a
    request: ~4% of a small request's CPU under py-spy). Here an observation is a list append,
    sorted into the buckets in batches; the exposition (`engine_step_duration_seconds_bucket`, `_count`, `_sum`,
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
            child.settle()
            running, buckets = 0, []
            for le, count in zip(les, child.counts, strict=True):
                running += count
                buckets.append((le, running))
            family.add_metric(list(key), buckets, child.sum)
            family.samples.append(Sample(self._name + "_created", dict(zip(self._labelnames, key, strict=True)), child.created))
        yield family
