"""The usage page's figures: tokens and cost by model and by day, traffic over the last hour.

Token and cost figures are whatever numeric access-line fields are named so (`*token*`,
`*cost*`): the console adds up what the pipelines report and invents nothing, so with no such
field yet, those charts say so. The model is the access line's `model` (the one that
answered), else the model the client asked for, else the pipeline.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from engine.console import svg
from engine.console.runs import RunEntry, is_cost_field, is_token_field


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize(entries: list[RunEntry], now: float) -> dict[str, Any]:
    tokens: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))  # field -> model -> sum
    cost: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    tokens_day: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))  # field -> day -> sum
    cost_day: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    requests_by_model: dict[str, float] = defaultdict(float)
    requests_by_day: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # day -> requests, errors
    minutes = [[0, 0] for _ in range(60)]  # oldest first: requests, errors
    for e in entries:
        if e.running:
            continue
        model = str(e.facts.get("model") or e.summary().get("requested") or e.pipeline)
        day = time.strftime("%Y-%m-%d", time.localtime(e.started_at))
        requests_by_model[model] += 1
        requests_by_day[day][0] += 1
        requests_by_day[day][1] += int(e.failed)
        for name, value in e.facts.items():
            number = _number(value)
            if number is None:
                continue
            if is_cost_field(name):
                cost[name][model] += number
                cost_day[name][day] += number
            elif is_token_field(name):
                tokens[name][model] += number
                tokens_day[name][day] += number
        age = now - e.started_at
        if 0 <= age < 3600:
            bucket = minutes[59 - int(age // 60)]
            bucket[0] += 1
            bucket[1] += int(e.failed)
    hour_requests = sum(m[0] for m in minutes)
    hour_errors = sum(m[1] for m in minutes)
    labels = [time.strftime("%H:%M", time.localtime(now - (59 - i) * 60)) for i in range(60)]
    charts_model = [{"title": f"{name} by model", "svg": svg.bar_chart(list(by.items()))} for name, by in sorted(tokens.items())]
    charts_model += [{"title": f"{name} by model", "svg": svg.bar_chart(list(by.items()))} for name, by in sorted(cost.items())]
    charts_day = [{"title": f"{name} by day", "svg": svg.column_chart([(d, v, 0) for d, v in sorted(by.items())], legend=(name, ""))} for name, by in sorted({**tokens_day, **cost_day}.items())]
    return {
        "runs": len(entries),
        "token_fields": sorted(tokens),
        "cost_fields": sorted(cost),
        "totals": {name: sum(by.values()) for name, by in sorted({**tokens, **cost}.items())},
        "charts_model": charts_model,
        "charts_day": charts_day,
        "requests_by_model": svg.bar_chart(list(requests_by_model.items()), empty="no runs yet"),
        "requests_by_day": svg.column_chart([(d, n, err) for d, (n, err) in sorted(requests_by_day.items())], empty="no runs yet"),
        "hour": svg.column_chart([(labels[i], m[0], m[1]) for i, m in enumerate(minutes)], labels_every=10, empty="no requests in the last hour"),
        "hour_requests": hour_requests,
        "hour_errors": hour_errors,
        "per_minute": hour_requests / 60,
        "error_rate": (hour_errors / hour_requests * 100) if hour_requests else 0.0,
    }
