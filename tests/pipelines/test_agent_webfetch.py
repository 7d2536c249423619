"""WebFetch through the agent pipeline (RELIABILITY §4b 27, 29, 32), inside a network namespace.

The tests re-run themselves under `unshare -rn` (a new network namespace with only loopback),
so even a wrong implementation could not send a packet to a private or metadata address.
Loopback is refused by default; one loopback test server is allowlisted explicitly. Where
`unshare` is not available, the tests run directly: every refusal happens before connecting.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterator

import pytest

from tests.steps.tools.agent_gateway import Agent, outcome, results, start_agent
from tests.support.fake_openrouter import tool_mode
from tests.support.servers import serve_asgi

IN_NETNS = os.environ.get("ENGINE_TEST_NETNS") == "1"


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


NETNS = not IN_NETNS and _can_unshare()
inside = pytest.mark.skipif(NETNS, reason="runs inside `unshare -rn` (test_webfetch_in_a_network_namespace)")


@pytest.mark.skipif(not NETNS, reason="unshare -rn is not available (or already inside)")
def test_webfetch_in_a_network_namespace() -> None:
    """Runs this file's tests in a fresh network namespace with only loopback up."""
    cmd = f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider {__file__}"
    r = subprocess.run(["unshare", "-rn", "sh", "-c", cmd], capture_output=True, text=True, timeout=240,
                       env={**os.environ, "ENGINE_TEST_NETNS": "1"}, cwd=os.getcwd())
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert " passed" in last and "1 skipped" in last and "failed" not in last, last  # the one skip is this test


BOMB = zlib.compressobj(9, zlib.DEFLATED, 31)
BOMB_BODY = BOMB.compress(b"\0" * (64 * 1024 * 1024)) + BOMB.flush()  # ~64 KB → 64 MB


async def site(scope, receive, send) -> None:  # noqa: ANN001 - a raw ASGI app
    if scope["type"] != "http":
        return
    path = scope["path"]
    headers = [(b"content-type", b"text/html; charset=utf-8")]
    if path == "/page":
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"<html><head><title>Hi</title></head><body><h1>Title</h1><p>Some <b>bold</b> text.</p></body></html>"})
    elif path.startswith("/redirect"):
        target = {"/redirect-private": b"http://10.0.0.1/", "/redirect-meta": b"http://169.254.169.254/latest/meta-data/",
                  "/redirect-ok": b"/page"}[path]
        await send({"type": "http.response.start", "status": 302, "headers": [(b"location", target)]})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        chunk = b"x" * (1024 * 1024)
        for _ in range(12):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/bomb":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain"), (b"content-encoding", b"gzip")]})
        await send({"type": "http.response.body", "body": BOMB_BODY})
    elif path == "/drip":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for _ in range(120):
            await send({"type": "http.response.body", "body": b"drip ", "more_body": True})
            await asyncio.sleep(0.5)
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": b"not found"})


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, str]]:
    with serve_asgi(site) as url:
        hostport = url.removeprefix("http://")
        for agent in start_agent(tmp_path_factory.mktemp("webfetch"), {"AGENT_FETCH_ALLOW_HOSTS": hostport}):
            yield agent, url


def fetch(agent: Agent, url: str) -> tuple[str, bool]:
    agent.fake.clear()
    agent.fake.script(tool_mode("WebFetch", {"url": url, "prompt": "summarise"}), "ok")
    ran = results(agent.ask("fetch it"))
    assert [r[0] for r in ran] == ["WebFetch"]
    return outcome(ran[0][2])


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@inside
def test_allowlisted_page_is_fetched_as_markdown(web: tuple[Agent, str]) -> None:
    agent, url = web
    text, is_error = fetch(agent, f"{url}/page")
    assert not is_error and "# Title" in text and "**bold**" in text
    text, is_error = fetch(agent, f"{url}/redirect-ok")
    assert not is_error and "# Title" in text


@inside
@pytest.mark.parametrize("target,why", [
    ("http://127.0.0.1:{gw}/", "loopback"),
    ("http://localhost:{gw}/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[fd00::1]/", "private"),
    ("http://10.0.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://127.1/", "loopback"),
])
def test_internal_addresses_are_refused(web: tuple[Agent, str], target: str, why: str) -> None:
    """§4b 27: refused before connecting; the reason names the address class."""
    agent, url = web
    gw_port = agent.gw.url.rsplit(":", 1)[1]
    text, is_error = fetch(agent, target.format(gw=gw_port))
    assert is_error and why in text and "\n" not in text.strip()
    assert len(agent.fake.requests) == 2  # the two scripted upstream turns, no retry


@inside
@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1:70/_x", "ftp://example.com/", "data:text/plain,hi"])
def test_other_schemes_are_refused(web: tuple[Agent, str], target: str) -> None:
    """§4b 29."""
    agent, _ = web
    text, is_error = fetch(agent, target)
    assert is_error and "only http and https" in text


@inside
@pytest.mark.parametrize("path,why", [("/redirect-private", "private"), ("/redirect-meta", "metadata")])
def test_redirects_are_checked_hop_by_hop(web: tuple[Agent, str], path: str, why: str) -> None:
    agent, url = web
    text, is_error = fetch(agent, url + path)
    assert is_error and why in text


@inside
def test_size_and_time_caps(web: tuple[Agent, str]) -> None:
    """§4b 32: a 12 MB body and a gzip bomb stop at the 10 MB cap; a drip ends at the timeout."""
    agent, url = web
    before = _rss_kb()
    text, is_error = fetch(agent, f"{url}/big")
    assert not is_error and "truncated" in text
    text, is_error = fetch(agent, f"{url}/bomb")
    assert not is_error and "truncated" in text
    assert _rss_kb() - before < 50 * 1024
    text, is_error = fetch(agent, f"{url}/drip")
    assert is_error and "timed out after 3 s" in text
