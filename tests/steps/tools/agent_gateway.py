"""A real gateway serving pipelines/agent.yaml for end-to-end tool tests, with the layout of
RELIABILITY §4b: a workspace W, a canary directory beside it (`ws-out/secret.txt`) and a
sibling whose name shares W's prefix (`ws-evil`). Everything binds to 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic

import steps.tools  # noqa: F401  (registers the tools steps until steps/__init__.py imports them)
from tests.pipelines.conftest import Gateway, start_gateway

CANARY = "CANARY-7f3a9c-do-not-leak"


@dataclass
class Agent:
    gw: Gateway
    base: Path

    @property
    def ws(self) -> Path:
        return self.base / "ws"

    @property
    def canary(self) -> Path:
        return self.base / "ws-out" / "secret.txt"

    @property
    def fake(self) -> Any:
        return self.gw.fake

    def client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gw.url + "/agent", api_key="sk-ant-test-client-key", max_retries=0, timeout=60)

    def ask(self, text: str, *, stream: bool = False, tools: list | None = None, **kw: Any) -> Any:
        """One request to /agent/v1/messages; the final Message (streamed or not)."""
        args: dict[str, Any] = {"model": "claude-sonnet-5-5", "max_tokens": 1024, "messages": [{"role": "user", "content": text}], **kw}
        if tools is not None:
            args["tools"] = tools
        if stream:
            with self.client().messages.stream(**args) as s:
                return s.get_final_message()
        return self.client().messages.create(**args)

    def outside_digest(self) -> dict[str, str]:
        """sha256 of every file outside W under the test base (canary, sibling)."""
        out = {}
        for root, _dirs, names in os.walk(self.base):
            if Path(root).is_relative_to(self.ws):
                continue
            for n in names:
                p = Path(root) / n
                if p.is_file() and not p.is_symlink():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        return out


def results(message: Any) -> list[tuple[str, dict, Any]]:
    """(tool name, input, result block) for every server-side call in a final message."""
    uses = {b.id: b for b in message.content if b.type == "server_tool_use"}
    out = []
    for b in message.content:
        if b.type.endswith("_tool_result") and b.tool_use_id in uses:
            u = uses[b.tool_use_id]
            out.append((u.name, u.input, b))
    return out


def outcome(block: Any) -> tuple[str, bool]:
    """(text, is_error) of an agent tool's code_execution_tool_result block."""
    c = block.content
    c = c if isinstance(c, dict) else c.model_dump()
    return (c["stderr"] or c["stdout"]), c["return_code"] != 0


def start_agent(base: Path, env: dict[str, str] | None = None) -> Iterator[Agent]:
    ws = base / "ws"
    ws.mkdir(parents=True)
    os.chmod(ws, 0o777)  # Bash runs as an unprivileged uid when the tests run as root
    (base / "ws-out").mkdir(mode=0o700)
    (base / "ws-out" / "secret.txt").write_text(CANARY + "\n")
    os.chmod(base / "ws-out" / "secret.txt", 0o600)
    (base / "ws-evil").mkdir()
    (base / "ws-evil" / "x").write_text(CANARY + " sibling\n")
    full = {
        "ENGINE_SERVER_TOOLS": "on",  # /agent exists only when server-side tools are turned on
        "AGENT_WORKSPACE": str(ws),
        "AGENT_BASH_ALLOW": "echo cat ls sleep yes python3 dd head wc",
        "AGENT_BASH_TIMEOUT": "2",
        "AGENT_BASH_MAX_FILE": str(8 * 1024 * 1024),
        "AGENT_BASH_MAX_MEMORY": str(512 * 1024 * 1024),
        "AGENT_GREP_SECONDS": "2",
        "AGENT_WALK_ENTRIES": "10000",
        "AGENT_MAX_ROUNDS": "5",
        "AGENT_FETCH_TIMEOUT": "3",
        "WEB_SEARCH_BACKEND": "tests.steps.tools.agent_gateway:fake_search",
        **(env or {}),
    }
    for gw in start_gateway(full):
        yield Agent(gw, base)


SEARCHES: list[dict] = []


def fake_search(query: str, max_results: int = 5) -> list[dict]:
    """The tests' web search backend: two deterministic results per query."""
    SEARCHES.append({"query": query, "max_results": max_results})
    return [
        {"url": f"https://example.com/{i}", "title": f"Result {i} for {query}", "content": f"Snippet {i} about {query}.", "page_age": "1 day"}
        for i in (1, 2)
    ][:max_results]
