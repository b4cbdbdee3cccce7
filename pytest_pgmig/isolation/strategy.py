"""The skeleton every isolation strategy shares: its sessions, its pools of slots per
migration set, naming and registering what it makes, handing out, and dropping at the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import asyncpg

from pytest_pgmig.errors import MigrationFailed
from pytest_pgmig.isolation import registry, reset
from pytest_pgmig.isolation.base import Context, Sets, Slot, Stats
from pytest_pgmig.runtime import close_or_terminate
from pytest_pgmig.servers.dsn import with_database

# a reset that meets a lock ends the lock's holder rather than wait long for it
RESET_LOCK_TIMEOUT_MS = 1000
# a migration (or a test's left-over lock met while creating or dropping) waits no longer
LOCK_TIMEOUT_MS = 5000

# what a session of ours is for: creating, migrating and dropping; migrating a template
# database from inside it; resetting
Purpose = Literal["control", "migrate", "reset"]


@dataclass
class SetPool:
    """One migration set's slots: the clean ones and those being made clean."""

    free: list[Slot] = field(default_factory=list)
    # resets and spare creations under way, oldest first; each gives a clean slot or None
    pending: deque[asyncio.Task[Slot | None]] = field(default_factory=deque)
    failure: MigrationFailed | None = None  # an error that would recur: the set is broken
    reported: bool = False  # a test has shown the failure's full text
    # schema isolation: the seed rows and sequences a reset restores, taken from the set's
    # first schema before a test had it
    template: reset.Template | None = None

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
            raise failure if first else failure.again()
        return slot


class ControlSession:
    """What every strategy has: its context, counts and warnings, the lease it holds in the
    registry, the names it made, its pools of slots, and the control connection it creates
    and drops on. A strategy adds how it migrates (`acquire`), resets (`_reset`), prepares a
    spare (`_spare`) and drops (`_drop_mine`)."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.stats = Stats()
        # messages for the test run's warnings summary, taken by the fixtures
        self.warnings: list[str] = []
        self._conn: asyncpg.Connection | None = None
        self._server_pid = 0
        self._op: asyncio.Lock | None = None
        self._lease = 0
        self._mine: list[str] = []  # what this process made and will drop
        self._counter = 0
        self.replica = False  # the role is a superuser: resets may run in replica role
        # each set's slots, by lane (worker scope keeps a lane's slots to itself) and sets
        self._pools: dict[tuple[str, Sets], SetPool] = {}

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

    def take_ready(self, sets: Sets, lane: str) -> Slot | None:
        """A clean slot ready now, taken without the loop's thread (None: `acquire`).

        Only for the thread that calls `acquire` and `release` through the runtime, between
        those calls: they alone touch a pool's free list (background resets and spares hand
        their slots over through `pending`), so no lock is needed.
        """
        pool = self._pools.get((lane, sets))
        if pool is None or not pool.free or pool.failure is not None:
            return None
        return pool.free.pop()

    def give_back(self, slot: Slot) -> bool:
        """Take back a slot whose test's work was rolled back (its `undo` run by the
        rollback fixtures), clean as it is, without the loop's thread (as `take_ready`)."""
        if slot.undo is None:
            return False
        self.stats.rolled_back += 1
        self._pools[(slot.lane, slot.key)].free.append(slot)
        return True

    async def release(self, slot: Slot) -> None:
        """Reset a test's slot in the background (ending its sessions) for a later test.

        The reset runs on the server while pytest reports the test and sets up the next;
        the next `acquire` of the set waits for it when no other slot is clean.
        """
        self._pools[(slot.lane, slot.key)].pending.append(asyncio.create_task(self._reset(slot)))

    async def close(self) -> None:
        """Drop every schema or database this process made (kept ones stay), remove the
        registry when this is the last run on a user's database, and disconnect."""
        conn = self._conn
        if conn is None:
            return
        await self._settle()
        await self._end_sessions()
        try:
            try:
                if conn.is_closed():
                    raise asyncpg.InterfaceError("the control connection is closed")
                await self._drop_mine(conn)
            except (asyncpg.InterfaceError, asyncpg.InternalClientError):
                # Interrupted mid-statement (Ctrl-C during a migration): that session may
                # still run it and hold its locks. End it, and drop from a fresh one.
                conn.terminate()
                conn = await asyncpg.connect(self.context.admin_dsn, timeout=10)
                await conn.execute("SELECT pg_terminate_backend($1)", self._server_pid)
                await self._drop_mine(conn)
            await self.leave(conn)
        finally:
            for session in {conn, self._conn}:
                if not session.is_closed():
                    await close_or_terminate(session)

    async def open_control(self) -> asyncpg.Connection:
        """The control connection, opened."""
        self._conn = await self.connect("control")
        self._server_pid = self._conn.get_server_pid()
        return self._conn

    async def _drop_mine(self, conn: asyncpg.Connection) -> None:
        """Drop what this process made (`_mine`, maybe nothing), ending the sessions in it."""
        raise NotImplementedError

    async def _end_sessions(self) -> None:
        """Close the sessions a strategy keeps besides the control connection."""

    async def _reset(self, slot: Slot) -> Slot | None:
        """Undo a test's work: the slot, clean, or None when it was dropped."""
        raise NotImplementedError

    async def _spare(self, sets: Sets, lane: str) -> Slot | None:
        """One more clean slot for the set, made in the background; None if it failed."""
        raise NotImplementedError

    def _prepare_spare(self, pool: SetPool, sets: Sets, lane: str) -> None:
        """A second test of the set is here: from now on one slot is prepared while the
        previous one is reset (a run of one test never pays for the spare)."""
        if not pool.free and not pool.pending:
            pool.pending.append(asyncio.create_task(self._spare(sets, lane)))

    def session_settings(self, purpose: Purpose) -> dict[str, str]:
        """The server settings of a session of ours: named for what it does and who made it,
        its statements bounded; a reset gives up on a lock sooner and, where the role may,
        runs in replica role (no user or FK trigger fires while rows are removed; migrations
        must run with triggers, so never elsewhere)."""
        reset = purpose == "reset"
        settings = {
            "application_name": f"pgmig-{purpose}:{self.context.run}:{self.context.worker}"[:63],
            "lock_timeout": str(RESET_LOCK_TIMEOUT_MS if reset else LOCK_TIMEOUT_MS),
            "statement_timeout": str(int(self.context.statement_timeout * 1000)),
            "client_min_messages": "warning",
        }
        if reset and self.replica:
            settings["session_replication_role"] = "replica"
        return settings

    async def connect(self, purpose: Purpose, database: str | None = None) -> asyncpg.Connection:
        """A session of ours on the admin DSN's database (or `database`)."""
        dsn = self.context.admin_dsn
        return await asyncpg.connect(
            with_database(dsn, database) if database else dsn,
            server_settings=self.session_settings(purpose),
            timeout=10,
        )

    async def claim(self, kind: str, *, database: bool = False, template: str | None = None) -> str:
        """A new schema (or database, copied from `template`) of this process, recorded in
        the registry under its lease and counted: its name (the caller holds `op`)."""
        self._counter += 1
        context = self.context
        name = f"pgmig_{context.run}_{context.worker}_{kind}{self._counter}"
        lease, run, worker = self._lease, context.run, context.worker
        if database:
            await registry.register_database(
                self.conn, name, lease=lease, run=run, worker=worker, template=template
            )
            self.stats.databases_created += 1
        else:
            await registry.register(self.conn, name, lease=lease, run=run, worker=worker)
            self.stats.created += 1
        self._mine.append(name)
        return name

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

    async def _settle(self) -> None:
        """Before dropping: let background work finish, and whatever was interrupted on the
        control connection unwind (taking `op` for good)."""
        pending = [task for pool in self._pools.values() for task in pool.pending]
        await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.op.acquire(), timeout=LOCK_TIMEOUT_MS / 1000)
