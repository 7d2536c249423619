"""A user's own routed pipeline over real HTTP: `input.json`, bad bodies, failing steps."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.executor import Engine
from engine.http import create_app
from tests.pipelines.faults import captured_logs
from tests.support.servers import serve_asgi

USER_STEPS = '''
from engine.errors import HttpError
from engine.types import Reply


def greet(name: str) -> str:
    """Say hello (a missing name is a bug here: None has no strip)."""
    return "Hello, " + name.strip()


def echo(method: str, path: str, query: dict, tenant: str | None, item: str, client: str, size: int) -> dict:
    """Everything a routed pipeline sees of its request."""
    return {"method": method, "path": path, "query": query, "tenant": tenant, "item": item, "client": client, "size": size}


def length(body: bytes) -> int:
    """How many bytes arrived."""
    return len(body)


def mine(error: Exception, ctx) -> Reply:
    """The pipeline's own error format."""
    status = error.status if isinstance(error, HttpError) else 500
    return Reply({"oops": str(error), "rid": ctx.request_id}, status=status)
'''

GREET = """
name: greet
route: POST /greet
steps:
  hello: {uses: "{module}:greet", with: {name: "${{ input.json.name }}"}}
output: {greeting: "${{ steps.hello }}"}
"""

ECHO = """
name: echo
route: POST /items/{item}
steps:
  size: {uses: "{module}:length", with: {body: "${{ input.body }}"}}
  seen:
    uses: "{module}:echo"
    with:
      method: ${{ input.method }}
      path: ${{ input.path }}
      query: ${{ input.query }}
      tenant: ${{ input.headers.x-tenant }}
      item: ${{ input.path_params.item }}
      client: ${{ input.client }}
      size: ${{ steps.size }}
output: ${{ steps.seen }}
"""

PLAIN = ECHO.replace("name: echo\nroute: POST /items/{item}", "name: plain\nroute: POST /plain").replace("${{ input.path_params.item }}", "none")
"""The same pipeline on a route with no path parameter (the gateway's own dict lookup serves it)."""

SHADOWED = """
name: shadowed
route: GET /health
steps:
  v: {uses: core.value, with: {value: "the pipeline"}}
output: ${{ steps.v }}
"""

OWN_ERRORS = """
name: own
route: POST /own
steps:
  hello: {uses: "{module}:greet", with: {name: "${{ input.json.name }}"}}
output: ${{ steps.hello }}
errors: "{module}:mine"
"""


@pytest.fixture(name="url", scope="module")
def _url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("own")
    module = "user_steps_http_input"
    (root / f"{module}.py").write_text(USER_STEPS)
    pipelines = root / "pipelines"
    pipelines.mkdir()
    for name, text in (("greet", GREET), ("echo", ECHO), ("plain", PLAIN), ("shadowed", SHADOWED), ("own", OWN_ERRORS)):
        (pipelines / f"{name}.yaml").write_text(text.replace("{module}", module))
    sys.path.insert(0, str(root))
    try:
        with serve_asgi(create_app(Engine.load([pipelines]))) as url:
            yield url
    finally:
        sys.path.remove(str(root))
        sys.modules.pop(module, None)


def post(url: str, path: str, content: bytes, **kw) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=content, timeout=60, **kw)


def test_input_json_is_the_parsed_body(url: str) -> None:
    """`${{ input.json.name }}` is a field of the JSON body; the output is sent as JSON."""
    r = post(url, "/greet", b'{"name": " Ada "}')
    assert r.status_code == 200 and r.json() == {"greeting": "Hello, Ada"}


def test_every_field_of_the_request_reaches_the_pipeline(url: str) -> None:
    """method, path, query, headers (lower-case names), path_params, client and body bytes."""
    r = post(url, "/items/42?page=2", b"raw bytes", headers={"X-Tenant": "acme"})
    assert r.status_code == 200
    assert r.json() == {"method": "POST", "path": "/items/42", "query": {"page": "2"}, "tenant": "acme", "item": "42", "client": "127.0.0.1", "size": 9}


def test_a_route_without_parameters_sees_the_request_as_starlette_reads_it(url: str) -> None:
    """The gateway serves such a route itself: the same query (last value of a repeated name,
    blank values kept), headers, client and body, and the first of two request ids."""
    r = post(url, "/plain?page=1&page=2&flag", b"raw", headers=[("X-Tenant", "acme"), ("x-request-id", "req-first"), ("x-request-id", "req-second")])
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-first"
    assert r.json() == {"method": "POST", "path": "/plain", "query": {"page": "2", "flag": ""}, "tenant": "acme", "item": "none", "client": "127.0.0.1", "size": 3}


def test_a_wrong_method_or_a_shadowed_route_is_starlettes_answer(url: str) -> None:
    """405 for another method of a served path; a pipeline route behind the engine's own
    (`GET /health`) stays behind it."""
    r = httpx.get(f"{url}/plain", timeout=60)
    assert r.status_code == 405 and r.json()["oops"] == "Method Not Allowed"
    health = httpx.get(f"{url}/health", timeout=60)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_a_failure_before_the_response_is_a_plain_500(monkeypatch: pytest.MonkeyPatch) -> None:
    """What starlette's ServerErrorMiddleware answered: 500 `Internal Server Error`, as text."""
    from engine import http

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug in the HTTP layer")

    monkeypatch.setattr(http, "_serve", broken)
    root = Path(sys.modules["user_steps_http_input"].__file__).parent
    with serve_asgi(create_app(Engine.load([root / "pipelines" / "greet.yaml"]))) as plain:
        r = post(plain, "/greet", b"{}")
    assert r.status_code == 500 and r.text == "Internal Server Error" and r.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"name": NaN}', "The request body is not valid JSON: name: NaN is not valid JSON"),
        (b'{"name": [1, {"x": Infinity}]}', "The request body is not valid JSON: name.1.x: Infinity is not valid JSON"),
        (b'{"name": "Ada",}', "The request body is not valid JSON: trailing comma is not allowed at byte 14 (line 1, column 15)"),
        (b"", "The request body is empty: expected JSON"),
    ],
)
def test_a_body_that_is_not_json_is_a_400_with_the_request_id(url: str, body: bytes, message: str) -> None:
    """Without an `errors:` step the engine answers {"error", "request_id"}; the id is in the
    headers too, and the message names the field or the byte offset."""
    r = post(url, "/greet", body)
    assert r.status_code == 400
    got = r.json()
    assert got["error"].startswith(message) and set(got) == {"error", "request_id"}
    assert got["request_id"].startswith("req_") and r.headers["request-id"] == r.headers["x-request-id"] == got["request_id"]


def test_a_bad_body_is_rendered_by_the_pipelines_own_errors_step(url: str) -> None:
    """With an `errors:` step, the 400 comes in the pipeline's own format."""
    r = post(url, "/own", b'{"name": NaN}')
    assert r.status_code == 400
    assert r.json()["oops"].startswith("The request body is not valid JSON: name: NaN") and r.json()["rid"].startswith("req_")


def test_a_step_that_raises_is_a_500_with_the_request_id_and_a_log_line_naming_it(url: str) -> None:
    """The client gets no exception text but the id; the log names step, type and message,
    with the traceback."""
    with captured_logs() as sink:
        r = post(url, "/greet", b"{}")
        rid = r.json()["request_id"]
        (failed,) = sink.wait_for("run.failed", request_id=rid)
    assert r.status_code == 500 and r.json() == {"error": "Internal server error", "request_id": rid}
    assert r.headers["request-id"] == rid
    assert failed["step"] == "greet.hello" and failed["error"] == "AttributeError: 'NoneType' object has no attribute 'strip'"
    assert "AttributeError" in str(failed["exception"]) and "greet" in str(failed["exception"])  # the traceback
    (step_end,) = sink.lines("step.end", request_id=rid)
    assert step_end["step"] == "hello" and step_end["error"] == failed["error"]


def test_no_route_is_answered_in_the_engine_format(url: str) -> None:
    """With no `errors:` step among the pipelines, a 404 is the engine's JSON error, with a
    request id (here the `own` pipeline's step renders it, being the only one)."""
    r = httpx.get(f"{url}/nowhere", timeout=60)
    assert r.status_code == 404 and r.json()["oops"] == "Not found: GET /nowhere"


def test_no_route_without_any_errors_step_is_the_engine_format(url: str) -> None:
    """Only pipelines without `errors:`: the 404 is {"error", "request_id"}, id in the headers."""
    root = Path(sys.modules["user_steps_http_input"].__file__).parent
    with serve_asgi(create_app(Engine.load([root / "pipelines" / "greet.yaml"]))) as plain:
        r = httpx.get(f"{plain}/nowhere", timeout=60)
    assert r.status_code == 404 and r.json()["error"] == "Not found: GET /nowhere"
    assert r.json()["request_id"].startswith("req_") and r.headers["request-id"] == r.json()["request_id"]
