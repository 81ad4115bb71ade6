"""The hostile inputs of the security review, against the real server on
SQLite and PostgreSQL: each gets its 4xx with the error body, never a 500, and
loopback targets in any spelling are refused and never called."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tests.support.hub import http_service, remote_client, service_env
from tests.support.ports import free_port
from tests.support.receivers import Receiver

STATES = "/api/v1/states"
SUBSCRIPTIONS = "/api/v1/webhooks/subscriptions"


def _cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


PUT_T1 = {"json": {"status": "x"}, "headers": [(b"If-Match", b'"\xb2"')]}
NUL_REASON = {"entityId": "n", "status": "created", "reason": "\0"}
NUL_KEY = {"entityId": "n", "status": "created", "metadata": {"\0": 1}}
NUL_URL = {"url": "https://example.com/\0", "events": ["*"]}
NUL_SECRET = {"url": "https://example.com/", "events": ["*"], "secret": "s\0"}
EDGE_OF_UTC = "0001-01-01T00:00:00+14:00"

HOSTILE: list[tuple[str, str, dict[str, Any], int]] = [
    ("GET", f"{STATES}/task", {"params": {"updatedAfter": EDGE_OF_UTC}}, 422),
    ("GET", f"{STATES}/task", {"params": {"updatedBefore": "9999-12-31T23:59:59-14:00"}}, 422),
    ("GET", f"{STATES}/task", {"params": {f"metadata.k{i}": "v" for i in range(2000)}}, 422),
    ("GET", f"{STATES}/task", {"params": {"cursor": _cursor("entityId", "a\0", "b\0")}}, 422),
    ("GET", f"{STATES}/task", {"params": {"metadata.a": "x\0"}}, 422),
    ("GET", f"{STATES}/task/t1/history", {"params": {"cursor": "A" * 40}}, 422),
    ("PUT", f"{STATES}/task/t1", PUT_T1, 400),
    ("POST", f"{STATES}/task", {"json": NUL_REASON}, 422),
    ("POST", f"{STATES}/task", {"json": NUL_KEY}, 422),
    ("POST", SUBSCRIPTIONS, {"json": NUL_URL}, 422),
    ("POST", SUBSCRIPTIONS, {"json": NUL_SECRET}, 422),
    ("POST", f"{SUBSCRIPTIONS}/sub_x/replay", {"json": {"since": EDGE_OF_UTC}}, 422),
]

LOOPBACK_SPELLINGS = [
    "http://127。0。0。1:{port}/hook",
    "http://①②⑦.0.0.1:{port}/hook",
    "http://2130706433:{port}/hook",
    "http://0x7f000001:{port}/hook",
    "http://0177.0.0.1:{port}/hook",
    "http://127.1:{port}/hook",
    "http://[::ffff:127.0.0.1]:{port}/hook",
    "http://[64:ff9b::7f00:1]:{port}/hook",
    "http://[2002:7f00:1::]:{port}/hook",
    # IPv4-compatible (::a.b.c.d), IPv4-translated and local-use NAT64 forms
    "http://[::127.0.0.1]:{port}/hook",
    "http://[::7f00:1]:{port}/hook",
    "http://[::10.0.0.1]:{port}/hook",
    "http://[::ffff:0:127.0.0.1]:{port}/hook",
    "http://[64:ff9b:1::7f00:1]:{port}/hook",
]


async def test_hostile_input_is_a_4xx_with_the_error_body(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(database_url, WEBHOOK_ALLOW_PRIVATE_TARGETS="false")
    receiver = Receiver()
    await receiver.start()
    try:
        async with http_service(port, env, tmp_path) as server, remote_client(port) as client:
            created = await client.post(
                f"{STATES}/task", json={"entityId": "t1", "status": "created"}
            )
            assert created.status_code == 201
            for method, path, options, status in HOSTILE:
                response = await client.request(method, path, **options)
                assert response.status_code == status, (method, path, response.text)
                body = response.json()
                assert body["statusCode"] == status
                assert body["requestId"] == response.headers["x-request-id"]
            for spelling in LOOPBACK_SPELLINGS:
                url = spelling.format(port=receiver.port)
                refused = await client.post(SUBSCRIPTIONS, json={"url": url, "events": ["*"]})
                assert refused.status_code == 422, (url, refused.text)
                assert refused.json()["code"] == "invalid_webhook_url"
            assert (await client.get(SUBSCRIPTIONS)).json() == []
            await client.post(f"{STATES}/task", json={"entityId": "t2", "status": "created"})
        assert receiver.requests == []
        assert "Traceback" not in server.log
        assert '"status": 500' not in server.log
        assert '"status":500' not in server.log
    finally:
        await receiver.stop()
