"""The async fixtures on every event loop scope, and pgmig_dsn in every driver users bring."""

from __future__ import annotations

import pytest
from plugin_support import make_project

pytestmark = pytest.mark.usefixtures("clean_env")

# Every loop scope pytest-asyncio offers, in one module: each test checks that the fixtures'
# connections belong to the loop it runs on, and that they work there. The session-loop
# tests share an app-wide pool made by a session-scoped async fixture, as FastAPI suites do.
LOOP_TESTS = """
import asyncio

import asyncpg
import pytest
import pytest_asyncio

LOOPS = {}


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def app_pool(pgmig_server):
    pool = await asyncpg.create_pool(pgmig_server.dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def check(name, conn, db, migrations):
    loop = asyncio.get_running_loop()
    assert conn._loop is loop
    LOOPS.setdefault(name, loop)
    assert LOOPS[name] is loop  # tests of one loop scope share it
    await conn.execute("INSERT INTO users (name) VALUES ('x')")
    assert await db.fetch_value("SELECT count(*) FROM {{tables.users}}") == 2
    assert (await migrations.apply_pending_migrations())["status"] == "up_to_date"


@pytest.mark.asyncio
async def test_default_loop(pgmig_conn, pgmig_db, pgmig_migrations):
    await check("default", pgmig_conn, pgmig_db, pgmig_migrations)


@pytest.mark.asyncio(loop_scope="function")
async def test_function_loop(pgmig_conn, pgmig_db, pgmig_migrations, pgmig_pool):
    name = f"function {id(asyncio.get_running_loop())}"
    await check(name, pgmig_conn, pgmig_db, pgmig_migrations)
    # in worker scope pgmig_conn writes in a transaction the pool does not see
    assert await pgmig_pool.fetchval("SELECT count(*) >= 1 FROM users")


@pytest.mark.asyncio(loop_scope="class")
class TestClassLoop:
    async def test_one(self, pgmig_conn, pgmig_db, pgmig_migrations):
        await check("class", pgmig_conn, pgmig_db, pgmig_migrations)

    async def test_two(self, pgmig_conn, pgmig_db, pgmig_migrations):
        await check("class", pgmig_conn, pgmig_db, pgmig_migrations)


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop(pgmig_conn, pgmig_db, pgmig_migrations, pgmig_pool):
    await check("module", pgmig_conn, pgmig_db, pgmig_migrations)
    assert pgmig_pool._loop is asyncio.get_running_loop()
    # in worker scope pgmig_conn writes in a transaction the pool does not see
    assert await pgmig_pool.fetchval("SELECT count(*) >= 1 FROM users")


@pytest.mark.asyncio(loop_scope="package")
async def test_package_loop(pgmig_conn, pgmig_db, pgmig_migrations):
    await check("package", pgmig_conn, pgmig_db, pgmig_migrations)


@pytest.mark.asyncio(loop_scope="session")
async def test_session_loop(pgmig_conn, pgmig_db, pgmig_migrations, app_pool):
    await check("session", pgmig_conn, pgmig_db, pgmig_migrations)
    assert await app_pool.fetchval("SELECT 1") == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_session_loop_again(pgmig_conn, pgmig_db, pgmig_migrations, app_pool, pgmig_pool):
    await check("session", pgmig_conn, pgmig_db, pgmig_migrations)
    # in worker scope pgmig_conn writes in a transaction the pool does not see
    assert await pgmig_pool.fetchval("SELECT count(*) >= 1 FROM users")
"""
LOOP_PASSED = 8

INI = """\
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "n2"])
@pytest.mark.parametrize("scope", ["test", "worker"])
def test_async_fixtures_on_every_loop_scope(
    pytester: pytest.Pytester, server_dsn: str, mode: str, xdist: bool, scope: str
) -> None:
    make_project(pytester, LOOP_TESTS, ini=INI.format(mode=mode))
    args = ["-p", "no:randomly", "--pgmig-migrations=migrations", f"--pgmig-scope={scope}"]
    args += [f"--pgmig-dsn={server_dsn}"]
    if xdist:
        # every test of a loop scope on one worker, as pytest-asyncio's loops are per process
        result = pytester.runpytest_subprocess(*args, "-n", "2", "--dist=loadfile")
    else:
        result = pytester.runpytest(*args)
    result.assert_outcomes(passed=LOOP_PASSED)


def test_async_fixtures_on_the_ini_default_loop_on_the_embedded_server(
    pytester: pytest.Pytester,
) -> None:
    """`asyncio_default_test_loop_scope = session`: unmarked tests share the session loop."""
    make_project(
        pytester,
        """
        import asyncio

        LOOPS = set()

        async def test_a(pgmig_conn, pgmig_pool):
            LOOPS.add(asyncio.get_running_loop())
            assert pgmig_conn._loop is asyncio.get_running_loop()
            assert await pgmig_pool.fetchval("SELECT count(*) FROM users") == 1

        async def test_b(pgmig_conn, pgmig_db):
            LOOPS.add(asyncio.get_running_loop())
            assert len(LOOPS) == 1
            assert await pgmig_db.fetch_value("SELECT count(*) FROM {{tables.users}}") == 1
        """,
        ini=INI.format(mode="auto") + "asyncio_default_test_loop_scope = session\n",
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--pgmig-migrations=migrations", "-n", "2", "--dist=loadfile"
    )
    result.assert_outcomes(passed=2)
