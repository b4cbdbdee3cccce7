"""The fixtures users request: the server, a migrated schema, and connections into it."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from pytest_pgmig.isolation.schemas import MigrationFailed, OneConnectionPool, PgmigSchema, Slot
from pytest_pgmig.plugin import settings
from pytest_pgmig.plugin.state import KEPT, SCHEMA, PgmigState, PgmigWarning, fail_test, state_of
from pytest_pgmig.servers.info import ServerInfo

Sets = tuple[settings.MigrationSet, ...]
# a test's connection to a dead or unreachable server fails in seconds, not asyncpg's 60
CONNECT_TIMEOUT = 10
_PLAN = pytest.StashKey[tuple[Sets, str]]()


def _require_function_loop(request: pytest.FixtureRequest, fixture: str) -> None:
    """Our async fixtures live on the test's function-scoped loop; say so if the test's isn't.

    A connection works only on the loop that opened it, so a test on a module or session
    loop would get one that fails on first use.
    """
    marker = request.node.get_closest_marker("asyncio")
    scope = None
    if marker is not None:
        scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
    scope = scope or request.config.getini("asyncio_default_test_loop_scope") or "function"
    if scope != "function":
        pytest.fail(
            f"{fixture} opens its connection on the test's function-scoped event loop, but "
            f"this test runs on a {scope}-scoped loop. Run it on the function loop "
            "(@pytest.mark.asyncio without loop_scope), or open your own connection from "
            "pgmig_dsn on your loop.",
            pytrace=False,
        )


def _plan(request: pytest.FixtureRequest) -> tuple[Sets, str]:
    """The migration sets and scope for this test, worked out once per test."""
    stash: pytest.Stash = request.node.stash
    plan = stash.get(_PLAN, None)
    if plan is None:
        plan = stash[_PLAN] = _marker_sets(request, state_of(request.config).settings)
    return plan


def _marker_sets(request: pytest.FixtureRequest, opts: settings.Settings) -> tuple[Sets, str]:
    """The migration sets and scope for this test: the configuration, or its pgmig marker."""
    sets: Sets = opts.migrations.value
    scope = opts.scope.value
    kwargs: dict[str, Any] = {}
    for marker in request.node.iter_markers("pgmig"):  # closest first
        for key, value in marker.kwargs.items():
            kwargs.setdefault(key, value)
    if not kwargs:
        return sets, scope
    unknown = set(kwargs) - {"migrations", "module", "scope"}
    if unknown:
        pytest.fail(
            f"pgmig marker: unknown argument(s) {sorted(unknown)}; it takes migrations=, "
            "module= and scope=",
            pytrace=False,
        )
    try:
        if "migrations" in kwargs:
            sets = _parse_marker_migrations(
                kwargs["migrations"],
                Path(request.node.path).parent,
                state_of(request.config).checked_folders,
            )
        if kwargs.get("module") is not None:
            module = settings.module_type(str(kwargs["module"]))
            if len(sets) != 1:
                pytest.fail(
                    f"pgmig marker: module={kwargs['module']!r} needs exactly one migrations "
                    f"folder, this test has {len(sets)}",
                    pytrace=False,
                )
            sets = (settings.MigrationSet(module, sets[0].path),)
        if kwargs.get("scope") is not None:
            scope = settings.scope_type(str(kwargs["scope"]))
    except settings.BadValue as exc:
        raise pytest.fail.Exception(f"pgmig marker: {exc}", pytrace=False) from None
    return sets, scope


def _parse_marker_migrations(value: Any, base: Path, checked: set[Path]) -> Sets:
    specs = [value] if isinstance(value, (str, Path)) else list(value)
    sets = tuple(settings.parse_migration_spec(str(spec), base) for spec in specs)
    for mset in sets:
        if mset.path not in checked:
            try:
                settings.check_migrations_folder(mset.path, source="pgmig marker")
            except pytest.UsageError as exc:
                raise pytest.fail.Exception(str(exc), pytrace=False) from None
            checked.add(mset.path)
    return sets


@pytest.fixture(scope="session")
def pgmig_server(request: pytest.FixtureRequest) -> ServerInfo:
    """The run's PostgreSQL server: `.dsn` (admin), `.host`, `.port`, `.database`, `.version`.

    Started on first use: the embedded server from local binaries, a container, or the
    server of --pgmig-dsn.
    """
    return state_of(request.config).server()


@pytest.fixture
def pgmig_schema(request: pytest.FixtureRequest) -> Iterator[PgmigSchema]:
    """This test's migrated schema (in worker scope, the worker's).

    `.name`, `.module_name` (`<lib>_<schema>`) and `.dsn` (search_path set to the schema).
    """
    state = state_of(request.config)
    sets, scope = _plan(request)
    started = time.perf_counter()
    space = state.space()
    if scope == "worker":
        slot = _worker_slot(state, sets)
    else:
        try:
            slot = state.call(space.acquire(sets, spare=True))
        except MigrationFailed as exc:
            fail_test(str(exc))
    space.stats.setup_s.append(time.perf_counter() - started)
    while space.warnings:
        warnings.warn(PgmigWarning(space.warnings.pop(0)), stacklevel=1)
    request.node.stash[SCHEMA] = slot.schema
    yield slot.schema
    if state.server_error is not None:
        return  # the server is gone: nothing to reset, and the test already says so
    started = time.perf_counter()
    kept = request.node.stash.get(KEPT, None) is not None
    if scope == "worker":
        if kept:
            state.call(space.keep(slot))
            state.worker_slots.pop(sets, None)
        else:
            state.call(space.reset_later(slot))
    else:
        state.call(space.keep(slot) if kept else space.release_later(slot))
    space.stats.teardown_s.append(time.perf_counter() - started)


def _worker_slot(state: PgmigState, sets: Sets) -> Slot:
    slot: Slot | None = state.worker_slots.get(sets)
    if slot is not None and not state.call(state.space().ready(slot)):
        # the last test changed its DDL, or its reset failed: the schema was dropped
        del state.worker_slots[sets]
        slot = None
    if slot is None:
        try:
            slot = state.call(state.space().acquire(sets))
        except MigrationFailed as exc:
            fail_test(str(exc))
        state.worker_slots[sets] = slot
    return slot


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
    _require_function_loop(request, "pgmig_conn")
    conn = await asyncpg.connect(pgmig_schema.dsn, timeout=CONNECT_TIMEOUT)
    outer = None
    if _plan(request)[1] == "worker":
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
        await _close(conn)


async def _close(closable: Any) -> None:
    try:
        await asyncio.wait_for(closable.close(), timeout=5)
    except Exception:
        closable.terminate()


@pytest_asyncio.fixture(loop_scope="function")
async def pgmig_pool(
    request: pytest.FixtureRequest, pgmig_schema: PgmigSchema
) -> AsyncIterator[Any]:
    """An asyncpg pool into the schema, sized so that every xdist worker fits the server."""
    _require_function_loop(request, "pgmig_pool")
    size = state_of(request.config).pool_size()
    pool = await asyncpg.create_pool(
        pgmig_schema.dsn, min_size=1, max_size=size, timeout=CONNECT_TIMEOUT
    )
    try:
        yield pool
    finally:
        await _close(pool)


@pytest_asyncio.fixture(loop_scope="function")
async def pgmig_db(pgmig_schema: PgmigSchema, pgmig_conn: Any) -> AsyncIterator[Any]:
    """An AsyncDatabaseManager bound to the schema, on the test's `pgmig_conn` connection.

    `{{tables.users}}` renders to `"<schema>".users`; its writes and pgmig_conn's are one
    session, so they see each other (and roll back together in worker scope).
    """
    from pytest_pgmig.engine.database import AsyncDatabaseManager

    yield AsyncDatabaseManager(pool=OneConnectionPool(pgmig_conn), schema=pgmig_schema.name)


@pytest_asyncio.fixture(loop_scope="function")
async def pgmig_migrations(
    request: pytest.FixtureRequest, pgmig_schema: PgmigSchema, pgmig_db: Any
) -> AsyncIterator[Any]:
    """The AsyncMigrationManager that migrated the schema (module_name=<lib>_<schema>)."""
    from pytest_pgmig.engine.migrations import AsyncMigrationManager

    sets, _ = _plan(request)
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
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Awaitable[PgmigSchema]]]:
    """`await pgmig_factory(migrations=PATH, module=NAME)`: one more migrated schema.

    Each schema it makes is dropped (or reset for reuse) at the test's teardown.

    Example::

        async def test_two_tenants(pgmig_factory):
            a = await pgmig_factory(migrations="migrations", module="billing")
            b = await pgmig_factory(migrations="migrations", module="billing")
            assert a.name != b.name
    """
    state = state_of(request.config)
    base = Path(request.node.path).parent
    slots: list[Slot] = []

    async def make(*, migrations: Any = None, module: str | None = None) -> PgmigSchema:
        space = state.space()
        if migrations is None:
            sets: Sets = state.settings.migrations.value
        else:
            sets = _parse_marker_migrations(migrations, base, state.checked_folders)
        if module is not None:
            try:
                lib = settings.module_type(module)
            except settings.BadValue as exc:
                raise pytest.fail.Exception(f"pgmig_factory: {exc}", pytrace=False) from None
            sets = tuple(settings.MigrationSet(lib, m.path) for m in sets[:1]) + sets[1:]
        try:
            slot: Slot = await asyncio.wrap_future(state.runtime.submit(space.acquire(sets)))
        except MigrationFailed as exc:
            fail_test(str(exc))
        slots.append(slot)
        return slot.schema

    yield make
    for slot in slots:
        state.call(state.space().release_later(slot))
