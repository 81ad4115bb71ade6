"""A level-triggered wake-up signal between producers and a waiting loop."""

from __future__ import annotations

import asyncio
import contextlib


class Wakeup:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        """Wait until notified or `seconds` pass; True when notified. Clears the
        signal, so notifications that arrive while the waiter works are not lost
        (they leave it set for the next wait)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        notified = self._event.is_set()
        self._event.clear()
        return notified

    def take(self) -> bool:
        """Whether notified since the last wait or take, without waiting (clears it)."""
        notified = self._event.is_set()
        self._event.clear()
        return notified
