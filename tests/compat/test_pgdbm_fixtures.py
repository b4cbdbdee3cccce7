"""A suite written against pgdbm's fixtures runs on ours, changing only the conftest import."""

from __future__ import annotations

import pytest
from plugin_support import make_project

pytestmark = pytest.mark.usefixtures("clean_env")

# The shape of pgdbm's documented examples: each fixture, pgdbm's migration manager and
# pytest-pgmig's on the managers they give, and the isolation between tests.
PGDBM_SUITE = """
import pytest
from pgdbm import AsyncMigrationManager as PgdbmMigrations

from pytest_pgmig import AsyncMigrationManager as PgmigMigrations

pytestmark = pytest.mark.asyncio


async def test_select_one(test_db):
    result = await test_db.fetch_one("SELECT 1 AS one")
    assert result["one"] == 1


@pytest.mark.parametrize("i", range(2))
async def test_each_test_starts_empty(test_db, i):
    await test_db.execute("CREATE TABLE notes (id SERIAL PRIMARY KEY, body TEXT)")
    await test_db.execute("INSERT INTO notes (body) VALUES ($1)", f"note {i}")
    assert await test_db.fetch_value("SELECT count(*) FROM notes") == 1


async def test_with_schema(test_db_with_schema):
    await test_db_with_schema.execute("CREATE TABLE {{tables.users}} (id INT)")
    await test_db_with_schema.execute("INSERT INTO {{tables.users}} VALUES (1)")
    assert await test_db_with_schema.fetch_value("SELECT count(*) FROM {{tables.users}}") == 1
    assert await test_db_with_schema.table_exists("users")


async def test_factory(test_db_factory):
    db1 = await test_db_factory.create_db("db1")
    db2 = await test_db_factory.create_db("db2", schema="custom")
    await db1.execute("CREATE TABLE test1 (id INT)")
    await db2.execute("CREATE TABLE {{tables.test2}} (id INT)")
    assert await db1.fetch_value("SELECT to_regclass('test2') IS NULL")
    assert await db2.fetch_value("SELECT count(*) FROM {{tables.test2}}") == 0


async def test_tables(test_db_with_tables, db_test_utils):
    for table in ("users", "projects", "agents"):
        assert await db_test_utils.table_exists(table)
    assert await db_test_utils.count_rows("users") == 0


async def test_data(test_db_with_data, db_test_utils):
    assert await db_test_utils.count_rows("users") == 3
    assert await db_test_utils.count_rows("projects") == 2
    assert await db_test_utils.count_rows("agents") == 5
    owners = await test_db_with_data.fetch_all(
        "SELECT DISTINCT u.email FROM projects p JOIN users u ON u.id = p.owner_id"
    )
    assert [r["email"] for r in owners] == ["alice@example.com"]
    bob = await test_db_with_data.fetch_value(
        "SELECT count(*) FROM agents a JOIN users u ON u.id = a.assigned_to "
        "WHERE u.email = 'bob@example.com'"
    )
    assert bob == 3


async def test_utils_create_user(test_db_with_tables, db_test_utils):
    user = await db_test_utils.create_test_user("test@example.com")
    assert user["email"] == "test@example.com"
    assert await db_test_utils.count_rows("users") == 1


async def test_isolated_writes(test_db_with_tables, test_db_isolated):
    await test_db_isolated.execute("INSERT INTO users (email) VALUES ('tx@example.com')")
    assert await test_db_isolated.fetch_value("SELECT count(*) FROM users") == 1


@pytest.mark.parametrize("engine", [PgdbmMigrations, PgmigMigrations], ids=["pgdbm", "pgmig"])
async def test_migrations_on_the_manager(test_db, tmp_path, engine):
    (tmp_path / "001_accounts.sql").write_text(
        "CREATE TABLE {{tables.accounts}} (id SERIAL PRIMARY KEY, name TEXT);"
    )
    manager = engine(test_db, migrations_path=str(tmp_path), module_name="app")
    assert (await manager.apply_pending_migrations())["status"] == "success"
    assert (await manager.apply_pending_migrations())["status"] == "up_to_date"
    assert await test_db.table_exists("accounts")
"""


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "n2"])
def test_a_pgdbm_suite_passes_with_one_import_changed(
    pytester: pytest.Pytester, server_dsn: str, xdist: bool
) -> None:
    make_project(pytester, PGDBM_SUITE, ini="[pytest]\nasyncio_mode = strict\n")
    # the only line a pgdbm user changes: `from pgdbm.fixtures.conftest import *` becomes
    pytester.makeconftest("from pytest_pgmig.pgdbm_fixtures import *\n")
    args = ["-p", "no:randomly", f"--pgmig-dsn={server_dsn}", *(["-n", "2"] if xdist else [])]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=11)


def test_pgdbm_suite_on_the_embedded_server(pytester: pytest.Pytester) -> None:
    make_project(pytester, PGDBM_SUITE, ini="[pytest]\nasyncio_mode = strict\n")
    pytester.makeconftest("from pytest_pgmig.pgdbm_fixtures import *\n")
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=11)
