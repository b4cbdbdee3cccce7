"""DatabaseConfig and AsyncDatabaseManager: an asyncpg pool bound to one schema, with templates."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from pytest_pgmig.engine.templates import quote_identifier, render, sql_literal, validate_identifier

# asyncpg ships no type information; these aliases say what is meant.
Connection = Any
Pool = Any


@dataclass(kw_only=True)
class DatabaseConfig:
    """How to reach the database, and the schema the manager works in.

    Anything left ``None`` falls back to asyncpg's defaults (``PG*`` environment
    variables, then the local socket).

    Example::

        config = DatabaseConfig(connection_string="postgresql://localhost/myapp", schema="app")
    """

    connection_string: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    schema: str | None = None
    min_connections: int = 1
    max_connections: int = 10
    command_timeout: float | None = 60.0
    statement_cache_size: int = 1024
    server_settings: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.schema is not None:
            validate_identifier(self.schema, "schema")

    @property
    def schema_name(self) -> str | None:
        """The schema (pgdbm's name for it)."""
        return self.schema

    def get_server_settings(self) -> dict[str, str]:
        """Server settings for each connection: the schema first on ``search_path``."""
        settings = dict(self.server_settings or {})
        if self.schema is not None:
            settings.setdefault("search_path", f"{quote_identifier(self.schema)}, public")
        return settings


class _Queries:
    """The query methods shared by the manager and its transactions."""

    schema: str | None

    def prepare_query(self, query: str) -> str:
        """Render ``{{tables.x}}``, ``{{tables.s.x}}`` and ``{{schema}}`` for this schema.

        >>> db.prepare_query("SELECT * FROM {{tables.users}}")  # doctest: +SKIP
        'SELECT * FROM "app"."users"'
        """
        return render(query, self.schema)

    def _connection(self) -> Any:
        raise NotImplementedError

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run a statement (several, without ``args``); return its status, e.g. ``"INSERT 0 1"``."""
        async with self._connection() as conn:
            return str(await conn.execute(self.prepare_query(query), *args, timeout=timeout))

    async def executemany(
        self, query: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None
    ) -> None:
        """Run one statement once per argument tuple."""
        async with self._connection() as conn:
            await conn.executemany(self.prepare_query(query), args, timeout=timeout)

    async def fetch_one(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """The first row as a dict, or ``None``."""
        async with self._connection() as conn:
            row = await conn.fetchrow(self.prepare_query(query), *args, timeout=timeout)
        return None if row is None else dict(row)

    async def fetch_all(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """All rows as dicts."""
        async with self._connection() as conn:
            rows = await conn.fetch(self.prepare_query(query), *args, timeout=timeout)
        return [dict(row) for row in rows]

    async def fetch_value(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """One value of the first row (``column`` 0 by default), or ``None``."""
        async with self._connection() as conn:
            return await conn.fetchval(
                self.prepare_query(query), *args, column=column, timeout=timeout
            )


class TransactionManager(_Queries):
    """The queries of one transaction, templates rendered as by its manager.

    Example::

        async with db.transaction() as tx:
            await tx.execute("INSERT INTO {{tables.users}} (email) VALUES ($1)", email)
            async with tx.transaction():  # a savepoint
                ...
    """

    def __init__(self, connection: Connection, schema: str | None) -> None:
        self._conn = connection
        self.schema = schema

    @property
    def connection(self) -> Connection:
        """The underlying asyncpg connection."""
        return self._conn

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        yield self._conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TransactionManager]:
        """A nested transaction (savepoint)."""
        async with self._conn.transaction():
            yield TransactionManager(self._conn, self.schema)


class AsyncDatabaseManager(_Queries):
    """An asyncpg pool working in one schema, rendering ``{{tables.x}}`` templates into it.

    Either own a pool built from a `DatabaseConfig` (``connect()`` creates the schema if
    it is missing and puts it first on each connection's ``search_path``), or use an
    existing pool with ``pool=`` and ``schema=`` (default ``"public"``).

    Example::

        db = AsyncDatabaseManager(DatabaseConfig(connection_string=dsn, schema="app"))
        await db.connect()
        await db.execute("CREATE TABLE {{tables.users}} (id serial PRIMARY KEY, email text)")
        user = await db.fetch_one("SELECT * FROM {{tables.users}} WHERE id = $1", 1)
        await db.disconnect()
    """

    def __init__(
        self,
        config: DatabaseConfig | None = None,
        *,
        pool: Pool | None = None,
        schema: str | None = None,
    ) -> None:
        if (config is None) == (pool is None):
            raise ValueError(
                "Pass either a DatabaseConfig or pool=, not both or neither: "
                "AsyncDatabaseManager(DatabaseConfig(...)) or "
                "AsyncDatabaseManager(pool=pool, schema='app')."
            )
        if config is not None and schema is not None:
            raise ValueError(
                "schema= goes with pool=; with a DatabaseConfig set DatabaseConfig(schema=...)."
            )
        self.config = config
        self._pool = pool
        self._owns_pool = pool is None
        self.schema = config.schema if config is not None else (schema or "public")
        if self.schema is not None:
            validate_identifier(self.schema, "schema")

    @property
    def pool(self) -> Pool:
        """The asyncpg pool (``None`` before ``connect()``)."""
        return self._pool

    async def connect(self) -> None:
        """Create the pool and the schema if missing (no-op with ``pool=`` or when connected)."""
        if self._pool is not None or self.config is None:
            return
        config = self.config
        pool = await asyncpg.create_pool(
            config.connection_string,
            host=config.host,
            port=config.port,
            database=config.database,
            user=config.user,
            password=config.password,
            min_size=min(config.min_connections, config.max_connections),
            max_size=config.max_connections,
            command_timeout=config.command_timeout,
            statement_cache_size=config.statement_cache_size,
            server_settings=config.get_server_settings(),
        )
        try:
            if self.schema is not None:
                async with pool.acquire() as conn:
                    await create_schema(conn, self.schema)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def disconnect(self) -> None:
        """Close the pool if this manager created it."""
        if self._owns_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A connection from the pool, returned on exit.

        Example::

            async with db.acquire() as conn:
                await conn.execute(db.prepare_query("TRUNCATE {{tables.users}}"))
        """
        if self._pool is None:
            raise RuntimeError("The database manager is not connected: call connect() first.")
        async with self._pool.acquire() as conn:
            yield conn

    def _connection(self) -> Any:
        return self.acquire()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TransactionManager]:
        """A transaction on one connection, committed on exit, rolled back on error."""
        async with self.acquire() as conn, conn.transaction():
            yield TransactionManager(conn, self.schema)


async def run_locked_ddl(conn: Connection, schema: str | None, ddl: str) -> None:
    """Run ``ddl`` in one round trip and one transaction, serialised per schema.

    Concurrent ``CREATE ... IF NOT EXISTS`` of the same schema or table from several
    sessions can fail with a unique violation on the catalogs; the advisory lock makes
    the second session wait and then find the object there.
    """
    key = sql_literal(f"pgmig_ddl_{schema or ''}")
    try:
        await conn.execute(f"BEGIN;SELECT pg_advisory_xact_lock(hashtext({key}));{ddl};COMMIT;")
    except BaseException:
        if not conn.is_closed() and conn.is_in_transaction():
            await conn.execute("ROLLBACK")
        raise


def create_schema_sql(schema: str) -> str:
    """SQL creating ``schema`` only if missing (no CREATE privilege needed when it exists)."""
    validate_identifier(schema, "schema")
    return (
        "DO $pgmig$BEGIN IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = "
        f"'{schema}') THEN CREATE SCHEMA {quote_identifier(schema)}; END IF; END$pgmig$"
    )


async def create_schema(conn: Connection, schema: str) -> None:
    """Create ``schema`` if it does not exist, safely under concurrency."""
    if not await conn.fetchval("SELECT true FROM pg_namespace WHERE nspname = $1", schema):
        await run_locked_ddl(conn, schema, create_schema_sql(schema))


class OneConnectionPool:
    """A pool-shaped wrapper over one connection, for managers that must share it.

    AsyncDatabaseManager and AsyncMigrationManager acquire from a pool; handing them this
    keeps their work on one session (inside the caller's transaction, where there is one).
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[Any]:
        yield self._conn
