"""Serving pipelines over HTTP: one route per pipeline `route:`, plus `GET /health`.

The HTTP layer knows no protocol. It hands a routed pipeline an `engine.types.Request` and
writes back what the pipeline returns: a `Reply` (status, headers, JSON body or a stream of
bytes), or a bare value sent as JSON. Requests it refuses itself (no route, wrong method, body
too large) become `HttpError`s rendered by the pipelines' own error step, so every error is
in the served protocol's format. A pipeline without an `errors:` step gets the engine's own
JSON error, `{"error": MESSAGE, "request_id": ID}` (the id in the headers too), and a failure
there is logged with its step, exception type and message.

The commit point is the first byte of a response body. A stream is primed before that (see
`streams.py`), so the run has already succeeded or failed by the time headers go out. After
it, the stream's items are written as they come, batched when several are ready at once
(engine/outbox.py); a `heartbeat` is written whenever the stream has been silent for its
interval; a client disconnect cancels the stream at once (uvicorn's `send`
after a disconnect returns silently, so waiting for `send` to fail would read the upstream to
its end).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import orjson
import structlog
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Receive, Scope, Send

from engine import logs, metrics, registry, usage
from engine.capture import CaptureWriter, RecordingIds, RunRecorder
from engine.check import Plan
from engine.errors import HttpError, SpecErrors, StepError
from engine.executor import Engine, access_of, failed_step, load_plans
from engine.guard import HostPolicy, Refusal, Refuse, code_exposure, policy_from_env
from engine.keys import KeyHeader, authorize, key_headers
from engine.outbox import Outbox
from engine.run import RunContext
from engine.streams import aclose_quietly
from engine.types import Reply, Request

_access = structlog.get_logger("engine.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
DEFAULT_BODY_LIMIT = 32 * 1024 * 1024


def create_app(
    engine: Engine,
    *,
    body_limit: int = DEFAULT_BODY_LIMIT,
    body_timeout: float = 60.0,
    api_keys: list[str] | None = None,
    key_carriers: tuple[KeyHeader, ...] | None = None,
    reload_from: list[str] | None = None,
    reload_interval: float = 1.0,
    host_policy: HostPolicy | None = None,
    vet: Callable[[list[Plan]], str | None] | None = None,
    console: bool = False,
) -> Gateway:
    """An ASGI app serving every pipeline of `engine` that has a route (see `Gateway`).

    `api_keys`, when given, are the inbound keys a client must present in one of the
    `key_carriers` headers (default: `Authorization: Bearer` and the headers the step packages
    declared, engine/keys.py); they are compared in constant time and removed from the request
    before any pipeline sees it, so they can never be forwarded anywhere.

    `reload_from` turns on live reload: those pipeline paths are polled, and when a file
    changes the whole set is loaded and checked again; a valid set replaces the old one at
    once (routes included), a broken one is reported with its located errors and the old set
    keeps serving. A request runs to its end on the plan it started with.

    Every request first passes `host_policy` (engine/guard.py; loopback names only by
    default): one whose Host or Origin is not allowed gets 403 and reaches no route.
    `vet`, when given, may refuse a reloaded set (it says why), which then is not served.
    """
    keys = [k.encode() for k in api_keys or [] if k]
    for k in api_keys or []:
        logs.register_secret(k)
    if key_carriers is None:
        registry.load_step_packages()  # where a protocol declares its own key header
        key_carriers = key_headers()

    limits = _Limits(body_limit, body_timeout, keys, key_carriers)

    def endpoint_for(name: str) -> Callable[[StarletteRequest], Any]:
        """A route starlette serves: one with path parameters, or one another route shadows."""

        async def endpoint(request: StarletteRequest) -> Response:
            plan = engine.plans.get(name)
            if plan is None:  # removed by a reload since the route table was read
                raise HTTPException(404)
            return await _serve(engine, plan, request.scope, request.receive, request.url.path, dict(request.path_params), limits)

        return endpoint

    async def serve_direct(name: str, scope: Scope, receive: Receive) -> Response:
        plan = engine.plans.get(name)
        if plan is None:  # removed by a reload since the route table was read
            return await not_served(scope["method"], scope["path"], 404)
        return await _serve(engine, plan, scope, receive, scope["path"], {}, limits)

    async def metrics_endpoint(request: StarletteRequest) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    if console:
        from engine.console import Console

        engine.console = Console(engine, api_keys=api_keys, pipelines=reload_from)
        console_app = engine.console.app()

    def build_routes() -> tuple[list[BaseRoute], dict[tuple[str, str], str]]:
        """Starlette's route table, and the pipeline routes the gateway serves itself."""
        routes: list[BaseRoute] = [
            Route("/health", _health(engine), methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/usage", usage.endpoint, methods=["GET"]),
        ]
        if engine.console is not None:
            routes += [Route("/console", lambda r: RedirectResponse("/console/"), methods=["GET"]), Mount("/console", app=console_app)]
        direct: dict[tuple[str, str], str] = {}
        for plan in engine.plans.values():
            for method, path in plan.routes:
                route = Route(path, endpoint_for(plan.name), methods=[method], name=f"{plan.name}:{method}:{path}")
                key = (method.upper(), path)
                if key not in direct and _plain(path) and not any(r.matches({"type": "http", "path": path, "root_path": "", "method": key[0]})[0] == Match.FULL for r in routes):
                    direct[key] = plan.name  # starlette would pick this route too: no route before it matches
                routes.append(route)
        return routes, direct

    async def not_served(method: str, path: str, status: int) -> Response:
        message = {404: f"Not found: {method} {path}", 405: "Method Not Allowed"}.get(status, "Request refused")
        fallback = _fallback_plan(engine)
        return await _render(engine, fallback, HttpError(status, message), engine.context(fallback.name) if fallback else None)

    async def refused(request: StarletteRequest, exc: Exception) -> Response:
        return await not_served(request.method, request.url.path, getattr(exc, "status_code", 500))

    def apply_routes() -> None:
        routes, direct = build_routes()
        app.router.routes = routes  # one assignment each: a request sees the old table or the new
        gateway.direct = direct

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            if reload_from:
                tg.start_soon(_watch_and_reload, engine, reload_from, reload_interval, apply_routes, vet)
            yield
            tg.cancel_scope.cancel()
        await engine.aclose()
        if engine.capture is not None:
            await anyio.to_thread.run_sync(engine.capture.close)

    async def forbidden(scope: Scope, refusal: Refusal) -> Response:
        start = time.perf_counter()
        ctx = RunContext(request_id=engine.ids.new_id("req_"), pipeline="-", engine=engine)  # no pipeline ran
        response = await _render(engine, _fallback_plan(engine), HttpError(403, refusal.message), ctx)
        _log_access(ctx, response.status_code, "refused", start, reason=refusal.reason, header=refusal.header, path=scope.get("path", ""))
        return response

    routes, direct = build_routes()
    app = Starlette(routes=routes, exception_handlers={HTTPException: refused}, lifespan=lifespan)
    gateway = Gateway(app, direct, serve_direct, host_policy or HostPolicy(), forbidden)
    return gateway


def _plain(path: str) -> bool:
    """A route path the gateway matches itself: no parameters, nothing URL-escaped."""
    return path.startswith("/") and not any(c in path for c in "{}?#\\%")


@dataclass(frozen=True, slots=True)
class _Limits:
    """What every request is held to: body size and arrival time, inbound keys."""

    body_limit: int
    body_timeout: float
    keys: list[bytes]
    carriers: tuple[KeyHeader, ...]


class Gateway:
    """The ASGI app `engine serve` runs: the host guard, then the pipeline routes, then starlette.

    Every HTTP request first passes the guard (engine/guard.py). A pipeline route with a plain
    path is then served here directly; everything else (`/health`, `/metrics`, `/usage`, the
    console, routes with path parameters, 404 and 405, lifespan) goes to the starlette app.
    Starlette's stack costs a request half a dozen ASGI layers, a router scan with a regex per
    route, and a `Request` and `URL` parsed from the scope (with the BackgroundTask and anyio
    body timeout this replaced: 10-15% of a small request's server CPU, measured), for routes
    that need none of it. Errors keep starlette's shapes: an exception before
    the response started is answered 500 `Internal Server Error` (text) and raised to uvicorn,
    as starlette's ServerErrorMiddleware does.
    """

    def __init__(self, app: Starlette, direct: dict[tuple[str, str], str], serve: Callable[[str, Scope, Receive], Awaitable[Response]], policy: HostPolicy, refuse: Refuse) -> None:
        self.app = app
        self.direct = direct  # (METHOD, path) -> pipeline; replaced whole by a reload
        self.serve = serve
        self.policy = policy
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        try:
            refusal = self.policy.check(scope)
            if refusal is not None:
                response = await self.refuse(scope, refusal)
            else:
                name = self.direct.get((scope["method"], scope["path"])) if not scope.get("root_path") else None
                if name is None:
                    response = None
                else:
                    response = await self.serve(name, scope, receive)
        except Exception:
            await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)


def _snapshot(paths: list[str]) -> dict[str, tuple[float, int]]:
    """What the pipeline files look like now (including data files in subdirectories)."""
    from pathlib import Path

    seen: dict[str, tuple[float, int]] = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.suffix in {".yaml", ".yml"}]
        for f in files:
            try:
                st = f.stat()
                seen[str(f)] = (st.st_mtime, st.st_size)
            except OSError:
                continue
    return seen


async def _watch_and_reload(
    engine: Engine, paths: list[str], interval: float, apply_routes: Callable[[], None], vet: Callable[[list[Plan]], str | None] | None = None
) -> None:
    log = structlog.get_logger("engine.reload")
    last = _snapshot(paths)
    while True:
        await anyio.sleep(interval)
        now = _snapshot(paths)
        if now == last:
            continue
        last = now
        try:
            plans = await anyio.to_thread.run_sync(functools.partial(load_plans, paths, env=engine.env))
        except SpecErrors as exc:
            metrics.RELOADS.labels("error").inc()
            log.error("pipelines not reloaded: the new set is broken; still serving the old one", errors=[str(e) for e in exc.errors])
            for err in exc.errors:
                print(err, file=sys.stderr)
            if engine.console is not None:
                engine.console.reloaded(False, [str(e) for e in exc.errors], sorted(engine.plans))
            continue
        unsafe = vet(plans) if vet is not None else None
        if unsafe:  # e.g. server-side tools turned on by an edit, on a public bind without keys
            metrics.RELOADS.labels("error").inc()
            log.error(f"pipelines not reloaded: {unsafe}; still serving the old ones")
            continue
        engine.swap(plans)
        apply_routes()
        metrics.RELOADS.labels("ok").inc()
        log.info("pipelines reloaded", pipelines=sorted(engine.plans))
        if engine.console is not None:
            engine.console.reloaded(True, [], sorted(engine.plans))


def _fallback_plan(engine: Engine) -> Plan | None:
    """The pipeline whose error step answers requests no pipeline owns: the most common one."""
    with_errors = [p for p in engine.plans.values() if p.errors is not None and p.routes]
    if not with_errors:
        return None
    common = Counter(p.errors.name for p in with_errors).most_common(1)[0][0]  # type: ignore[union-attr]
    return sorted((p for p in with_errors if p.errors.name == common), key=lambda p: p.name)[0]  # type: ignore[union-attr]


def _health(engine: Engine) -> Callable[[StarletteRequest], Any]:
    async def health(request: StarletteRequest) -> Response:
        body = {"status": "ok", "pipelines": sorted(engine.plans)}
        return Response(orjson.dumps(body), media_type="application/json")

    return health


async def _read_body(receive: Receive, declared: str | None, limit: int, timeout: float) -> bytes:
    """The request body, refused past `limit` bytes or `timeout` seconds.

    Read from the ASGI messages as starlette's `Request.stream` does (a disconnect raises its
    `ClientDisconnect`), under asyncio's own timeout: uvicorn runs on asyncio, and anyio's
    `move_on_after` costs a backend lookup and a cancel scope per request.
    """
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HttpError(413, f"Request body is larger than {limit} bytes")
        except ValueError:
            raise HttpError(400, "Invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.request":
                    chunk = message.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > limit:
                            raise HttpError(413, f"Request body is larger than {limit} bytes")
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
                elif message["type"] == "http.disconnect":
                    raise ClientDisconnect()
    except TimeoutError:
        raise HttpError(408, f"Request body did not arrive within {timeout:g} s") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _first_header(raw: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """A header's first value, as starlette's `Headers.get` reads it."""
    for k, v in raw:
        if k == name:
            return v.decode("latin-1")
    return None


async def _serve(engine: Engine, plan: Plan, scope: Scope, receive: Receive, path: str, path_params: dict[str, str], limits: _Limits) -> Response:
    start = time.perf_counter()
    raw = scope["headers"]
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
    repeated = len(headers) != len(raw)  # then the first value counts, as starlette reads them
    rid = _first_header(raw, b"x-request-id") if repeated else headers.get("x-request-id")
    ctx = engine.context(plan.name, request_id=rid if rid and _REQUEST_ID.match(rid) else None)
    try:
        if limits.keys:
            authorize(headers, limits.keys, limits.carriers)
        method = scope["method"]
        if method not in {"GET", "HEAD"}:
            declared = _first_header(raw, b"content-length") if repeated else headers.get("content-length")
            body = await _read_body(receive, declared, limits.body_limit, limits.body_timeout)
        else:
            body = b""
        query = scope.get("query_string", b"")
        client = scope.get("client")
        req = Request(
            method=method,
            path=path,
            headers=headers,
            query=dict(QueryParams(query)) if query else {},
            body=body,
            path_params=path_params,
            client=client[0] if client else "",
        )
        if engine.capture is not None or engine.console is not None:  # the console shows the record
            recorder = RunRecorder(engine.capture, plan.name, ctx.request_id, req, stream_items=engine.capture is not None)
            ctx.recorder, ctx.ids = recorder, RecordingIds(ctx.ids, recorder)
            if engine.console is not None:
                engine.console.started(ctx)
        out = await _run_unless_disconnected(engine, plan, req, ctx, receive)
        if out is _DISCONNECTED:
            _log_access(ctx, 499, "client_disconnected", start)
            if ctx.recorder is not None:
                ctx.recorder.finish(output=None, outcome="client_disconnected", trace=ctx.trace)
            return Response(status_code=499)
    except HttpError as exc:
        response = await _render(engine, plan, exc, ctx)
        _log_access(ctx, response.status_code, "refused", start)
        return response
    except Exception as exc:
        _log_failure(ctx, exc)
        response = await _render(engine, None, exc, ctx)
        told = _log_access(ctx, response.status_code, "error", start)
        _finish_capture(ctx, response, "error", told=told)
        return response
    return _to_response(out, ctx, start)


_DISCONNECTED = object()


async def _run_unless_disconnected(engine: Engine, plan: Plan, req: Request, ctx: RunContext, receive: Receive) -> Any:
    """Run the pipeline, cancelling it the moment the client disconnects.

    Starlette does not watch the connection while an endpoint runs, so without this a client
    that gives up would leave its upstream request running (and billed) to the end.
    """
    with anyio.CancelScope() as scope:
        watcher = watch_disconnect(receive, scope.cancel)
        try:
            return await engine.run(plan.name, req, ctx=ctx)
        finally:
            watcher.cancel()
    return _DISCONNECTED


def watch_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> asyncio.Task[None]:
    """A task that calls `on_disconnect` (typically an anyio scope's `cancel`) when the client
    disconnects; cancel the task when done.

    A plain asyncio task, not an anyio task group: per request, a group's spawn and cancel
    cost about 45 us (anyio formats the cancelling task's repr), a task about 5 us. Cancelling
    an anyio scope from it reaches everything the run started.
    """

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        on_disconnect()

    return asyncio.get_running_loop().create_task(watch())


async def _render(engine: Engine, plan: Plan | None, error: Exception, ctx: RunContext | None) -> Response:
    if plan is not None and plan.errors is not None and ctx is not None:
        try:
            out = await engine.render_error(plan, error, ctx)
            return _to_response(out, ctx, None)
        except Exception:
            structlog.get_logger("engine").exception("error renderer failed")
    # The engine's own error body, for pipelines without an `errors:` step: never the
    # exception's text (it may hold anything), always the id that finds the log lines.
    status = error.status if isinstance(error, HttpError) else 500
    message = error.message if isinstance(error, HttpError) else "Internal server error"
    rid = ctx.request_id if ctx is not None else engine.ids.new_id("req_")
    headers = {**(error.headers if isinstance(error, HttpError) else {}), "request-id": rid, "x-request-id": rid}
    body = {"error": message, "request_id": rid}
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def _log_failure(ctx: RunContext, exc: Exception) -> None:
    """One line for a run that failed with nothing to render it: which step, what, and why.

    An error a step raised on purpose (`StepError`) says enough; anything else is a bug in a
    step, so its traceback comes too.
    """
    error = f"{type(exc).__name__}: {logs.scrub(str(exc))[:500]}"
    structlog.get_logger("engine").error(
        "run.failed",
        request_id=ctx.request_id,
        pipeline=ctx.pipeline,
        step=failed_step(ctx, exc),
        error=error,
        exc_info=None if isinstance(exc, StepError) else exc,
    )


def _to_response(out: Any, ctx: RunContext, start: float | None) -> Response:
    if isinstance(out, Reply):
        if out.stream is not None:
            return StreamReply(out, ctx, start)
        body = out.body
        content = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else orjson.dumps(body)
        return RunResponse(ctx, start, content, status_code=out.status, headers=out.headers, media_type=out.media_type)
    return RunResponse(ctx, start, orjson.dumps(out), media_type="application/json", headers={"request-id": ctx.request_id})


class RunResponse(Response):
    """A run's whole answer; once its last byte is sent, the access line and the capture record.

    That is off the client's critical path, and the logged duration then ends at the last
    byte, as engine_request_duration_seconds says. The same order of work as a starlette
    `BackgroundTask`, without building one per response.
    """

    def __init__(self, ctx: RunContext, start: float | None, content: bytes, **kw: Any) -> None:
        super().__init__(content, **kw)
        self.ctx, self.start = ctx, start
        raw = self.raw_headers
        if any(k == b"x-request-id" for k, _ in raw):
            self.headers["x-request-id"] = ctx.request_id  # accepted from the client when it sent a sane one
        else:
            raw.append((b"x-request-id", ctx.request_id.encode("latin-1")))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})
        ctx, outcome = self.ctx, "ok" if self.status_code < 400 else "error"
        told = _log_access(ctx, self.status_code, outcome, self.start) if self.start is not None else None
        _finish_capture(ctx, self, outcome, told=told)


def _finish_capture(ctx: RunContext, response: Response, outcome: str, sent: list[tuple[float, bytes]] | None = None, told: dict[str, Any] | None = None) -> None:
    """Close the run's capture record with what the client was sent (and what it used)."""
    if ctx.recorder is None:
        return
    told = _told(ctx) if told is None else told
    if told.get(usage.USAGE_FACT):
        ctx.recorder.record[usage.USAGE_FACT] = told[usage.USAGE_FACT]
        if told.get(usage.SESSION_FACT):
            ctx.recorder.record[usage.SESSION_FACT] = told[usage.SESSION_FACT]
    headers = {k: v for k, v in response.headers.items() if k not in {"content-length", "date"}}
    output: dict[str, Any] = {"status": response.status_code, "headers": headers}
    body = None if sent is not None else response.body  # both converted when the record is read
    ctx.recorder.finish(output=output, outcome=told.get("outcome") or outcome, trace=ctx.trace, body=body, sent=sent)


def _told(ctx: RunContext) -> dict[str, Any]:
    """The access fields the pipeline declares (`access:`), read now that the request ended;
    a session id that could not key `GET /usage` is left out."""
    told = access_of(ctx) if ctx.pipeline in ctx.engine.plans else {}
    if usage.SESSION_FACT in told and usage.session_name(told[usage.SESSION_FACT]) is None:
        del told[usage.SESSION_FACT]
    return told


_request_counters: dict[tuple[str, int, str], Any] = {}
_request_histograms: dict[str, Any] = {}


def _counted(pipeline: str, status: int, outcome: Any) -> Any:
    """engine_requests_total's child for these labels, kept (`labels()` takes a lock and
    builds a tuple on every call)."""
    key = (pipeline, status, str(outcome))  # prometheus_client labels with str() too
    child = _request_counters.get(key)
    if child is None:
        child = _request_counters[key] = metrics.REQUESTS.labels(pipeline, str(status), key[2])
    return child


def _timed(pipeline: str) -> Any:
    child = _request_histograms.get(pipeline)
    if child is None:
        child = _request_histograms[pipeline] = metrics.REQUEST_SECONDS.labels(pipeline)
    return child


def _log_access(ctx: RunContext, status: int, outcome: str, start: float, **extra: Any) -> dict[str, Any]:
    """The one line per request (and its metrics): the HTTP layer's fields, then the ones the
    pipeline declares in `access:` (a declared `outcome` tells how a committed stream failed)."""
    seconds = time.perf_counter() - start
    told = _told(ctx)
    fields = {"outcome": outcome, **told}
    _counted(ctx.pipeline, status, fields["outcome"]).inc()
    _timed(ctx.pipeline).observe(seconds)
    usage.settle(told.get(usage.USAGE_FACT), told.get(usage.SESSION_FACT))
    line = {"request_id": ctx.request_id, "pipeline": ctx.pipeline, "status": status, "duration_ms": round(seconds * 1000, 2), **fields, **extra}
    logs.info_line(_access, "request", line)
    if ctx.recorder is not None:  # the capture keeps the access facts with the run
        ctx.recorder.record["access"] = line
    if ctx.engine.console is not None:
        ctx.engine.console.ran(line, ctx.recorder.record if ctx.recorder is not None else None)
    return told


class StreamReply(Response):
    """Writes a `Reply.stream` with heartbeats, and stops the moment the client goes away."""

    def __init__(self, reply: Reply, ctx: RunContext, start: float | None) -> None:
        self.reply = reply
        self.ctx = ctx
        self.start = start if start is not None else time.perf_counter()
        self.status_code = reply.status
        self.media_type = reply.media_type
        self.background = None
        self.init_headers({**reply.headers, "x-request-id": ctx.request_id})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Produce in a task of its own, write in this one.

        The producer (the pipeline's stream: upstream read, conversion, encoding) resumes once
        per upstream read (a batch of chunks), and every resumption passes through each frame
        between the event loop and the read: in uvicorn's task that is the ASGI frames and the
        run's too. So the producer gets a fresh, shallow task, and this (deep) task only wakes
        per write batch.
        """
        reply, outcome = self.reply, "ok"
        ctx = self.ctx
        sent: list[tuple[float, bytes]] | None = [] if ctx.recorder is not None else None  # (clock, item) per write: the record converts them when read
        finished = False
        active = metrics.ACTIVE_STREAMS.labels(ctx.pipeline)
        active.inc()
        outbox = Outbox(send, reply.heartbeat, reply.heartbeat_interval)
        producing = anyio.CancelScope()  # entered by the producer task
        writing = anyio.CancelScope()  # entered by this one
        producer: asyncio.Task[None] | None = None

        async def produce() -> None:
            nonlocal outcome, finished
            put, room, clock = outbox.put, outbox.room, time.perf_counter
            with producing:
                try:
                    async for item in reply.stream:  # type: ignore[union-attr]
                        data = item if isinstance(item, bytes) else item.encode()
                        put(data)
                        await room()
                        if sent is not None:
                            sent.append((clock(), data))
                except Exception:
                    outcome = "error"
                    structlog.get_logger("engine").exception("stream failed after the response started")
                finished = True  # not reached when the client went away (the scope was cancelled)
                outbox.end()

        def disconnected() -> None:
            nonlocal outcome
            if not finished:  # after the last byte, uvicorn reports a disconnect too
                outcome = "client_disconnected"
            producing.cancel()
            writing.cancel()

        watcher = watch_disconnect(receive, disconnected)
        try:
            with writing:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                producer = asyncio.get_running_loop().create_task(produce())
                outbox.start_heartbeat()
                await outbox.run()
        except Exception as exc:  # the client socket failed under us
            outcome = "error"
            structlog.get_logger("engine").error("writing the stream failed", error=repr(exc))
        finally:
            watcher.cancel()
            active.dec()
            with anyio.CancelScope(shield=True):
                if producer is not None and not producer.done():
                    producing.cancel()
                    await asyncio.wait([producer])
                await aclose_quietly(reply.stream)
                await ctx.aclose()
            told = _log_access(ctx, self.status_code, outcome, self.start, stream=True)
            _finish_capture(ctx, self, outcome, sent=sent, told=told)


GC_THRESHOLDS = (50_000, 20, 100)
"""Young-generation allocations between collections (CPython's default is 700, 10, 10)."""


def tune_gc() -> None:
    """Collect cycles less often, and never walk what start-up loaded.

    A 2 MB JSON request body (a long chat history) parses into a few hundred thousand
    objects. With CPython's default thresholds every 700 allocations start a young collection
    and every hundred or so a full one, which walks every live object: request cost grew
    faster than request size (measured on engine runs in one process: 2.25 MB took 23 ms
    against 12 ms for 1.18 MB, and 15 ms with these thresholds; through `engine serve`,
    2.24 MB went from 29 to 21.5-25 ms).
    `gc.freeze()` moves the modules, plans and caches loaded at start-up out of every future
    collection. Garbage without cycles is freed at once as always.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def app_from_env() -> Gateway:
    """The app `engine serve` runs in each worker: pipelines from `$ENGINE_PIPELINES`."""
    import os

    logs.configure()
    engine = Engine.load([os.environ.get("ENGINE_PIPELINES", "pipelines")])
    tune_gc()
    capture_dir = os.environ.get("ENGINE_CAPTURE_DIR")
    if capture_dir:
        engine.capture = CaptureWriter(capture_dir)
    limit = int(os.environ.get("ENGINE_BODY_LIMIT", str(DEFAULT_BODY_LIMIT)))
    keys = [k.strip() for k in os.environ.get("ENGINE_API_KEYS", "").split(",") if k.strip()]
    reload_from = [os.environ["ENGINE_PIPELINES"]] if os.environ.get("ENGINE_RELOAD") and os.environ.get("ENGINE_PIPELINES") else None
    from engine.console import enabled

    host = os.environ.get("ENGINE_HOST", "127.0.0.1")
    return create_app(
        engine, body_limit=limit, api_keys=keys, reload_from=reload_from, host_policy=policy_from_env(os.environ),
        vet=lambda plans: code_exposure(plans, host, bool(keys)), console=enabled(os.environ.get("ENGINE_CONSOLE")),
    )
