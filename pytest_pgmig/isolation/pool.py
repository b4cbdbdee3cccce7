"""What every isolation strategy keeps per migration set, and its one control session."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

from pytest_pgmig.errors import MigrationFailed
from pytest_pgmig.isolation import registry
from pytest_pgmig.isolation.base import Context, Slot, Stats

# a reset that meets a lock ends the lock's holder rather than wait long for it
RESET_LOCK_TIMEOUT_MS = 1000


@dataclass
class SetPool:
    """One migration set's slots: the clean ones and those being made clean."""

    free: list[Slot] = field(default_factory=list)
    # resets and spare creations under way, oldest first; each gives a clean slot or None
    pending: deque[asyncio.Task[Slot | None]] = field(default_factory=deque)
    failure: MigrationFailed | None = None  # an error that would recur: the set is broken
    reported: bool = False  # a test has shown the failure's full text

    async def take(self) -> Slot | None:
        """A clean slot, waiting for one being made; None when there is none to wait for.

        A set broken while a slot was reset or prepared raises its failure: the first test
        to hear of it gets the whole message, later ones the brief one.
        """
        slot: Slot | None = None
        while slot is None and (self.free or self.pending) and self.failure is None:
            slot = self.free.pop() if self.free else await self.pending.popleft()
        if self.failure is not None:
            failure, first = self.failure, not self.reported
            self.reported = True
            raise failure if first else MigrationFailed(failure.brief, failure.brief)
        return slot


class ControlSession:
    """What every strategy has: its context, counts and warnings, the lease it holds in the
    registry, the names it made, and the one connection it creates and drops on."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.stats = Stats()
        # messages for the test run's warnings summary, taken by the fixtures
        self.warnings: list[str] = []
        self._conn: asyncpg.Connection | None = None
        self._op: asyncio.Lock | None = None
        self._lease = 0
        self._mine: list[str] = []  # what this process made and will drop
        self._counter = 0
        self._replica = False  # the role is a superuser: resets may run in replica role

    @property
    def op(self) -> asyncio.Lock:
        """Serialises work on the control connection (asyncpg runs one query at a time)."""
        if self._op is None:
            self._op = asyncio.Lock()
        return self._op

    @property
    def conn(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            raise ConnectionError("pytest-pgmig's control connection to the server is closed")
        return self._conn

    def reset_settings(self) -> dict[str, str]:
        """The server settings of a session that resets: replica role where the role may
        (no user or FK trigger fires while rows are removed; migrations must run with
        triggers, so never on the control session), and a short lock timeout."""
        settings = {
            "application_name": f"pgmig-reset:{self.context.run}:{self.context.worker}"[:63],
            "lock_timeout": str(RESET_LOCK_TIMEOUT_MS),
            "statement_timeout": str(int(self.context.statement_timeout * 1000)),
            "client_min_messages": "warning",
        }
        if self._replica:
            settings["session_replication_role"] = "replica"
        return settings

    async def leave(self, conn: asyncpg.Connection) -> None:
        """On a user's server, the last run on its database removes the registry and the
        extensions runs installed (`registry.leave`), unless told to keep them."""
        if not self.context.leave_registry or conn.is_closed():
            return
        removed = await registry.leave(conn)
        if removed:
            self.stats.notes.append(
                "registry: the last run on this database removed " + ", ".join(removed)
            )

    async def settle(self, pools: Iterable[SetPool], *, timeout: float) -> None:
        """Before dropping: let background work finish, and whatever was interrupted on the
        control connection unwind (taking `op` for good)."""
        pending = [task for pool in pools for task in pool.pending]
        await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.op.acquire(), timeout=timeout)
