"""The commit feed: one per process, it hears of every committed change and
tells whoever listens (docs/architecture.md, "Hearing of commits").

* Commits of this process are announced directly by the store (`local`).
* On PostgreSQL, one LISTEN connection hears the NOTIFY that every change
  statement sends (`potok_outbox`, payload: its last revision), that
  webhook scheduling sends (`potok_deliveries`) and that a change of a
  state-machine definition sends (`potok_machines`). The feed then reads the
  outbox after the last revision it has followed and hands the new events to
  its followers (the near cache raises its floors with them). Until the
  connection is up and the feed has caught up, followers are told they are
  blind (`on_blind`) and may trust nothing they cached.
* On SQLite every process of the host shares the revision floors, so nothing
  needs to be followed for the caches.

Wakeups come from here too: every `outbox_wakeup()` (the webhook dispatcher,
the watch hub) is notified when events were committed anywhere this process
can hear of, `deliveries_ready` when deliveries became due, `machines_changed`
when a state-machine definition changed in another process (and whenever the
connection is made again, as something may have been missed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import asyncpg
import structlog

from potok_state.changes.model import EventRecord
from potok_state.storage.database import SESSION_SETTINGS
from potok_state.wakeup import Wakeup

log = structlog.get_logger(__name__)

OUTBOX_CHANNEL = "potok_outbox"
DELIVERIES_CHANNEL = "potok_deliveries"
MACHINES_CHANNEL = "potok_machines"
RECONNECT_SECONDS = 1.0
FOLLOW_BATCH = 1000


class Follower(Protocol):
    def on_events(self, events: Sequence[EventRecord]) -> None:
        """Events committed by any process, in revision order."""

    def on_blind(self) -> None:
        """Commits of other processes may go unheard from now on."""

    def on_sighted(self) -> None:
        """Every commit is heard again (the feed has caught up)."""


ReadEvents = Callable[[int, int], Awaitable[list[EventRecord]]]
"""Events after a revision, at most so many (the store's change feed)."""
HeadRevision = Callable[[], Awaitable[int]]


class CommitFeed:
    def __init__(self, *, postgres_dsn: str | None = None) -> None:
        self.postgres_dsn = postgres_dsn
        self._outbox_wakeups: list[Wakeup] = []
        self.deliveries_ready = Wakeup()
        self.machines_changed = Wakeup()
        self._followers: list[Follower] = []
        self._read_events: ReadEvents | None = None
        self._head_revision: HeadRevision | None = None
        self._task: asyncio.Task[None] | None = None
        self._heard = asyncio.Event()
        self._followed = 0
        self.sighted = postgres_dsn is None

    @property
    def follows_others(self) -> bool:
        """Whether other processes' commits reach this one through the feed."""
        return self.postgres_dsn is not None

    def follow(
        self,
        follower: Follower,
        read_events: ReadEvents,
        head_revision: HeadRevision,
    ) -> None:
        self._followers.append(follower)
        self._read_events = read_events
        self._head_revision = head_revision
        if not self.sighted:
            follower.on_blind()

    def outbox_wakeup(self) -> Wakeup:
        """A wakeup of its own, notified whenever events were committed."""
        wakeup = Wakeup()
        self._outbox_wakeups.append(wakeup)
        return wakeup

    def local(self) -> None:
        """A change committed in this process."""
        self._outbox_committed()

    def _outbox_committed(self) -> None:
        for wakeup in self._outbox_wakeups:
            wakeup.notify()

    async def start(self) -> None:
        if self.postgres_dsn is not None and self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="commit-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # -- PostgreSQL ---------------------------------------------------------------

    async def _listen_forever(self) -> None:
        assert self.postgres_dsn is not None
        while True:
            try:
                connection = await asyncpg.connect(
                    self.postgres_dsn, server_settings=SESSION_SETTINGS
                )
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("commits.listen_failed", error=type(exc).__name__)
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            lost = asyncio.Event()
            try:
                connection.add_termination_listener(lambda *_, lost=lost: lost.set())
                await connection.add_listener(OUTBOX_CHANNEL, self._on_outbox)
                await connection.add_listener(DELIVERIES_CHANNEL, self._on_deliveries)
                await connection.add_listener(MACHINES_CHANNEL, self._on_machines)
                # Anything committed before LISTEN took effect is picked up now.
                self._outbox_committed()
                self.deliveries_ready.notify()
                self.machines_changed.notify()
                if self._followers:
                    await self._catch_up()
                await self._follow_until(lost)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("commits.listen_lost", error=type(exc).__name__)
            finally:
                self._blind()
                with contextlib.suppress(Exception):
                    await connection.close()
            await asyncio.sleep(RECONNECT_SECONDS)

    def _on_outbox(self, *_: object) -> None:
        self._outbox_committed()
        self._heard.set()

    def _on_deliveries(self, *_: object) -> None:
        self.deliveries_ready.notify()

    def _on_machines(self, *_: object) -> None:
        self.machines_changed.notify()

    async def _catch_up(self) -> None:
        """Forget what may have been missed, then follow from the head."""
        assert self._head_revision is not None
        self._followed = await self._head_revision()
        self.sighted = True
        for follower in self._followers:
            follower.on_sighted()
        log.info("commits.following", revision=self._followed)

    async def _follow_until(self, lost: asyncio.Event) -> None:
        lost_wait = asyncio.ensure_future(lost.wait())
        heard = asyncio.ensure_future(self._heard.wait())
        try:
            while not lost.is_set():
                await asyncio.wait({heard, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
                if lost.is_set():
                    return
                self._heard.clear()
                heard = asyncio.ensure_future(self._heard.wait())
                if self._followers:
                    await self._read_new()
        finally:
            lost_wait.cancel()
            heard.cancel()

    async def _read_new(self) -> None:
        assert self._read_events is not None
        while True:
            events = await self._read_events(self._followed, FOLLOW_BATCH)
            if not events:
                return
            self._followed = events[-1].revision
            for follower in self._followers:
                follower.on_events(events)
            if len(events) < FOLLOW_BATCH:
                return

    def _blind(self) -> None:
        if self.sighted and self.postgres_dsn is not None:
            self.sighted = False
            for follower in self._followers:
                follower.on_blind()
