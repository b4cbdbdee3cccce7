"""pgdbm's test fixtures on pytest-pgmig's schemas: swap one conftest import, keep the tests.

A suite written for pgdbm loads its fixtures with ``from pgdbm.fixtures.conftest import *``;
``from pytest_pgmig.pgdbm_fixtures import *`` in its place gives the same names with the same
behaviour, without a database created and dropped per test::

    # conftest.py
    from pytest_pgmig.pgdbm_fixtures import *

    async def test_users(test_db_with_data, db_test_utils):
        assert await db_test_utils.count_rows("users") == 3

What differs: each test's database is an empty schema of its own on the run's server (pgdbm:
a new database from ``TEST_DB_*``), first on its connections' search_path, and every manager
is bound to that schema (``db.schema``), so ``{{tables.x}}``, unqualified names and
``table_exists`` all meet in it. ``test_db_with_schema`` and
``test_db_factory.create_db(schema=...)`` use it too, rather than a schema named
``test_schema`` (or as asked): tests running side by side cannot share a schema's name. The
managers are pgdbm's own ``AsyncDatabaseManager``: pgdbm's ``AsyncMigrationManager`` and
pytest-pgmig's both take them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

try:
    from pgdbm import AsyncDatabaseManager, DatabaseConfig
    from pgdbm.testing import DatabaseTestCase
except ImportError as exc:  # pragma: no cover - pgdbm users have pgdbm
    raise ImportError(
        "pytest_pgmig.pgdbm_fixtures gives pgdbm's test fixtures, whose managers are pgdbm's: "
        "install pgdbm (pip install pgdbm)."
    ) from exc

from pytest_pgmig.errors import MigrationFailed
from pytest_pgmig.isolation.base import PgmigSchema, Slot
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


def _config(schema: PgmigSchema, **kwargs: Any) -> DatabaseConfig:
    return DatabaseConfig(connection_string=schema.dsn, schema=schema.name, **{**_POOL, **kwargs})


def _managed(request: pytest.FixtureRequest, server: ServerInfo) -> Iterator[Any]:
    """A connected pgdbm manager bound to an empty schema of the test's own."""
    runner = loop_runner(request, request.fixturename or "test_db")
    with isolated_schema(request, server, (), scope="test") as schema:
        db = AsyncDatabaseManager(_config(schema))
        runner.run(db.connect())
        try:
            yield db
        finally:
            runner.run(db.disconnect())


@pytest.fixture
def test_db(request: pytest.FixtureRequest, pgmig_server: ServerInfo) -> Iterator[Any]:
    """pgdbm's ``test_db``: a manager on an empty database of the test's own (here a schema)."""
    yield from _managed(request, pgmig_server)


@pytest.fixture
def test_db_with_schema(request: pytest.FixtureRequest, pgmig_server: ServerInfo) -> Iterator[Any]:
    """pgdbm's ``test_db_with_schema``: ``{{tables.x}}`` renders into the test's schema."""
    yield from _managed(request, pgmig_server)


class TestDbFactory:
    """pgdbm's database factory: ``await test_db_factory.create_db(suffix, schema=...)``."""

    __test__ = False  # not a test class, though its name starts with Test

    def __init__(self, request: pytest.FixtureRequest, server: ServerInfo) -> None:
        self._state = state_of(request.config)
        self._isolation = self._state.isolation_on(server)
        self._slots: list[Slot] = []
        self.databases: list[AsyncDatabaseManager] = []

    async def create_db(
        self, suffix: str | None = None, schema: str | None = None, **kwargs: Any
    ) -> AsyncDatabaseManager:
        """One more empty database (a schema of its own, whatever `schema` asks for)."""
        runtime = self._state.runtime
        assert runtime is not None
        try:
            slot = await asyncio.wrap_future(
                runtime.submit(self._isolation.acquire((), lane="factory"))
            )
        except MigrationFailed as exc:
            fail_test(str(exc))
        self._slots.append(slot)
        db = AsyncDatabaseManager(_config(slot.schema, **kwargs))
        await db.connect()
        self.databases.append(db)
        return db

    async def cleanup(self) -> None:
        """Disconnect every manager; their schemas go back to be reset."""
        for db in self.databases:
            await db.disconnect()
        self.databases = []

    def release(self) -> None:
        for slot in self._slots:
            self._state.call(self._isolation.release(slot))
        self._slots = []


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
