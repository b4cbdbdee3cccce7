"""The fixtures users request: the server, a migrated schema, and connections into it.

They build on each other, so overriding one in a conftest changes all that follow::

    pgmig_server -> pgmig_schema -> pgmig_dsn
                                 -> pgmig_conn -> pgmig_db -> pgmig_migrations
                                 -> pgmig_pool
    pgmig_server -> pgmig_factory

(`pgmig_schema` itself takes the schema from `_pgmig_place`, as the rollback fixtures
`pgmig_tx` and `pgmig_psycopg_tx` do: a test that asks for nothing else gets no reset.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pytest

from pytest_pgmig.errors import MigrationFailed
from pytest_pgmig.isolation.base import PgmigSchema, Sets, Slot
from pytest_pgmig.plugin import marker
from pytest_pgmig.plugin.connections import give_back_asyncpg, kept_of, take_asyncpg
from pytest_pgmig.plugin.state import (
    KEPT,
    OUTSIDE_TX,
    ROLLED_BACK,
    SCHEMA,
    SLOT,
    PgmigWarning,
    fail_test,
    state_of,
)
from pytest_pgmig.runtime import close_or_terminate

if TYPE_CHECKING:
    from pytest_pgmig.servers.info import ServerInfo

# a test's connection to a dead or unreachable server fails in seconds, not asyncpg's 60
CONNECT_TIMEOUT = 10


LOOP_SCOPES = ("function", "class", "module", "package", "session")
T = TypeVar("T")


class Runner(Protocol):
    """An event loop runner (Runner, or its backport on Python 3.10)."""

    def run(self, coro: Coroutine[Any, Any, T]) -> T: ...


def loop_scope_of(request: pytest.FixtureRequest) -> str:
    """The scope of the event loop the test runs on: its asyncio mark's, else the ini's."""
    mark = request.node.get_closest_marker("asyncio")
    scope = None
    if mark is not None:
        scope = mark.kwargs.get("loop_scope") or mark.kwargs.get("scope")
    return str(scope or request.config.getini("asyncio_default_test_loop_scope") or "function")


def loop_runner(request: pytest.FixtureRequest, fixture: str) -> Runner:
    """The runner of the loop the test runs on, which our connections must belong to.

    A connection works only on the loop that opened it, and a suite may run its tests on a
    class, module, package or session loop to share an app or engine; so the fixtures open
    theirs on the test's loop, through pytest-asyncio's runner of that scope, whatever the
    fixture loop scope is.
    """
    scope = loop_scope_of(request)
    if scope not in LOOP_SCOPES:
        pytest.fail(
            f"{fixture}: the test's asyncio loop scope {scope!r} is not one of "
            f"{', '.join(LOOP_SCOPES)}.",
            pytrace=False,
        )
    runner: Runner = request.getfixturevalue(f"_{scope}_scoped_runner")
    return runner


@pytest.fixture(scope="session")
def pgmig_server(request: pytest.FixtureRequest) -> ServerInfo:
    """The run's PostgreSQL server: `.dsn` (admin), `.host`, `.port`, `.database`, `.version`.

    Started on first use: the embedded server from local binaries, a container, or the
    server of --pgmig-dsn. Override it in a conftest to put the schemas elsewhere.
    """
    return state_of(request.config).server()


@pytest.fixture
def _pgmig_place(request: pytest.FixtureRequest, pgmig_server: ServerInfo) -> Iterator[PgmigSchema]:
    """The test's migrated schema, before anyone could have written to it but through the
    rollback fixtures (`pytest_pgmig.plugin.rollback`), which take it from here."""
    sets, scope = marker.plan(request)
    with isolated_schema(request, pgmig_server, sets, scope=scope) as schema:
        yield schema


@pytest.fixture
def pgmig_schema(request: pytest.FixtureRequest, _pgmig_place: PgmigSchema) -> PgmigSchema:
    """This test's migrated schema (in worker scope, the worker's).

    `.name`, `.module_name` (`<lib>_<schema>`) and `.dsn` (search_path set to the schema).
    """
    # its DSN is out: whatever the test does with it, the schema is reset after
    request.node.stash[OUTSIDE_TX] = True
    return _pgmig_place


@contextlib.contextmanager
def isolated_schema(
    request: pytest.FixtureRequest,
    server: ServerInfo,
    sets: Sets,
    *,
    scope: str,
    database: bool = False,
) -> Iterator[PgmigSchema]:
    """A clean migrated schema of `sets` for the requesting test (with `database`, a
    database of its own where the isolation can give one), given back (reset, or kept under
    --pgmig-keep when the test failed) when the block ends."""
    state = state_of(request.config)
    started = time.perf_counter()
    isolation = state.isolation_on(server)
    # worker scope: the worker's schema, in a pool of its own
    slot = None if database else isolation.take_ready(sets, scope)
    try:
        if slot is None:
            slot = state.call(
                isolation.acquire(sets, spare=scope == "test", lane=scope, database=database)
            )
    except MigrationFailed as exc:
        fail_test(str(exc))
    isolation.stats.setup_s.append(time.perf_counter() - started)
    while isolation.warnings:
        warnings.warn(PgmigWarning(isolation.warnings.pop(0)), stacklevel=1)
    request.node.stash[SCHEMA] = slot.schema
    request.node.stash[SLOT] = slot
    yield slot.schema
    if state.server_error is not None:
        return  # the server is gone: nothing to reset, and the test already says so
    started = time.perf_counter()
    kept = request.node.stash.get(KEPT, None) is not None
    stash = request.node.stash
    rolled_back = stash.get(ROLLED_BACK, False) and not stash.get(OUTSIDE_TX, False)
    if kept:
        state.call(isolation.keep(slot))
    elif not (rolled_back and isolation.give_back(slot)):
        state.call(isolation.release(slot))
    isolation.stats.teardown_s.append(time.perf_counter() - started)


@pytest.fixture
def pgmig_dsn(pgmig_schema: PgmigSchema) -> str:
    """The schema's DSN as a string, for psycopg, SQLAlchemy or any other driver."""
    return pgmig_schema.dsn


@pytest.fixture
def pgmig_conn(request: pytest.FixtureRequest, pgmig_schema: PgmigSchema) -> Iterator[Any]:
    """An asyncpg connection on the test's loop (whatever its scope), the schema first on
    its search_path.

    In worker scope it runs inside a transaction rolled back at teardown; the test's own
    `conn.transaction()` blocks become savepoints. On a loop that outlives the test (class,
    module, package or session scope) the connection is kept for the next test of the
    schema on that loop, with what the test left undone (as `pgmig_psycopg`'s is).
    """
    import asyncpg

    runner = loop_runner(request, "pgmig_conn")
    worker = marker.plan(request)[1] == "worker"
    kept = kept_of(request.config).asyncpg if loop_scope_of(request) != "function" else None
    dsn = pgmig_schema.dsn

    async def open_() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        conn = await take_asyncpg(kept, loop, dsn) if kept is not None else None
        if conn is None:
            conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
        outer = None
        if worker:
            outer = conn.transaction()
            await outer.start()
        return conn, outer

    async def close(conn: Any, outer: Any) -> None:
        if outer is not None and not conn.is_closed():
            try:
                if KEPT in request.node.stash:
                    # --pgmig-keep on a failed test: keep what it wrote, for inspection
                    await outer.commit()
                else:
                    await outer.rollback()
            except Exception:
                conn.terminate()
        loop = asyncio.get_running_loop()
        if (
            kept is not None
            and not conn.is_closed()
            and KEPT not in request.node.stash
            and await give_back_asyncpg(kept, loop, dsn, conn)
        ):
            return
        await close_or_terminate(conn)

    conn, outer = runner.run(open_())
    try:
        yield conn
    finally:
        runner.run(close(conn, outer))


@pytest.fixture
def pgmig_pool(request: pytest.FixtureRequest, pgmig_schema: PgmigSchema) -> Iterator[Any]:
    """An asyncpg pool into the schema on the test's loop, sized so that every xdist worker
    fits the server."""
    import asyncpg

    runner = loop_runner(request, "pgmig_pool")
    size = state_of(request.config).pool_size()

    async def open_() -> Any:
        return await asyncpg.create_pool(
            pgmig_schema.dsn, min_size=1, max_size=size, timeout=CONNECT_TIMEOUT
        )

    pool = runner.run(open_())
    try:
        yield pool
    finally:
        runner.run(close_or_terminate(pool))


@pytest.fixture
def pgmig_db(pgmig_schema: PgmigSchema, pgmig_conn: Any) -> Any:
    """An AsyncDatabaseManager bound to the schema, on the test's `pgmig_conn` connection.

    `{{tables.users}}` renders to `"<schema>".users`; its writes and pgmig_conn's are one
    session, so they see each other (and roll back together in worker scope).
    """
    from pytest_pgmig.engine.database import AsyncDatabaseManager, OneConnectionPool

    return AsyncDatabaseManager(pool=OneConnectionPool(pgmig_conn), schema=pgmig_schema.name)


@pytest.fixture
def pgmig_migrations(
    request: pytest.FixtureRequest, pgmig_schema: PgmigSchema, pgmig_db: Any
) -> Any:
    """The AsyncMigrationManager that migrated the schema (module_name=<lib>_<schema>)."""
    from pytest_pgmig.engine.migrations import AsyncMigrationManager

    sets, _ = marker.plan(request)
    if not sets:
        pytest.fail(
            "pgmig_migrations needs a migrations folder: pass --pgmig-migrations=PATH, set "
            "pgmig_migrations in the ini file, or mark the test @pytest.mark.pgmig(migrations=...)",
            pytrace=False,
        )
    return AsyncMigrationManager(
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
            sets = marker.parse_migrations(
                migrations, base, state.checked_folders, state.settings.reading()
            )
        if module is not None:
            sets = marker.with_module(sets, module, "pgmig_factory")
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
