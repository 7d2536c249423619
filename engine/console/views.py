"""The console's pages, its live feed and its login, as one starlette app mounted at /console.

Every page is rendered here from the run records and the loaded plans; `present.py` shapes a
record for the run page and `usage.py` adds up the usage page. The only writes are the
session cookie and a replay, which runs captured requests against a private copy of the
current pipelines (recorded steps answered from the capture, nothing sent anywhere).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.to_thread
import jinja2
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.console import present, svg, usage
from engine.console.runs import CaptureIndex, RunEntry, Runs, ordered_facts

if TYPE_CHECKING:
    from engine.executor import Engine


class ConsoleState(Protocol):
    """What the pages read from `engine.console.Console`, named here rather than imported:
    the Console builds this app, so importing it back would close an import cycle."""

    engine: Engine
    api_keys: list[str]
    pipelines: list[str] | None
    runs: Runs
    captures: CaptureIndex | None
    reloads: list[dict[str, Any]]

HERE = Path(__file__).parent
STREAM_SECONDS = 5.0
"""How long one live-feed response lasts before the browser reconnects (resuming where it
left off, via Last-Event-ID). Bounded because uvicorn's graceful shutdown waits for open
responses and gives an application no sign that it started: an endless feed would hold a
shutdown for its whole grace period."""
SESSION_SECONDS = 12 * 3600


def _fingerprint(key: str) -> str:
    return hmac.new(b"engine-console-session", key.encode(), hashlib.sha256).hexdigest()[:32]


def _session_secret(keys: list[str]) -> str:
    """The cookie-signing secret: derived from the keys, so every worker agrees on it."""
    return hashlib.sha256(b"engine-console\0" + b"\0".join(sorted(k.encode() for k in keys))).hexdigest()


class _LoginRequired:
    """Sends every request without a valid session to the login form (assets excepted)."""

    def __init__(self, app: ASGIApp, fingerprints: set[str]) -> None:
        self.app = app
        self.fingerprints = fingerprints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"][len(scope.get("root_path", "")) :] if scope["path"].startswith(scope.get("root_path", "")) else scope["path"]
            if not (path.startswith("/static/") or path == "/login") and scope.get("session", {}).get("key") not in self.fingerprints:
                response: Response
                if path == "/events":
                    response = Response("login required", status_code=401)
                else:
                    response = RedirectResponse(f"{scope.get('root_path', '')}/login", status_code=303)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class _Headers:
    """Adds a strict content security policy to every response, and keeps pages out of caches
    (they show request contents); the console's own script and stylesheet are all it loads."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = "/static/" in scope["path"]

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *_HEADERS]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _same_origin(request: Request) -> bool:
    """A form post from a page of this console (browsers always send Origin on a POST)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser: curl and scripts send no Origin and hold no session to abuse
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


async def _form(request: Request, limit: int = 64 * 1024) -> dict[str, list[str]]:
    """A url-encoded form (the console's only kind), parsed by the standard library, capped."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return {}
    return parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=200)


def build(console: ConsoleState) -> ASGIApp:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["ms"] = lambda v: "" if v is None else f"{float(v):,.1f} ms"
    env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""
    env.filters["fact"] = present.fact
    templates = Jinja2Templates(env=env)
    engine = console.engine
    fingerprints = {_fingerprint(k) for k in console.api_keys}

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("title", name.removesuffix(".html"))
        base = request.scope.get("root_path", "")
        return templates.TemplateResponse(request, name, {"base": base, "auth": bool(fingerprints), "nav": name, **context}, status_code=status)

    async def entries() -> list[RunEntry]:
        """Recent runs, newest first: this process's ring, then capture files' runs it lacks."""
        live = console.runs.all()
        seen = {(e.request_id, round(e.started_at, 3)) for e in live}
        captured: list[RunEntry] = []
        if console.captures is not None:
            captured = [e for e in await anyio.to_thread.run_sync(console.captures.refresh) if (e.request_id, round(e.started_at, 3)) not in seen]
        return sorted(live + captured, key=lambda e: e.started_at, reverse=True)

    async def find(key: str) -> RunEntry | None:
        if key.isdigit():
            return console.runs.get(key)
        if console.captures is not None:
            await anyio.to_thread.run_sync(console.captures.refresh)
            return await anyio.to_thread.run_sync(console.captures.load, key)
        return None

    async def runs_page(request: Request) -> Response:
        rows = [e.summary() for e in (await entries())[:500]]
        return page(request, "runs.html", runs=rows, last=console.runs.version, capturing=console.captures is not None, title="runs")

    async def events(request: Request) -> Response:
        try:
            last = int(request.headers.get("last-event-id") or request.query_params.get("after") or console.runs.version)
        except ValueError:
            last = console.runs.version

        async def feed() -> Any:
            nonlocal last
            yield "retry: 500\n\n"
            ends = anyio.current_time() + STREAM_SECONDS
            while anyio.current_time() < ends:
                for entry in console.runs.after(last):
                    last = entry.version
                    data = present.scrubbed(orjson.dumps(entry.summary()).decode())
                    yield f"id: {entry.version}\nevent: run\ndata: {data}\n\n"
                await console.runs.wait(min(2.0, max(ends - anyio.current_time(), 0.0)))
                yield ": keepalive\n\n"

        return StreamingResponse(feed(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    async def run_page(request: Request) -> Response:
        key = request.path_params["key"]
        entry = await find(key)
        if entry is None:
            return page(request, "missing.html", status=404, what=f"run {key}", why="It is not among this process's recent runs nor in the capture directory.")
        return page(request, "run.html", run=present.run_view(entry, engine.plans), facts=ordered_facts(entry.facts), title=f"run {entry.request_id}")

    async def pipelines_page(request: Request) -> Response:
        check = await anyio.to_thread.run_sync(present.check_files, console.pipelines or present.plan_dirs(engine.plans), engine.env)
        drawn = [{"plan": p, "svg": svg.pipeline_svg(p)} for p in sorted(engine.plans.values(), key=lambda p: (not p.routes, p.name))]
        return page(request, "pipelines.html", pipelines=drawn, check=check, reloads=list(reversed(console.reloads)), title="pipelines")

    async def usage_page(request: Request) -> Response:
        return page(request, "usage.html", usage=usage.summarize(await entries(), time.time()), title="usage")

    def replayable(entry: RunEntry) -> bool:
        """Capture runs, and recent runs whose record holds every answer replay needs (a
        stream's items are kept only with capture on)."""
        r = entry.record
        if entry.source != "live":
            return True
        return r is not None and "output" in r and r.get("outcome") != "client_disconnected" and all(c.get("stream") != "not recorded" for c in r.get("calls") or [])

    async def replay_page(request: Request) -> Response:
        results: list[dict[str, Any]] = []
        chosen: list[str] = []
        if request.method == "POST":
            if not _same_origin(request):
                return Response("cross-origin form refused", status_code=403)
            chosen = (await _form(request)).get("run", [])[:50]
            results = await present.replay(engine, [e for e in [await find(k) for k in chosen] if e is not None])
        candidates = [e.summary() for e in (await entries())[:300] if replayable(e)]
        return page(request, "replay.html", candidates=candidates, results=results, chosen=set(chosen), title="replay")

    async def login(request: Request) -> Response:
        if not fingerprints:
            return RedirectResponse(f"{request.scope.get('root_path', '')}/", status_code=303)
        error = None
        if request.method == "POST":
            if not _same_origin(request):
                return Response("cross-origin form refused", status_code=403)
            presented = ((await _form(request)).get("key") or [""])[0].encode()
            match = [k for k in console.api_keys if hmac.compare_digest(presented, k.encode())]
            if match:
                request.session.clear()
                request.session["key"] = _fingerprint(match[0])
                return RedirectResponse(f"{request.scope.get('root_path', '')}/", status_code=303)
            await anyio.sleep(0.5)  # a guess costs time
            error = "That key is not one of this gateway's inbound keys."
        return page(request, "login.html", status=401 if error else 200, error=error, title="log in")

    async def logout(request: Request) -> Response:
        if not _same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        request.session.clear()
        return RedirectResponse(f"{request.scope.get('root_path', '')}/login", status_code=303)

    routes = [
        Route("/", runs_page, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/runs/{key:path}", run_page, methods=["GET"]),
        Route("/pipelines", pipelines_page, methods=["GET"]),
        Route("/usage", usage_page, methods=["GET"]),
        Route("/replay", replay_page, methods=["GET", "POST"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(_Headers)]
    if fingerprints:
        middleware += [
            Middleware(SessionMiddleware, secret_key=_session_secret(console.api_keys), session_cookie="engine_console", max_age=SESSION_SECONDS, path="/console", same_site="strict"),
            Middleware(_LoginRequired, fingerprints=fingerprints),
        ]
    return Starlette(routes=routes, middleware=middleware)
