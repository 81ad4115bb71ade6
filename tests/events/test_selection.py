"""The event patterns webhook subscriptions and watch streams share."""

from __future__ import annotations

import re

import pytest

from potok_state.changes.selection import EVENT_FILTER_PATTERN, event_selected


@pytest.mark.parametrize(
    ("patterns", "event", "selected"),
    [
        (["*"], "entity.updated", True),
        (["*"], "custom.deploy", True),
        (["*"], "subscription.failing", False),  # operational events only by name
        (["subscription.*"], "subscription.disabled", True),
        (["subscription.failing"], "subscription.failing", True),
        (["subscription.failing"], "subscription.enabled", False),
        (["entity.*"], "entity.deleted", True),
        (["entity.*"], "custom.deploy", False),
        (["custom.*", "entity.created"], "entity.updated", False),
    ],
)
def test_patterns_select_events(patterns: list[str], event: str, selected: bool) -> None:
    assert event_selected(patterns, event) is selected


@pytest.mark.parametrize(
    "pattern",
    ["*", "entity.*", "entity.updated", "custom.*", "custom.deploy", "subscription.*"],
)
def test_every_documented_pattern_is_accepted(pattern: str) -> None:
    assert re.match(EVENT_FILTER_PATTERN, pattern)


@pytest.mark.parametrize("pattern", ["subscription.other", "entity.moved", "other.*", ""])
def test_unknown_patterns_are_refused(pattern: str) -> None:
    assert not re.match(EVENT_FILTER_PATTERN, pattern)
