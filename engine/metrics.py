"""Prometheus metrics for runs, steps and streams, served at `GET /metrics`.

The engine measures what every pipeline has (requests, latency, steps, retries, streams);
a step package adds its own domain figures with `prometheus_client` directly (they land in
the same default registry). Tokens and cost by model come from what steps report through
`engine.usage`. With several workers each process exposes its own figures, as
DESIGN.md's "Scale" section says: scrape each replica.
"""

from __future__ import annotations

import threading
from typing import Any

_creating = threading.Lock()  # the capture writer's thread may be first to count something

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_STEP_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600)

# name -> (kind, metric name, help, labels, extra keyword arguments)
_DECLARED: dict[str, tuple[str, str, str, list[str], dict[str, Any]]] = {
    "REQUESTS": ("Counter", "engine_requests_total", "HTTP requests answered, by pipeline, status and outcome", ["pipeline", "status", "outcome"], {}),
    "REQUEST_SECONDS": ("LoopHistogram", "engine_request_duration_seconds", "Time from request to the last byte of the response", ["pipeline"], {"buckets": _LATENCY_BUCKETS}),
    "STEP_SECONDS": ("LoopHistogram", "engine_step_duration_seconds", "Step duration (a stream step: until its stream ends)", ["pipeline", "step", "outcome"], {"buckets": _STEP_BUCKETS}),
    "RETRIES": ("Counter", "engine_step_retries_total", "Step attempts retried, by error kind", ["pipeline", "step", "kind"], {}),
    "ACTIVE_STREAMS": ("Gauge", "engine_active_streams", "Responses currently streaming to clients", ["pipeline"], {}),
    "CAPTURE_FAILURES": ("Counter", "engine_capture_failures_total", "Capture records lost (disk full, I/O error, queue full); requests are unaffected", [], {}),
    "TOKENS": ("Counter", "engine_tokens_total", "Tokens used, by upstream model and kind (as the upstream reported them, else the gateway's estimate)", ["model", "kind"], {}),
    "COST": ("Counter", "engine_cost_usd_total", "USD spent, by upstream model (the upstream's reported cost, else the model's prices; unknown costs add nothing)", ["model"], {}),
    "RELOADS": ("Counter", "engine_pipeline_reloads_total", "Pipeline reloads (--reload), by result", ["result"], {}),
}


def __getattr__(name: str) -> Any:
    """Create a metric on first use (PEP 562): importing prometheus_client costs more than
    `engine check` may spend in all, and commands that serve nothing never need it."""
    declared = _DECLARED.get(name)
    if declared is None:
        raise AttributeError(f"module 'engine.metrics' has no attribute '{name}'")
    import prometheus_client

    with _creating:
        made = globals().get(name)
        if made is None:
            kind, metric, help, labels, extra = declared
            if kind == "LoopHistogram":  # observed on the event loop only: no locks (engine/loop_histogram.py)
                from engine.loop_histogram import LoopHistogram

                made = LoopHistogram(metric, help, labels, **extra)
            else:
                made = getattr(prometheus_client, kind)(metric, help, labels, **extra)
            globals()[name] = made  # later lookups never come back here
    return made


def render() -> tuple[bytes, str]:
    """The exposition text and its content type (every declared metric, used or not)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    for name in _DECLARED:
        globals().get(name) or __getattr__(name)
    return generate_latest(), CONTENT_TYPE_LATEST
