"""Real pgdbm suites' patterns on our fixtures: fixed schemas, schema= managers, migrations a
suite applies per test in its own fixture (served from a template after the first), pgdbm's
fixtures imported by name, and the user's database left as it was."""

from __future__ import annotations

import textwrap

import pytest
from plugin_support import sql
from reliability_support import text_of

pytestmark = pytest.mark.usefixtures("clean_env")

# a migration set as these suites keep one: a fixed schema with a trigger, an extension
FILES = {
    "001_servers.sql": """
CREATE SCHEMA IF NOT EXISTS mcp_client;
CREATE TABLE IF NOT EXISTS mcp_client.servers (
    id int PRIMARY KEY,
    name text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT '2000-01-01'
);
CREATE OR REPLACE FUNCTION mcp_client.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE TRIGGER tr_mcp_servers_updated_at BEFORE UPDATE ON mcp_client.servers
    FOR EACH ROW EXECUTE FUNCTION mcp_client.touch();
""",
    "002_extension.sql": "CREATE EXTENSION IF NOT EXISTS pg_trgm;\n",
    **{
        f"{n:03d}_table_{n}.sql": f"CREATE TABLE t{n} (id serial PRIMARY KEY, v text);\n"
        for n in range(3, 21)
    },
}

CONFTEST = """
from pathlib import Path

import pytest_asyncio
from pgdbm import AsyncDatabaseManager, AsyncMigrationManager, DatabaseConfig

from pytest_pgmig.pgdbm_fixtures import *

MIGRATIONS = Path(__file__).parent / "migrations"
APPLIED = []  # what each set-up's call returned, checked by the tests


@pytest_asyncio.fixture
async def app_db(test_db):
    migrations = AsyncMigrationManager(test_db, migrations_path=str(MIGRATIONS), module_name="app")
    result = await migrations.apply_pending_migrations()
    APPLIED.append(result)
    yield test_db


@pytest_asyncio.fixture
async def billing(test_db):
    # a manager with a fixed schema= name, on the test's database, as the app builds it
    config = DatabaseConfig(connection_string=test_db.config.get_dsn(), schema="billing")
    db = AsyncDatabaseManager(config)
    await db.connect()
    await db.execute('CREATE SCHEMA IF NOT EXISTS billing')
    await db.execute("CREATE TABLE IF NOT EXISTS {{tables.invoices}} (id int PRIMARY KEY)")
    yield db
    await db.disconnect()
"""

TESTS = """
import pytest
from conftest import APPLIED

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("i", range(6))
async def test_fixed_schema_and_trigger(app_db, billing, i):
    # every test sees pgdbm's answer of a fresh database: all 20 files applied
    assert APPLIED[-1]["status"] == "success"
    assert len(APPLIED[-1]["applied"]) == 20
    # a fixed id and a fixed schema: shared between tests, the second would collide
    await app_db.execute("INSERT INTO mcp_client.servers (id, name) VALUES (1, 'a')")
    await app_db.execute("UPDATE mcp_client.servers SET name = 'b'")
    assert await app_db.fetch_value("SELECT updated_at > '2001-01-01' FROM mcp_client.servers")
    await billing.execute("INSERT INTO {{tables.invoices}} VALUES (1)")
    assert await app_db.fetch_value("SELECT similarity('abc', 'abd') > 0")
    assert await app_db.fetch_value("SELECT count(*) FROM t20") == 0
    await app_db.execute("INSERT INTO t20 (v) VALUES ('x')")
"""

BODY = """
import pytest
from pgdbm import AsyncMigrationManager

pytestmark = pytest.mark.asyncio


async def test_a_test_of_the_migrations_sees_them_applied(test_db, tmp_path):
    (tmp_path / "001_a.sql").write_text("CREATE TABLE a (id int);")
    (tmp_path / "002_b.sql").write_text("CREATE TABLE b (id int);")
    manager = AsyncMigrationManager(test_db, migrations_path=str(tmp_path), module_name="m")
    result = await manager.apply_pending_migrations()
    assert result["status"] == "success" and len(result["applied"]) == 2
    assert (await manager.apply_pending_migrations())["status"] == "up_to_date"
"""

BY_NAME = """
import pytest
from pgdbm.fixtures.conftest import test_db_factory

pytestmark = pytest.mark.asyncio


async def test_the_factory_imported_by_name_is_ours(test_db_factory):
    db = await test_db_factory.create_db("one", schema="custom")
    name = await db.fetch_value("SELECT current_database()")
    assert name.startswith("pgmig_"), name
    await db.execute("CREATE TABLE {{tables.x}} (id int)")
"""


def project(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "migrations"
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(text)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_app=textwrap.dedent(TESTS),
        test_body=textwrap.dedent(BODY),
        test_by_name=textwrap.dedent(BY_NAME),
    )
    pytester.makeini("[pytest]\nasyncio_mode = strict\n")


def catalog(dsn: str) -> list[tuple[object, ...]]:
    # the plugin's own registry stays in a DSN database between runs, as documented
    return sql(
        dsn,
        "SELECT 'schema', nspname FROM pg_namespace WHERE nspname <> 'pgmig_registry' UNION ALL "
        "SELECT 'extension', extname FROM pg_extension UNION ALL "
        "SELECT 'role', rolname FROM pg_roles ORDER BY 1, 2",
    )


@pytest.mark.parametrize("scope", ["test", "worker"])
@pytest.mark.parametrize("mode", ["dsn, -n 2", "embedded, serial"])
def test_a_pgdbm_users_suite_passes_with_the_import_switched(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, mode: str, scope: str
) -> None:
    project(pytester)
    args = ["-p", "no:randomly", f"--pgmig-scope={scope}"]
    dsn = None
    if mode.startswith("dsn"):
        dsn = request.getfixturevalue("fresh_database")
        args += ["-n", "2", f"--pgmig-dsn={dsn}"]
        before = catalog(dsn)
    else:
        request.getfixturevalue("run_base")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == 0, text_of(result)
    result.assert_outcomes(passed=8)
    # each process applied the set for real once (20 files), not once per test
    text = text_of(result)
    applied = int(text.split("migrations applied: ")[1].split()[0])
    assert applied <= 20 * (2 if dsn else 1), text
    result.stdout.fnmatch_lines([f"*scope {scope} [[]cli[]]*", "*databases: * created*"])
    assert "over 0 tests" not in text
    if dsn is not None:
        # fixed schemas, the extension, the schemas' roles: nothing of the run is left
        assert catalog(dsn) == before


def test_changed_files_mean_a_fresh_apply(pytester: pytest.Pytester, server_dsn: str) -> None:
    project(pytester)
    pytester.makepyfile(
        test_change="""
        import pytest
        from conftest import APPLIED, MIGRATIONS

        pytestmark = pytest.mark.asyncio


        async def test_1_first(app_db):
            assert len(APPLIED[-1]["applied"]) == 20


        async def test_2_served_then_a_file_is_added(app_db):
            assert len(APPLIED[-1]["applied"]) == 20
            (MIGRATIONS / "021_more.sql").write_text("CREATE TABLE t21 (id int);")


        async def test_3_applied_afresh(app_db):
            assert len(APPLIED[-1]["applied"]) == 21
            assert await app_db.table_exists("t21")
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", f"--pgmig-dsn={server_dsn}", "test_change.py"
    )
    assert result.ret == 0, text_of(result)
    result.assert_outcomes(passed=3)


def test_a_set_up_that_varies_is_caught_and_no_longer_served(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    project(pytester)
    pytester.makepyfile(
        test_vary="""
        import pytest
        import pytest_asyncio
        from pgdbm import AsyncMigrationManager

        pytestmark = pytest.mark.asyncio


        @pytest_asyncio.fixture
        async def varying(test_db, request, tmp_path_factory):
            folder = tmp_path_factory.mktemp(request.node.name[:12])
            (folder / "001_x.sql").write_text("CREATE TABLE x (id int);")
            manager = AsyncMigrationManager(test_db, migrations_path=str(folder), module_name="v")
            yield await manager.apply_pending_migrations()


        @pytest.mark.parametrize("i", range(3))
        async def test_varying(varying, i):
            assert varying["status"] == "success"
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", f"--pgmig-dsn={server_dsn}", "test_vary.py"
    )
    # the second test's set-up meets a database served for another folder: it fails saying
    # so, and the third gets an empty database again
    result.assert_outcomes(passed=2, errors=1)
    assert "Its fixtures apply different migrations from test to test" in text_of(result)


FACTORY_CONFTEST = """
from pathlib import Path

import pytest_asyncio
from pgdbm import AsyncMigrationManager

pytest_plugins = ("pytest_pgmig.pgdbm_fixtures",)

MIGRATIONS = Path(__file__).parent / "migrations"
APPLIED = []


@pytest_asyncio.fixture
async def server_db(test_db_factory):
    db = await test_db_factory.create_db(suffix="server", schema="llm_test")
    migrations = AsyncMigrationManager(db, migrations_path=str(MIGRATIONS), module_name="llm_test")
    APPLIED.append(await migrations.apply_pending_migrations())
    return db
"""

FACTORY_TESTS = """
import pytest
from conftest import APPLIED

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("i", range(5))
async def test_in_a_schema_of_a_factory_database(server_db, i):
    assert APPLIED[-1]["status"] == "success" and len(APPLIED[-1]["applied"]) == 20
    assert await server_db.fetch_value("SELECT current_schema()") == "llm_test"
    assert await server_db.table_exists("t20")
    await server_db.execute("INSERT INTO mcp_client.servers (id, name) VALUES (1, 'a')")
"""


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "n2"])
def test_a_factory_database_migrated_in_a_schema_is_served_too(
    pytester: pytest.Pytester, server_dsn: str, xdist: bool
) -> None:
    # llmring-server's shape: pgdbm's fixtures as a plugin, a factory database with a
    # schema, the suite's migrations applied into it for every test
    folder = pytester.path / "migrations"
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(text)
    pytester.makeconftest(FACTORY_CONFTEST)
    pytester.makepyfile(test_server=textwrap.dedent(FACTORY_TESTS))
    pytester.makeini("[pytest]\nasyncio_mode = strict\n")
    args = ["-p", "no:randomly", f"--pgmig-dsn={server_dsn}", *(["-n", "2"] if xdist else [])]
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == 0, text_of(result)
    result.assert_outcomes(passed=5)
    text = text_of(result)
    # the template was migrated once in a process that had a second test; the suite's own
    # calls found it done (a worker may have had one test only)
    applied = int(text.split("migrations applied: ")[1].split()[0])
    assert applied in ((20, 40) if xdist else (20,)), text


def test_a_set_up_that_stops_migrating_is_caught(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    project(pytester)
    pytester.makepyfile(
        test_stop="""
        import pytest
        import pytest_asyncio
        from conftest import MIGRATIONS
        from pgdbm import AsyncMigrationManager

        pytestmark = pytest.mark.asyncio
        CALLS = []


        @pytest_asyncio.fixture
        async def sometimes(test_db):
            if not CALLS:  # only the first test's set-up migrates
                manager = AsyncMigrationManager(test_db, migrations_path=str(MIGRATIONS))
                CALLS.append(await manager.apply_pending_migrations())
            yield test_db


        @pytest.mark.parametrize("i", range(3))
        async def test_sometimes(sometimes, i):
            assert await sometimes.table_exists("t20") == (i == 0)
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", f"--pgmig-dsn={server_dsn}", "test_stop.py"
    )
    # the second test's database was served the first one's migrations, which its set-up
    # no longer applied: it fails saying so; the third gets an empty database
    result.assert_outcomes(passed=2, failed=1)
    assert "but this test's set-up did not apply them" in text_of(result)
