"""Operational events about subscriptions (docs/webhooks.md, "Operational
events"): `subscription.failing`, `subscription.disabled` and
`subscription.enabled` go on the change feed like custom events, so watch
streams and the subscribers whose `events` ask for them see them; each is also
a warning log line and a count in `potok_webhook_subscription_events_total`.

They are published after the transaction that decided them commits: a process
killed in between loses the event (the subscription's state is kept either
way and shows in `GET /webhooks/subscriptions/{id}`)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from pydantic import JsonValue, TypeAdapter

from potok_state.events.service import EventPublisher
from potok_state.metrics import Metrics

log = structlog.get_logger("potok_state.webhooks")

ACTOR = "system:webhooks"
_JSON_OBJECT: TypeAdapter[dict[str, JsonValue]] = TypeAdapter(dict[str, JsonValue])


@dataclass(frozen=True, slots=True)
class Notice:
    """An operational event about a subscription, published after the
    transaction that caused it commits."""

    event: str
    subscription_id: str
    data: dict[str, object]


class SubscriptionNotices:
    def __init__(self, publisher: EventPublisher, metrics: Metrics) -> None:
        self.publisher = publisher
        self.metrics = metrics

    async def publish(self, notice: Notice) -> None:
        log.warning(notice.event, **notice.data)
        self.metrics.subscription_events.labels(event=notice.event).inc()
        try:
            await self.publisher.publish_operational(
                notice.event, _JSON_OBJECT.validate_python(notice.data), actor=ACTOR
            )
        except Exception:
            log.exception("webhook.notice.publish_failed", event=notice.event)
