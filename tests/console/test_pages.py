"""The console's pages over HTTP, through the same client as the API
(docs/console.md): each page's data as JSON equals what the API answers, each
page and fragment renders, and nothing on any page comes from another host."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
from fastapi import FastAPI

from potok_state.console.rendering import TEMPLATES
from tests.conftest import API_KEY, TEST_API_KEYS, make_settings
from tests.support.apps import running_app
from tests.support.console import console_client, sign_in
from tests.support.polling import eventually
from tests.support.receivers import Reply, running_receiver

Json = dict[str, Any]
SVG = "{http://www.w3.org/2000/svg}"
VENDOR = Path(__file__).parents[2] / "src" / "potok_state" / "console" / "static" / "vendor"
ATTRIBUTE_URL = re.compile(
    r'\b(?:src|href|action|hx-get|data-watch|data-action|data-live-src)="([^"]*)"'
)


async def record(
    client: httpx.AsyncClient, entity: str, entity_id: str, status: str, **extra: object
) -> Json:
    response = await client.post(
        f"/api/v1/states/{entity}", json={"entityId": entity_id, "status": status, **extra}
    )
    assert response.status_code in (200, 201), response.text
    state: Json = response.json()
    return state


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with console_client(app) as signed_in:
        await sign_in(signed_in, API_KEY)
        yield signed_in


async def page_json(browser: httpx.AsyncClient, path: str, **params: str | int) -> Json:
    response = await browser.get(path, params={**params, "format": "json"})
    assert response.status_code == 200, response.text
    data: Json = response.json()
    return data


async def test_the_overview_counts_every_type_per_status(
    client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    for n in range(3):
        await record(client, "task", f"t{n}", "created")
    await record(client, "task", "t0", "in_progress")
    await record(client, "order", "o1", "new")
    overview = await page_json(browser, "/console")
    types = {row["entity"]: row for row in overview["types"]}
    assert {"task", "user", "process", "service", "order"} <= set(types)
    task = types["task"]
    assert [(row["status"], row["count"]) for row in task["statuses"]] == [
        ("created", 2),
        ("in_progress", 1),
        ("completed", 0),
        ("failed", 0),
    ]
    assert task["total"] == 3
    assert task["changesPerMinute"] == 4
    assert [row["initial"] for row in task["statuses"]] == [True, True, False, False]
    assert types["order"] == {
        "entity": "order",
        "hasMachine": False,
        "statuses": [
            {"status": "new", "count": 1, "initial": False, "final": False, "inTable": False}
        ],
        "total": 1,
        "changesPerMinute": 1,
    }
    # The live feed: the latest changes first, as the change feed has them.
    feed = overview["changes"]
    assert [(c["data"]["entity"], c["data"]["id"], c["revision"]) for c in feed][:2] == [
        ("order", "o1", 5),
        ("task", "t0", 4),
    ]
    changes = (await client.get("/api/v1/changes", params={"after": 0})).json()["items"]
    assert feed == list(reversed(changes))
    assert overview["revision"] == 5


async def test_a_key_sees_only_the_types_it_may_read(database_url: str) -> None:
    settings = make_settings(database_url, api_keys=f"{TEST_API_KEYS},tasks:tasks-key:read@task")
    async with running_app(settings) as app, console_client(app) as browser:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://potok.test",
            headers={"x-api-key": API_KEY},
        ) as client:
            await record(client, "task", "t1", "created")
            await record(client, "user", "u1", "online")
        await sign_in(browser, "tasks-key")
        overview = await page_json(browser, "/console")
        assert [row["entity"] for row in overview["types"]] == ["task"]
        assert [c["data"]["entity"] for c in overview["changes"]] == ["task"]
        assert (await browser.get("/console/types/user")).status_code == 403
        assert (await browser.get("/console/machines/user.svg")).status_code == 403
        assert (await browser.get("/console/services")).status_code == 403


async def test_the_type_page_filters_and_pages_as_the_api_does(
    client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    for n in range(5):
        await record(client, "task", f"t{n}", "created", metadata={"team": "a" if n % 2 else "b"})
    await record(client, "task", "t4", "in_progress")
    page = await page_json(
        browser, "/console/types/task", status="created", limit=2, sort="entityId"
    )
    api = (
        await client.get(
            "/api/v1/states/task", params={"status": "created", "limit": 2, "sort": "entityId"}
        )
    ).json()
    assert page["states"] == api["items"]
    assert page["nextCursor"] == api["nextCursor"] is not None
    following = await page_json(
        browser,
        "/console/types/task",
        status="created",
        limit=2,
        sort="entityId",
        cursor=page["nextCursor"],
    )
    assert [s["entityId"] for s in following["states"]] == ["t2", "t3"]
    # The form's `metadata=key=value` and the API's `metadata.<key>=` are one filter.
    by_form = await page_json(browser, "/console/types/task", metadata="team=a")
    by_api = await page_json(browser, "/console/types/task", **{"metadata.team": "a"})
    assert {s["entityId"] for s in by_form["states"]} == {"t1", "t3"}
    assert by_form["states"] == by_api["states"]
    assert page["machine"]["statuses"] == ["created", "in_progress", "completed", "failed"]
    assert {row["status"]: row["count"] for row in page["statuses"]}["in_progress"] == 1
    html = await browser.get("/console/types/task", params={"status": "created", "limit": 2})
    assert html.status_code == 200
    assert 'value="created" checked' in html.text
    bad = await browser.get("/console/types/task", params={"sort": "nonsense"})
    assert bad.status_code == 422
    assert "sort" in bad.text


async def test_the_entity_page_shows_the_state_and_its_timeline(
    client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    await record(client, "task", "task_123", "created", metadata={"priority": "high"})
    await record(client, "task", "task_123", "in_progress", reason="picked up")
    page = await page_json(browser, "/console/types/task/task_123")
    assert page["state"]["status"] == "in_progress"
    assert page["state"]["metadata"] == {"priority": "high"}
    assert page["allowedNext"] == ["completed", "failed"]
    assert [
        (h["previousStatus"], h["newStatus"], h["actor"], h["reason"]) for h in page["history"]
    ] == [(None, "created", "gateway", None), ("created", "in_progress", "gateway", "picked up")]
    assert page["revision"] == 2
    html = (await browser.get("/console/types/task/task_123")).text
    assert "picked up" in html
    assert "/api/v1/states/task/watch?entityId=task_123&amp;after=2" in html

    assert (await client.delete("/api/v1/states/task/task_123")).status_code == 204
    deleted = await page_json(browser, "/console/types/task/task_123")
    assert deleted["state"] is None
    assert deleted["history"][-1]["newStatus"] is None
    missing = await browser.get("/console/types/task/never")
    assert missing.status_code == 404
    assert "never" in missing.text
    assert "<html" in missing.text
    assert (await browser.get("/console/types/task/never?format=json")).json()["code"] == (
        "state_not_found"
    )


async def test_the_type_page_shows_where_its_machine_comes_from_and_every_change(
    client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    order = {
        "statuses": ["new", "paid"],
        "initial": ["new"],
        "transitions": {"new": ["paid"]},
        "metadataSchema": {"type": "object", "required": ["amount"]},
    }
    assert (await client.put("/api/v1/state-machines/order", json=order)).status_code == 201
    grown = {
        **order,
        "statuses": ["new", "paid", "shipped"],
        "transitions": {"new": ["paid"], "paid": ["shipped"]},
    }
    changed = await client.put(
        "/api/v1/state-machines/order", json=grown, headers={"If-Match": '"1"'}
    )
    assert changed.status_code == 200, changed.text

    page = await page_json(browser, "/console/types/order")
    assert page["machine"]["source"] == "api"
    assert page["machine"]["version"] == 2
    assert page["machine"]["metadataSchema"] == order["metadataSchema"]
    history = (await client.get("/api/v1/state-machines/order/history")).json()["items"]
    assert [c["revision"] for c in page["definitions"]["items"]] == [
        h["revision"] for h in reversed(history)
    ]
    assert [
        (c["version"], c["change"], c["added"], c["removedStatuses"], c["actor"])
        for c in page["definitions"]["items"]
    ] == [(2, "changed", ["shipped"], [], "gateway"), (1, "defined", [], [], "gateway")]
    html = (await browser.get("/console/types/order")).text
    assert "defined over the API" in html
    assert "data-definition-version>2<" in html
    assert "Statuses added: <code>shipped</code>" in html

    builtin = await page_json(browser, "/console/types/task")
    assert builtin["machine"]["source"] == "builtin"
    assert builtin["definitions"] == {"items": [], "more": False}
    assert "built in: read-only" in (await browser.get("/console/types/task")).text
    untyped = await page_json(browser, "/console/types/anything")
    assert untyped["machine"] is None
    assert untyped["definitions"]["items"] == []


async def test_the_entity_page_shows_the_state_as_of_a_revision_or_why_not(
    client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    created = await record(client, "task", "t1", "created", metadata={"step": 1})
    moved = await record(client, "task", "t1", "in_progress", metadata={"step": 2})
    path = "/console/types/task/t1"

    then = await page_json(browser, path, asOf=created["revision"])
    api = await client.get("/api/v1/states/task/t1", params={"asOf": created["revision"]})
    assert then["asOf"] == {
        "at": str(created["revision"]),
        "state": api.json(),
        "code": None,
        "message": None,
    }
    assert then["state"]["status"] == "in_progress"  # the current state stays beside it
    assert (await page_json(browser, path))["asOf"] is None
    html = (await browser.get(path, params={"asOf": created["revision"]})).text
    assert "data-past-status>created<" in html
    assert f'href="{path}?asOf={moved["revision"]}"' in html  # from the timeline

    before = await page_json(browser, path, asOf=created["revision"] - 1)
    assert before["asOf"]["state"] is None
    assert before["asOf"]["code"] == "state_not_found"
    future = await page_json(browser, path, asOf=moved["revision"] + 100)
    assert future["asOf"]["code"] == "revision_unknown"
    assert (await client.delete("/api/v1/states/task/t1")).status_code == 204
    head = (await client.get("/api/v1/states/task/t1/history")).json()["items"][-1]["revision"]
    deleted = await page_json(browser, path, asOf=head)
    assert deleted["asOf"]["code"] == "state_deleted"
    assert (
        'data-past-problem="state_deleted"' in (await browser.get(path, params={"asOf": head})).text
    )
    at_time = await page_json(browser, path, asOf=moved["updatedAt"])
    assert at_time["asOf"]["state"]["status"] == "in_progress"
    wrong = await browser.get(path, params={"asOf": "yesterday"})
    assert wrong.status_code == 422
    assert "RFC 3339" in wrong.text


async def test_the_services_page_groups_instances_by_status_with_their_leases(
    client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    await record(client, "service", "billing-1", "up", metadata={"name": "billing"})
    await record(client, "service", "billing-2", "starting", metadata={"name": "billing"})
    await record(client, "service", "mail-1", "up", ttl=60)
    page = await page_json(browser, "/console/services")
    assert [(g["status"], [s["entityId"] for s in g["services"]]) for g in page["groups"]] == [
        ("starting", ["billing-2"]),
        ("up", ["billing-1", "mail-1"]),
    ]
    mail = page["groups"][1]["services"][1]
    assert mail["lease"]["ttl"] == 60
    html = (await browser.get("/console/services")).text
    assert f'data-expires="{mail["lease"]["expiresAt"]}"' in html


async def test_the_webhook_pages_show_health_and_every_attempt(
    app: FastAPI, client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    async with running_receiver() as receiver:
        receiver.answer(then=Reply(status=503))
        created = await client.post(
            "/api/v1/webhooks/subscriptions",
            json={"url": receiver.url(), "events": ["entity.*"], "maxAttempts": 1},
        )
        assert created.status_code == 201, created.text
        sub = created.json()
        await record(client, "task", "t1", "created")
        await receiver.wait_for(1)
        page = await wait_for_delivery(browser, sub["id"], "failed", health_recorded=True)
        [delivery] = page["deliveries"]
        assert [
            (a["attempt"], a["statusCode"], a["succeeded"]) for a in delivery["attemptLog"]
        ] == [(1, 503, False)]
        assert page["subscription"]["lastError"]
        listed = await page_json(browser, "/console/webhooks")
        assert [s["id"] for s in listed["subscriptions"]] == [sub["id"]]
        html = (await browser.get(f"/console/webhooks/{sub['id']}")).text
        assert f'data-action="/api/v1/webhooks/deliveries/{delivery["id"]}/retry"' in html
        assert "HTTP 503" in html


async def wait_for_delivery(
    browser: httpx.AsyncClient, sub_id: str, status: str, *, health_recorded: bool = False
) -> Json:
    async def settled() -> Json | None:
        page = await page_json(browser, f"/console/webhooks/{sub_id}")
        found = [d for d in page["deliveries"] if d["status"] == status]
        recorded = page["subscription"]["lastError"] or not health_recorded
        return page if found and recorded else None

    return await eventually(settled, what=f"a {status} delivery")


async def test_every_page_and_fragment_renders_with_nothing_from_another_host(
    client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    await record(client, "task", "t1", "created")
    await record(client, "service", "s1", "up")
    sub = (
        await client.post(
            "/api/v1/webhooks/subscriptions",
            json={"url": "http://127.0.0.1:9/hook", "events": ["entity.*"]},
        )
    ).json()
    pages = {
        "overview": "/console",
        "type": "/console/types/task",
        "entity": "/console/types/task/t1",
        "webhooks": "/console/webhooks",
        "subscription": f"/console/webhooks/{sub['id']}",
        "services": "/console/services",
    }
    assert set(pages) == set(TEMPLATES)
    login = await console_client_page(browser, "/console/login")
    for name, path in pages.items():
        response = await browser.get(path)
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self'" in policy
        assert "unsafe" not in policy
        assert response.headers["referrer-policy"] == "same-origin"
        assert response.headers["cache-control"] == "no-store"
        for html in (response.text, login):
            assert_only_this_host(html, path)
        for fragment in TEMPLATES[name][1]:
            part = await browser.get(path, params={"fragment": fragment})
            assert part.status_code == 200, (path, fragment)
            assert_only_this_host(part.text, f"{path}?fragment={fragment}")
        assert (await browser.get(path, params={"fragment": "nothing"})).status_code == 404
    for asset in ("console.css", "console.js", "vendor/htmx.min.js", "favicon.svg"):
        response = await browser.get(f"/console/static/{asset}")
        assert response.status_code == 200, asset
        assert "http://" not in response.text.replace("http://www.w3.org/", "")


async def console_client_page(browser: httpx.AsyncClient, path: str) -> str:
    response = await browser.get(path)
    assert response.status_code == 200
    return response.text


def assert_only_this_host(html: str, where: str) -> None:
    """Every URL the markup loads, links to, posts to or watches is a path here
    (the webhook URLs it shows are text, not links)."""
    urls = ATTRIBUTE_URL.findall(html)
    if "<html" in html:
        assert urls, where
    elsewhere = [url for url in urls if not url.startswith(("/", "#", "?"))]
    assert not elsewhere, f"{where} refers to {elsewhere}"
    assert "//" not in " ".join(url.split("?")[0] for url in urls), where


async def test_the_diagram_shows_every_status_with_its_count(
    client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    await record(client, "task", "t1", "created")
    await record(client, "task", "t2", "created")
    await record(client, "task", "t2", "in_progress")
    response = await browser.get("/console/machines/task.svg")
    assert response.headers["content-type"] == "image/svg+xml"
    svg = ElementTree.fromstring(response.text)
    counts = {
        g.get("data-status"): int(g.get("data-count") or -1)
        for g in svg.iter(f"{SVG}g")
        if "status" in (g.get("class") or "").split()
    }
    assert counts == {"created": 1, "in_progress": 1, "completed": 0, "failed": 0}
    finals = [
        g.get("data-status") for g in svg.iter(f"{SVG}g") if "final" in (g.get("class") or "")
    ]
    assert finals == ["completed"]
    paths = list(svg.iter(f"{SVG}path"))
    transitions = {
        (p.get("data-from"), p.get("data-to")) for p in paths if p.get("class") == "edge"
    }
    assert transitions == {
        ("created", "in_progress"),
        ("created", "failed"),
        ("in_progress", "completed"),
        ("in_progress", "failed"),
        ("failed", "in_progress"),
    }
    initial = {p.get("data-to") for p in paths if p.get("class") == "edge initial"}
    assert initial == {"created", "in_progress"}
    # Its one <style> block is allowed by hash, and nothing else is.
    style = next(svg.iter(f"{SVG}style")).text or ""
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert response.headers["content-security-policy"] == (
        f"default-src 'none'; style-src 'sha256-{digest}'"
    )
    # A type without a table: the statuses its states are in, dashed.
    await record(client, "order", "o1", "new")
    order = ElementTree.fromstring((await browser.get("/console/machines/order.svg")).text)
    assert [g.get("class") for g in order.iter(f"{SVG}g")] == ["status extra"]


def test_the_vendored_files_are_the_pinned_ones() -> None:
    """scripts/refresh-console-assets wrote VERSIONS; a file edited by hand
    since would not match it."""
    lines = (VENDOR / "VERSIONS").read_text().splitlines()
    entries = [line.split() for line in lines if not line.startswith("#")]
    assert entries, "no vendored file listed"
    for served, package, licence, digest in entries:
        content = (VENDOR / served).read_bytes()
        assert digest == f"sha256:{hashlib.sha256(content).hexdigest()}", served
        assert (VENDOR / f"{served}.LICENSE").read_text().strip(), f"{package} has no licence"
        assert licence != "UNKNOWN", package
