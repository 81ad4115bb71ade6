"""A Python client for the Potok State Service (docs/client.md).

`AsyncPotokClient` and `PotokClient` call the HTTP API with the service's own wire
models, raise its error body as typed exceptions, and retry only what is safe to
send again. This package needs only httpx and pydantic (and the service's pure
model modules): importing it loads no FastAPI, SQL or Redis code.
"""

from potok_state.client.aio import AsyncPotokClient
from potok_state.client.calls import NO_RETRIES, RetryPolicy
from potok_state.client.errors import (
    ApiError,
    BadRequest,
    BatchRejected,
    Conflict,
    Forbidden,
    InvalidTransition,
    NoLease,
    NotFound,
    PayloadTooLarge,
    PotokError,
    PreconditionFailed,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    VersionMismatch,
    WriteContention,
)
from potok_state.client.models import BatchItem, QueryPage
from potok_state.client.sync import PotokClient
from potok_state.client.watching import WatchReset
from potok_state.kit.error_body import ErrorBody

__all__ = [
    "NO_RETRIES",
    "ApiError",
    "AsyncPotokClient",
    "BadRequest",
    "BatchItem",
    "BatchRejected",
    "Conflict",
    "ErrorBody",
    "Forbidden",
    "InvalidTransition",
    "NoLease",
    "NotFound",
    "PayloadTooLarge",
    "PotokClient",
    "PotokError",
    "PreconditionFailed",
    "QueryPage",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "VersionMismatch",
    "WatchReset",
    "WriteContention",
]
