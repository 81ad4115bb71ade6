"""Console sessions (docs/console.md, "Sessions").

Signing in with an API key opens a session: a random token goes to the browser
in an HttpOnly, SameSite=Strict cookie; the database keeps only the token's
SHA-256, the key's name, a check of the key's value and the expiry, so every
replica and `serve --workers N` process knows every session, and a stolen copy
of the table opens none. Each request resolves its session against the keys
configured now: a key removed from API_KEYS, or given a new value, ends the
sessions opened with it at once. The session has the key's scopes.

A request authenticated by the cookie that changes something must show it comes
from the console: its Origin (or, without one, its Referer) names this host,
and it carries the session's CSRF token (header `X-CSRF-Token`, or the form
field `csrfToken` of the console's own forms). The token is an HMAC of the
session token: nothing more to store, and unknown to anyone without the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from fastapi import Request

from potok_state.clock import utc_now
from potok_state.kit.auth import ApiKeyRing, Caller
from potok_state.kit.errors import Forbidden
from potok_state.storage.database import Database, Tx

SESSION_COOKIE = "potok_console"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrfToken"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_BYTES = 32

_INSERT = (
    "INSERT INTO console_sessions (token_hash, key_name, key_check, created_at, expires_at) "
    "VALUES ($1, $2, $3, $4, $5)"
)
_SWEEP = "DELETE FROM console_sessions WHERE expires_at <= $1"
_FIND = (
    "SELECT key_name, key_check, expires_at FROM console_sessions "
    "WHERE token_hash = $1 AND expires_at > $2"
)
_DELETE = "DELETE FROM console_sessions WHERE token_hash = $1"


class CrossSiteRequest(Forbidden):
    code = "cross_site_request"


class CsrfTokenMissing(Forbidden):
    code = "csrf_token_invalid"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    token: str
    caller: Caller
    expires_at: datetime

    @property
    def csrf_token(self) -> str:
        return csrf_token(self.token)


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"csrf", hashlib.sha256).hexdigest()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _key_check(token: str, key: bytes) -> str:
    return hmac.new(token.encode(), key, hashlib.sha256).hexdigest()


def same_site(request: Request) -> bool:
    """Does the request come from a page of this host? Its Origin says so, or,
    when a browser sends none, its Referer; neither (or `Origin: null`) is no."""
    host = request.headers.get("host", "").lower()
    origin = request.headers.get("origin")
    source = origin if origin is not None else request.headers.get("referer")
    if not host or not source or source == "null":
        return False
    return urlsplit(source).netloc.lower() == host


class ConsoleSessions:
    """Implements `kit.auth.CookieSessions` for the console's cookie."""

    def __init__(self, db: Database, keys: ApiKeyRing, *, ttl_seconds: int) -> None:
        self.db = db
        self.keys = keys
        self.ttl = timedelta(seconds=ttl_seconds)

    async def open(self, presented_key: str) -> ConsoleSession | None:
        """A new session for the key presented; None when no key matches.
        Expired sessions are swept in the same transaction."""
        caller = self.keys.caller_for(presented_key)
        if caller is None:
            return None
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = utc_now()
        expires_at = now + self.ttl
        check = _key_check(token, presented_key.encode())
        time = self.db.dialect.time

        async def insert(tx: Tx) -> None:
            await tx.execute(_SWEEP, time(now))
            await tx.execute(
                _INSERT, _token_hash(token), caller.name, check, time(now), time(expires_at)
            )

        await self.db.write(insert)
        return ConsoleSession(token, caller, expires_at)

    async def find(self, token: str) -> ConsoleSession | None:
        """The live session of this token, with its key as configured now."""
        if not token or len(token) > 256:
            return None
        now = self.db.dialect.time(utc_now())
        row = await self.db.read_point(lambda tx: tx.fetchrow(_FIND, _token_hash(token), now))
        if row is None:
            return None
        for key, caller in self.keys.named(row["key_name"]):
            if hmac.compare_digest(_key_check(token, key), row["key_check"]):
                return ConsoleSession(token, caller, self.db.dialect.read_time(row["expires_at"]))
        return None

    async def close(self, token: str) -> None:
        await self.db.write(lambda tx: tx.execute(_DELETE, _token_hash(token)))

    # -- kit.auth.CookieSessions ------------------------------------------------------

    def carried_by(self, request: Request) -> bool:
        return SESSION_COOKIE in request.cookies

    async def caller(self, request: Request) -> Caller | None:
        session = await self.find(request.cookies[SESSION_COOKIE])
        if session is None:
            return None
        if request.method not in SAFE_METHODS:
            check_console_write(request, session, request.headers.get(CSRF_HEADER))
        request.state.console_session = session
        return session.caller


def check_console_write(request: Request, session: ConsoleSession, presented: str | None) -> None:
    """Forbidden unless a cookie-authenticated write comes from this site with
    the session's CSRF token."""
    if not same_site(request):
        raise CrossSiteRequest(
            "A write authenticated by the console's cookie must come from the console "
            "(its Origin or Referer names another site, or none)."
        )
    if presented is None or not hmac.compare_digest(
        presented.encode(), session.csrf_token.encode()
    ):
        raise CsrfTokenMissing(
            f"A write authenticated by the console's cookie needs the session's CSRF token "
            f"(header {CSRF_HEADER})."
        )
