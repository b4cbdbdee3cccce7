"""The async fixtures on every event loop scope, and pgmig_dsn in every driver users bring."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from plugin_support import make_project, role_dsn, sql

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


def server_args(request: pytest.FixtureRequest, server: str) -> list[str]:
    """The DSN of the suite's server, or a private run folder for an embedded one."""
    if server == "dsn":
        return [f"--pgmig-dsn={request.getfixturevalue('server_dsn')}"]
    request.getfixturevalue("run_base")
    return []


@pytest.mark.parametrize("mode", ["strict", "auto"])
@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "n2"])
@pytest.mark.parametrize("scope", ["test", "worker"])
@pytest.mark.parametrize("server", ["dsn", "embedded"])
def test_async_fixtures_on_every_loop_scope(
    pytester: pytest.Pytester,
    request: pytest.FixtureRequest,
    mode: str,
    xdist: bool,
    scope: str,
    server: str,
) -> None:
    make_project(pytester, LOOP_TESTS, ini=INI.format(mode=mode))
    args = ["-p", "no:randomly", "--pgmig-migrations=migrations", f"--pgmig-scope={scope}"]
    args += server_args(request, server)
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


# Every driver users bring, on pgmig_dsn unchanged (async engines by swapping the scheme):
# each lands in the test's schema, and sees the extension schema's objects after it.
DRIVER_TESTS = """
import asyncio

import asyncpg
import psycopg
import psycopg2
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

Q = "SELECT current_schema(), count(*) FROM users"


def check(row, pgmig_schema):
    assert tuple(row) == (pgmig_schema.name, 1), row


def test_psycopg(pgmig_dsn, pgmig_schema):
    with psycopg.connect(pgmig_dsn) as conn:
        check(conn.execute(Q).fetchone(), pgmig_schema)


def test_psycopg2(pgmig_dsn, pgmig_schema):
    conn = psycopg2.connect(pgmig_dsn)
    try:
        cur = conn.cursor()
        cur.execute(Q)
        check(cur.fetchone(), pgmig_schema)
    finally:
        conn.close()


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "postgresql+psycopg2"])
def test_sqlalchemy_sync(pgmig_dsn, pgmig_schema, scheme):
    engine = sa.create_engine(pgmig_dsn.replace("postgresql://", scheme + "://", 1))
    try:
        with engine.connect() as conn:
            check(conn.execute(sa.text(Q)).one(), pgmig_schema)
    finally:
        engine.dispose()


@pytest.mark.asyncio
async def test_asyncpg(pgmig_dsn, pgmig_schema):
    conn = await asyncpg.connect(pgmig_dsn)
    try:
        check(await conn.fetchrow(Q), pgmig_schema)
    finally:
        await conn.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["postgresql+asyncpg", "postgresql+psycopg"])
async def test_sqlalchemy_async(pgmig_dsn, pgmig_schema, scheme):
    engine = create_async_engine(pgmig_dsn.replace("postgresql://", scheme + "://", 1))
    try:
        async with engine.connect() as conn:
            check((await conn.execute(sa.text(Q))).one(), pgmig_schema)
            await conn.execute(sa.text("INSERT INTO users (name) VALUES ('x')"))
    finally:
        await engine.dispose()


@pytest.mark.asyncio
async def test_sqlalchemy_async_with_the_documented_helper(pgmig_schema):
    url = pgmig_schema.plain_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(
        url, connect_args={"server_settings": dict(pgmig_schema.server_settings)}
    )
    try:
        async with engine.connect() as conn:
            check((await conn.execute(sa.text(Q))).one(), pgmig_schema)
    finally:
        await engine.dispose()
"""
DRIVER_PASSED = 8


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "n2"])
@pytest.mark.parametrize("scope", ["test", "worker"])
@pytest.mark.parametrize("server", ["dsn", "embedded"])
def test_every_driver_lands_in_the_schema(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, xdist: bool, scope: str, server: str
) -> None:
    make_project(pytester, DRIVER_TESTS, ini=INI.format(mode="strict"))
    args = ["-p", "no:randomly", "--pgmig-migrations=migrations", f"--pgmig-scope={scope}"]
    args += server_args(request, server)
    result = pytester.runpytest_subprocess(*args, *(["-n", "2"] if xdist else []))
    result.assert_outcomes(passed=DRIVER_PASSED)
    assert "drivers:" not in "\n".join(result.outlines)  # roles work: no fallback note


@pytest.fixture
def plain_role_dsn(server_dsn: str) -> Iterator[str]:
    """A role that is no superuser: the plugin may not give schemas roles of their own."""
    yield from role_dsn(server_dsn, "")


def test_without_roles_the_dsn_has_options_and_the_summary_says_so(
    pytester: pytest.Pytester, plain_role_dsn: str
) -> None:
    make_project(pytester, DRIVER_TESTS, ini=INI.format(mode="strict"))
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--pgmig-migrations=migrations", f"--pgmig-dsn={plain_role_dsn}"
    )
    # SQLAlchemy's asyncpg dialect on pgmig_dsn as is: asyncpg rejects `options`
    result.assert_outcomes(passed=DRIVER_PASSED - 1, failed=1)
    note = (
        "drivers: pgmig_dsn sets search_path with libpq's `options` (the DSN's role is not "
        "a superuser)*plain_dsn*connect_args*"
    )
    # said in the header, before any test, and in the summary
    result.stdout.fnmatch_lines(
        [f"pgmig: {note}", "collected*", note, "FAILED*test_sqlalchemy_async*postgresql+asyncpg*"]
    )


@pytest.fixture
def postgres_only_dsn() -> Iterator[str]:
    """A server of this test's own whose pg_hba.conf lets in the `postgres` role alone."""
    from pytest_pgmig.servers.sources import start_server

    handle = start_server(requested="local")
    try:
        hba = Path(handle.spec["run_dir"]) / "pg" / "data" / "pg_hba.conf"
        hba.write_text("local all postgres trust\n")
        sql(handle.info.dsn, "SELECT pg_reload_conf()")
        yield handle.info.dsn
    finally:
        handle.stop()


def test_a_role_the_server_refuses_falls_back_to_options(
    pytester: pytest.Pytester, postgres_only_dsn: str
) -> None:
    make_project(pytester, DRIVER_TESTS, ini=INI.format(mode="strict"))
    roles_before = sql(postgres_only_dsn, "SELECT rolname FROM pg_roles ORDER BY 1")
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--pgmig-migrations=migrations", f"--pgmig-dsn={postgres_only_dsn}"
    )
    result.assert_outcomes(passed=DRIVER_PASSED - 1, failed=1)
    result.stdout.fnmatch_lines(
        ["drivers: pgmig_dsn sets search_path with libpq's `options` (a role of the schema's*"]
    )
    assert sql(postgres_only_dsn, "SELECT rolname FROM pg_roles ORDER BY 1") == roles_before


def test_a_role_that_owns_something_outside_is_still_dropped(
    pytester: pytest.Pytester, fresh_database: str
) -> None:
    """What a test made outside its schema stays (handed to the admin role), as it would
    without roles; the schema's role goes with its schema."""
    make_project(
        pytester,
        """
        import psycopg

        def test_outside(pgmig_dsn):
            with psycopg.connect(pgmig_dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE public.left_by_a_test (id int)")
        """,
        ini=None,
    )
    result = pytester.runpytest("--pgmig-migrations=migrations", f"--pgmig-dsn={fresh_database}")
    result.assert_outcomes(passed=1)
    roles = "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgmig%'"
    assert sql(fresh_database, roles) == [(0,)]
    owner = "SELECT tableowner FROM pg_tables WHERE tablename = 'left_by_a_test'"
    assert sql(fresh_database, owner) == [("postgres",)]


# pgmig_conn on a session loop: one connection per schema, kept from test to test, clean
KEPT_CONN_TESTS = """
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")
SEEN = set()


@pytest.mark.parametrize("i", range(6))
async def test_1_leave_everything(pgmig_conn, i):
    SEEN.add(id(pgmig_conn))
    await pgmig_conn.execute("INSERT INTO users (name) VALUES ('left behind')")
    await pgmig_conn.execute("SET statement_timeout = '1234ms'")
    await pgmig_conn.execute("CREATE TEMP TABLE scratch (x int)")
    await pgmig_conn.execute("PREPARE leftover AS SELECT 1")
    await pgmig_conn.execute("LISTEN leftover_channel")
    await pgmig_conn.execute("SELECT pg_advisory_lock(4242)")
    await pgmig_conn.execute("BEGIN")  # and a transaction left open


@pytest.mark.parametrize("i", range(6))
async def test_2_nothing_carried(pgmig_conn, pgmig_schema, i):
    assert id(pgmig_conn) in SEEN, "the connection was not reused"
    assert await pgmig_conn.fetchval("SELECT current_schema()") == pgmig_schema.name
    # (the transaction left open is gone: its row would show here)
    assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 1
    assert await pgmig_conn.fetchval("SHOW statement_timeout") == "0"
    assert await pgmig_conn.fetchval("SELECT to_regclass('pg_temp.scratch')") is None
    prepared = "SELECT count(*) FROM pg_prepared_statements WHERE from_sql"
    assert await pgmig_conn.fetchval(prepared) == 0
    assert await pgmig_conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
    locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    assert await pgmig_conn.fetchval(locks) == 0
"""


@pytest.mark.parametrize("scope", ["test", "worker"])
def test_pgmig_conn_on_a_session_loop_is_kept_and_carries_nothing(
    pytester: pytest.Pytester, server_dsn: str, scope: str
) -> None:
    make_project(pytester, KEPT_CONN_TESTS, ini=INI.format(mode="strict"))
    result = pytester.runpytest(
        "-p",
        "no:randomly",
        "--pgmig-migrations=migrations",
        f"--pgmig-dsn={server_dsn}",
        f"--pgmig-scope={scope}",
    )
    result.assert_outcomes(passed=12)
