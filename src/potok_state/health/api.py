from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from potok_state.health.service import Check, HealthService
from potok_state.stream.publisher import StreamState

router = APIRouter(tags=["health"])


class DependencyHealth(BaseModel):
    status: Literal["up", "down"] = Field(
        description="up, or down (the check failed or timed out)."
    )
    latencyMs: float = Field(description="How long the check took, ms.")
    error: str | None = Field(None, description="Why it is down; absent while up.")
    backlog: int | None = Field(
        None, description="externalDb only: accepted changes not yet in the Admin Service."
    )
    oldestUnsyncedSeconds: float | None = Field(
        None, description="externalDb only: age of the oldest of them (null: none)."
    )
    syncError: str | None = Field(
        None, description="externalDb only: why the last write to the Admin Service failed."
    )


class StreamHealth(BaseModel):
    """The event stream in NATS JetStream (docs/stream.md)."""

    status: Literal["ok", "degraded", "disabled"] = Field(
        description='"disabled" while NATS_URL is empty; "degraded" while events wait to be '
        "published for long (NATS unreachable, no publisher) or publishing fails."
    )
    stream: str | None = Field(None, description="The JetStream stream (NATS_STREAM).")
    revision: int | None = Field(None, description="Every event up to it is in the stream.")
    backlog: int | None = Field(None, description="Revisions not yet in the stream.")
    lagSeconds: float | None = Field(
        None, description="Age of the oldest event not yet in the stream (0: none)."
    )
    publisher: str | None = Field(
        None, description="The process publishing (host:pid:id); null: none holds the lease."
    )
    error: str | None = Field(
        None, description="Why publishing failed last, when this process is the publisher."
    )


class Health(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "version": "0.1.0",
                    "uptimeSeconds": 86400.125,
                    "checks": {
                        "storage": {"status": "up", "latencyMs": 0.31},
                        "redisLocal": {"status": "up", "latencyMs": 0.18},
                        "redisGlobal": {"status": "up", "latencyMs": 0.42},
                    },
                    "stream": {
                        "status": "ok",
                        "stream": "POTOK",
                        "revision": 1842,
                        "backlog": 0,
                        "lagSeconds": 0.0,
                        "publisher": "api-7f3a:1:5c0e2b1d",
                    },
                }
            ]
        }
    )

    status: Literal["ok", "degraded", "down"] = Field(
        description="ok; degraded while a cache tier or the Admin Service is down; down while "
        "storage is."
    )
    version: str = Field(description="The service's version.")
    uptimeSeconds: float = Field(description="Seconds since this process started.")
    checks: dict[str, DependencyHealth] = Field(
        description="Each configured dependency: storage, redisLocal, redisGlobal, externalDb."
    )
    stream: StreamHealth = Field(
        default_factory=lambda: StreamHealth(status="disabled"),
        description="The event stream in NATS JetStream; never makes the service unready.",
    )


class Liveness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = Field(description="Always ok: the process answers.")


class Readiness(BaseModel):
    """Each dependency as checked now; "disabled" when it is not configured
    (nothing is reported up that was not checked)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"ready": True, "storage": True, "redis": True, "externalDb": "disabled"}]
        }
    )

    ready: bool = Field(description="Whether this process should get traffic: its storage answers.")
    storage: bool = Field(description="The database answers.")
    redis: bool | Literal["disabled"] = Field(
        description='Every configured cache tier answers; "disabled" when none is configured.'
    )
    externalDb: bool | Literal["disabled"] = Field(
        description='The Admin Service answers its health check; "disabled" while states are '
        "stored in SQL (STORAGE_BACKEND=sql)."
    )


async def health_service(request: Request) -> HealthService:
    service: HealthService = request.app.state.health_service
    return service


Service = Annotated[HealthService, Depends(health_service)]


@router.get(
    "/health",
    response_model=Health,
    summary="Every dependency, with latency",
    response_description="Storage is up (status ok or degraded)",
    # A check shows only what means something for it (no error while up, the
    # backlog only for externalDb).
    response_model_exclude_unset=True,
    responses={
        503: {
            "model": Health,
            "description": "Down: storage, or the Admin Service with the backlog full",
        }
    },
)
async def health(service: Service, response: Response) -> Health:
    """Every configured dependency with its state and latency; `status` is `ok`, `degraded` (a
    cache tier or the Admin Service down) or `down` (storage down, or the Admin Service down
    with its backlog full: 503). With the external backend, `externalDb` also shows the backlog
    and the age of the oldest change not yet in the Admin Service. `stream` shows the event
    stream in NATS JetStream: `disabled`, `ok`, or `degraded` (events waiting) with its backlog."""
    storage = await service.check_storage()
    caches = await service.check_cache()
    external = await service.check_external()
    stream = await service.check_stream()
    checks = {check.name: _dependency(check) for check in (storage, *caches)}
    if external is not None:
        checks["externalDb"] = _dependency(
            external.check,
            backlog=external.status.backlog,
            oldestUnsyncedSeconds=external.status.oldest_unsynced_seconds,
            syncError=external.status.last_error,
        )
    down = not storage.up or (external is not None and external.blocks_writes)
    if down:
        response.status_code = 503
    overall: Literal["ok", "degraded", "down"] = "ok"
    if down:
        overall = "down"
    elif (
        not all(check.up for check in caches)
        or (external is not None and not external.check.up)
        or (stream is not None and stream.state is StreamState.DEGRADED)
    ):
        overall = "degraded"
    return Health(
        status=overall,
        version=service.version,
        uptimeSeconds=service.uptime_seconds(),
        checks=checks,
        stream=StreamHealth(status="disabled")
        if stream is None
        else StreamHealth(
            status=stream.state.value,
            stream=stream.stream,
            revision=stream.revision,
            backlog=stream.backlog,
            lagSeconds=stream.lag_seconds,
            publisher=stream.publisher,
            error=stream.error,
        ),
    )


def _dependency(check: Check, **external: object) -> DependencyHealth:
    shown: dict[str, object] = {"status": "up" if check.up else "down"}
    shown["latencyMs"] = check.latency_ms
    if check.error is not None:
        shown["error"] = check.error
    return DependencyHealth.model_validate({**shown, **external})


@router.get(
    "/health/liveness",
    response_model=Liveness,
    summary="The process is up",
    response_description="The process answers",
)
async def liveness() -> Liveness:
    """The process answers. For container liveness probes."""
    return Liveness(status="ok")


@router.get(
    "/health/readiness",
    response_model=Readiness,
    summary="Ready to serve (503 when not)",
    response_description="Ready",
    responses={503: {"model": Readiness, "description": "Not ready"}},
)
async def readiness(service: Service, response: Response) -> Readiness:
    """Ready when the database answers, and, with the external backend, unless the Admin
    Service is down while the backlog of changes waiting for it is full (503 otherwise). Redis
    and the Admin Service are reported as checked (`"disabled"` when not configured). Point
    load balancers here."""
    storage = await service.check_storage()
    tiers = await service.check_cache()
    external = await service.check_external()
    redis: bool | Literal["disabled"] = all(t.up for t in tiers) if tiers else "disabled"
    # A cache tier being down is "degraded", never "not ready"; the Admin Service
    # being down makes the service unready only once writes are refused
    # (docs/operations.md).
    ready = storage.up and not (external is not None and external.blocks_writes)
    if not ready:
        response.status_code = 503
    return Readiness(
        ready=ready,
        storage=storage.up,
        redis=redis,
        externalDb="disabled" if external is None else external.check.up,
    )
