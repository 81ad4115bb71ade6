"""Signing in to the operator console from a test, as a browser does: the form
post, the cookie it sets, and the CSRF token its pages carry."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
from fastapi import FastAPI

CSRF_META = re.compile(r'<meta name="csrf-token" content="([0-9a-f]*)">')


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A console session: its cookie value and its CSRF token."""

    token: str
    csrf: str

    @property
    def cookie(self) -> dict[str, str]:
        """The session cookie as a header, for another client (a stolen copy)."""
        return {"cookie": f"potok_console={self.token}"}

    def write_headers(self, origin: str = "http://potok.test") -> dict[str, str]:
        """What the console's scripts send on a write."""
        return {"origin": origin, "x-csrf-token": self.csrf}


async def sign_in(client: httpx.AsyncClient, api_key: str) -> SignedIn:
    """Sign `client` in with `api_key`; its cookie jar then holds the session."""
    response = await client.post("/console/login", data={"apiKey": api_key})
    assert response.status_code == 303, response.text
    token = client.cookies["potok_console"]
    page = await client.get("/console")
    assert page.status_code == 200, page.text
    found = CSRF_META.search(page.text)
    assert found is not None, page.text
    assert found.group(1), page.text
    return SignedIn(token, found.group(1))


def console_client(app: FastAPI) -> httpx.AsyncClient:
    """A client of the app without `x-api-key`: only a session authenticates it."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://potok.test")
