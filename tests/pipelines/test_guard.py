"""The Host and Origin check (engine/guard.py): the wall against DNS rebinding and cross-site posts.

End to end through a real socket: the repo's pipelines under uvicorn on 127.0.0.1, clients that
forge the `Host` header the way a rebound browser page sends it (its own name, the gateway's
address) and a foreign `Origin`. A refused request gets Anthropic's 403 `permission_error`
and never reaches a pipeline (the fake upstream sees nothing).
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest

from engine.guard import HostPolicy, split_host
from tests.pipelines.conftest import Gateway, start_gateway

ASK = {"model": "claude-sonnet-5-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    yield from start_gateway({})


def port_of(gw: Gateway) -> int:
    return int(gw.url.rsplit(":", 1)[1])


def assert_refused(r: httpx.Response, what: str) -> None:
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "permission_error"
    assert what in body["error"]["message"]
    assert r.headers["x-should-retry"] == "false" and r.headers["request-id"] == body["request_id"]


class TestForgedHost:
    @pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}", "localhost.evil.example:{port}", ""])
    def test_a_rebound_page_is_refused_before_any_pipeline(self, gw: Gateway, host: str) -> None:
        """A Host that is not this server's (the page's own name, on the gateway's socket) gets 403 and no upstream call."""
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            r = http.post("/v1/messages", json=ASK, headers={"Host": host.format(port=port_of(gw)), "x-api-key": "k"})
        assert_refused(r, "Host")
        assert gw.fake.requests == []

    @pytest.mark.parametrize("path", ["/health", "/metrics", "/v1/models", "/nowhere"])
    def test_every_route_is_behind_the_check(self, gw: Gateway, path: str) -> None:
        """/health and /metrics (and unknown paths) are refused too: nothing answers a foreign Host."""
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            assert_refused(http.get(path, headers={"Host": "evil.example"}), "Host")

    def test_the_sdk_gets_a_permission_error(self, gw: Gateway) -> None:
        """The official SDK raises PermissionDeniedError and does not retry it."""
        client = gw.client(default_headers={"Host": "attacker.example"}, max_retries=2)
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            client.messages.create(**ASK)
        assert caught.value.status_code == 403
        assert gw.fake.requests == []

    @pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "127.8.9.10:{port}", "localhost", "127.0.0.1"])
    def test_loopback_names_are_served(self, gw: Gateway, host: str) -> None:
        """localhost and 127.0.0.0/8, with the bound port or none, reach the pipelines."""
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            r = http.post("/v1/messages", json=ASK, headers={"Host": host.format(port=port_of(gw)), "x-api-key": "k"})
        assert r.status_code == 200, r.text
        assert len(gw.fake.requests) == 1

    def test_a_loopback_name_on_another_port_is_refused(self, gw: Gateway) -> None:
        """localhost:OTHER is some other local server's name, not this one's."""
        other = port_of(gw) % 60000 + 1
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            assert_refused(http.get("/health", headers={"Host": f"localhost:{other}"}), "Host")


class TestOrigin:
    def test_a_foreign_origin_is_refused(self, gw: Gateway) -> None:
        """A cross-site page's request (right Host, foreign Origin) gets 403 and reaches no pipeline."""
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            r = http.post("/v1/messages", json=ASK, headers={"Origin": "https://evil.example", "x-api-key": "k"})
        assert_refused(r, "Origin")
        assert gw.fake.requests == []

    @pytest.mark.parametrize("origin", ["null", "http://localhost:3000", "http://127.0.0.1", "file://", "chrome-extension://abc"])
    def test_other_local_pages_and_opaque_origins_are_refused(self, gw: Gateway, origin: str) -> None:
        """Another local port, the default port, an opaque or non-web origin: not this server's own."""
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            assert_refused(http.get("/v1/models", headers={"Origin": origin}), "Origin")

    def test_the_servers_own_origin_is_served(self, gw: Gateway) -> None:
        """A page served from the gateway's own origin (same host and port as Host) is fine."""
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            r = http.post("/v1/messages", json=ASK, headers={"Origin": gw.url, "x-api-key": "k"})
        assert r.status_code == 200, r.text

    def test_no_origin_is_not_a_browser(self, gw: Gateway) -> None:
        """Programs (the SDK, Claude Code) send no Origin and are served."""
        assert gw.client().messages.create(**ASK).content[0].type == "text"


def test_allowlists_open_what_they_name() -> None:
    """ENGINE_ALLOWED_HOSTS / ENGINE_ALLOWED_ORIGINS entries, served through a real socket."""
    from engine.executor import Engine
    from engine.http import create_app
    from tests.pipelines.conftest import PIPELINES
    from tests.support.servers import serve_asgi

    engine = Engine.load([PIPELINES], env={"OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1"})
    policy = HostPolicy(allowed_hosts=["gateway.example", "*.corp.example", "other.example:8443"], allowed_origins=["https://app.example"])
    with serve_asgi(create_app(engine, host_policy=policy)) as url, httpx.Client(base_url=url, timeout=30) as http:
        for host in ("gateway.example", "gateway.example:1234", "a.corp.example", "other.example:8443"):
            assert http.get("/health", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "corp.example.evil", "other.example", "other.example:8444", "xcorp.example"):
            assert_refused(http.get("/health", headers={"Host": host}), "Host")
        assert http.get("/health", headers={"Origin": "https://app.example"}).status_code == 200
        assert http.get("/health", headers={"Host": "gateway.example", "Origin": "http://gateway.example"}).status_code == 200
        assert_refused(http.get("/health", headers={"Origin": "https://app.example.evil"}), "Origin")


def test_a_repeated_origin_is_refused(gw: Gateway) -> None:
    """Two Origin headers (one of them the server's own) are ambiguous: refused."""
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        r = http.get("/health", headers=[("Origin", gw.url), ("Origin", "https://evil.example")])
    assert_refused(r, "Origin")


class TestPolicy:
    """The rules themselves, including the binds a test cannot make on loopback only."""

    @pytest.mark.parametrize(
        ("value", "parsed"),
        [
            ("LocalHost:8082", ("localhost", 8082)),
            ("[::1]:8082", ("::1", 8082)),
            ("[::1]", ("::1", None)),
            ("example.com.", ("example.com", None)),
            ("example.com:0", None),
            ("example.com:99999", None),
            ("example.com:x", None),
            ("[::1", None),
            ("[::1]x", None),
            ("", None),
        ],
    )
    def test_split_host(self, value: str, parsed: tuple | None) -> None:
        """Host values are read strictly: a malformed one is refused, never guessed at."""
        assert split_host(value) == parsed

    def test_ipv6_loopback_with_the_bound_port(self) -> None:
        """[::1] is loopback; the port must be the bound one."""
        p = HostPolicy()
        assert p.host_allowed("::1", 8082, ("::1", 8082))
        assert not p.host_allowed("::1", 8083, ("::1", 8082))

    def test_a_non_loopback_bind_allows_its_own_address_and_name(self) -> None:
        """Bound to 0.0.0.0 or a name: the address a connection came in on and the bound name are this server."""
        p = HostPolicy(bind_host="gateway.lan")
        server = ("10.1.2.3", 8082)
        assert p.host_allowed("10.1.2.3", 8082, server) and p.host_allowed("10.1.2.3", None, server)
        assert p.host_allowed("gateway.lan", 8082, server)
        assert not p.host_allowed("10.9.9.9", 8082, server)
        assert not p.host_allowed("evil.example", 8082, server)
        assert not HostPolicy(bind_host="0.0.0.0").host_allowed("0.0.0.0", 8082, ("127.0.0.1", 8082))

    def test_a_loopback_connection_does_not_allow_other_addresses(self) -> None:
        """On a loopback bind only loopback names count, whatever ENGINE_HOST says."""
        p = HostPolicy(bind_host="127.0.0.1")
        assert not p.host_allowed("10.1.2.3", 8082, ("127.0.0.1", 8082))

    def test_bad_allowlist_entries_are_errors(self) -> None:
        """A typo in an allowlist fails at start-up instead of silently allowing nothing (or everything)."""
        with pytest.raises(ValueError, match="ENGINE_ALLOWED_HOSTS"):
            HostPolicy(allowed_hosts=["host:notaport"])
        with pytest.raises(ValueError, match="ENGINE_ALLOWED_ORIGINS"):
            HostPolicy(allowed_origins=["app.example"])
