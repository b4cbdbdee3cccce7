"""The rollback fixtures: the test's work in one transaction, rolled back; nothing to reset.

`pgmig_psycopg_tx` (psycopg 3) and `pgmig_tx` (asyncpg) open a transaction in the test's
schema and roll it back at teardown. A test that asks for nothing else cannot have written
through another session, so its schema goes back without a reset (its sequences, which do
not roll back, are set back off the test's path). Whatever ends the transaction early (a raw
``COMMIT``, a closed connection, an error left unhandled) or hands the schema's DSN out
(`pgmig_schema` and everything built on it) falls back to the reset: never a dirty schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_pgmig.isolation.base import PgmigSchema, Slot
from pytest_pgmig.plugin.connections import (
    DEALLOCATE_SQL,
    keep_connection,
    kept_of,
    require_psycopg,
)
from pytest_pgmig.plugin.fixtures import CONNECT_TIMEOUT, loop_runner, loop_scope_of
from pytest_pgmig.plugin.state import KEPT, ROLLED_BACK, SLOT
from pytest_pgmig.runtime import close_or_terminate

# The fixture's savepoint marks its transaction: if it is still there at teardown, nothing
# the test did was committed (a COMMIT ends the transaction and every savepoint with it), and
# rolling back to it works even in a transaction an error aborted.
_BEGIN = "BEGIN; SAVEPOINT pgmig_test"
_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT pgmig_test; "
# what outlives a rollback: session advisory locks, and SQL PREPAREd statements (rare: only
# then a second round trip drops them, not psycopg's or asyncpg's own)
_AFTER = (
    "SELECT pg_advisory_unlock_all(), (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)"
)


def _undo(request: pytest.FixtureRequest) -> str | None:
    """What the slot needs after the ROLLBACK (its sequences set back); None: a reset."""
    slot: Slot = request.node.stash[SLOT]
    return slot.undo


def _done(request: pytest.FixtureRequest, clean: bool) -> None:
    """Say whether this fixture's transaction held the test's work to the end."""
    if clean:
        request.node.stash.setdefault(ROLLED_BACK, True)
    else:
        request.node.stash[ROLLED_BACK] = False


@pytest.fixture
def pgmig_psycopg_tx(request: pytest.FixtureRequest, _pgmig_place: PgmigSchema) -> Iterator[Any]:
    """A psycopg 3 connection into the test's schema, inside a transaction rolled back at
    teardown: the fastest isolation there is.

    The test's ``commit()`` and ``rollback()`` (and ``with conn.transaction():`` blocks) work
    on savepoints inside it, as Django's nested atomic blocks do, so the test reads its own
    writes. Nothing the test does is seen by another connection: for code under test that
    connects itself, use `pgmig_dsn` (then the schema is reset after the test).

    Example::

        def test_insert(pgmig_psycopg_tx):
            pgmig_psycopg_tx.execute("INSERT INTO users (name) VALUES ('ada')")
            pgmig_psycopg_tx.commit()  # a savepoint: rolled back with the rest
            assert pgmig_psycopg_tx.execute("SELECT count(*) FROM users").fetchone() == (1,)
    """
    psycopg = require_psycopg("pgmig_psycopg_tx")
    kept = kept_of(request.config).psycopg
    key = _pgmig_place.dsn + "#tx"
    conn = kept.pop(key, None)
    try:
        if conn is None or conn.closed or conn.broken:
            raise psycopg.OperationalError("no kept connection")
        conn.execute(_BEGIN)
    except psycopg.OperationalError:
        # a kept connection a reset ended meanwhile (it ends idle sessions past a few)
        if conn is not None:
            conn.close()
        conn = _savepoint_connection(psycopg).connect(_pgmig_place.dsn, autocommit=True)
        conn.execute(_BEGIN)
    yield conn
    clean = _end_psycopg(conn, _undo(request), keep_work=KEPT in request.node.stash)
    _done(request, clean)
    if not conn.closed and not conn.broken:
        keep_connection(kept, key, conn, lambda old: old.close())


def _end_psycopg(conn: Any, undo: str | None, *, keep_work: bool) -> bool:
    """Roll the test's transaction back (commit it under --pgmig-keep) and run `undo`, in
    one round trip; whether nothing the test did stays."""
    import psycopg
    from psycopg import pq

    if conn.closed or conn.broken:
        return False  # the server rolled back what was open, but the test may have committed
    idle = conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
    try:
        if keep_work:
            conn.execute("RELEASE SAVEPOINT pgmig_test; COMMIT")
            return False
        if idle:
            raise psycopg.errors.InvalidSavepointSpecification("the transaction ended")
        # the sequences are set back inside the transaction: it knows which it moved
        cursor = conn.execute(_TO_SAVEPOINT + (undo or "") + "ROLLBACK; " + _AFTER)
        while cursor.nextset():  # to the last statement's result: _AFTER's
            pass
        prepared = cursor.fetchone()[1]
    except psycopg.errors.InvalidSavepointSpecification:
        # the fixture's transaction ended in the test (a COMMIT): the schema is reset
        conn.execute("ROLLBACK; " + _AFTER)
        return False
    except psycopg.Error:
        conn.close()
        return False
    if prepared:
        conn.execute(DEALLOCATE_SQL)
    return undo is not None


@functools.cache
def _savepoint_connection(psycopg: Any) -> Any:
    """psycopg's Connection, whose commit and rollback work on the fixture's savepoint."""

    class SavepointConnection(psycopg.Connection):  # type: ignore[misc]
        """commit(): keep what the test did so far (``RELEASE`` and a new ``SAVEPOINT``);
        rollback(): undo it since then (``ROLLBACK TO SAVEPOINT``); an outermost
        ``with conn.transaction():`` block commits so when it ends without an error, as
        psycopg's does outside a transaction."""

        blocks = 0

        def commit(self) -> None:
            self.execute("RELEASE SAVEPOINT pgmig_test; SAVEPOINT pgmig_test")

        def rollback(self) -> None:
            self.execute("ROLLBACK TO SAVEPOINT pgmig_test")

        @contextlib.contextmanager
        def transaction(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            self.blocks += 1
            try:
                with super().transaction(*args, **kwargs) as tx:
                    yield tx
            finally:
                self.blocks -= 1
            if not self.blocks:
                self.commit()

    return SavepointConnection


@pytest.fixture
def pgmig_tx(request: pytest.FixtureRequest, _pgmig_place: PgmigSchema) -> Iterator[Any]:
    """An asyncpg connection into the test's schema, on the test's loop (whatever its
    scope), inside a transaction rolled back at teardown.

    The test's ``conn.transaction()`` blocks are savepoints inside it. As with
    `pgmig_psycopg_tx`, nothing it does is seen by another connection.

    Example::

        async def test_insert(pgmig_tx):
            async with pgmig_tx.transaction():  # a savepoint
                await pgmig_tx.execute("INSERT INTO users (name) VALUES ('ada')")
            assert await pgmig_tx.fetchval("SELECT count(*) FROM users") == 1
    """
    import asyncpg

    from pytest_pgmig.plugin.connections import give_back_asyncpg, take_asyncpg

    runner = loop_runner(request, "pgmig_tx")
    kept = kept_of(request.config).asyncpg if loop_scope_of(request) != "function" else None
    dsn = _pgmig_place.dsn
    undo = _undo(request)

    async def open_() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        conn = await take_asyncpg(kept, loop, dsn) if kept is not None else None
        if conn is None:
            conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
        outer = conn.transaction()
        await outer.start()
        await conn.execute("SAVEPOINT pgmig_test")
        return conn, outer

    async def close(conn: Any, outer: Any) -> bool:
        if conn.is_closed():
            return False
        clean = False
        try:
            if KEPT in request.node.stash:
                await outer.commit()  # --pgmig-keep: what it wrote stays, for inspection
            else:
                try:
                    # the sequences are set back inside the transaction: it knows which
                    await conn.execute(_TO_SAVEPOINT + (undo or ""))
                    clean = undo is not None
                except (
                    asyncpg.InvalidSavepointSpecificationError,
                    asyncpg.NoActiveSQLTransactionError,
                ):
                    pass  # the transaction ended in the test (a COMMIT): the schema is reset
                await outer.rollback()
            if (await conn.fetchrow(_AFTER))[1]:
                await conn.execute(DEALLOCATE_SQL)
        except Exception:
            conn.terminate()
            return False
        loop = asyncio.get_running_loop()
        if kept is None or not await give_back_asyncpg(kept, loop, dsn, conn):
            await close_or_terminate(conn)
        return clean

    conn, outer = runner.run(open_())
    try:
        yield conn
    finally:
        _done(request, runner.run(close(conn, outer)))
