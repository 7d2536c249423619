"""The circuit breaker as Envoy's outlier detection (issue 15 item 3), end to end.

Before: with the default settings and one model, one request's three 429 attempts opened the
breaker, and the next eleven requests of any client (one that would have been a 401, one a
400, the rest ordinary turns) were answered `529 Overloaded` without reaching the upstream.
Now the breaker is keyed by provider, model and (when keys are forwarded) client key; it is
never tripped by a failure that says nothing about the model; and it never refuses the last
candidate left (panic mode: a request tries it anyway).
"""

from __future__ import annotations

import httpx

from tests.pipelines.faults import body, gateway_with, post

DEFAULTS = {"UPSTREAM_RETRY_BACKOFF": "0.05", "OPENROUTER_MODELS_FETCH": "false", "UPSTREAM_COOLDOWN": "5", "UPSTREAM_COOLDOWN_FAILURES": "3"}


def test_one_requests_429s_do_not_answer_the_next_eleven_with_529() -> None:
    """The issue's scenario: three 429s of one request, then eleven requests: each gets what the
    upstream (or the gateway's own key check) says, never a breaker's 529."""
    with gateway_with(DEFAULTS) as g:
        g.fake.script("429", "429", "429")
        first = post(g, body())
        assert first.status_code == 429, first.text
        assert len(g.fake.requests) == 3
        statuses = []
        with httpx.Client(base_url=g.url, timeout=30) as keyless:  # no key: the gateway's own 401
            statuses.append(keyless.post("/v1/messages", json=body()).status_code)
        g.fake.script("400")
        statuses.append(post(g, body()).status_code)
        for stream in (False, True) * 4 + (False,):
            statuses.append(post(g, body(stream=stream)).status_code)
        assert statuses == [401, 400] + [200] * 9
        assert len(g.fake.requests) == 3 + 10  # all but the keyless one reached the upstream


def test_a_client_error_never_trips_the_breaker() -> None:
    """400, 401, 402, 403 and 413 say nothing about the model: many in a row leave it closed,
    so with a fallback configured the next request still goes to the first model."""
    env = {**DEFAULTS, "ROUTER_FALLBACK_MODELS": "test/fallback"}
    with gateway_with(env) as g:
        for status in ("400", "401", "402", "403", "413") * 2:
            g.fake.script(status)
            assert post(g, body()).status_code == int(status)
        g.fake.clear()
        r = post(g, body())
        assert r.status_code == 200 and r.headers["x-upstream-model"] == "test/big"


def test_the_breaker_is_per_client_key_when_keys_are_forwarded() -> None:
    """One client's rate limit opens the model for that client only (keys forwarded): its next
    request skips to the fallback, another client's request still goes to the first model."""
    env = {**DEFAULTS, "ROUTER_FALLBACK_MODELS": "test/fallback"}
    with gateway_with(env) as g:
        g.fake.model_modes = {"test/big": "429"}
        for _ in range(3):  # each: big (429) then fallback; 3 failures of big for this client
            assert post(g, body()).status_code == 200
        g.fake.model_modes = {}
        g.fake.clear()
        mine = post(g, body())
        assert mine.headers["x-upstream-model"] == "test/fallback"
        theirs = post(g, body(), headers={"x-api-key": "sk-ant-another-client"})
        assert theirs.headers["x-upstream-model"] == "test/big"
        assert [q.json["model"] for q in g.fake.requests] == ["test/fallback", "test/big"]
