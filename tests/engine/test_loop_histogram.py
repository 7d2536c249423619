"""LoopHistogram exposes what prometheus_client's Histogram exposes for the same observations."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from engine.loop_histogram import LoopHistogram

BUCKETS = (0.001, 0.005, 0.01, 0.1, 1, 10)


def exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_same_buckets_count_and_sum_as_prometheus_client_across_batches() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("t_seconds", "a test", ["step"], buckets=BUCKETS, registry=ours)
    reference = Histogram("t_seconds", "a test", ["step"], buckets=BUCKETS, registry=theirs)
    rng = random.Random(7)
    values = [rng.choice([*BUCKETS, 0.0, 0.02, 50.0]) if i % 3 == 0 else rng.expovariate(20) for i in range(2500)]
    for i, value in enumerate(values):  # past two batches, read in the middle too
        step = "a" if i % 4 else "b"
        loop.labels(step).observe(value)
        reference.labels(step).observe(value)
        if i == 1500:
            assert exposition(ours) == exposition(theirs)
    assert exposition(ours) == exposition(theirs)
