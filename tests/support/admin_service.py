"""A reference Potok Admin Service: the REST contract of the platform's
database service (docs/external.md), persisted to its own SQLite file, for the
external backend's tests and the bench. Not a mock: it stores and answers what
it is sent, by the contract's rules.

Contract: `GET/POST /api/v1/db/{collection}`, `GET/PATCH/DELETE
/api/v1/db/{collection}/{id}`, header `X-API-Key`, bare JSON entities and
arrays, `limit`/`offset` paging with equality filters as query parameters,
errors `{statusCode, message, error}`, health at `/api/v1/health`. A POST whose
body names an `id` that exists answers 409.

For tests it can be told to misbehave (`POST /_control/faults`: answer a
status, optionally with Retry-After, or hang, for the next N matching
requests), counts every request it received (`GET /_control/requests`), and
runs as its own process (`AdminService`) so a test can kill it and start it
again on the same port and file.

    python -m tests.support.admin_service --port 3000 --db admin.db --api-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import sys
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web

from tests.support.polling import eventually
from tests.support.ports import free_port

DB_PREFIX = "/api/v1/db/"
MAX_LIMIT = 1000
REPOSITORY = Path(__file__).resolve().parents[2]

Json = dict[str, Any]


@dataclass(slots=True)
class Fault:
    """Answer the next `times` requests that match (method and a path
    fragment, both optional) with `status`, or hold them for `hang` seconds
    first and then serve them (`status` None)."""

    times: int
    status: int | None = None
    hang: float = 0.0
    method: str | None = None
    path: str | None = None
    retry_after: str | None = None

    def matches(self, request: web.Request) -> bool:
        return (self.method is None or request.method == self.method) and (
            self.path is None or self.path in request.path
        )


def _error(status: int, message: str) -> web.Response:
    body = {"statusCode": status, "message": message, "error": HTTPStatus(status).phrase}
    return web.json_response(body, status=status)


class AdminServiceApp:
    def __init__(self, db_path: str, api_key: str) -> None:
        self.db = sqlite3.connect(db_path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS documents (collection TEXT NOT NULL, id TEXT NOT NULL, "
            "seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, "
            "UNIQUE (collection, id))"
        )
        self.api_key = api_key
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._control_and_auth])
        app.router.add_get("/api/v1/health", self.health)
        app.router.add_get(DB_PREFIX + "{collection}", self.list)
        app.router.add_post(DB_PREFIX + "{collection}", self.create)
        app.router.add_get(DB_PREFIX + "{collection}/{id}", self.get)
        app.router.add_patch(DB_PREFIX + "{collection}/{id}", self.update)
        app.router.add_delete(DB_PREFIX + "{collection}/{id}", self.delete)
        app.router.add_post("/_control/faults", self.set_faults)
        app.router.add_get("/_control/requests", self.request_log)
        return app

    @web.middleware
    async def _control_and_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_control/"):
            response: web.StreamResponse = await handler(request)
            return response
        answer = await self._answer(request, handler)
        self.requests.append((request.method, request.path, answer.status))
        return answer

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        fault = next((f for f in self.faults if f.times != 0 and f.matches(request)), None)
        if fault is not None:
            fault.times -= 1
            if fault.hang:
                await asyncio.sleep(fault.hang)
            if fault.status is not None:
                response = _error(fault.status, f"injected fault: {fault.status}")
                if fault.retry_after is not None:
                    response.headers["Retry-After"] = fault.retry_after
                return response
        if request.path != "/api/v1/health" and request.headers.get("X-API-Key") != self.api_key:
            return _error(401, "Invalid API key")
        answer: web.StreamResponse = await handler(request)
        return answer

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def _row(self, collection: str, doc_id: str) -> Json | None:
        row = self.db.execute(
            "SELECT body FROM documents WHERE collection = ? AND id = ?", (collection, doc_id)
        ).fetchone()
        return None if row is None else dict(orjson.loads(row[0]))

    async def list(self, request: web.Request) -> web.Response:
        collection = request.match_info["collection"]
        try:
            limit = min(int(request.query.get("limit", "100")), MAX_LIMIT)
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return _error(400, "limit and offset must be integers")
        filters = {k: v for k, v in request.query.items() if k not in ("limit", "offset")}
        rows = self.db.execute(
            "SELECT body FROM documents WHERE collection = ? ORDER BY seq", (collection,)
        ).fetchall()
        found = [orjson.loads(body) for (body,) in rows]
        matching = [
            doc for doc in found if all(_as_text(doc.get(k)) == v for k, v in filters.items())
        ]
        return web.json_response(matching[offset : offset + limit])

    async def create(self, request: web.Request) -> web.Response:
        collection = request.match_info["collection"]
        document = await _json_object(request)
        if document is None:
            return _error(400, "the body must be a JSON object")
        doc_id = str(document.get("id") or uuid.uuid4())
        document["id"] = doc_id
        try:
            self.db.execute(
                "INSERT INTO documents (collection, id, body) VALUES (?, ?, ?)",
                (collection, doc_id, orjson.dumps(document).decode()),
            )
        except sqlite3.IntegrityError:
            return _error(409, f"{collection}/{doc_id} already exists")
        return web.json_response(document, status=201)

    async def get(self, request: web.Request) -> web.Response:
        collection, doc_id = request.match_info["collection"], request.match_info["id"]
        document = self._row(collection, doc_id)
        if document is None:
            return _error(404, f"{collection}/{doc_id} not found")
        return web.json_response(document)

    async def update(self, request: web.Request) -> web.Response:
        collection, doc_id = request.match_info["collection"], request.match_info["id"]
        changes = await _json_object(request)
        if changes is None:
            return _error(400, "the body must be a JSON object")
        document = self._row(collection, doc_id)
        if document is None:
            return _error(404, f"{collection}/{doc_id} not found")
        document.update({k: v for k, v in changes.items() if k != "id"})
        self.db.execute(
            "UPDATE documents SET body = ? WHERE collection = ? AND id = ?",
            (orjson.dumps(document).decode(), collection, doc_id),
        )
        return web.json_response(document)

    async def delete(self, request: web.Request) -> web.Response:
        collection, doc_id = request.match_info["collection"], request.match_info["id"]
        deleted = self.db.execute(
            "DELETE FROM documents WHERE collection = ? AND id = ?", (collection, doc_id)
        ).rowcount
        if not deleted:
            return _error(404, f"{collection}/{doc_id} not found")
        return web.json_response({"id": doc_id, "deleted": True})

    async def set_faults(self, request: web.Request) -> web.Response:
        rules = await request.json()
        self.faults = [
            Fault(
                times=int(rule.get("times", 1)),
                status=rule.get("status"),
                hang=float(rule.get("hang", 0)),
                method=rule.get("method"),
                path=rule.get("path"),
                retry_after=rule.get("retryAfter"),
            )
            for rule in rules
        ]
        return web.json_response({"faults": len(self.faults)})

    async def request_log(self, _: web.Request) -> web.Response:
        return web.json_response(
            [{"method": m, "path": p, "status": s} for m, p, s in self.requests]
        )


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


async def _json_object(request: web.Request) -> Json | None:
    try:
        parsed = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


class AdminService:
    """The reference server as its own process, on a fixed port and file, so a
    test can kill it ("the Admin Service went away") and start it again."""

    def __init__(self, workdir: Path, *, api_key: str = "state-service-key") -> None:
        self.db_path = workdir / "admin-service.db"
        self.api_key = api_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.admin_service",
            "--port",
            str(self.port),
            "--db",
            str(self.db_path),
            "--api-key",
            self.api_key,
            cwd=REPOSITORY,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

        async def answers() -> bool:
            try:
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"{self.url}/api/v1/health")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(answers, timeout=15)

    async def kill(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            await self._process.wait()
            self._process = None

    async def _control(self, method: str, path: str, body: object = None) -> Any:
        async with httpx.AsyncClient(base_url=self.url) as http:
            response = await http.request(method, path, json=body)
            response.raise_for_status()
            return response.json()

    async def faults(self, *rules: Json) -> None:
        """Replace the fault rules (none: behave)."""
        await self._control("POST", "/_control/faults", list(rules))

    async def requests(self, method: str | None = None, path: str | None = None) -> list[Json]:
        log: list[Json] = await self._control("GET", "/_control/requests")
        return [
            r
            for r in log
            if (method is None or r["method"] == method) and (path is None or path in r["path"])
        ]

    async def documents(self, collection: str, **filters: str) -> list[Json]:
        """Every document of a collection, in insertion order, page by page."""
        found: list[Json] = []
        async with httpx.AsyncClient(
            base_url=self.url, headers={"X-API-Key": self.api_key}
        ) as http:
            while True:
                params = {**filters, "limit": str(MAX_LIMIT), "offset": str(len(found))}
                response = await http.get(DB_PREFIX + collection, params=params)
                response.raise_for_status()
                page: list[Json] = response.json()
                found.extend(page)
                if len(page) < MAX_LIMIT:
                    return found


def external_backend(admin: AdminService, **external_db: object) -> dict[str, object]:
    """Settings (for `make_settings`) that keep states in this Admin Service,
    in collections of their own, with short timeouts for tests."""
    suffix = uuid.uuid4().hex[:10]
    return {
        "storage_backend": "external",
        "external_db": {
            "url": admin.url,
            "api_key": admin.api_key,
            "connection_timeout": 2000,
            "retry_attempts": 2,
            "states_collection": f"states_{suffix}",
            "history_collection": f"history_{suffix}",
            **external_db,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()
    server = AdminServiceApp(args.db, args.api_key)
    web.run_app(server.application(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
