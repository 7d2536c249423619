"""Bad JSON in a Messages request names the field (or the byte offset): a 400
invalid_request_error the client can act on, before anything goes upstream."""

from __future__ import annotations

import json

import pytest

from tests.pipelines.conftest import Gateway

TOOL_TURN = [
    {"role": "user", "content": "Run it"},
    {"role": "assistant", "content": [{"type": "text", "text": "ok"}, {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {"x": float("nan")}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"}]},
]


def test_nan_written_by_pythons_json_is_named_by_its_field(gateway: Gateway) -> None:
    """`json.dumps` writes float('nan') as NaN (the SDK refuses to; a hand-written client
    does not): the 400 says which field, and nothing goes upstream."""
    body = json.dumps({"model": "claude-opus-5-5", "max_tokens": 10, "messages": TOOL_TURN}).encode()
    with gateway.http() as http:
        r = http.post("/v1/messages", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == {
        "type": "invalid_request_error",
        "message": "The request body is not valid JSON: messages.1.content.1.input.x: NaN is not valid JSON (send a number, a string or null)",
    }
    assert gateway.fake.requests == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "m", "max_tokens": Infinity, "messages": []}', "max_tokens: Infinity is not valid JSON"),
        (b'{"model": "m", "temperature": -Infinity}', "temperature: -Infinity is not valid JSON"),
        (b'{"model": "m",\n "messages": [}', "unexpected character, expected a JSON value at byte 29 (line 2, column 15)"),
        (b'{"model": "m", "stream": tru}', "invalid literal, expected 'true' at byte 25 (line 1, column 26)"),
    ],
)
def test_json_errors_over_http(gateway: Gateway, body: bytes, message: str) -> None:
    """The field when the body is JSON apart from one value; else byte offset and expectation."""
    with gateway.http() as http:
        r = http.post("/v1/messages", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"The request body is not valid JSON: {message}"), error["message"]
    assert r.headers["request-id"] == r.json()["request_id"]
