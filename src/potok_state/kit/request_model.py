"""The base of every request body's model (no server imports: the Python client
validates what it sends with the same models)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestModel(BaseModel):
    """The base of every request body: unknown fields are refused, and JSON
    types are taken as sent (pydantic's strict mode): a string is never read
    as a number or a boolean, a number never as a string, a boolean never as
    an integer. The decoded body is validated in Python mode, where strict
    mode refuses a string for a `datetime`: times in bodies are `BodyTime`
    (clock.py), which reads them as strict JSON validation does."""

    model_config = ConfigDict(extra="forbid", strict=True)
