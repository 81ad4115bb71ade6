"""HTML for the console: the Jinja templates, each page's security headers,
and how an error looks on a page (docs/console.md).

A page's Content-Security-Policy allows scripts, styles, images and requests
from this origin only; its Referrer-Policy is `same-origin`, so the console's
own writes carry an `Origin` the cookie check can read (under the API's
`no-referrer` a browser sends `Origin: null`)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined

from potok_state.console.pages import JsonObject, may_administer
from potok_state.console.sessions import CSRF_HEADER, ConsoleSession
from potok_state.kit.auth import Caller
from potok_state.kit.errors import NotFound, ServiceError, Unauthorized

PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_POLICY,
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
LOGIN_PATH = "/console/login"

# Each page's template and the fragments its scripts refresh (`?fragment=`).
TEMPLATES: Mapping[str, tuple[str, Mapping[str, str]]] = {
    "overview": ("overview.html", {"types": "_types.html", "feed": "_feed.html"}),
    "type": ("type.html", {"counts": "_counts.html", "states": "_states.html"}),
    "entity": ("entity.html", {"state": "_state.html", "timeline": "_timeline.html"}),
    "webhooks": ("webhooks.html", {"subscriptions": "_subscriptions.html"}),
    "subscription": (
        "subscription.html",
        {"health": "_health.html", "deliveries": "_deliveries.html"},
    ),
    "services": ("services.html", {"services": "_services.html"}),
}


def session_of(request: Request) -> ConsoleSession | None:
    """The console session the request was authenticated by, if any."""
    session: ConsoleSession | None = getattr(request.state, "console_session", None)
    return session


class Renderer:
    def __init__(self, *, static_path: str, asset_version: str, secure_cookie: bool) -> None:
        self.secure_cookie = secure_cookie
        self.env = Environment(
            loader=PackageLoader("potok_state.console", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals["static"] = lambda name: f"{static_path}/{name}?v={asset_version}"
        self.env.globals["csrf_header"] = CSRF_HEADER
        self.env.globals["states_query"] = _states_query
        self.env.filters["json"] = lambda value: orjson.dumps(
            value, option=orjson.OPT_INDENT_2
        ).decode()
        self.env.filters["json_inline"] = lambda value: orjson.dumps(value).decode()

    def page(
        self,
        request: Request,
        name: str,
        data: JsonObject,
        *,
        format: str,
        fragment: str | None,
    ) -> Response:
        if format == "json":
            return Response(orjson.dumps(data), media_type="application/json")
        template, fragments = TEMPLATES[name]
        if fragment is not None:
            if fragment not in fragments:
                raise NotFound(f"The {name} page has no fragment {fragment!r}.")
            template = fragments[fragment]
        return self._render(request, template, {"page": data, "view": name})

    def login(
        self,
        request: Request,
        *,
        next_page: str,
        error: str | None = None,
        status_code: int = 200,
    ) -> Response:
        context: JsonObject = {"next_page": next_page, "error": error, "view": "login"}
        return self._render(request, "login.html", context, status_code)

    def error(
        self, request: Request, status_code: int, message: str, headers: Mapping[str, str]
    ) -> Response:
        context: JsonObject = {
            "view": "error",
            "status_code": status_code,
            "phrase": HTTPStatus(status_code).phrase,
            "message": message,
        }
        response = self._render(request, "error.html", context, status_code)
        response.headers.update(headers)
        return response

    def _render(
        self, request: Request, template: str, context: JsonObject, status_code: int = 200
    ) -> Response:
        caller: Caller | None = getattr(request.state, "caller", None)
        session = session_of(request)
        query = request.url.query
        json_url = request.url.path + "?" + (f"{query}&" if query else "") + "format=json"
        html = self.env.get_template(template).render(
            caller=caller,
            can_admin=caller is not None and may_administer(caller),
            csrf_token=session.csrf_token if session else "",
            session=session,
            path=request.url.path,
            json_url=json_url,
            **context,
        )
        return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def _states_query(page: Mapping[str, object]) -> str:
    """The type page's filter as a query string prefix (`status=a&sort=…&`),
    for its refresh and next-page links."""
    found = page["filter"]
    assert isinstance(found, dict)
    pairs: list[tuple[str, str]] = [("status", status) for status in found["status"]]
    if found["metadata"]:
        pairs.append(("metadata", ",".join(f"{k}={v}" for k, v in found["metadata"].items())))
    for name in ("updatedAfter", "updatedBefore"):
        if found[name]:
            pairs.append((name, found[name]))
    pairs += [("sort", found["sort"]), ("limit", str(found["limit"]))]
    return urlencode(pairs) + "&"


def _wants_page(request: Request) -> bool:
    return request.query_params.get("format") != "json" and not request.url.path.endswith(".svg")


def _login_location(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"{LOGIN_PATH}?next={quote(here, safe='')}"


class ConsoleRoute(APIRoute):
    """A console route's errors as a person sees them: no session → the sign-in
    page (a page) or an `HX-Redirect` to it (a fragment); any other error → a
    page saying what went wrong, with its status. `?format=json` and the
    diagram answer errors as the API does."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except (ServiceError, RequestValidationError) as exc:
                if not _wants_page(request):
                    raise
                renderer: Renderer = request.app.state.console_renderer
                if isinstance(exc, Unauthorized):
                    if request.headers.get("hx-request"):
                        return Response(status_code=401, headers={"HX-Redirect": LOGIN_PATH})
                    return RedirectResponse(_login_location(request), status_code=303)
                if isinstance(exc, RequestValidationError):
                    problems = "; ".join(
                        f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg', '')}"
                        for e in exc.errors()
                    )
                    return renderer.error(request, 422, f"The page's parameters: {problems}", {})
                return renderer.error(request, exc.status_code, exc.message, exc.headers or {})

        return console_handler
