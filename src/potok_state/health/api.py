from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from potok_state.health.service import HealthService

router = APIRouter(tags=["health"])


class DependencyHealth(BaseModel):
    status: Literal["up", "down"]
    latencyMs: float
    error: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded", "down"]
    version: str
    uptimeSeconds: float
    checks: dict[str, DependencyHealth]


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """Each dependency as checked now; "disabled" when it is not configured
    (nothing is reported up that was not checked)."""

    ready: bool
    storage: bool
    redis: bool | Literal["disabled"]
    externalDb: bool | Literal["disabled"] = Field(
        description='"disabled" while states are stored in SQL (STORAGE_BACKEND=sql).'
    )


async def health_service(request: Request) -> HealthService:
    service: HealthService = request.app.state.health_service
    return service


Service = Annotated[HealthService, Depends(health_service)]


@router.get("/health", response_model=Health, summary="Every dependency, with latency")
async def health(service: Service, response: Response) -> Health:
    """Every configured dependency with its state and latency; `status` is `ok`, `degraded` (a
    cache tier down) or `down` (storage down, 503)."""
    storage = await service.check_storage()
    caches = await service.check_cache()
    checks = {
        check.name: DependencyHealth(
            status="up" if check.up else "down", latencyMs=check.latency_ms, error=check.error
        )
        for check in (storage, *caches)
    }
    if not storage.up:
        response.status_code = 503
    overall: Literal["ok", "degraded", "down"] = "ok"
    if not storage.up:
        overall = "down"
    elif not all(check.up for check in caches):
        overall = "degraded"
    return Health(
        status=overall,
        version=service.version,
        uptimeSeconds=service.uptime_seconds(),
        checks=checks,
    )


@router.get("/health/liveness", response_model=Liveness, summary="The process is up")
async def liveness() -> Liveness:
    """The process answers. For container liveness probes."""
    return Liveness(status="ok")


@router.get(
    "/health/readiness",
    response_model=Readiness,
    summary="Ready to serve (503 when not)",
    responses={503: {"model": Readiness, "description": "Not ready"}},
)
async def readiness(service: Service, response: Response) -> Readiness:
    """Ready when the database answers (503 otherwise); Redis and the external database are
    reported as checked (`"disabled"` when not configured) and do not affect readiness. Point
    load balancers here."""
    storage = await service.check_storage()
    tiers = await service.check_cache()
    redis: bool | Literal["disabled"] = all(t.up for t in tiers) if tiers else "disabled"
    if not storage.up:
        response.status_code = 503
    # A cache tier being down is "degraded", never "not ready" (docs/operations.md).
    return Readiness(ready=storage.up, storage=storage.up, redis=redis, externalDb="disabled")
