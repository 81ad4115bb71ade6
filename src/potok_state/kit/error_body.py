"""The error body of every endpoint (docs/operations.md), in a module of its own:
pydantic only, so the Python client shares it without importing the server."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class ErrorBody(BaseModel):
    """The one error shape of every endpoint."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "statusCode": 409,
                    "error": "Conflict",
                    "code": "invalid_transition",
                    "message": "task 'task_123' cannot go from 'completed' to 'in_progress'.",
                    "details": {
                        "entity": "task",
                        "entityId": "task_123",
                        "currentStatus": "completed",
                        "requestedStatus": "in_progress",
                        "allowed": [],
                    },
                    "requestId": "050c7110c09a4564956a46f0130a1d95",
                }
            ]
        }
    )

    statusCode: int = Field(description="The HTTP status.")
    error: str = Field(description="The status's reason phrase.")
    code: str = Field(
        description="Machine-readable error code (invalid_transition, version_mismatch, …)."
    )
    message: str = Field(description="What went wrong, for people.")
    details: dict[str, JsonValue] = Field(
        {},
        description="Facts about the error, by code (allowed next statuses, the current "
        "version, …).",
    )
    requestId: str | None = Field(None, description="The request's X-Request-Id, also in the logs.")
