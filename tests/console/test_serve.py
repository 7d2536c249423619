"""`engine serve` turns the console on by default on a loopback bind, off with one switch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.console.conftest import PIPELINES
from tests.support.servers import free_port


@pytest.mark.parametrize(
    ("flags", "env", "served"),
    [([], {}, True), (["--no-console"], {}, False), ([], {"ENGINE_CONSOLE": "off"}, False)],
    ids=["default-on-loopback", "--no-console", "ENGINE_CONSOLE=off"],
)
def test_serve_console_switch(flags: list[str], env: dict[str, str], served: bool) -> None:
    port = free_port()
    base_env = {k: v for k, v in os.environ.items() if k != "ENGINE_CONSOLE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--port", str(port), "--pipelines", str(PIPELINES), *flags],
        env={**base_env, "OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1", "OPENROUTER_MODELS_FETCH": "false", "ENGINE_LOG_FORMAT": "json", **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 40
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code
            except httpx.HTTPError:
                time.sleep(0.1)
        assert status == 200
        page = httpx.get(f"http://127.0.0.1:{port}/console/", timeout=10)
        assert page.status_code == (200 if served else 404)
        if served:
            assert "engine console" in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=40)
    assert (f"console at http://127.0.0.1:{port}/console" in err) == served
