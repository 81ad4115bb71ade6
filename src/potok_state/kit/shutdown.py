"""Hearing that the server was asked to stop, before it waits for open connections.

uvicorn, on SIGTERM or SIGINT, stops accepting, waits for every open response to
finish (up to its grace period) and only then runs the lifespan shutdown. Streams
that never finish on their own (watch) must end at the signal instead, or every
stop waits out the whole grace period.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType

EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def on_exit_signal(callback: Callable[[], None]) -> None:
    """Call `callback` on the running loop when an exit signal arrives, then let the
    handler that was installed (the server's) run as before. Outside the main
    thread (a server in a test thread) signals cannot be heard: nothing happens."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for signum in EXIT_SIGNALS:
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def chained(
            received: int,
            frame: FrameType | None,
            previous: Callable[[int, FrameType | None], object] = previous,
        ) -> None:
            loop.call_soon_threadsafe(callback)
            previous(received, frame)

        signal.signal(signum, chained)
