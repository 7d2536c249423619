"""The console in a real browser: Debian's chromium driven by Playwright (never a downloaded
browser). Requests go through a real gateway; the test watches them appear live, opens one,
finds its graph with the trace, opens a failed run and follows the link to the failing step.
Screenshots go to pytest's tmp dir (and, with ENGINE_CONSOLE_SCREENSHOT=FILE, the run page to
FILE: that is how docs/console-run.png is made).

Without chromium the test is skipped, unless CI is set: there it must run (.ci/run installs it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.console.conftest import ConsoleGateway

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 40_000
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None, "CI is set, so the browser test must run: install Debian's chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    yield pg
    context.close()


def test_watch_runs_live_and_open_them(gw: ConsoleGateway, page: Page, tmp_path: Path) -> None:
    page.goto(f"{gw.url}/console/")
    expect(page.locator("#live")).to_have_class("live on")  # the Server-Sent Events feed is open

    with gw.http() as client:
        assert gw.message(client, "req-browser-ok", stream=True, text="Hello from the browser test").status_code == 200
        row = page.locator("#runs tr", has_text="req-browser-ok")
        expect(row).to_be_visible()  # appeared without a reload
        expect(row.locator("td").nth(3)).to_have_text("claude-sonnet-4-5 → test/big")
        gw.fake.script("500", "500", "500")
        assert gw.message(client, "req-browser-fail").status_code >= 500
    failed = page.locator("#runs tr", has_text="req-browser-fail")
    expect(failed).to_be_visible()
    expect(failed).to_have_class("run failed fresh")
    page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)

    page.select_option("#f-status", "failed")  # filters hide the successful run
    expect(row).to_be_hidden()
    expect(failed).to_be_visible()
    page.select_option("#f-status", "")
    page.fill("#f-text", "req-browser-ok")
    expect(failed).to_be_hidden()
    expect(row).to_be_visible()

    row.locator("a.run-link").click()
    expect(page.locator("h1")).to_contain_text("req-browser-ok")
    for name in ("messages", "turn"):
        expect(page.locator(f'svg.pipeline-graph[data-pipeline="{name}"]')).to_be_visible()
    expect(page.locator('[id="node-turn.call"]')).to_have_attribute("data-state", "ran")
    expect(page.locator('[id="node-turn.answer"]')).to_have_attribute("data-state", "ran")
    expect(page.locator("svg.waterfall rect.wf-bar").first).to_be_visible()
    expect(page.locator("#events")).to_contain_text("message_stop")
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
    target = os.environ.get("ENGINE_CONSOLE_SCREENSHOT")
    if target:
        page.set_viewport_size({"width": 1360, "height": 1500})
        page.screenshot(path=target, full_page=False)
        page.set_viewport_size({"width": 1360, "height": 900})

    page.go_back()
    page.fill("#f-text", "")
    failed.locator("a.run-link").click()
    box = page.locator("#failure")
    expect(box).to_contain_text("turn.call")
    expect(box).to_contain_text("upstream status 500")
    expect(page.locator('[id="node-turn.call"]')).to_have_attribute("data-state", "failed")
    box.locator("a.failed-step").first.click()
    assert page.url.endswith("#step-turn.call")
    step = page.locator('[id="step-turn.call"]')
    expect(step).to_have_class("step-row failed")
    expect(step).to_be_in_viewport()
    page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)


def test_pipelines_usage_and_replay_in_the_browser(gw: ConsoleGateway, page: Page, tmp_path: Path) -> None:
    with gw.http() as client:
        assert gw.message(client, "req-browser-replay").status_code == 200
    page.goto(f"{gw.url}/console/pipelines")
    expect(page.locator("#check-result")).to_have_text("OK")
    expect(page.locator("svg.pipeline-graph")).to_have_count(len(gw.engine.plans))
    page.screenshot(path=str(tmp_path / "pipelines.png"), full_page=True)

    page.click("text=Usage")
    expect(page.locator("#hour-figures")).to_contain_text("requests")
    expect(page.locator("svg.chart").first).to_be_visible()
    page.screenshot(path=str(tmp_path / "usage.png"), full_page=True)

    page.click("text=Replay")
    page.locator("tr", has_text="req-browser-replay").locator('input[name="run"]').check()
    page.click("text=Replay the chosen runs")
    expect(page.locator("#replay-results")).to_contain_text("1 same, 0 changed")
    page.screenshot(path=str(tmp_path / "replay.png"), full_page=True)
