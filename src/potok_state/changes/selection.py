"""Which events a subscriber asked for: the event patterns that webhook
subscriptions and watch streams share."""

from __future__ import annotations

from collections.abc import Collection

EVENT_FILTER_PATTERN = (
    r"^(\*|entity\.\*|entity\.(created|updated|deleted)"
    r"|custom\.\*|custom\.[a-z0-9][a-z0-9_.-]{0,99})$"
)
"""`*`, `entity.*`, `entity.created|updated|deleted`, `custom.*` or one custom event."""


def event_selected(patterns: Collection[str], event: str) -> bool:
    family = event.split(".", 1)[0] + ".*"
    return any(pattern in ("*", family, event) for pattern in patterns)
