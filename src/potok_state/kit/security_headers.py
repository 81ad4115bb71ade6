"""Security headers on every response, as helmet sets them for the original service.

The API answers JSON, so its Content-Security-Policy forbids everything. A
response that needs more (the Swagger UI page, see `docs.py`; the console's
pages, which also send their own Referrer-Policy) sets its own header, and this
middleware leaves that one in place.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"x-permitted-cross-domain-policies", b"none"),
    (b"strict-transport-security", b"max-age=15552000; includeSubDomains"),
)
_CSP = b"content-security-policy"


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.csp = (_CSP, API_CONTENT_SECURITY_POLICY.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                own = {name.lower() for name, _ in headers}
                if _CSP not in own:
                    headers.append(self.csp)
                headers.extend(header for header in SECURITY_HEADERS if header[0] not in own)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
