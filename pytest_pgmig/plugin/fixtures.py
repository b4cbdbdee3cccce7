"""The fixtures users request: the server, a migrated schema, and connections into it.

They build on each other, so overriding one in a conftest changes all that follow::

    pgmig_server -> pgmig_schema -> pgmig_dsn
                                 -> pgmig_conn -> pgmig_db -> pgmig_migrations
                                 -> pgmig_pool
    pgmig_server -> pgmig_factory
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from pytest_pgmig.errors import MigrationFailed
from pytest_pgmig.isolation.base import MigrationSet, PgmigSchema, Sets, Slot
from pytest_pgmig.plugin import marker, settings
from pytest_pgmig.plugin.state import KEPT, SCHEMA, PgmigWarning, fail_test, state_of
from pytest_pgmig.runtime import close_or_terminate

if TYPE_CHECKING:
    from pytest_pgmig.servers.info import ServerInfo

# a test's connection to a dead or unreachable server fails in seconds, not asyncpg's 60
CONNECT_TIMEOUT = 10


def _require_function_loop(request: pytest.FixtureRequest, fixture: str) -> None:
    """Our async fixtures live on the test's function-scoped loop; say so if the test's isn't.

    A connection works only on the loop that opened it, so a test on a module or session
    loop would get one that fails on first use.
    """
    mark = request.node.get_closest_marker("asyncio")
    scope = None
    if mark is not None:
        scope = mark.kwargs.get("loop_scope") or mark.kwargs.get("scope")
    scope = scope or request.config.getini("asyncio_default_test_loop_scope") or "function"
    if scope != "function":
        pytest.fail(
            f"{fixture} opens its connection on the test's function-scoped event loop, but "
            f"this test runs on a {scope}-scoped loop. Run it on the function loop "
            "(@pytest.mark.asyncio without loop_scope), or open your own connection from "
            "pgmig_dsn on your loop.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def pgmig_server(request: pytest.FixtureRequest) -> ServerInfo:
    """The run's PostgreSQL server: `.dsn` (admin), `.host`, `.port`, `.database`, `.version`.

    Started on first use: the embedded server from local binaries, a container, or the
    server of --pgmig-dsn. Override it in a conftest to put the schemas elsewhere.
    """
    return state_of(request.config).server()


@pytest.fixture
def pgmig_schema(request: pytest.FixtureRequest, pgmig_server: ServerInfo) -> Iterator[PgmigSchema]:
    """This test's migrated schema (in worker scope, the worker's).

    `.name`, `.module_name` (`<lib>_<schema>`) and `.dsn` (search_path set to the schema).
    """
    state = state_of(request.config)
    sets, scope = marker.plan(request)
    started = time.perf_counter()
    isolation = state.isolation_on(pgmig_server)
    try:
        # worker scope: the worker's schema, in a pool of its own
        slot = state.call(isolation.acquire(sets, spare=scope == "test", lane=scope))
    except MigrationFailed as exc:
        fail_test(str(exc))
    isolation.stats.setup_s.append(time.perf_counter() - started)
    while isolation.warnings:
        warnings.warn(PgmigWarning(isolation.warnings.pop(0)), stacklevel=1)
    request.node.stash[SCHEMA] = slot.schema
    yield slot.schema
    if state.server_error is not None:
        return  # the server is gone: nothing to reset, and the test already says so
    started = time.perf_counter()
    kept = request.node.stash.get(KEPT, None) is not None
    state.call(isolation.keep(slot) if kept else isolation.release(slot))
    isolation.stats.teardown_s.append(time.perf_counter() - started)


@pytest.fixture
def pgmig_dsn(pgmig_schema: PgmigSchema) -> str:
    """The schema's DSN as a string, for psycopg, SQLAlchemy or any other driver."""
    return pgmig_schema.dsn


@pytest_asyncio.fixture(loop_scope="function")
async def pgmig_conn(
    request: pytest.FixtureRequest, pgmig_schema: PgmigSchema
) -> AsyncIterator[Any]:
    """An asyncpg connection on the test's loop, the schema first on its search_path.

    In worker scope it runs inside a transaction rolled back at teardown; the test's own
    `conn.transaction()` blocks become savepoints.
    """
    import asyncpg  # type: ignore[import-untyped]

    _require_function_loop(request, "pgmig_conn")
    conn = await asyncpg.connect(pgmig_schema.dsn, timeout=CONNECT_TIMEOUT)
    outer = None
    if marker.plan(request)[1] == "worker":
        outer = conn.transaction()
        await outer.start()
    try:
        yield conn
    finally:
        if outer is not None and not conn.is_closed():
            try:
                if KEPT in request.node.stash:
                    # --pgmig-keep on a failed test: keep what it wrote, for inspection
                    await outer.commit()
                else:
                    await outer.rollback()
            except Exception:
                conn.terminate()
        await close_or_terminate(conn)


@pytest_asyncio.fixture(loop_scope="function")
async def pgmig_pool(
    request: pytest.FixtureRequest, pgmig_schema: PgmigSchema
) -> AsyncIterator[Any]:
    """An asyncpg pool into the schema, sized so that every xdist worker fits the server."""
    import asyncpg

    _require_function_loop(request, "pgmig_pool")
    size = state_of(request.config).pool_size()
    pool = await asyncpg.create_pool(
        pgmig_schema.dsn, min_size=1, max_size=size, timeout=CONNECT_TIMEOUT
    )
    try:
        yield pool
    finally:
        await close_or_terminate(pool)


@pytest_asyncio.fixture(loop_scope="function")
async def pgmig_db(pgmig_schema: PgmigSchema, pgmig_conn: Any) -> AsyncIterator[Any]:
    """An AsyncDatabaseManager bound to the schema, on the test's `pgmig_conn` connection.

    `{{tables.users}}` renders to `"<schema>".users`; its writes and pgmig_conn's are one
    session, so they see each other (and roll back together in worker scope).
    """
    from pytest_pgmig.engine.database import AsyncDatabaseManager, OneConnectionPool

    yield AsyncDatabaseManager(pool=OneConnectionPool(pgmig_conn), schema=pgmig_schema.name)


@pytest_asyncio.fixture(loop_scope="function")
async def pgmig_migrations(
    request: pytest.FixtureRequest, pgmig_schema: PgmigSchema, pgmig_db: Any
) -> AsyncIterator[Any]:
    """The AsyncMigrationManager that migrated the schema (module_name=<lib>_<schema>)."""
    from pytest_pgmig.engine.migrations import AsyncMigrationManager

    sets, _ = marker.plan(request)
    if not sets:
        pytest.fail(
            "pgmig_migrations needs a migrations folder: pass --pgmig-migrations=PATH, set "
            "pgmig_migrations in the ini file, or mark the test @pytest.mark.pgmig(migrations=...)",
            pytrace=False,
        )
    yield AsyncMigrationManager(
        pgmig_db, migrations_path=str(sets[0].path), module_name=pgmig_schema.module_name
    )


@pytest.fixture
def pgmig_factory(
    request: pytest.FixtureRequest, pgmig_server: ServerInfo
) -> Iterator[Callable[..., Awaitable[PgmigSchema]]]:
    """`await pgmig_factory(migrations=PATH, module=NAME)`: one more migrated schema.

    Each schema it makes is reset for reuse (or dropped) at the test's teardown.

    Example::

        async def test_two_tenants(pgmig_factory):
            a = await pgmig_factory(migrations="migrations", module="billing")
            b = await pgmig_factory(migrations="migrations", module="billing")
            assert a.name != b.name
    """
    state = state_of(request.config)
    base = Path(request.node.path).parent
    slots: list[Slot] = []
    isolation = state.isolation_on(pgmig_server)
    runtime = state.runtime
    assert runtime is not None

    async def make(*, migrations: Any = None, module: str | None = None) -> PgmigSchema:
        if migrations is None:
            sets: Sets = state.settings.migrations.value
        else:
            sets = marker.parse_migrations(migrations, base, state.checked_folders)
        if module is not None:
            try:
                lib = settings.module_type(module)
            except settings.BadValue as exc:
                raise pytest.fail.Exception(f"pgmig_factory: {exc}", pytrace=False) from None
            sets = tuple(MigrationSet(lib, m.path) for m in sets[:1]) + sets[1:]
        try:
            slot = await asyncio.wrap_future(
                runtime.submit(isolation.acquire(sets, lane="factory"))
            )
        except MigrationFailed as exc:
            fail_test(str(exc))
        slots.append(slot)
        return slot.schema

    yield make
    for slot in slots:
        state.call(isolation.release(slot))
