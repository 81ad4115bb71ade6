"""The console in a real browser (headless Chromium over the DevTools
Protocol, tests/support/browser.py) against the real service (`potok-state
serve`), for what only a browser shows: signing in with the keyboard, pages
kept live over the watch stream, buttons that call the API with the session,
the diagram, signing out. Each page is also checked for unlabelled controls and
text below WCAG AA contrast, in light and dark, and saved as a screenshot to
build/console/ (linked from docs/console.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import API_KEY
from tests.support.browser import Page, headless_chromium
from tests.support.hub import http_service, service_env
from tests.support.ports import free_port
from tests.support.receivers import Reply, running_receiver

SCREENSHOTS = Path(__file__).parents[2] / "build" / "console"
TASK_STATUSES = ["created", "in_progress", "completed", "failed"]

# Unlabelled controls, images without text, nameless buttons and links, and
# text below WCAG AA contrast (4.5:1, 3:1 for large text) against the colour
# behind it.
AUDIT = """(() => {
  const problems = [];
  for (const control of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
    if (!control.labels?.length && !control.getAttribute('aria-label')) {
      problems.push('unlabelled ' + control.outerHTML.slice(0, 80));
    }
  }
  for (const image of document.querySelectorAll('img')) {
    if (!image.getAttribute('alt')) problems.push('no alt text: ' + image.src);
  }
  for (const named of document.querySelectorAll('button, a[href]')) {
    if (!named.textContent.trim() && !named.getAttribute('aria-label')) {
      problems.push('nameless ' + named.outerHTML.slice(0, 80));
    }
  }
  const parse = (text) => {
    const parts = text.match(/rgba?\\(([^)]+)\\)/)[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return { r: parts[0], g: parts[1], b: parts[2], a: parts.length > 3 ? parts[3] : 1 };
  };
  const channel = (v) => {
    v /= 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  };
  const luminance = (c) => 0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b);
  const dark = matchMedia('(prefers-color-scheme: dark)').matches;
  const behind = (element) => {
    for (let e = element; e; e = e.parentElement) {
      const colour = parse(getComputedStyle(e).backgroundColor);
      if (colour.a > 0.5) return colour;
    }
    return dark ? { r: 0, g: 0, b: 0 } : { r: 255, g: 255, b: 255 };
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  while (walker.nextNode()) {
    const element = walker.currentNode.parentElement;
    const text = walker.currentNode.textContent.trim();
    if (!text || seen.has(element)) continue;
    seen.add(element);
    const style = getComputedStyle(element);
    if (element.closest('[hidden]') || !element.getClientRects().length) continue;
    const pair = [luminance(parse(style.color)), luminance(behind(element))];
    const [high, low] = pair.sort((a, b) => b - a);
    const ratio = (high + 0.05) / (low + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (Number(style.fontWeight) >= 700 && size >= 18.66);
    if (ratio < (large ? 3 : 4.5)) {
      problems.push(`contrast ${ratio.toFixed(2)}: "${text.slice(0, 40)}" ${style.color}`);
    }
  }
  return problems;
})()"""


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """`potok-state serve` as `make run` starts it (development), its deliveries
    failing at the first failed attempt."""
    workdir = tmp_path_factory.mktemp("console-service")
    port = free_port()
    env = service_env(
        f"sqlite+aiosqlite:///{workdir}/potok-state.db",
        APP_ENV="development",
        THROTTLE_LIMIT="0",
        WEBHOOK_MAX_RETRIES="0",
        WEBHOOK_RETRY_DELAY="50",
    )
    async with http_service(port, env, workdir):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Page]:
    async with headless_chromium(tmp_path_factory.mktemp("chromium")) as page:
        yield page


@pytest.fixture
async def api(service: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service, headers={"x-api-key": API_KEY}) as client:
        yield client


async def sign_in(page: Page, service: str) -> None:
    """The form, as a person fills it: the key field has the focus, Enter sends."""
    await page.open(f"{service}/console/login")
    await page.wait_for("document.activeElement?.id === 'api-key'", what="the key field's focus")
    await page.type_text(API_KEY)
    await page.press("Enter", key_code=13)
    await page.wait_for("location.pathname === '/console' && !!document.querySelector('#types')")


@pytest.fixture
async def page(browser: Page, service: str) -> Page:
    """The browser, signed in."""
    if not any(cookie["name"] == "potok_console" for cookie in await browser.cookies()):
        await sign_in(browser, service)
    browser.events.clear()
    browser.dialogs.clear()
    return browser


async def check_page(page: Page, name: str, service: str) -> None:
    """No errors, nothing loaded from another host, nothing the audit finds in
    light or dark; screenshots of both (and of a phone's width)."""
    assert page.errors() == []
    elsewhere = [
        url
        for url in page.requested_urls()
        if urlsplit(url).netloc != urlsplit(service).netloc and not url.startswith("data:")
    ]
    assert elsewhere == []
    for scheme in ("light", "dark"):
        await page.color_scheme(scheme)
        assert await page.evaluate(AUDIT) == [], f"{name} in {scheme}"
        suffix = "" if scheme == "light" else "-dark"
        await page.screenshot(SCREENSHOTS / f"{name}{suffix}.png")
    await page.color_scheme("light")
    await page.screenshot(SCREENSHOTS / f"{name}-phone.png", width=390)
    await page.viewport(390, 800, mobile=True)
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{name} is wider than a phone's screen by {overflow} px"
    await page.viewport(1280, 900)


async def record(
    api: httpx.AsyncClient, entity: str, entity_id: str, status: str, **extra: Any
) -> None:
    response = await api.post(
        f"/api/v1/states/{entity}", json={"entityId": entity_id, "status": status, **extra}
    )
    assert response.status_code in (200, 201), response.text


async def test_sign_in_with_the_keyboard(browser: Page, service: str) -> None:
    await browser.call("Network.clearBrowserCookies")
    await browser.open(f"{service}/console/types/task")
    await browser.wait_for("location.pathname === '/console/login'", what="the sign-in page")
    await check_page(browser, "login", service)
    await browser.open(f"{service}/console/login?next=%2Fconsole")
    await browser.wait_for("document.activeElement?.id === 'api-key'")
    await browser.type_text("not-a-key")
    await browser.press("Enter", key_code=13)
    await browser.wait_for(
        "document.querySelector('[role=alert]')?.textContent.includes('Unknown')"
    )
    await sign_in(browser, service)
    [cookie] = [c for c in await browser.cookies() if c["name"] == "potok_console"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert await browser.evaluate("document.cookie") == ""  # out of scripts' reach
    assert "gateway" in await browser.evaluate("document.querySelector('.who').textContent")


async def test_the_overview_lists_types_and_counts_and_follows_changes(
    page: Page, service: str, api: httpx.AsyncClient
) -> None:
    for n in range(3):
        await record(api, "ticket", f"k{n}", "open")
    await record(api, "ticket", "k0", "closed")
    await page.open(f"{service}/console")
    counts = """(() => Object.fromEntries(
        [...document.querySelectorAll('tr[data-entity="ticket"] [data-status]')]
        .map(e => [e.dataset.status, +e.dataset.count])))()"""
    assert await page.evaluate(counts) == {"closed": 1, "open": 2}
    types = await page.evaluate(
        "[...document.querySelectorAll('#types tr[data-entity]')].map(r => r.dataset.entity)"
    )
    assert {"task", "user", "process", "service", "ticket"} <= set(types)
    await page.wait_for("document.querySelector('[data-live-status]').dataset.state === 'live'")
    await record(api, "ticket", "k3", "open")
    await page.wait_for(f"JSON.stringify({counts}) === JSON.stringify({{closed: 1, open: 3}})")
    await page.wait_for("document.querySelector('#feed li').textContent.includes('k3')")
    await check_page(page, "overview", service)


async def test_a_write_through_the_api_appears_on_the_open_entity_page(
    page: Page, service: str, api: httpx.AsyncClient
) -> None:
    await record(api, "task", "task_123", "created", metadata={"priority": "high"})
    await page.open(f"{service}/console/types/task/task_123")
    await page.wait_for("document.querySelector('[data-live-status]').dataset.state === 'live'")
    await page.evaluate("window.notReloaded = true")
    await record(api, "task", "task_123", "in_progress", reason="picked up by the night shift")
    await page.wait_for(
        "document.querySelector('[data-current-status]').textContent === 'in_progress'"
        " && document.querySelectorAll('#timeline li').length === 2",
        what="the change on the page",
    )
    assert await page.evaluate("window.notReloaded") is True
    timeline = await page.evaluate("document.querySelector('#timeline').innerText")
    assert "created → in_progress" in timeline
    assert "picked up by the night shift" in timeline
    assert "gateway" in timeline
    await check_page(page, "entity", service)
    # The timeline's first entry, as it was then.
    await page.click("#timeline li a[href*='asOf=']")
    await page.wait_for(
        "document.querySelector('[data-past-status]')?.textContent === 'created'",
        what="the state as of the first change",
    )
    assert await page.evaluate("document.querySelector('[data-current-status]').textContent") == (
        "in_progress"
    )
    await check_page(page, "entity-as-of", service)


async def test_a_failing_delivery_shows_its_attempts_and_retry_sends_it_again(
    page: Page, service: str, api: httpx.AsyncClient
) -> None:
    async with running_receiver() as receiver:
        receiver.answer(then=Reply(status=500))
        created = await api.post(
            "/api/v1/webhooks/subscriptions",
            json={
                "url": receiver.url(),
                "events": ["entity.*"],
                "entityTypes": ["invoice"],
                "description": "Billing receiver",
            },
        )
        assert created.status_code == 201, created.text
        sub = created.json()["id"]
        await record(api, "invoice", "inv-1", "issued")
        await receiver.wait_for(1)
        await page.open(f"{service}/console/webhooks")
        await page.wait_for(
            f"document.querySelector('tr[data-subscription=\"{sub}\"] .badge')"
            "?.textContent.trim() === 'failing'",
            what="the subscription to show as failing",
        )
        await check_page(page, "webhooks", service)

        await page.open(f"{service}/console/webhooks/{sub}")
        row = "document.querySelector('tr[data-delivery]')"
        await page.wait_for(f"{row}?.dataset.status === 'failed'", what="the failed delivery")
        attempts = await page.evaluate(f"{row}.querySelector('.attempts').innerText")
        assert "HTTP 500" in attempts
        await check_page(page, "subscription", service)

        receiver.answer(then=Reply(status=204))
        await page.click("tr[data-delivery] button[data-action$='/retry']")
        assert page.dialogs
        assert page.dialogs[0].startswith("Send delivery #")
        await receiver.wait_for(2)
        await page.wait_for(
            f"{row}.dataset.status === 'succeeded'"
            f" && {row}.querySelectorAll('.attempts li').length === 2",
            what="the retried delivery to succeed on the page",
        )
        log = await page.evaluate(f"{row}.querySelector('.attempts').innerText")
        assert "HTTP 500" in log
        assert "HTTP 204" in log
        await page.wait_for(
            "document.getElementById('announce').textContent.includes('queued again')",
            what="the retry to be announced",
        )


async def test_the_diagram_shows_every_status_of_task(
    page: Page, service: str, api: httpx.AsyncClient
) -> None:
    await record(api, "task", "diagram-1", "created")
    await page.open(f"{service}/console/types/task")
    await page.wait_for(
        "document.querySelector('.diagram img').complete"
        " && document.querySelector('.diagram img').naturalWidth > 0",
        what="the diagram to load",
    )
    await check_page(page, "type", service)
    await page.open(f"{service}/console/machines/task.svg")
    shown = await page.evaluate(
        "[...document.querySelectorAll('g.status')].map(g => g.dataset.status)"
    )
    assert sorted(shown) == sorted(TASK_STATUSES)
    text = await page.evaluate(
        "[...document.querySelectorAll('text.name')].map(t => t.textContent)"
    )
    assert sorted(text) == sorted(TASK_STATUSES)
    assert page.errors() == []  # its style block passed its own CSP
    await page.screenshot(SCREENSHOTS / "diagram-task.png", width=480)


async def test_the_services_page_counts_leases_down(
    page: Page, service: str, api: httpx.AsyncClient
) -> None:
    await record(
        api,
        "service",
        "billing-7f3a",
        "up",
        metadata={"name": "billing", "url": "http://10.0.3.7:8080", "version": "1.4.2"},
        ttl=120,
    )
    await record(api, "service", "mail-2b1c", "starting", metadata={"name": "mail"}, ttl=120)
    await page.open(f"{service}/console/services")
    first = await page.wait_for(
        "document.querySelector('tr[data-entity-id=\"billing-7f3a\"] .countdown')"
        "?.textContent.match(/^(\\d+) s$/)?.[1]",
        what="a countdown",
    )
    assert 100 < int(first) <= 120
    await check_page(page, "services", service)


async def test_sign_out_ends_the_session(page: Page, service: str) -> None:
    [cookie] = [c for c in await page.cookies() if c["name"] == "potok_console"]
    await page.open(f"{service}/console")
    await page.click(".signout button")
    await page.wait_for("location.pathname === '/console/login'", what="the sign-in page")
    assert not any(c["name"] == "potok_console" for c in await page.cookies())
    await page.open(f"{service}/console/services")
    assert await page.evaluate("location.pathname") == "/console/login"
    async with httpx.AsyncClient(base_url=service) as stolen:
        response = await stolen.get(
            "/console?format=json", headers={"cookie": f"potok_console={cookie['value']}"}
        )
    assert response.status_code == 401
