"""HTTP-level fuzzing of a real gateway (RELIABILITY §3 item 23).

A valid Messages request from the strategy in tests/steps/test_properties.py, with one thing
broken (type swap, deletion, huge value, deep nesting, odd Unicode, NaN, damaged bytes), is
POSTed to a real gateway (the repo's pipelines under uvicorn, the fake OpenRouter upstream on
loopback). The answer is 200 or 400/413/415, never 5xx; every non-200 body is an Anthropic
error; a 200 is a complete Message, SSE stream or token count.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.pipelines.conftest import Gateway, start_gateway
from tests.steps.test_properties import KNOWN_BAD, SETTINGS, messages_requests, mutated_bodies

ALLOWED = {200, 400, 413, 415}
ROUTES = ["/v1/messages", "/v1/messages", "/v1/messages/count_tokens"]
CONTENT_TYPES = ["application/json", "application/json", "application/json; charset=utf-8", None, "text/plain"]


@pytest.fixture(scope="module")
def fuzz_gateway() -> Iterator[Gateway]:
    yield from start_gateway({})


@pytest.fixture(scope="module")
def http(fuzz_gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_gateway.url, timeout=30, headers={"x-api-key": "sk-ant-test-client-key"}) as client:
        yield client


def check_answer(route: str, content_type: str | None, r: httpx.Response) -> None:
    """Assert what any answer to any body must be."""
    assert r.status_code in ALLOWED, f"{r.status_code}: {r.text[:500]}"
    assert "Traceback" not in r.text and 'File "' not in r.text, r.text[:500]
    if r.status_code != 200:
        body = r.json()
        assert set(body) == {"type", "error", "request_id"}, body
        assert body["type"] == "error"
        assert isinstance(body["error"], dict) and set(body["error"]) >= {"type", "message"}, body
        assert isinstance(body["error"]["type"], str) and body["error"]["type"]
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert isinstance(body["request_id"], str) and body["request_id"] == r.headers.get("request-id")
        assert r.headers.get("x-should-retry") == "false"
        expected = {413: "request_too_large"}.get(r.status_code, "invalid_request_error")
        assert body["error"]["type"] == expected, body
        if content_type == "text/plain":
            assert r.status_code == 415
        return
    assert content_type != "text/plain", "a text/plain body was accepted"
    if route.endswith("count_tokens"):
        count = r.json()["input_tokens"]
        assert isinstance(count, int) and not isinstance(count, bool) and count >= 0
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.startswith("event: message_start"), r.text[:300]
        assert "event: error" not in r.text, r.text[-500:]
        assert r.text.rstrip().endswith('data: {"type":"message_stop"}'), r.text[-300:]
    else:
        message = r.json()
        assert message["type"] == "message" and message["content"], message


def post(http: httpx.Client, route: str, data: bytes, content_type: str | None) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return http.post(route, content=data, headers=headers)


@settings(max_examples=150, **SETTINGS)
@example(case=(KNOWN_BAD["document content items not objects"], "known"), route="/v1/messages", content_type="application/json")
@given(case=mutated_bodies(), route=st.sampled_from(ROUTES), content_type=st.sampled_from(CONTENT_TYPES))
def test_mutated_bodies_get_200_or_a_4xx_anthropic_error(http: httpx.Client, case: tuple[bytes, str], route: str, content_type: str | None) -> None:
    """No body makes the gateway answer 5xx or a non-Anthropic error."""
    data, _ = case
    check_answer(route, content_type, post(http, route, data, content_type))


@settings(max_examples=40, **SETTINGS)
@given(body=messages_requests(), route=st.sampled_from(ROUTES))
def test_valid_bodies_get_200(http: httpx.Client, body: dict, route: str) -> None:
    """Every valid request from the strategy is answered 200 (fake upstream in `ok` mode)."""
    r = post(http, route, orjson.dumps(body), "application/json")
    assert r.status_code == 200, r.text[:500]
    check_answer(route, "application/json", r)
