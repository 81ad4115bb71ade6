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
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation
        # that arrives as the event is set, and the loop waiting here never stops.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()
        notified = self._event.is_set()
        self._event.clear()
        return notified

    def take(self) -> bool:
        """Whether notified since the last wait or take, without waiting (clears it)."""
        notified = self._event.is_set()
        self._event.clear()
        return notified
