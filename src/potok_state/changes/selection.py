"""Which events a subscriber asked for: the event patterns that webhook
subscriptions and watch streams share."""

from __future__ import annotations

from collections.abc import Collection

EVENT_FILTER_PATTERN = (
    r"^(\*|entity\.\*|entity\.(created|updated|deleted)"
    r"|custom\.\*|custom\.[a-z0-9][a-z0-9_.-]{0,99}"
    r"|machine\.(\*|updated)"
    r"|subscription\.(\*|failing|disabled|enabled))$"
)
"""`*`, `entity.*`, `entity.created|updated|deleted`, `custom.*`, one custom event,
`machine.*` or `machine.updated` (a state-machine definition changed),
`subscription.*` or one operational event."""

OPERATIONAL_PREFIX = "subscription."


def event_selected(patterns: Collection[str], event: str) -> bool:
    family = event.split(".", 1)[0] + ".*"
    if event.startswith(OPERATIONAL_PREFIX):
        # Only when asked for by name: `*` keeps meaning the entity and custom
        # events (docs/webhooks.md, "Operational events").
        return any(pattern in (family, event) for pattern in patterns)
    return any(pattern in ("*", family, event) for pattern in patterns)
