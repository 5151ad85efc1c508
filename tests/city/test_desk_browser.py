"""The duty page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
against a real PostgreSQL and mosquitto: log in, an alarm arrives live, an officer
acknowledges it with a note, an unacknowledged one is seen escalated, the site page opens.
Screenshots (laptop and phone) are written to build/city/ for docs/."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from city.watch import Watch
from tests.city.conftest import OPERATORS, SITE, Desk, RunningWorker, rows
from tests.city.kitchens import BareKitchen

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "build" / "city"
CHROMIUM = "/usr/bin/chromium"
# As this machine's network needs: no background connections, no sandbox as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} not found: run `make deps` (Debian's chromium package)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _log_in(page: Page, desk: Desk, name: str) -> None:
    page.goto(f"{desk.url}/")
    expect(page).to_have_url(f"{desk.url}/login")
    page.fill("#name", name)
    page.fill("#password", OPERATORS[name][2])
    page.click("#submit")
    expect(page.locator("#who")).to_contain_text("xihu" if name == "li.wei" else "city")
    expect(page.locator("#live")).not_to_have_class("live off")


def test_an_alarm_arrives_live_is_acknowledged_and_an_unanswered_one_escalates(
    chromium: Browser,
    desk: Desk,
    workers: Callable[..., RunningWorker],
    kitchen: Callable[..., BareKitchen],
) -> None:
    workers()
    k = kitchen(SITE)
    k.send(
        {
            "schema": "gasguard.status/1",
            "site_id": SITE,
            "state": "online",
            "detectors": {"wok-1": {"label": "炒锅 1", "state": "alarm", "lel": 62.0}},
            "valves": {"main": {"label": "总阀", "state": "closed"}},
        },
        k.topics.status,
    )
    context = chromium.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    page = context.new_page()
    _log_in(page, desk, "li.wei")
    expect(page.locator("#empty")).to_be_visible()

    sent = time.monotonic()
    k.event(1, "alarm.raised", "wok-1", level="high", lel=62.0)
    card = page.locator(".incident", has_text="燃气泄漏高限报警：wok-1")
    expect(card).to_be_visible(timeout=10_000)
    print(f"alarm published -> on the page: {(time.monotonic() - sent) * 1000:.0f} ms")
    expect(card.locator(".sev")).to_have_text("高 HIGH")
    # The page reported the first view by itself.
    expect(card.locator(".times")).not_to_contain_text("first view —")

    card.locator(".note").fill("已电话联系店主，已关阀 called the owner")
    card.locator("button[data-act=acknowledge]").click()
    expect(card.locator(".state")).to_contain_text("已确认 acknowledged")
    expect(card.locator(".state")).to_contain_text("li.wei")
    expect(card.locator("button[data-act=acknowledge]")).to_be_disabled()

    # A second alarm nobody acknowledges climbs the ladder; the page shows it.
    k.event(2, "alarm.raised", "fryer-1", level="low", lel=24.0)
    second = page.locator(".incident", has_text="fryer-1")
    expect(second).to_be_visible(timeout=10_000)
    with psycopg.connect(desk.cfg.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE incidents SET stored_at = stored_at - interval '121 seconds',"
            " first_viewed_at = first_viewed_at - interval '121 seconds' WHERE state = 'new'"
        )
    Watch(desk.cfg).round()
    expect(second).to_have_class("incident sev2 state-new escalated", timeout=10_000)
    expect(second.locator(".state")).to_contain_text("已升级 escalated ×1")
    # The acknowledged one stayed where it was.
    expect(card.locator(".state")).not_to_contain_text("escalated")

    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "desk-laptop.png"), full_page=True)

    card.locator("a.site").click()
    expect(page.locator("#site-title")).to_contain_text(SITE)
    expect(page.locator("#site-detectors")).to_contain_text("炒锅 1")
    expect(page.locator("#site-valves")).to_contain_text("closed")
    expect(page.locator("#site-timeline")).to_contain_text("燃气泄漏低限报警：fryer-1")
    context.close()

    phone = chromium.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        locale="zh-CN",
    )
    small = phone.new_page()
    _log_in(small, desk, "li.wei")
    expect(small.locator(".incident")).to_have_count(2)
    # Nothing wider than the phone's screen.
    width = small.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width
    small.screenshot(path=str(SHOTS / "desk-phone.png"), full_page=True)
    phone.close()

    assert rows(desk.cfg.dsn, "SELECT first_viewed_by FROM incidents ORDER BY id") == [
        ("li.wei",),
        ("li.wei",),
    ]
    assert (SHOTS / "desk-laptop.png").stat().st_size > 10_000
