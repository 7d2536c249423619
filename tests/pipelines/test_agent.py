"""POST /agent/v1/messages end to end: the official SDK, the real gateway running agent.yaml, and
the fake OpenRouter scripting the model's tool calls; the gateway runs them in a workspace."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.steps.tools.agent_gateway import Agent, outcome, results, start_agent
from tests.support.fake_openrouter import tool_mode


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    yield from start_agent(tmp_path_factory.mktemp("agent"))


@pytest.fixture(autouse=True)
def _fresh(agent: Agent) -> None:
    agent.fake.clear()
    agent.fake.default_mode = "ok"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_write_then_read_back_in_one_call(agent: Agent, stream: bool) -> None:
    """The model writes a file, reads it back and answers: one client call, two tool rounds."""
    name = f"note-{'sse' if stream else 'json'}.txt"
    agent.fake.script(
        tool_mode("Write", {"file_path": name, "content": "alpha\nbeta\n"}),
        tool_mode("Read", {"file_path": name}),
        "ok",
    )
    msg = agent.ask("Write a note and read it back.", stream=stream)
    assert msg.stop_reason == "end_turn"
    ran = results(msg)
    assert [r[0] for r in ran] == ["Write", "Read"]
    assert (agent.ws / name).read_text() == "alpha\nbeta\n"
    text, is_error = outcome(ran[1][2])
    assert not is_error and "1\talpha" in text and "2\tbeta" in text
    final = msg.content[-1]
    assert final.type == "text" and final.text.startswith("Done:") and "alpha" in final.text
    assert len(agent.fake.requests) == 3
    # the upstream saw the gateway's tool declarations and the real results
    upstream = agent.fake.requests[2].json
    assert {"Read", "Write", "Bash"} <= {t["function"]["name"] for t in upstream["tools"]}
    tool_msgs = [m for m in upstream["messages"] if m["role"] == "tool"]
    assert tool_msgs[0]["content"].startswith("Created ") and "alpha" in tool_msgs[1]["content"]


def test_stream_is_one_message_with_consecutive_indices(agent: Agent) -> None:
    """Server-side work streams as server_tool_use + result blocks inside one message."""
    (agent.ws / "grammar.txt").write_text("x\n")
    agent.fake.script(tool_mode("Read", {"file_path": "grammar.txt"}, text="Let me look."), "ok")
    body = {"model": "claude-sonnet-5-5", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "look"}]}
    with agent.gw.http() as http:
        r = http.post("/agent/v1/messages", json=body)
    events = [json.loads(b.split("\n")[1].removeprefix("data: ")) for b in r.text.strip().split("\n\n")]
    names = [e["type"] for e in events if e["type"] != "ping"]
    assert names.count("message_start") == 1 and names[0] == "message_start"
    assert names.count("message_delta") == 1 and names[-2:] == ["message_delta", "message_stop"]
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [e["index"] for e in starts] == list(range(len(starts)))
    assert [e["content_block"]["type"] for e in starts] == ["text", "server_tool_use", "code_execution_tool_result", "text"]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_client_tools_stay_client_tools(agent: Agent) -> None:
    """A tool the client declares (and the gateway does not run) comes back as tool_use."""
    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    agent.fake.script(tool_mode("get_weather", {"city": "Paris"}))
    msg = agent.ask("weather?", tools=tools)
    assert msg.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in msg.content] == [("tool_use", "get_weather", {"city": "Paris"})]
    assert len(agent.fake.requests) == 1


def test_mixed_turn_runs_server_calls_and_returns_client_calls(agent: Agent) -> None:
    """Server calls of a turn run; its client calls go back to the client with stop_reason tool_use."""
    (agent.ws / "mixed.txt").write_text("m\n")
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    agent.fake.script(tool_mode(calls=[("Read", {"file_path": "mixed.txt"}), ("get_weather", {})]))
    msg = agent.ask("both", tools=tools, stream=True)
    assert msg.stop_reason == "tool_use"
    assert [b.type for b in msg.content] == ["server_tool_use", "tool_use", "code_execution_tool_result"]
    # the client answers its own call; the server-side history goes back upstream as tool calls
    history = [
        {"role": "user", "content": "both"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": msg.content[1].id, "content": "sunny"}]},
    ]
    final = agent.client().messages.create(model="claude-sonnet-5-5", max_tokens=100, tools=tools, messages=history)
    assert final.content[0].text == "Done: sunny"
    sent = agent.fake.requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert len(sent[1]["tool_calls"]) == 2 and sent[2]["content"].strip().endswith("m") and sent[3]["content"] == "sunny"


def test_concurrent_calls_in_one_turn(agent: Agent) -> None:
    """Independent calls of one turn all run, results in call order."""
    for i in range(3):
        (agent.ws / f"c{i}.txt").write_text(f"content {i}\n")
    agent.fake.script(tool_mode(calls=[("Read", {"file_path": f"c{i}.txt"}) for i in range(3)]), "ok")
    msg = agent.ask("read three")
    texts = [outcome(r[2])[0] for r in results(msg)]
    assert [t.split("\t")[1].strip() for t in texts] == ["content 0", "content 1", "content 2"]


def test_loop_bound_pauses_the_turn(agent: Agent) -> None:
    """An upstream that always calls a tool is paused at max_rounds (5 here): upstream requests =
    bound, every call made ran, and the reply ends with `pause_turn` on a server tool result."""
    agent.fake.default_mode = tool_mode("LS", {})
    for stream in (False, True):
        agent.fake.clear()
        msg = agent.ask("loop forever", stream=stream)
        assert len(agent.fake.requests) == 5
        assert msg.stop_reason == "pause_turn"
        assert msg.content[-1].type == "code_execution_tool_result"
        assert len(results(msg)) == 5


def test_paused_turn_sent_back_continues_from_the_results(agent: Agent) -> None:
    """What a client does on pause_turn: the reply goes back as the assistant turn, and the
    upstream resumes with every tool result of it answered, ending on the last one."""
    agent.fake.default_mode = tool_mode("LS", {})
    paused = agent.ask("loop forever")
    assert paused.stop_reason == "pause_turn"
    agent.fake.clear()
    agent.fake.default_mode = "ok"
    client = agent.client()
    msg = client.messages.create(
        model="claude-sonnet-5-5", max_tokens=200,
        messages=[{"role": "user", "content": "loop forever"}, {"role": "assistant", "content": paused.content}],
    )
    assert msg.stop_reason == "end_turn" and msg.content[-1].text.startswith("Done:")
    upstream = agent.fake.requests[0].json["messages"]
    assert upstream[-1]["role"] == "tool"
    assert sum(m["role"] == "tool" for m in upstream) == 5


def test_web_search_answered_the_anthropic_way(agent: Agent) -> None:
    """A web_search_20250305 request gets server_tool_use, web_search_tool_result, cited text
    and usage.server_tool_use.web_search_requests (what makes Claude Code say "Did 1 search")."""
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 8}]
    for stream in (False, True):
        agent.fake.clear()
        agent.fake.script(tool_mode("web_search", {"query": "pipeline engines"}), "ok")
        msg = agent.ask("Perform a web search for the query: pipeline engines", tools=tools, stream=stream)
        kinds = [b.type for b in msg.content]
        assert kinds == ["server_tool_use", "web_search_tool_result", "text"]
        assert msg.content[0].name == "web_search" and msg.content[0].input == {"query": "pipeline engines"}
        hits = msg.content[1].content
        assert [h.url for h in hits] == ["https://example.com/1", "https://example.com/2"]
        assert hits[0].encrypted_content.startswith("eng1.")
        cites = msg.content[2].citations
        assert cites and cites[0].type == "web_search_result_location" and cites[0].url == "https://example.com/1"
        assert msg.usage.server_tool_use.web_search_requests == 1
        sent = agent.fake.requests[0].json
        assert "web_search" in {t["function"]["name"] for t in sent["tools"]}
        assert "Snippet 1 about pipeline engines" in agent.fake.requests[1].json["messages"][-1]["content"]


def test_web_search_max_uses(agent: Agent) -> None:
    """Past max_uses, web_search answers the error block Anthropic uses, still HTTP 200."""
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 0}]
    agent.fake.script(tool_mode("web_search", {"query": "q"}), "ok")
    msg = agent.ask("search", tools=tools)
    assert msg.content[1].content.error_code == "max_uses_exceeded"


def test_default_route_never_runs_tools(agent: Agent) -> None:
    """/v1/messages returns a Read call to the client; nothing runs on the gateway."""
    tools = [{"name": "Read", "input_schema": {"type": "object"}}]
    agent.fake.script(tool_mode("Read", {"file_path": "x"}))
    msg = agent.gw.client().messages.create(model="claude-sonnet-5-5", max_tokens=50, tools=tools, messages=[{"role": "user", "content": "r"}])
    assert msg.stop_reason == "tool_use" and msg.content[0].type == "tool_use"


def test_default_route_answers_claude_codes_web_search(agent: Agent) -> None:
    """Claude Code's WebSearch request on the default /v1/messages route is answered the Anthropic way
    (server_tool_use + web_search_tool_result + cited text), streamed as Claude Code asks for it."""
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 8}]
    agent.fake.clear()
    agent.fake.script(tool_mode("web_search", {"query": "pipeline engines"}), "ok")
    with agent.gw.client().messages.stream(model="claude-sonnet-5-5", max_tokens=200, tools=tools, messages=[{"role": "user", "content": "Perform a web search for the query: pipeline engines"}]) as s:
        msg = s.get_final_message()
    assert [b.type for b in msg.content] == ["server_tool_use", "web_search_tool_result", "text"]
    assert msg.usage.server_tool_use.web_search_requests == 1
    assert len(agent.fake.requests) == 2


def test_agent_prefix_serves_the_whole_api(agent: Agent) -> None:
    """A client whose base URL ends in /agent also gets count_tokens, models and the warm-up."""
    import httpx

    with httpx.Client(base_url=agent.gw.url, headers={"x-api-key": "k"}) as http:
        assert http.head("/agent").status_code == 200
        assert http.head("/agent/api/hello").status_code == 200
        assert http.get("/agent/v1/models").json()["data"]
        r = http.post("/agent/v1/messages/count_tokens", json={"model": "claude-opus-5-5", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["input_tokens"] > 0
