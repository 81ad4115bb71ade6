"""The operator console's routes under /console (docs/console.md). Thin: each
page asks `pages.py` for its data and answers it as HTML (a Jinja template),
as one live fragment of that page (`?fragment=`, what the page's scripts
refresh), or as JSON (`?format=json`)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from potok_state.clock import InputTime
from potok_state.console.diagram import CONTENT_SECURITY_POLICY as SVG_POLICY
from potok_state.console.diagram import machine_diagram
from potok_state.console.pages import SERVICE_TYPE, ConsolePages
from potok_state.console.rendering import ConsoleRoute, Renderer
from potok_state.console.sessions import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    ConsoleSessions,
    check_console_write,
    same_site,
)
from potok_state.kit.auth import (
    Administrator,
    PartialReader,
    Reader,
    authenticate,
    check_scope,
    failed_authentication,
)
from potok_state.kit.errors import BadRequest, Forbidden
from potok_state.kit.parameters import EntityIdPath, EntityPath, PageCursor, PageLimit
from potok_state.kit.scopes import Scope
from potok_state.names import STATUS_PATTERN
from potok_state.states.queries import StateFilter
from potok_state.states.schemas import SortSpec

CONSOLE_PATH = "/console"
STATIC_PATH = "/console/static"
FORM_MAX_BYTES = 4096
FORM_MAX_FIELDS = 8

router = APIRouter(prefix=CONSOLE_PATH, include_in_schema=False, route_class=ConsoleRoute)

Format = Annotated[Literal["html", "json"], Query(description="json: the page's data.")]
Fragment = Annotated[str | None, Query(max_length=32, pattern=r"^[a-z]+$")]
SubscriptionId = Annotated[str, PathParam(pattern=r"^sub_[0-9a-f]{24}$")]


def pages(request: Request) -> ConsolePages:
    found: ConsolePages = request.app.state.console_pages
    return found


def renderer(request: Request) -> Renderer:
    found: Renderer = request.app.state.console_renderer
    return found


def sessions(request: Request) -> ConsoleSessions:
    found: ConsoleSessions = request.app.state.cookie_sessions
    return found


# -- signing in and out ----------------------------------------------------------------


def _next_page(value: str | None) -> str:
    """Where to go after signing in: a console page, never another site."""
    if value and value.startswith(CONSOLE_PATH) and "//" not in value and "\\" not in value:
        return value
    return CONSOLE_PATH


async def _form(request: Request) -> dict[str, str]:
    """The fields of a console form (`application/x-www-form-urlencoded`)."""
    body = await request.body()
    if len(body) > FORM_MAX_BYTES:
        raise BadRequest("The form is too large.")
    try:
        return dict(parse_qsl(body.decode("utf-8", "replace"), max_num_fields=FORM_MAX_FIELDS))
    except ValueError:
        raise BadRequest(f"A console form has at most {FORM_MAX_FIELDS} fields.") from None


@router.get("/login")
async def login_page(
    request: Request, next_page: Annotated[str | None, Query(alias="next")] = None
) -> Response:
    return renderer(request).login(request, next_page=_next_page(next_page))


@router.post("/login")
async def login(request: Request) -> Response:
    """Form fields `apiKey` and `next`; a 303 to the console with the session
    cookie, or the form again with 401 (429 after too many failures)."""
    if request.headers.get("origin") is not None and not same_site(request):
        raise Forbidden("Sign in from the console's own page.")
    fields = await _form(request)
    next_page = _next_page(fields.get("next"))
    session = await sessions(request).open(fields.get("apiKey", "").strip())
    if session is None:
        refused = await failed_authentication(request, "console_sign_in", "Unknown API key.")
        return renderer(request).login(
            request, next_page=next_page, error=refused.message, status_code=401
        )
    response = RedirectResponse(next_page, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        max_age=int(sessions(request).ttl.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=renderer(request).secure_cookie,
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Ends the session (the console's form sends its CSRF token as a field,
    a script as the header). Without a live session there is nothing to end."""
    token = request.cookies.get(SESSION_COOKIE)
    session = await sessions(request).find(token) if token else None
    if session is not None:
        presented = request.headers.get(CSRF_HEADER) or (await _form(request)).get(CSRF_FIELD)
        check_console_write(request, session, presented)
        await sessions(request).close(session.token)
    response = RedirectResponse(f"{CONSOLE_PATH}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# -- pages -----------------------------------------------------------------------------


@router.get("")
async def overview(
    request: Request, caller: PartialReader, format: Format = "html", fragment: Fragment = None
) -> Response:
    data = await pages(request).overview(caller)
    return renderer(request).page(request, "overview", data, format=format, fragment=fragment)


@router.get("/types/{entity}")
async def entity_type(
    request: Request,
    entity: EntityPath,
    _: Reader,
    status_in: Annotated[
        list[Annotated[str, Query(pattern=STATUS_PATTERN)]], Query(alias="status")
    ] = [],  # noqa: B006 - FastAPI copies query defaults
    metadata: Annotated[str | None, Query(max_length=400)] = None,
    updated_after: Annotated[InputTime | None, Query(alias="updatedAfter")] = None,
    updated_before: Annotated[InputTime | None, Query(alias="updatedBefore")] = None,
    sort: SortSpec = "-updatedAt",
    limit: PageLimit = 50,
    cursor: PageCursor = None,
    format: Format = "html",
    fragment: Fragment = None,
) -> Response:
    """The API's filters (`status`, `metadata.<key>`, `updatedAfter`, …), and
    `metadata=key=value,…` from the page's form."""
    metadata_equals = {
        name.removeprefix("metadata."): value
        for name, value in request.query_params.items()
        if name.startswith("metadata.")
    }
    for pair in (metadata or "").split(","):
        key, equals, value = pair.partition("=")
        if equals and key.strip():
            metadata_equals[key.strip()] = value.strip()
    query = StateFilter(
        statuses=tuple(status_in),
        metadata_equals=metadata_equals,
        updated_after=updated_after,
        updated_before=updated_before,
        sort=sort,
        limit=limit,
        cursor=cursor,
    )
    data = await pages(request).entity_type(entity, query)
    return renderer(request).page(request, "type", data, format=format, fragment=fragment)


@router.get("/types/{entity}/{entity_id}")
async def entity_page(
    request: Request,
    entity: EntityPath,
    entity_id: EntityIdPath,
    _: Reader,
    cursor: PageCursor = None,
    as_of: Annotated[str | None, Query(alias="asOf", max_length=64)] = None,
    format: Format = "html",
    fragment: Fragment = None,
) -> Response:
    """`asOf=<revision or RFC 3339 time>` adds the state as it was then."""
    data = await pages(request).entity(entity, entity_id, cursor, as_of or None)
    return renderer(request).page(request, "entity", data, format=format, fragment=fragment)


@router.get("/machines/{entity}.svg")
async def machine_svg(request: Request, entity: EntityPath, _: Reader) -> Response:
    """The type's state machine with the number of states in each status now."""
    machine, counts = await pages(request).diagram_counts(entity)
    diagram = machine_diagram(entity, machine, counts)
    return Response(
        diagram.svg,
        media_type="image/svg+xml",
        headers={"Content-Security-Policy": SVG_POLICY, "Cache-Control": "no-store"},
    )


@router.get("/webhooks")
async def webhooks(
    request: Request, _: Administrator, format: Format = "html", fragment: Fragment = None
) -> Response:
    data = await pages(request).subscriptions()
    return renderer(request).page(request, "webhooks", data, format=format, fragment=fragment)


@router.get("/webhooks/{subscription_id}")
async def subscription(
    request: Request,
    subscription_id: SubscriptionId,
    _: Administrator,
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    format: Format = "html",
    fragment: Fragment = None,
) -> Response:
    data = await pages(request).subscription(subscription_id, before)
    return renderer(request).page(request, "subscription", data, format=format, fragment=fragment)


@router.get("/services")
async def services(
    request: Request, format: Format = "html", fragment: Fragment = None
) -> Response:
    check_scope(request, await authenticate(request), Scope.READ, SERVICE_TYPE)
    data = await pages(request).services()
    return renderer(request).page(request, "services", data, format=format, fragment=fragment)


def install_console(
    app: FastAPI, sessions: ConsoleSessions, pages: ConsolePages, *, secure_cookie: bool
) -> None:
    """Serve the console (CONSOLE_ENABLED): its routes, its static files, and
    its sessions as a way to authenticate (kit/auth.py)."""
    app.state.cookie_sessions = sessions
    app.state.console_pages = pages
    app.state.console_renderer = Renderer(
        static_path=STATIC_PATH,
        asset_version=version("potok-state"),
        secure_cookie=secure_cookie,
    )
    app.include_router(router)
    static = Path(__file__).parent / "static"
    app.mount(STATIC_PATH, StaticFiles(directory=static), name="console-static")
