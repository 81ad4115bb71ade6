"""Thin adapters: a request handler for Starlette/FastAPI, aiohttp and Flask that
verifies the delivery, parses it, drops duplicates and calls your function.

Answers: 204 when handled, 204 for a duplicate (already handled: the service should
stop sending it), 401 when the signature or timestamp is wrong, 400 when a signed
body is not an event. When your function raises, the claim on the event id is
released and the error propagates (the framework answers 500), so the service's
retry is handled. Importing this module imports no framework: each adapter imports
its own when it is created (Flask's when a request comes).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from potok_state.receiver.gate import MalformedEvent, ReceivedEvent, WebhookReceiver
from potok_state.receiver.signatures import InvalidDelivery

if TYPE_CHECKING:
    from aiohttp import web
    from starlette.requests import Request
    from starlette.responses import Response

AsyncHandler = Callable[[ReceivedEvent], Awaitable[None]]
SyncHandler = Callable[[ReceivedEvent], None]


def _refusal(error: InvalidDelivery) -> tuple[int, str]:
    return (400 if isinstance(error, MalformedEvent) else 401), str(error)


def starlette_endpoint(
    receiver: WebhookReceiver, handler: AsyncHandler
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint for Starlette (`Route(path, endpoint, methods=["POST"])`) or FastAPI
    (`app.add_api_route(path, endpoint, methods=["POST"])`)."""

    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        try:
            received = await receiver.accept_async(request.headers, body)
        except InvalidDelivery as exc:
            status, reason = _refusal(exc)
            return PlainTextResponse(reason, status_code=status)
        if received is not None:
            try:
                await handler(received)
            except BaseException:
                await receiver.release_async(received)
                raise
        return Response(status_code=204)

    # FastAPI reads the parameter's type to pass the request; the names are not
    # module globals here (the module imports no framework), so give it the types.
    endpoint.__annotations__ = {"request": Request, "return": Response}
    return endpoint


def aiohttp_handler(
    receiver: WebhookReceiver, handler: AsyncHandler
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler for aiohttp (`app.router.add_post(path, handler)`)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        body = await request.read()
        try:
            received = await receiver.accept_async(request.headers, body)
        except InvalidDelivery as exc:
            status, reason = _refusal(exc)
            return web.Response(status=status, text=reason)
        if received is not None:
            try:
                await handler(received)
            except BaseException:
                await receiver.release_async(received)
                raise
        return web.Response(status=204)

    return handle


def flask_view(receiver: WebhookReceiver, handler: SyncHandler) -> Callable[[], Any]:
    """A view for Flask (`app.add_url_rule(path, view_func=view, methods=["POST"])`);
    the receiver's store must be synchronous (the default one is)."""

    # Any, not object: Flask's add_url_rule types its view_func by what it may
    # return, and this module cannot name flask.Response without importing it.
    def view() -> Any:
        # Not a dependency of this package: looked up when a request comes.
        flask = importlib.import_module("flask")
        request, response = flask.request, flask.Response
        body = request.get_data(cache=False)
        try:
            received = receiver.accept(dict(request.headers), body)
        except InvalidDelivery as exc:
            status, reason = _refusal(exc)
            return response(reason, status=status, mimetype="text/plain")
        if received is not None:
            try:
                handler(received)
            except BaseException:
                receiver.release(received)
                raise
        return response(status=204)

    view.__name__ = f"potok_webhook_{id(receiver):x}"
    return view
