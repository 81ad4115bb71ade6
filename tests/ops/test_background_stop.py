"""A background loop parked on a wake-up signal stops when cancelled, even when
the signal and the cancellation arrive together (a NOTIFY during shutdown):
a stop that waits forever hangs the process's shutdown (docs/operations.md)."""

from __future__ import annotations

import asyncio

from potok_state.background import BackgroundLoop
from potok_state.wakeup import Wakeup


async def test_a_loop_stops_when_cancelled_as_it_is_woken() -> None:
    wakeup = Wakeup()

    async def follow() -> None:
        while True:
            await wakeup.wait(30)

    loop = BackgroundLoop("follower", follow)
    loop.start()
    await asyncio.sleep(0)  # parked in the wait
    wakeup.notify()
    stopping = asyncio.ensure_future(loop.stop())
    done, _ = await asyncio.wait({stopping}, timeout=2)
    assert stopping in done, "the loop kept running after it was cancelled"


async def test_a_wait_still_reports_a_wake_up_and_a_timeout() -> None:
    wakeup = Wakeup()
    assert await wakeup.wait(0.01) is False
    wakeup.notify()
    assert await wakeup.wait(30) is True
    assert wakeup.take() is False
