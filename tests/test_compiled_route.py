"""Routes on a compiled plan (kit/compiled_route.py) answer exactly as FastAPI
would: the same values reach the endpoint and the same 422 errors come back,
for query parameters as for path and body ones, while FastAPI's dependency
solving is not run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import httpx
import orjson
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.dependencies.utils import solve_dependencies
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from potok_state.kit.compiled_route import CompiledRoute


class Body(BaseModel):
    count: int


def caller(x_name: Annotated[str, Header()] = "anyone") -> str:
    return x_name


def endpoints(router: APIRouter) -> None:
    @router.get("/items/{kind}")
    async def items(
        request: Request,
        kind: Annotated[str, Path(pattern="^[a-z]+$")],
        who: Annotated[str, Depends(caller)],
        status: Annotated[
            list[Annotated[str, Query(pattern="^[a-z]+$")]], Query(alias="status")
        ] = [],  # noqa: B006 - FastAPI copies query defaults
        limit: Annotated[int, Query(ge=1, le=10)] = 5,
        sort: Literal["a", "-a"] = "a",
        after: Annotated[datetime | None, Query(alias="updatedAfter")] = None,
        cursor: Annotated[str | None, Query(max_length=8)] = None,
    ) -> Response:
        return _echo(request, kind, who, status, limit, sort, after, cursor)

    @router.get("/required")
    async def required(request: Request, needed: Annotated[int, Query()]) -> Response:
        return JSONResponse({"needed": needed})

    @router.post("/count")
    async def count(request: Request, body: Body, dry: bool = False) -> Response:
        return JSONResponse({"count": body.count, "dry": dry})


def _echo(request: Request, *values: Any) -> Response:
    return Response(orjson.dumps([str(v) if isinstance(v, datetime) else v for v in values]))


def build(route_class: type[APIRoute]) -> FastAPI:
    app = FastAPI()
    router = APIRouter(route_class=route_class)
    endpoints(router)
    app.include_router(router, prefix="/v1")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{k: e[k] for k in ("type", "loc", "msg")} for e in exc.errors()]
        return JSONResponse({"errors": errors}, status_code=422)

    return app


REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/v1/items/task", {}),
    ("GET", "/v1/items/task?status=a&status=b&limit=3&sort=-a&cursor=xy", {}),
    ("GET", "/v1/items/task?updatedAfter=2026-12-01T10:00:00Z", {"headers": {"x-name": "ops"}}),
    ("GET", "/v1/items/task?status=", {}),
    ("GET", "/v1/items/task?limit=&sort=", {}),
    ("GET", "/v1/items/task?limit=0&limit=11", {}),
    ("GET", "/v1/items/task?limit=x&sort=b&updatedAfter=no&cursor=123456789", {}),
    ("GET", "/v1/items/TASK?status=B", {}),
    ("GET", "/v1/required", {}),
    ("GET", "/v1/required?needed=4", {}),
    ("GET", "/v1/required?needed=four", {}),
    ("POST", "/v1/count?dry=yes", {"json": {"count": 2}}),
    ("POST", "/v1/count?dry=maybe", {"json": {"count": "x"}}),
    ("POST", "/v1/count", {}),
]


@pytest.fixture
async def clients() -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    planned, plain = build(CompiledRoute), build(APIRoute)
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(planned), base_url="http://t") as a,
        httpx.AsyncClient(transport=httpx.ASGITransport(plain), base_url="http://t") as b,
    ):
        yield a, b


@pytest.mark.parametrize(("method", "url", "extra"), REQUESTS)
async def test_a_planned_route_answers_as_fastapi_does(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    url: str,
    extra: dict[str, Any],
) -> None:
    planned, plain = clients
    expected = await plain.request(method, url, **extra)
    solved: list[object] = []

    async def counted(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs.get("request"))
        return await solve_dependencies(*args, **kwargs)

    monkeypatch.setattr("fastapi.routing.solve_dependencies", counted)
    answer = await planned.request(method, url, **extra)
    assert (answer.status_code, answer.json()) == (expected.status_code, expected.json())
    assert not solved, "the planned route fell back to FastAPI's dependency solving"
