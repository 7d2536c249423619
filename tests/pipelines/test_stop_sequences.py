"""`stop_reason: "stop_sequence"` with the sequence whenever the upstream makes it knowable
(issue 16, item 7): a text that ends with it, or a server's own choice field (vLLM
`stop_reason`, SGLang `matched_stop`, llama.cpp `stopping_word`), JSON and streamed, read by
the official SDK through a real gateway. The upstream is a small OpenAI-compatible server that
answers in the dialect the model id names (`dialect/vllm`, ...).
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine.executor import Engine
from engine.http import create_app
from tests.pipelines.conftest import PIPELINES
from tests.support.servers import serve_asgi

STOPS = ["END", "</answer>"]
DIALECTS = {
    # name: (text the server returns, extra fields of the finishing choice)
    "vllm": ("The answer is 42.", {"stop_reason": "END"}),
    "sglang": ("The answer is 42.", {"matched_stop": "</answer>"}),
    "llama.cpp": ("The answer is 42.", {"stopping_word": "END"}),
    "unstripped": ("The answer is 42.</answer>", {}),
    "silent": ("The answer is 42.", {}),
    "token-id": ("The answer is 42.", {"stop_reason": 128009}),  # vLLM names a stop token, not a string
}
EXPECTED = {"vllm": "END", "sglang": "</answer>", "llama.cpp": "END", "unstripped": "</answer>", "silent": None, "token-id": None}


async def chat(request: Request) -> Response:
    body = await request.json()
    text, extra = DIALECTS[body["model"].removeprefix("dialect/")]
    usage = {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    if not body.get("stream"):
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", **extra}
        return JSONResponse({"id": "c1", "object": "chat.completion", "model": body["model"], "choices": [choice], "usage": usage})

    def chunk(delta: dict, finish: str | None = None, **fields: object) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, **fields}
        return b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "model": body["model"], "choices": [choice]}) + b"\n\n"

    async def events() -> Iterator[bytes]:
        yield chunk({"role": "assistant", "content": ""})
        for i in range(0, len(text), 5):
            yield chunk({"content": text[i : i + 5]})
        yield chunk({}, "stop", **extra)
        yield b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def client() -> Iterator[anthropic.Anthropic]:
    upstream = Starlette(routes=[Route("/chat/completions", chat, methods=["POST"])])
    with serve_asgi(upstream) as upstream_url:
        env = {"OPENROUTER_BASE_URL": upstream_url, "OPENROUTER_MODELS_FETCH": "false", "UPSTREAM_COOLDOWN": "0", "PING_INTERVAL": "0.2"}
        engine = Engine.load([PIPELINES], env=env)
        with serve_asgi(create_app(engine)) as url:
            yield anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0)


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_json(client: anthropic.Anthropic, dialect: str) -> None:
    msg = client.messages.create(
        model=f"dialect/{dialect}", max_tokens=64, stop_sequences=STOPS, messages=[{"role": "user", "content": "?"}]
    )
    expected = EXPECTED[dialect]
    assert (msg.stop_reason, msg.stop_sequence) == (("stop_sequence", expected) if expected else ("end_turn", None))


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_stream(client: anthropic.Anthropic, dialect: str) -> None:
    with client.messages.stream(
        model=f"dialect/{dialect}", max_tokens=64, stop_sequences=STOPS, messages=[{"role": "user", "content": "?"}]
    ) as stream:
        msg = stream.get_final_message()
    expected = EXPECTED[dialect]
    assert msg.content[0].text == DIALECTS[dialect][0]
    assert (msg.stop_reason, msg.stop_sequence) == (("stop_sequence", expected) if expected else ("end_turn", None))
