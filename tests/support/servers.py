"""Real servers on loopback for tests: an ASGI app under uvicorn in a background thread.

`httpx.ASGITransport` never delivers a mid-stream client disconnect, so anything that depends
on the socket (disconnects, keep-alive, backpressure) needs a real server; this is it.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

__all__ = ["READY_TIMEOUT", "free_port", "serve_asgi", "wait_healthy", "wait_until"]

# How long a test waits for something to become ready. Readiness is polled, so a fast machine
# pays nothing for the bound; a loaded 2-core machine can take 40 s to start a server, and a
# test must not fail on timing.
READY_TIMEOUT = 90.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (prefer `serve_asgi`, which binds its own)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def serve_asgi(
    app: Any,
    host: str = "127.0.0.1",
    *,
    port: int = 0,
    startup_timeout: float = READY_TIMEOUT,
    shutdown_timeout: float = 10.0,
    **config: Any,
) -> Iterator[str]:
    """Run `app` under uvicorn on `host` (a free port unless given) and yield its base URL.

    The socket is bound here before the server starts, so there is no port race; uvicorn runs
    in its own thread with its own event loop. On exit the server is asked to stop
    (`should_exit`), then forced (`force_exit`) if it is still running after `shutdown_timeout`.
    Extra keyword arguments go to `uvicorn.Config` (e.g. `lifespan="on"`, `timeout_keep_alive`).
    """
    config.setdefault("log_level", "warning")
    config.setdefault("lifespan", "auto")
    config.setdefault("loop", "asyncio")
    cfg = uvicorn.Config(app, host=host, port=port, **config)
    server = uvicorn.Server(cfg)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    bound_port = sock.getsockname()[1]
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # surfaced to the test thread below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{bound_port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if failure:
                raise RuntimeError(f"uvicorn failed to start: {failure[0]!r}") from failure[0]
            if not thread.is_alive():
                raise RuntimeError("uvicorn exited during startup (lifespan failure?)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {startup_timeout} s")
            time.sleep(0.005)
        url_host = f"[{host}]" if ":" in host else host
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(shutdown_timeout)
        sock.close()


def wait_until(predicate: Callable[[], bool], timeout: float = READY_TIMEOUT, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = READY_TIMEOUT) -> None:
    """Wait until `GET {url}/health` answers 200; fail at once if `proc` (the server) has exited.

    For servers started as a process (`engine serve`), whose start-up includes importing
    everything and loading the pipelines.
    """

    def healthy() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with status {proc.returncode} before it answered /health")
        try:
            return httpx.get(f"{url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(healthy, timeout, interval=0.1):
        raise AssertionError(f"{url}/health did not answer 200 within {timeout:.0f} s")
