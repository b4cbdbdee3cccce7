"""Resetting database isolation's used copies in place, each on a session of its own in it."""

from __future__ import annotations

import asyncpg

from pytest_pgmig.isolation import dbreset
from pytest_pgmig.isolation.base import Slot
from pytest_pgmig.isolation.strategy import ControlSession
from pytest_pgmig.runtime import close_or_terminate


def database_of(slot: Slot) -> str:
    """The database a slot of database isolation lives in."""
    assert slot.schema.database is not None
    return slot.schema.database


class DatabaseResets:
    """Undoes a test's work in its copy for `owner` (a `DatabaseIsolation`), through the
    function its template holds (`dbreset`), on a session kept in each copy."""

    def __init__(self, owner: ControlSession) -> None:
        self.owner = owner
        self._sessions: dict[str, asyncpg.Connection] = {}

    async def run(self, slot: Slot) -> str | None:
        """The copy's new state; None when only a new copy is clean: the test changed DDL,
        or the reset failed (a warning says so).

        First what the test left running or in a transaction (and idle sessions past a
        few) is ended; if a lock still times out, every session in the database.
        """
        name = database_of(slot)
        for every in (False, True):
            try:
                conn = await self._session(name)
                state: str | None = await conn.fetchval(
                    dbreset.RESET, slot.state, every, self.owner.context.own_server
                )
                return state
            except asyncpg.LockNotAvailableError:
                continue
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                self.owner.warnings.append(
                    f"pgmig: resetting database {name} failed ({type(exc).__name__}: {exc}); "
                    "it is cloned again instead, which is slower."
                )
                return None
        return None

    async def _session(self, name: str) -> asyncpg.Connection:
        """The session that resets copy `name`, opened at its first reset."""
        conn = self._sessions.get(name)
        if conn is None or conn.is_closed():
            conn = self._sessions[name] = await self.owner.connect("reset", name)
        return conn

    async def end(self, name: str) -> None:
        """Close copy `name`'s session: the copy is dropped, kept or cloned again."""
        conn = self._sessions.pop(name, None)
        if conn is not None and not conn.is_closed():
            await close_or_terminate(conn)

    async def close(self) -> None:
        for name in list(self._sessions):
            await self.end(name)
