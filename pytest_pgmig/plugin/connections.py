"""Connections kept across tests (psycopg's, and asyncpg's on a loop that outlives the test):
handed to the next test of a schema, both clean."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_pgmig.isolation.base import PgmigSchema

# kept connections per process: a test-scope lane alternates between two schemas, and a
# schema replaced after DDL leaves one behind that is never asked for again
KEEP_AT_MOST = 4

# What `DISCARD ALL` does but for psycopg's own prepared statements (made through the
# protocol, not SQL PREPARE): psycopg keeps track of those, and misses that a DISCARD ALL
# dropped them when it runs the same DISCARD ALL again. They stay, prepared for the next test.
# asyncpg's Connection.reset() closes cursors, unlistens and unlocks itself: it needs only
# `_RESET_MORE` (RESET ALL again after SET SESSION AUTHORIZATION, in the same round trip).
# SQL PREPAREd statements, not the drivers' own (made through the protocol)
DEALLOCATE_SQL = """
DO $pgmig$
DECLARE
    statement text;
BEGIN
    FOR statement IN SELECT name FROM pg_prepared_statements WHERE from_sql LOOP
        EXECUTE format('DEALLOCATE %I', statement);
    END LOOP;
END
$pgmig$;
"""
_RESET_MORE = (
    "DISCARD TEMP;\nDISCARD SEQUENCES;\nSET SESSION AUTHORIZATION DEFAULT;\nRESET ALL;"
    + DEALLOCATE_SQL
)
_RESET_SESSION = "CLOSE ALL;\nUNLISTEN *;\nSELECT pg_advisory_unlock_all();" + _RESET_MORE


@pytest.fixture
def pgmig_psycopg(request: pytest.FixtureRequest, pgmig_schema: PgmigSchema) -> Iterator[Any]:
    """A psycopg 3 connection into the test's schema, with psycopg's defaults (autocommit
    off), like pytest-postgresql's `postgresql` fixture.

    It is kept for the next test of the same schema rather than closed: at teardown what
    the test left is undone (its transaction rolled back; session settings, cursors,
    `PREPARE`d statements, temporary tables, advisory locks and LISTEN dropped as by
    `DISCARD ALL`; the connection's own attributes set back), so the next test cannot tell
    it from a new one but for psycopg's own prepared statements, kept to serve it.

    Example::

        def test_insert(pgmig_psycopg):
            pgmig_psycopg.execute("INSERT INTO users (name) VALUES ('ada')")
            assert pgmig_psycopg.execute("SELECT count(*) FROM users").fetchone() == (1,)
    """
    psycopg = require_psycopg("pgmig_psycopg")
    kept = kept_of(request.config).psycopg
    conn = kept.pop(pgmig_schema.dsn, None)
    if conn is None or not _alive(conn):
        if conn is not None:
            conn.close()
        conn = psycopg.connect(pgmig_schema.dsn)
    yield conn
    if _clean(conn):
        keep_connection(kept, pgmig_schema.dsn, conn, lambda old: old.close())
    else:
        conn.close()


def require_psycopg(fixture: str) -> Any:
    """The psycopg module, or the test fails saying how to install it."""
    try:
        import psycopg
    except ImportError:
        pytest.fail(
            f"{fixture} needs psycopg 3, which is not installed: "
            "pip install 'pytest-pgmig[psycopg]' (or pip install 'psycopg[binary]').",
            pytrace=False,
        )
    return psycopg


def keep_connection(kept: dict[Any, Any], key: Any, value: Any, close: Any) -> None:
    """Keep `value` under `key`, closing the oldest kept past `KEEP_AT_MOST`."""
    kept[key] = value
    while len(kept) > KEEP_AT_MOST:
        close(kept.pop(next(iter(kept))))


def _clean(conn: Any) -> bool:
    """Undo what a test left on `conn`; False when it cannot be reused."""
    import psycopg

    if conn.closed or conn.broken:
        return False
    try:
        conn.rollback()
        conn.autocommit = True
        conn.execute(_RESET_SESSION)
        # psycopg's own state: what the test changed goes back to psycopg's defaults
        conn.autocommit = False
        conn.isolation_level = None
        conn.read_only = None
        conn.deferrable = None
    except psycopg.Error:
        return False
    return True


def _alive(conn: Any) -> bool:
    """Whether a kept connection still has its session (a reset may end idle ones)."""
    from psycopg import pq

    if conn.closed or conn.broken:
        return False
    result = conn.pgconn.exec_(b"")  # an empty query: one round trip, no transaction
    return bool(
        conn.pgconn.status == pq.ConnStatus.OK and result.status == pq.ExecStatus.EMPTY_QUERY
    )


@dataclass
class Kept:
    """The connections this process keeps across tests: psycopg's by schema DSN (the rollback
    fixture's under the DSN and ``#tx``), asyncpg's by (loop, DSN) as (connection, loop)."""

    psycopg: dict[str, Any] = field(default_factory=dict)
    asyncpg: dict[tuple[int, str], Any] = field(default_factory=dict)

    def close(self) -> None:
        """Close every kept connection (at the end of the process, before schemas are
        dropped: their sessions would hold up the drop)."""
        while self.psycopg:
            _, conn = self.psycopg.popitem()
            conn.close()
        while self.asyncpg:
            _, (conn, _loop) = self.asyncpg.popitem()
            _terminate(conn)


KEPT_CONNECTIONS = pytest.StashKey[Kept]()


def kept_of(config: pytest.Config) -> Kept:
    """This process's kept connections."""
    return config.stash.setdefault(KEPT_CONNECTIONS, Kept())


# -- asyncpg's, for pgmig_conn on a class, module, package or session loop ------------------


async def take_asyncpg(kept: dict[tuple[int, str], Any], loop: Any, dsn: str) -> Any:
    """The connection kept on `loop` for `dsn`, if its session is still there; else None."""
    found = kept.pop((id(loop), dsn), None)
    if found is None:
        return None
    conn, its_loop = found
    if its_loop is not loop or conn.is_closed():
        _terminate(conn)
        return None
    try:
        await conn.fetchval("SELECT 1")  # a reset may have ended its session
    except Exception:
        _terminate(conn)
        return None
    return conn


async def give_back_asyncpg(
    kept: dict[tuple[int, str], Any], loop: Any, dsn: str, conn: Any
) -> bool:
    """Undo what a test left on `conn` and keep it for the next test on `loop`; False (and
    the caller closes it) when it cannot be reused."""
    try:
        await conn.reset()  # rollback, listeners, RESET ALL, cursors, advisory locks
        await conn.execute(_RESET_MORE)
    except Exception:
        return False
    keep_connection(kept, (id(loop), dsn), (conn, loop), lambda old: _terminate(old[0]))
    return True


def _terminate(conn: Any) -> None:
    """End a connection without its loop, which may be closed by now."""
    # its socket goes with the process either way
    with contextlib.suppress(Exception):
        conn.terminate()
