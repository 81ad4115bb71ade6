"""Request headers shared by the write endpoints: Idempotency-Key and If-Match."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request, Response

from potok_state.idempotency import Applied, IdempotencyKey
from potok_state.kit.errors import BadRequest

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Replays the first response for a repeat within IDEMPOTENCY_TTL (24 h).",
    ),
]
IfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=64,
        description='Apply only at this version: the ETag, e.g. "3".',
    ),
]


REVISION_HEADER = "X-Potok-Revision"
REPLAYED_HEADER = "Idempotent-Replayed"
"""On the answer to a retried write: the first answer, replayed."""
OutcomeT = TypeVar("OutcomeT")


def replayed_headers(applied: Applied[OutcomeT]) -> dict[str, str]:
    """The headers that tell a retried write its answer is the first one's."""
    return {REPLAYED_HEADER: "true"} if applied.replayed else {}


def answer(applied: Applied[OutcomeT], response: Response) -> OutcomeT:
    """A write's outcome for a route that returns a model, its replay marked."""
    response.headers.update(replayed_headers(applied))
    return applied.outcome


"""On a list: the revision the page was read at; watch from it to miss nothing."""


@dataclass(frozen=True, slots=True)
class WriteConditions:
    """What a write to an existing state may be conditioned on."""

    expected_version: int | None
    idempotency: IdempotencyKey | None


async def idempotency_key(
    request: Request, key: IdempotencyKeyHeader = None
) -> IdempotencyKey | None:
    if key is None:
        return None
    digest = hashlib.sha256()
    digest.update(request.method.encode())
    digest.update(b"\0" + request.url.path.encode() + b"\0")
    digest.update(await request.body())
    return IdempotencyKey(key=key, fingerprint=digest.hexdigest())


async def write_conditions(
    request: Request, if_match: IfMatchHeader = None, key: IdempotencyKeyHeader = None
) -> WriteConditions:
    """If-Match and Idempotency-Key in one dependency (one less to solve per request)."""
    return WriteConditions(expected_version(if_match), await idempotency_key(request, key))


def expected_version(if_match: str | None) -> int | None:
    """The version an If-Match header asks for (None: any). A weak tag is
    refused rather than compared: If-Match compares strongly (RFC 9110,
    13.1.1), so it could never match, and a 412 would send the client to read
    the state again only to send the same tag."""
    if if_match is None or if_match.strip() == "*":
        return None
    value = if_match.strip()
    if value.startswith("W/"):
        raise BadRequest(
            f"If-Match {value} is a weak tag, which never matches (If-Match compares strongly, "
            f"RFC 9110 13.1.1); send the ETag as the service gave it, e.g. {value[2:]}.",
            details={"ifMatch": if_match},
        )
    tag = value.strip('"')
    if not (tag.isascii() and tag.isdigit()) or len(tag) > 10:
        raise BadRequest(
            f'If-Match must be a version ETag such as "3", not {value}.',
            details={"ifMatch": if_match},
        )
    return int(tag)


Idempotency = Annotated[IdempotencyKey | None, Depends(idempotency_key)]
Conditions = Annotated[WriteConditions, Depends(write_conditions)]


def etag(version: int) -> str:
    return f'"{version}"'
