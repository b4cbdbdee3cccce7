"""pgdbm's test fixtures on pytest-pgmig's databases: swap one conftest import, keep the tests.

A suite written for pgdbm loads its fixtures with ``from pgdbm.fixtures.conftest import *``;
``from pytest_pgmig.pgdbm_fixtures import *`` in its place gives the same names with the same
behaviour, on the run's server instead of ``TEST_DB_*``::

    # conftest.py
    from pytest_pgmig.pgdbm_fixtures import *

    async def test_users(test_db_with_data, db_test_utils):
        assert await db_test_utils.count_rows("users") == 3

As on pgdbm, each test's database is a database of its own, so fixed schema names, managers
with ``schema=...``, extensions and roles-free DDL behave as they do there; it is a copy of a
template, reset in place for a later test instead of dropped (`--pgmig-scope=worker`: one per
worker). Migrations a suite applies in its own fixtures, through pgdbm's
``AsyncMigrationManager`` or ours, are applied once per run (`pytest_pgmig.compat.suites`).
Test modules that import these fixtures from pgdbm by name get ours too. With
``--pgmig-isolation=schema`` each test gets a schema of its own instead, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

try:
    from pgdbm import AsyncDatabaseManager, DatabaseConfig
    from pgdbm import AsyncMigrationManager as PgdbmMigrationManager
    from pgdbm.testing import DatabaseTestCase
except ImportError as exc:  # pragma: no cover - pgdbm users have pgdbm
    raise ImportError(
        "pytest_pgmig.pgdbm_fixtures gives pgdbm's test fixtures, whose managers are pgdbm's: "
        "install pgdbm (pip install pgdbm)."
    ) from exc

from pytest_pgmig.compat.suites import SUITES, Call, Suites
from pytest_pgmig.engine.migrations import AsyncMigrationManager
from pytest_pgmig.engine.templates import quote_identifier
from pytest_pgmig.errors import MigrationFailed
from pytest_pgmig.isolation.base import PgmigSchema, Sets, Slot
from pytest_pgmig.plugin import marker
from pytest_pgmig.plugin.fixtures import isolated_schema, loop_runner
from pytest_pgmig.plugin.state import fail_test, state_of

if TYPE_CHECKING:
    from pytest_pgmig.servers.info import ServerInfo

__all__ = [
    "db_test_utils",
    "test_db",
    "test_db_factory",
    "test_db_isolated",
    "test_db_with_data",
    "test_db_with_schema",
    "test_db_with_tables",
]

# a test's manager needs few connections; pgdbm's default pool opens ten per test
_POOL = {"min_connections": 1, "max_connections": 5}

# pgdbm's fixture tables: users, their projects, and agents working on them
_TABLES = """
CREATE TABLE users (
    id SERIAL PRIMARY KEY,
    email VARCHAR(255) UNIQUE NOT NULL,
    full_name VARCHAR(255),
    is_active BOOLEAN DEFAULT true,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE projects (
    id SERIAL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    owner_id INTEGER REFERENCES users (id),
    description TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE agents (
    id SERIAL PRIMARY KEY,
    project_id INTEGER REFERENCES projects (id),
    title VARCHAR(255) NOT NULL,
    status VARCHAR(50) DEFAULT 'pending',
    assigned_to INTEGER REFERENCES users (id),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
"""
# and their sample rows: alice owns both projects, bob is assigned three of five agents
_DATA = """
INSERT INTO users (email, full_name) VALUES
    ('alice@example.com', 'Alice Smith'),
    ('bob@example.com', 'Bob Jones'),
    ('charlie@example.com', 'Charlie Brown');
INSERT INTO projects (name, owner_id, description)
SELECT p.name, u.id, p.description
FROM (VALUES (1, 'Project Alpha', 'First project'), (2, 'Project Beta', 'Second project'))
    AS p (n, name, description),
    users AS u
WHERE u.email = 'alice@example.com'
ORDER BY p.n;
INSERT INTO agents (project_id, title, status, assigned_to)
SELECT pr.id, a.title, a.status, CASE WHEN a.bob THEN b.id END
FROM (VALUES
        (1, 'Project Alpha', 'Design database schema', 'completed', true),
        (2, 'Project Alpha', 'Implement user authentication', 'in_progress', true),
        (3, 'Project Alpha', 'Write tests', 'pending', false),
        (4, 'Project Beta', 'Setup CI/CD', 'in_progress', true),
        (5, 'Project Beta', 'Deploy to production', 'pending', false)
    ) AS a (n, project, title, status, bob)
JOIN projects AS pr ON pr.name = a.project
CROSS JOIN (SELECT id FROM users WHERE email = 'bob@example.com') AS b
ORDER BY a.n;
"""


def _config(place: PgmigSchema, schema: str | None = None, **kwargs: Any) -> DatabaseConfig:
    """A manager's config for `place`: a database of its own, bound to `schema` as pgdbm's
    are; or, under schema isolation, bound to the test's schema whatever was asked."""
    if place.database is None:
        schema = place.name
    return DatabaseConfig(connection_string=place.dsn, schema=schema, **{**_POOL, **kwargs})


# the manager classes whose calls a suite's set-up makes are served from templates
_SERVED: list[Suites] = []


def _serve(cls: Any) -> None:
    """Route `cls.apply_pending_migrations` through the process's `Suites` (a manager has
    no pytest config to find it by, hence the module-level reference)."""
    original = cls.apply_pending_migrations
    if getattr(original, "pgmig_served", False):
        return

    async def apply_pending_migrations(self: Any, dry_run: bool = False) -> dict[str, Any]:
        if dry_run or not _SERVED:
            return dict(await original(self, dry_run))
        call = Call(
            Path(self.migrations_path).resolve(),
            self.module_name,
            self.db.schema,
            self.migrations_table,
        )
        return await _SERVED[0].apply(
            call,
            lambda: self.db.fetch_value("SELECT current_database()"),
            lambda: original(self, dry_run),
        )

    apply_pending_migrations.pgmig_served = True  # type: ignore[attr-defined]
    apply_pending_migrations.__doc__ = original.__doc__
    cls.apply_pending_migrations = apply_pending_migrations


_serve(PgdbmMigrationManager)
_serve(AsyncMigrationManager)


def _suites(config: pytest.Config) -> Suites:
    suites = config.stash.get(SUITES, None)
    if suites is None:
        suites = config.stash[SUITES] = Suites()
        _SERVED[:] = [suites]
    return suites


def _managed(
    request: pytest.FixtureRequest, server: ServerInfo, schema: str | None = None
) -> Iterator[Any]:
    """A connected pgdbm manager on a database of the test's own, holding what earlier
    tests' set-ups with the same fixtures applied (bound to `schema`, made, as pgdbm's)."""
    runner = loop_runner(request, request.fixturename or "test_db")
    suites = _suites(request.config)
    name, sets = _place(request.config, suites, request.node, "test_db")
    _, scope = marker.plan(request)
    with isolated_schema(request, server, sets, scope=scope, database=True) as place:
        suites.bind(name, place.database, schema)
        db = AsyncDatabaseManager(_config(place, schema))
        runner.run(db.connect())
        try:
            if schema is not None and place.database is not None:
                runner.run(db.execute(_make_schema(schema)))
            yield db
        finally:
            runner.run(db.disconnect())


def _make_schema(schema: str) -> str:
    """What pgdbm's fixtures run for a manager bound to `schema` (the name quoted safely)."""
    return f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}"


def _place(
    config: pytest.Config, suites: Suites, item: pytest.Item, kind: str
) -> tuple[tuple[str, int], Sets]:
    """The test's next database of `kind`, and what it should already hold: under
    --pgmig-isolation=schema a place is a schema, where nothing learned is served."""
    name, sets = suites.place(item, kind)
    if state_of(config).settings.isolation.value == "schema":
        return name, ()
    return name, sets


@pytest.fixture
def test_db(request: pytest.FixtureRequest, pgmig_server: ServerInfo) -> Iterator[Any]:
    """pgdbm's ``test_db``: a manager on an empty database of the test's own."""
    yield from _managed(request, pgmig_server)


@pytest.fixture
def test_db_with_schema(request: pytest.FixtureRequest, pgmig_server: ServerInfo) -> Iterator[Any]:
    """pgdbm's ``test_db_with_schema``: the manager bound to schema ``test_schema``, made."""
    yield from _managed(request, pgmig_server, "test_schema")


class TestDbFactory:
    """pgdbm's database factory: ``await test_db_factory.create_db(suffix, schema=...)``."""

    __test__ = False  # not a test class, though its name starts with Test

    def __init__(self, request: pytest.FixtureRequest, server: ServerInfo) -> None:
        self._state = state_of(request.config)
        self._config = request.config
        self._item = request.node
        self._suites = _suites(request.config)
        self._isolation = self._state.isolation_on(server)
        self._slots: list[Slot] = []
        self._setup_s = 0.0
        self.databases: list[AsyncDatabaseManager] = []

    async def create_db(
        self, suffix: str | None = None, schema: str | None = None, **kwargs: Any
    ) -> AsyncDatabaseManager:
        """One more empty database of its own; with `schema`, its manager bound to that
        schema, made (as pgdbm's)."""
        runtime = self._state.runtime
        assert runtime is not None
        name, sets = _place(self._config, self._suites, self._item, "create_db")
        started = time.perf_counter()
        try:
            slot = await asyncio.wrap_future(
                runtime.submit(self._isolation.acquire(sets, lane="factory", database=True))
            )
        except MigrationFailed as exc:
            fail_test(str(exc))
        self._setup_s += time.perf_counter() - started
        self._slots.append(slot)
        self._suites.bind(name, slot.schema.database, schema)
        db = AsyncDatabaseManager(_config(slot.schema, schema, **kwargs))
        await db.connect()
        self.databases.append(db)
        if schema is not None and slot.schema.database is not None:
            await db.execute(_make_schema(schema))
        return db

    async def cleanup(self) -> None:
        """Disconnect every manager; their schemas go back to be reset."""
        for db in self.databases:
            await db.disconnect()
        self.databases = []

    def release(self) -> None:
        """Give the databases back, counting what they cost as one test's isolation."""
        if not self._slots:
            return
        started = time.perf_counter()
        for slot in self._slots:
            self._state.call(self._isolation.release(slot))
        self._slots = []
        stats = self._isolation.stats
        stats.setup_s.append(self._setup_s)
        stats.teardown_s.append(time.perf_counter() - started)


@pytest.fixture
def test_db_factory(request: pytest.FixtureRequest, pgmig_server: ServerInfo) -> Iterator[Any]:
    """pgdbm's ``test_db_factory``: several empty databases in one test, cleaned up after."""
    runner = loop_runner(request, "test_db_factory")
    factory = TestDbFactory(request, pgmig_server)
    try:
        yield factory
    finally:
        try:
            runner.run(factory.cleanup())
        finally:
            factory.release()


@pytest.fixture
def test_db_with_tables(request: pytest.FixtureRequest, test_db: Any) -> Any:
    """pgdbm's ``test_db_with_tables``: ``test_db`` with users, projects and agents."""
    loop_runner(request, "test_db_with_tables").run(test_db.execute(_TABLES))
    return test_db


@pytest.fixture
def test_db_with_data(request: pytest.FixtureRequest, test_db_with_tables: Any) -> Any:
    """pgdbm's ``test_db_with_data``: those tables with 3 users, 2 projects and 5 agents."""
    loop_runner(request, "test_db_with_data").run(test_db_with_tables.execute(_DATA))
    return test_db_with_tables


@pytest.fixture
def db_test_utils(test_db: Any) -> DatabaseTestCase:
    """pgdbm's ``db_test_utils``: its DatabaseTestCase helpers on ``test_db``."""
    return DatabaseTestCase(test_db)


@pytest.fixture
def test_db_isolated(request: pytest.FixtureRequest, test_db: Any) -> Iterator[Any]:
    """pgdbm's ``test_db_isolated``: a transaction on ``test_db``, rolled back after the test."""
    runner = loop_runner(request, "test_db_isolated")
    transaction = test_db.transaction()
    tx = runner.run(transaction.__aenter__())
    runner.run(tx.execute("SAVEPOINT test_isolation"))
    try:
        yield tx
    finally:
        runner.run(tx.execute("ROLLBACK TO SAVEPOINT test_isolation"))
        runner.run(transaction.__aexit__(None, None, None))
