"""Request headers shared by the write endpoints: Idempotency-Key and If-Match."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, Header, Request

from potok_state.changes.pipeline import IdempotencyKey
from potok_state.kit.errors import BadRequest


async def idempotency_key(
    request: Request,
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Replays the first response for a repeat within 24 h.",
        ),
    ] = None,
) -> IdempotencyKey | None:
    if key is None:
        return None
    digest = hashlib.sha256()
    digest.update(request.method.encode())
    digest.update(b"\0" + request.url.path.encode() + b"\0")
    digest.update(await request.body())
    return IdempotencyKey(key=key, fingerprint=digest.hexdigest())


async def expected_version(
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            max_length=64,
            description='Apply only at this version: the ETag, e.g. "3".',
        ),
    ] = None,
) -> int | None:
    if if_match is None or if_match.strip() == "*":
        return None
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isdigit() or len(tag) > 10:
        raise BadRequest(
            'If-Match must be a version ETag such as "3".', details={"ifMatch": if_match}
        )
    return int(tag)


Idempotency = Annotated[IdempotencyKey | None, Depends(idempotency_key)]
ExpectedVersion = Annotated[int | None, Depends(expected_version)]


def etag(version: int) -> str:
    return f'"{version}"'
