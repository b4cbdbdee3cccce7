"""The tracking table: the engine's port to the database (ensure, list applied, lock, record)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from pytest_pgmig.engine.database import Connection, create_schema_sql, run_locked_ddl
from pytest_pgmig.engine.files import MigrationFile, fingerprint
from pytest_pgmig.engine.templates import quote_identifier, sql_literal

# pgdbm 0.5.0's columns, with the page's wider module_name and REAL timings; applied_by
# keeps pgdbm's history query working on a table we created.
_TABLE_COLUMNS = """
    id SERIAL PRIMARY KEY,
    filename VARCHAR(255) NOT NULL,
    checksum VARCHAR(64) NOT NULL,
    module_name VARCHAR(255),
    applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    applied_by VARCHAR(100) DEFAULT CURRENT_USER,
    execution_time_ms REAL,
    UNIQUE (filename, module_name)
"""
# What reading a tracking table that does not exist yet raises.
NO_TABLE = (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError)
# Server-side duration of the current simple-query message: the file just run.
_ELAPSED_MS = "(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::float8"


@dataclass(frozen=True)
class AppliedRow:
    """One row of the tracking table."""

    filename: str
    checksum: str
    applied_at: datetime
    module_name: str | None


class Tracking:
    """One module's rows in a tracking table (pgdbm 0.5.0's layout, lock key and lookups).

    Rows are isolated by ``module_name`` (rows without one count for every module, as in
    pgdbm); a run holds pgdbm's advisory lock on ``pgdbm_migration_<module>``.
    """

    def __init__(self, schema: str | None, table: str, module_name: str) -> None:
        self.schema = schema
        self.module_name = module_name
        self.table = quote_identifier(table)
        if schema is not None:
            self.table = f"{quote_identifier(schema)}.{self.table}"
        self._index = quote_identifier(f"idx_{table}_module")
        self._lock_key = f"pgdbm_migration_{module_name}"
        self._select_applied = (
            f"SELECT filename, checksum, applied_at, module_name FROM {self.table} "
            'WHERE module_name = $1 OR module_name IS NULL ORDER BY filename COLLATE "C"'
        )
        # One row instead of one per file for the common "nothing to do" answer.
        self._select_fingerprint = (
            "SELECT count(*), encode(sha256(convert_to(string_agg(filename || ':' || checksum, "
            f"E'\\n' ORDER BY filename COLLATE \"C\"), 'UTF8')), 'hex') FROM {self.table} "
            "WHERE module_name = $1 OR module_name IS NULL"
        )

    async def ensure(self, conn: Connection) -> None:
        """Create the schema and the table if missing (safe under concurrency)."""
        ddl = [
            f"CREATE TABLE IF NOT EXISTS {self.table} ({_TABLE_COLUMNS})",
            f"CREATE INDEX IF NOT EXISTS {self._index} ON {self.table} (module_name, filename)",
        ]
        if self.schema is not None:
            ddl.insert(0, create_schema_sql(self.schema))
        await run_locked_ddl(conn, self.schema, ";".join(ddl))

    async def matches(self, conn: Connection, files: tuple[MigrationFile, ...]) -> bool:
        """Whether the rows are exactly ``files`` with their checksums (one small query)."""
        try:
            count, digest = await conn.fetchrow(self._select_fingerprint, self.module_name)
        except NO_TABLE:
            return False
        return bool(count == len(files) and digest == fingerprint(files))

    async def applied(self, conn: Connection) -> dict[str, AppliedRow] | None:
        """``{filename: row}`` in name order; ``None`` if there is no table yet."""
        try:
            rows = await conn.fetch(self._select_applied, self.module_name)
        except NO_TABLE:
            return None
        return {
            row["filename"]: AppliedRow(
                row["filename"], row["checksum"], row["applied_at"], row["module_name"]
            )
            for row in rows
        }

    async def history(self, conn: Connection, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` rows, newest first; ``[]`` if there is no table yet."""
        query = (
            "SELECT filename, checksum, module_name, applied_at, applied_by, execution_time_ms "
            f"FROM {self.table} WHERE module_name = $1 OR module_name IS NULL "
            "ORDER BY applied_at DESC, id DESC LIMIT $2"
        )
        try:
            return [dict(row) for row in await conn.fetch(query, self.module_name, limit)]
        except NO_TABLE:
            return []

    def record_sql(
        self,
        filename: str,
        checksum: str,
        ms: float | None = None,
        *,
        elapsed_sql: str = "",
        replace: bool = False,
    ) -> str:
        """The INSERT of a file's row; timed by the server (``ms=None``: the message's time,
        or the expression `elapsed_sql`) when sent with the file itself, else with the time
        measured by the caller. `replace`: a repeatable migration's row is replaced, as it is
        applied again whenever it changes."""
        elapsed = elapsed_sql or (_ELAPSED_MS if ms is None else f"{float(ms)!r}::float8")
        return (
            (f"{self.forget_sql(filename)};" if replace else "")
            + f"INSERT INTO {self.table} (filename, checksum, module_name, execution_time_ms) "
            f"VALUES ({sql_literal(filename)}, {sql_literal(checksum)}, "
            f"{sql_literal(self.module_name)}, {elapsed})"
        )

    def forget_sql(self, filename: str) -> str:
        """The DELETE of a file's row, sent with the down file that reverts it."""
        return (
            f"DELETE FROM {self.table} WHERE filename = {sql_literal(filename)} "
            f"AND module_name = {sql_literal(self.module_name)}"
        )

    async def forget(self, conn: Connection, filename: str) -> None:
        """Delete a file's row (the schema change itself stays)."""
        with contextlib.suppress(*NO_TABLE):
            await conn.execute(
                f"DELETE FROM {self.table} WHERE filename = $1 AND module_name = $2",
                filename,
                self.module_name,
            )

    async def lock(self, conn: Connection) -> None:
        """Take pgdbm's advisory lock for this module, polling.

        Polled rather than waited for: a session blocked in pg_advisory_lock() holds a
        snapshot, and CREATE INDEX CONCURRENTLY run by the lock holder waits for every older
        snapshot to go away, which would deadlock the two.
        """
        delay = 0.001
        while not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", self._lock_key):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def unlock(self, conn: Connection) -> None:
        try:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", self._lock_key)
        except Exception:
            # A connection we cannot unlock must not go back to the pool holding the lock.
            conn.terminate()
