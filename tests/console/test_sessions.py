"""Console sessions over HTTP (docs/console.md, "Sessions"): signing in and out,
the cookie's flags, the cookie as a way to call the API, and what it may not do:
write from another site or without the CSRF token, outlive its key, or do more
than its key may."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import API_KEY, TEST_API_KEYS, make_settings
from tests.support.apps import running_app
from tests.support.console import console_client, sign_in
from tests.support.polling import eventually

TASKS = "/api/v1/states/task"
READER_KEYS = f"{TEST_API_KEYS},reader:reader-key:read"


async def test_pages_and_the_diagram_need_a_session(app: FastAPI) -> None:
    async with console_client(app) as browser:
        for path in ("/console", "/console/types/task", "/console/services", "/console/webhooks"):
            response = await browser.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/console/login?next=%2Fconsole")
        assert (await browser.get("/console?format=json")).status_code == 401
        assert (await browser.get("/console/machines/task.svg")).status_code == 401
        # htmx asks for fragments: it is told where to sign in instead.
        fragment = await browser.get("/console?fragment=types", headers={"hx-request": "true"})
        assert fragment.status_code == 401
        assert fragment.headers["hx-redirect"] == "/console/login"

        await sign_in(browser, API_KEY)
        for path in ("/console", "/console/types/task", "/console/machines/task.svg"):
            assert (await browser.get(path)).status_code == 200, path


async def test_the_cookie_is_httponly_strict_and_not_secure_in_development(app: FastAPI) -> None:
    async with console_client(app) as browser:
        response = await browser.post("/console/login", data={"apiKey": API_KEY})
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("potok_console=")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags
    assert response.headers["location"] == "/console"


@pytest.mark.parametrize("app_env", ["test", "production"])
async def test_the_cookie_is_secure_outside_development(database_url: str, app_env: str) -> None:
    settings = make_settings(
        database_url,
        app_env=app_env,
        api_keys="gateway:a-production-grade-key-1",
        webhooks={"secret_key": "a-real-webhook-secret-of-length"},
    )
    async with running_app(settings) as app, console_client(app) as browser:
        response = await browser.post("/console/login", data={"apiKey": "a-production-grade-key-1"})
    flags = {part.strip().lower() for part in response.headers["set-cookie"].split(";")[1:]}
    assert {"httponly", "samesite=strict", "secure"} <= flags


async def test_an_unknown_key_gets_the_form_again_then_429(database_url: str) -> None:
    settings = make_settings(database_url, throttle={"auth_failures": 2})
    async with running_app(settings) as app, console_client(app) as browser:
        for _ in range(2):
            refused = await browser.post("/console/login", data={"apiKey": "guess"})
            assert refused.status_code == 401
            assert "Unknown API key." in refused.text
            assert 'id="api-key"' in refused.text
            assert "potok_console" not in refused.headers.get("set-cookie", "")
        throttled = await browser.post("/console/login", data={"apiKey": "guess"})
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) >= 1
        # Another address's guesses never lock a valid key out.
        await sign_in(browser, API_KEY)


async def test_signing_in_goes_back_to_the_page_asked_for_and_only_there(app: FastAPI) -> None:
    async with console_client(app) as browser:
        back = await browser.post(
            "/console/login", data={"apiKey": API_KEY, "next": "/console/types/task?status=failed"}
        )
        assert back.headers["location"] == "/console/types/task?status=failed"
        for elsewhere in ("https://evil.example/", "//evil.example/console", "/api/v1/changes"):
            response = await browser.post(
                "/console/login", data={"apiKey": API_KEY, "next": elsewhere}
            )
            assert response.headers["location"] == "/console", elsewhere


async def test_a_malformed_sign_in_form_is_a_400(app: FastAPI) -> None:
    async with console_client(app) as browser:
        many = "&".join(f"f{n}=x" for n in range(20))
        too_many = await browser.post(
            "/console/login",
            content=many,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert too_many.status_code == 400
        assert "at most" in too_many.text
        too_large = await browser.post("/console/login", data={"apiKey": "k" * 5000})
        assert too_large.status_code == 400


async def test_a_sign_in_posted_from_another_site_is_refused(app: FastAPI) -> None:
    async with console_client(app) as browser:
        response = await browser.post(
            "/console/login", data={"apiKey": API_KEY}, headers={"origin": "https://evil.example"}
        )
    assert response.status_code == 403
    assert "set-cookie" not in response.headers


async def test_the_cookie_authenticates_api_reads_and_the_watch_stream(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await client.post(TASKS, json={"entityId": "t1", "status": "created"})
    async with console_client(app) as browser:
        assert (await browser.get(f"{TASKS}/t1")).status_code == 401
        await sign_in(browser, API_KEY)
        state = await browser.get(f"{TASKS}/t1")
        assert state.status_code == 200
        assert state.json()["status"] == "created"
        stream = await browser.get("/api/v1/watch", params={"after": 0, "timeout": 0})
        assert stream.status_code == 200
        assert "event: entity.created" in stream.text


async def test_a_cookie_write_needs_this_site_and_the_csrf_token(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    async with console_client(app) as browser:
        session = await sign_in(browser, API_KEY)
        body = {"entityId": "t1", "status": "created"}
        refused = {
            "no token": {"origin": "http://potok.test"},
            "wrong token": {"origin": "http://potok.test", "x-csrf-token": "0" * 64},
            "another site": session.write_headers(origin="https://evil.example"),
            "an opaque origin": session.write_headers(origin="null"),
            "no origin or referer": {"x-csrf-token": session.csrf},
        }
        for why, headers in refused.items():
            response = await browser.post(TASKS, json=body, headers=headers)
            assert response.status_code == 403, why
            assert response.json()["code"] in ("cross_site_request", "csrf_token_invalid"), why
        assert (await client.get(f"{TASKS}/t1")).status_code == 404

        from_referer = {"referer": "http://potok.test/console", "x-csrf-token": session.csrf}
        created = await browser.post(TASKS, json=body, headers=from_referer)
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "created"
        updated = await browser.put(
            f"{TASKS}/t1", json={"status": "in_progress"}, headers=session.write_headers()
        )
        assert updated.status_code == 200, updated.text
    history = (await client.get(f"{TASKS}/t1/history")).json()["items"]
    assert [item["actor"] for item in history] == ["gateway", "gateway"]


async def test_a_session_has_its_keys_scopes(database_url: str) -> None:
    settings = make_settings(database_url, api_keys=READER_KEYS)
    async with running_app(settings) as app, console_client(app) as browser:
        session = await sign_in(browser, "reader-key")
        assert (await browser.get("/console")).status_code == 200
        assert (await browser.get("/console/types/task")).status_code == 200
        page = await browser.get("/console/webhooks")
        assert page.status_code == 403
        assert "admin scope" in page.text
        assert 'href="/console/webhooks"' not in (await browser.get("/console")).text
        for path, body in (
            ("/api/v1/webhooks/deliveries/1/retry", None),
            ("/api/v1/webhooks/subscriptions/sub_000000000000000000000000/rotate-secret", {}),
            (TASKS, {"entityId": "t1", "status": "created"}),
        ):
            response = await browser.post(path, json=body, headers=session.write_headers())
            assert response.status_code == 403, path
            assert response.json()["code"] == "forbidden", path


async def test_sessions_are_shared_by_replicas_and_end_with_their_key(database_url: str) -> None:
    """Two apps on one database are two replicas: a session opened on one works
    on the other, until the key is removed from API_KEYS or given a new value."""
    async with (
        running_app(make_settings(database_url)) as first,
        running_app(make_settings(database_url)) as second,
        running_app(make_settings(database_url, api_keys="admin:admin-key")) as without_key,
        running_app(
            make_settings(database_url, api_keys="gateway:a-new-value,admin:admin-key")
        ) as new_value,
    ):
        async with console_client(first) as browser:
            session = await sign_in(browser, API_KEY)
        async with console_client(second) as other:
            assert (await other.get("/console", headers=session.cookie)).status_code == 200
        for replica in (without_key, new_value):
            async with console_client(replica) as other:
                page = await other.get("/console", headers=session.cookie)
                assert page.status_code == 303
                api = await other.get(f"{TASKS}/t1", headers=session.cookie)
                assert api.status_code == 401
                assert "sign in again" in api.json()["message"]


async def test_a_session_keeps_the_scopes_of_its_key_while_another_shares_its_name(
    database_url: str,
) -> None:
    """Two entries may share a name while a key is rotated: each session has
    the scopes of the key it was opened with."""
    keys = f"{TEST_API_KEYS},ops:old-ops-key:read,ops:new-ops-key:read+admin"
    async with running_app(make_settings(database_url, api_keys=keys)) as app:
        for key, webhooks_status in (("old-ops-key", 403), ("new-ops-key", 200)):
            async with console_client(app) as browser:
                await sign_in(browser, key)
                assert (await browser.get("/console/webhooks")).status_code == webhooks_status


async def test_sign_out_ends_the_session_everywhere(app: FastAPI) -> None:
    async with console_client(app) as browser:
        session = await sign_in(browser, API_KEY)
        refused = await browser.post(
            "/console/logout", data={"csrfToken": "x"}, headers={"origin": "http://potok.test"}
        )
        assert refused.status_code == 403
        assert (await browser.get("/console")).status_code == 200

        response = await browser.post(
            "/console/logout",
            data={"csrfToken": session.csrf},
            headers={"origin": "http://potok.test"},
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/console/login"
        assert 'potok_console=""' in response.headers["set-cookie"]
        assert "potok_console" not in browser.cookies
    async with console_client(app) as stolen:
        assert (await stolen.get("/console", headers=session.cookie)).status_code == 303
        assert (await stolen.get(f"{TASKS}/t1", headers=session.cookie)).status_code == 401


async def test_a_session_expires(database_url: str) -> None:
    settings = make_settings(database_url, console={"session_ttl": 1})
    async with running_app(settings) as app, console_client(app) as browser:
        await sign_in(browser, API_KEY)

        async def expired() -> bool:
            response = await browser.get("/console?format=json")
            return response.status_code == 401

        await eventually(expired, timeout=5, interval=0.1, what="the session to expire")


async def test_console_enabled_false_serves_no_console(database_url: str) -> None:
    settings = make_settings(database_url, console={"enabled": False})
    async with running_app(settings) as app, console_client(app) as browser:
        for path in ("/console", "/console/login", "/console/static/console.js"):
            assert (await browser.get(path)).status_code == 404, path
        login = await browser.post("/console/login", data={"apiKey": API_KEY})
        assert login.status_code == 404
        cookie = await browser.get(f"{TASKS}/t1", headers={"cookie": "potok_console=anything"})
        assert cookie.status_code == 401
        assert cookie.json()["message"] == "Missing x-api-key header."
