"""Each fixture of the plugin, both scopes, and the pgmig marker, through pytester."""

from __future__ import annotations

import pytest
from plugin_support import make_project, schemas_like, write_migrations

from pytest_pgmig.plugin.settings import default_module

pytestmark = pytest.mark.usefixtures("clean_env")


def run(pytester: pytest.Pytester, dsn: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest(f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations", *args)


def test_pgmig_server(pytester: pytest.Pytester, server_dsn: str) -> None:
    make_project(
        pytester,
        """
        def test_server(pgmig_server):
            assert pgmig_server.source == "dsn"
            assert isinstance(pgmig_server.version, tuple) and pgmig_server.version >= (12,)
            assert pgmig_server.database == "postgres"
            assert isinstance(pgmig_server.port, int)
            assert pgmig_server.host
            assert pgmig_server.dsn.startswith("postgresql://")
            assert "ServerInfo(" in repr(pgmig_server)
        """,
    )
    run(pytester, server_dsn).assert_outcomes(passed=1)


def test_pgmig_schema(pytester: pytest.Pytester, server_dsn: str) -> None:
    lib = default_module(pytester.path / "migrations")
    make_project(
        pytester,
        f"""
        import re
        import asyncpg

        async def test_schema(pgmig_schema):
            name = pgmig_schema.name
            assert re.fullmatch(r"[a-z_][a-z0-9_]*", name) and len(name) <= 63
            assert pgmig_schema.module_name == "{lib}_" + name
            conn = await asyncpg.connect(pgmig_schema.dsn)
            try:
                assert await conn.fetchval("SELECT current_schema()") == name
                assert await conn.fetchval("SELECT name FROM users") == "seed"
                assert await conn.fetchval("SELECT count(*) FROM items") == 0
            finally:
                await conn.close()
        """,
    )
    run(pytester, server_dsn).assert_outcomes(passed=1)


def test_pgmig_dsn_from_a_sync_test_with_psycopg(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    make_project(
        pytester,
        """
        import asyncio
        import psycopg

        def test_sync(pgmig_dsn, pgmig_schema):
            assert isinstance(pgmig_dsn, str) and pgmig_dsn == pgmig_schema.dsn
            with pytest_raises_no_loop():
                pass
            with psycopg.connect(pgmig_dsn) as conn:
                assert conn.execute("SELECT current_schema()").fetchone()[0] == pgmig_schema.name
                conn.execute("INSERT INTO items (user_id, title) VALUES (1, 'a')")
                conn.commit()
                assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 1

        class pytest_raises_no_loop:
            # a sync test runs with no event loop of its own
            def __enter__(self):
                try:
                    asyncio.get_running_loop()
                except RuntimeError:
                    return self
                raise AssertionError("a sync test should have no running loop")

            def __exit__(self, *exc):
                return False
        """,
        ini=None,
    )
    run(pytester, server_dsn).assert_outcomes(passed=1)


def test_pgmig_conn(pytester: pytest.Pytester, server_dsn: str) -> None:
    make_project(
        pytester,
        """
        import asyncio
        import asyncpg

        async def test_conn(pgmig_conn, pgmig_schema):
            assert isinstance(pgmig_conn, asyncpg.Connection)
            assert pgmig_conn._loop is asyncio.get_running_loop()
            assert await pgmig_conn.fetchval("SELECT current_schema()") == pgmig_schema.name
            await pgmig_conn.execute("INSERT INTO items (user_id, title) VALUES (1, 'x')")
            assert await pgmig_conn.fetchval("SELECT title FROM items") == "x"
        """,
    )
    run(pytester, server_dsn).assert_outcomes(passed=1)


def test_pgmig_conn_in_strict_mode(pytester: pytest.Pytester, server_dsn: str) -> None:
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.asyncio
        async def test_conn(pgmig_conn):
            assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 1
        """,
        ini="[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n",
    )
    run(pytester, server_dsn).assert_outcomes(passed=1)


def test_pgmig_pool(pytester: pytest.Pytester, server_dsn: str) -> None:
    make_project(
        pytester,
        """
        import asyncio
        import asyncpg

        async def test_pool(pgmig_pool, pgmig_schema):
            assert isinstance(pgmig_pool, asyncpg.Pool)

            async def one(i):
                async with pgmig_pool.acquire() as conn:
                    assert await conn.fetchval("SELECT current_schema()") == pgmig_schema.name
                    await conn.execute("INSERT INTO items (user_id, title) VALUES (1, $1)", str(i))

            await asyncio.gather(*(one(i) for i in range(4)))
            assert await pgmig_pool.fetchval("SELECT count(*) FROM items") == 4
        """,
    )
    run(pytester, server_dsn).assert_outcomes(passed=1)


def test_pgmig_db_renders_templates(pytester: pytest.Pytester, server_dsn: str) -> None:
    make_project(
        pytester,
        """
        async def test_db(pgmig_db, pgmig_schema, pgmig_conn):
            rendered = pgmig_db.prepare_query("SELECT 1 FROM {{tables.users}}")
            assert rendered.startswith('SELECT 1 FROM "%s".' % pgmig_schema.name)
            await pgmig_db.execute("INSERT INTO {{tables.users}} (name) VALUES ($1)", "ann")
            row = await pgmig_db.fetch_one("SELECT * FROM {{tables.users}} WHERE name = $1", "ann")
            assert row["id"] == 2
            schema = await pgmig_db.fetch_value("SELECT '{{schema}}'")
            assert schema == '"%s"' % pgmig_schema.name
            rows = await pgmig_db.fetch_all("SELECT name FROM {{tables.users}} ORDER BY id")
            assert [r["name"] for r in rows] == ["seed", "ann"]
            # same session as pgmig_conn
            assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 2
        """,
    )
    run(pytester, server_dsn).assert_outcomes(passed=1)


def test_pgmig_migrations_up_to_date(pytester: pytest.Pytester, server_dsn: str) -> None:
    make_project(
        pytester,
        """
        async def test_migrations(pgmig_migrations, pgmig_schema):
            assert pgmig_migrations.module_name == pgmig_schema.module_name
            result = await pgmig_migrations.apply_pending_migrations()
            assert result["status"] == "up_to_date", result
            applied = await pgmig_migrations.get_applied_migrations()
            assert sorted(applied) == ["001_users.sql", "002_items.sql"]
            assert await pgmig_migrations.get_pending_migrations() == []
        """,
    )
    run(pytester, server_dsn).assert_outcomes(passed=1)


def test_pgmig_factory(pytester: pytest.Pytester, server_dsn: str) -> None:
    write_migrations(
        pytester.path,
        {"001_invoices.sql": "CREATE TABLE {{tables.invoices}} (n int);"},
        name="billing_migrations",
    )
    made = pytester.path / "made.txt"
    make_project(
        pytester,
        f"""
        import asyncpg

        async def test_factory(pgmig_factory, pgmig_schema):
            a = await pgmig_factory(migrations="billing_migrations", module="billing")
            b = await pgmig_factory(migrations="billing_migrations", module="billing")
            c = await pgmig_factory()
            assert type(a) is type(pgmig_schema)
            assert len({{a.name, b.name, c.name, pgmig_schema.name}}) == 4
            assert a.module_name == "billing_" + a.name
            for schema in (a, b):
                conn = await asyncpg.connect(schema.dsn)
                try:
                    assert await conn.fetchval("SELECT current_schema()") == schema.name
                    assert await conn.fetchval("SELECT to_regclass('users')") is None
                    await conn.execute("INSERT INTO invoices VALUES (1)")
                finally:
                    await conn.close()
            conn = await asyncpg.connect(c.dsn)
            try:
                assert await conn.fetchval("SELECT count(*) FROM users") == 1
            finally:
                await conn.close()
            with open({str(made)!r}, "a") as out:
                print(a.name, b.name, c.name, file=out)

        async def test_next_factory_schema_is_clean(pgmig_factory):
            a = await pgmig_factory(migrations="billing_migrations", module="billing")
            conn = await asyncpg.connect(a.dsn)
            try:
                assert await conn.fetchval("SELECT count(*) FROM invoices") == 0
            finally:
                await conn.close()
            with open({str(made)!r}, "a") as out:
                print(a.name, file=out)
        """,
    )
    run(pytester, server_dsn).assert_outcomes(passed=2)
    names = made.read_text().split()
    assert len(names) == 4
    assert not schemas_like(server_dsn, "pgmig_%") & set(names)


# --- scope test ------------------------------------------------------------------------------

TEST_SCOPE = """
import pytest

seen = []

async def test_a_writes(pgmig_conn, pgmig_schema):
    seen.append(pgmig_schema.name)
    uid = await pgmig_conn.fetchval("INSERT INTO users (name) VALUES ('a') RETURNING id")
    iid = await pgmig_conn.fetchval(
        "INSERT INTO items (user_id, title) VALUES ($1, 'a') RETURNING id", uid
    )
    assert (uid, iid) == (2, 1)
    await pgmig_conn.execute("CREATE TABLE extra (x int)")
    await pgmig_conn.execute("ALTER TABLE users ADD COLUMN email text")
    await pgmig_conn.execute("CREATE INDEX users_name ON users (name)")

async def test_b_sees_a_fresh_schema(pgmig_conn, pgmig_schema):
    seen.append(pgmig_schema.name)
    assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 1
    assert await pgmig_conn.fetchval("SELECT count(*) FROM items") == 0
    assert await pgmig_conn.fetchval("SELECT to_regclass('extra')") is None
    assert await pgmig_conn.fetchval("SELECT to_regclass('users_name')") is None
    cols = await pgmig_conn.fetchval(
        "SELECT array_agg(column_name::text ORDER BY ordinal_position) "
        "FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'users'",
        pgmig_schema.name,
    )
    assert cols == ["id", "name"]
    # sequences and identities start again
    uid = await pgmig_conn.fetchval("INSERT INTO users (name) VALUES ('b') RETURNING id")
    iid = await pgmig_conn.fetchval(
        "INSERT INTO items (user_id, title) VALUES ($1, 'b') RETURNING id", uid
    )
    assert (uid, iid) == (2, 1)

def test_c_psycopg_rows_gone(pgmig_dsn):
    import psycopg
    with psycopg.connect(pgmig_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 0
        conn.execute("INSERT INTO items (user_id, title) VALUES (1, 'c')")

def test_d_rows_still_gone(pgmig_dsn):
    import psycopg
    with psycopg.connect(pgmig_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 0
"""


def test_scope_test_isolates_rows_sequences_and_ddl(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    make_project(pytester, TEST_SCOPE)
    result = run(pytester, server_dsn, "-p", "no:randomly")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*pgmig:*scope test [[]default[]]*",
            "*= pgmig =*",
            "server: dsn, PostgreSQL *, postgresql://*",
            "schemas: * created, * dropped, 0 kept, * resets for reuse",
            "migrations applied: *",
            "isolation cost: * s in set-up and teardown over 4 tests, median * ms per test",
        ]
    )


# --- scope worker ----------------------------------------------------------------------------

WORKER_SCOPE = """
names = []

async def test_a_conn_writes(pgmig_conn, pgmig_schema):
    names.append(pgmig_schema.name)
    await pgmig_conn.execute("INSERT INTO users (name) VALUES ('a')")
    async with pgmig_conn.transaction():  # a savepoint inside the fixture's transaction
        await pgmig_conn.execute("INSERT INTO items (user_id, title) VALUES (1, 'a')")
    assert await pgmig_conn.fetchval("SELECT count(*) FROM items") == 1

async def test_b_conn_rolled_back(pgmig_conn, pgmig_schema):
    names.append(pgmig_schema.name)
    assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 1
    assert await pgmig_conn.fetchval("SELECT count(*) FROM items") == 0

async def test_c_pool_writes(pgmig_pool, pgmig_schema):
    names.append(pgmig_schema.name)
    async with pgmig_pool.acquire() as conn:
        await conn.execute("INSERT INTO users (name) VALUES ('p')")
    await pgmig_pool.execute("INSERT INTO items (user_id, title) VALUES (1, 'p')")

async def test_d_pool_writes_undone(pgmig_pool, pgmig_schema):
    names.append(pgmig_schema.name)
    assert await pgmig_pool.fetchval("SELECT count(*) FROM users") == 1
    assert await pgmig_pool.fetchval("SELECT count(*) FROM items") == 0
    assert await pgmig_pool.fetchval("INSERT INTO users (name) VALUES ('q') RETURNING id") == 2

async def test_e_db_writes(pgmig_db):
    await pgmig_db.execute("INSERT INTO {{tables.users}} (name) VALUES ('d')")

def test_f_one_schema_for_the_worker(pgmig_dsn, pgmig_schema):
    names.append(pgmig_schema.name)
    import psycopg
    with psycopg.connect(pgmig_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
    assert len(set(names)) == 1, names
"""


def test_scope_worker_rolls_back_each_test(pytester: pytest.Pytester, server_dsn: str) -> None:
    make_project(pytester, WORKER_SCOPE)
    result = run(pytester, server_dsn, "--pgmig-scope=worker")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(
        ["*pgmig:*scope worker [[]cli[]]*", "*schemas: * created, * dropped, 0 kept*"]
    )


# --- the marker ------------------------------------------------------------------------------


def test_marker_overrides_migrations_module_and_scope(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    write_migrations(
        pytester.path,
        {"001_orders.sql": "CREATE TABLE {{tables.orders}} (n int);"},
        name="orders_migrations",
    )
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.pgmig(migrations="orders_migrations")
        async def test_other_migrations(pgmig_conn):
            assert await pgmig_conn.fetchval("SELECT to_regclass('users')") is None
            assert await pgmig_conn.fetchval("SELECT count(*) FROM orders") == 0

        @pytest.mark.pgmig(module="Billing App")
        def test_module(pgmig_schema):
            assert pgmig_schema.module_name == "billing_app_" + pgmig_schema.name

        async def test_module_in_tracking_table(pgmig_migrations, pgmig_conn, pgmig_schema):
            modules = await pgmig_conn.fetch("SELECT DISTINCT module_name FROM schema_migrations")
            assert [r[0] for r in modules] == [pgmig_schema.module_name]

        @pytest.mark.pgmig(scope="worker")
        class TestWorkerScope:
            names = []

            async def test_one(self, pgmig_conn, pgmig_schema):
                self.names.append(pgmig_schema.name)
                await pgmig_conn.execute("INSERT INTO users (name) VALUES ('w')")

            async def test_two(self, pgmig_conn, pgmig_schema):
                self.names.append(pgmig_schema.name)
                assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 1
                assert len(set(self.names)) == 1
        """,
    )
    run(pytester, server_dsn).assert_outcomes(passed=5)


def test_marker_on_module_and_closest_wins(pytester: pytest.Pytester, server_dsn: str) -> None:
    write_migrations(
        pytester.path,
        {"001_orders.sql": "CREATE TABLE {{tables.orders}} (n int);"},
        name="orders_migrations",
    )
    make_project(
        pytester,
        """
        import pytest

        pytestmark = pytest.mark.pgmig(migrations="orders_migrations", module="shop")

        async def test_module_marker(pgmig_conn, pgmig_schema):
            assert pgmig_schema.module_name.startswith("shop_")
            assert await pgmig_conn.fetchval("SELECT to_regclass('orders')") is not None

        @pytest.mark.pgmig(migrations="migrations")
        async def test_closest_wins(pgmig_conn, pgmig_schema):
            assert pgmig_schema.module_name.startswith("shop_")
            assert await pgmig_conn.fetchval("SELECT to_regclass('orders')") is None
            assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 1
        """,
    )
    run(pytester, server_dsn).assert_outcomes(passed=2)


def test_marker_bad_values_are_rejected(pytester: pytest.Pytester, server_dsn: str) -> None:
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.pgmig(scope="session")
        def test_bad_scope(pgmig_schema):
            pass

        @pytest.mark.pgmig(migrations="no_such_folder")
        def test_missing_folder(pgmig_schema):
            pass

        @pytest.mark.pgmig(colour="blue")
        def test_unknown_argument(pgmig_schema):
            pass

        @pytest.mark.pgmig(module="!!!")
        def test_bad_module(pgmig_schema):
            pass

        def test_unmarked_still_fine(pgmig_schema):
            pass
        """,
    )
    result = run(pytester, server_dsn)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 1
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == 4
    result.stdout.fnmatch_lines_random(
        [
            "*pgmig marker: invalid --pgmig-scope value 'session': choose one of test, worker*",
            "*no_such_folder*does not exist*",
            "*pgmig marker: unknown argument(s) ?'colour'?; it takes migrations=, module=*",
            "*pgmig marker: invalid module name '!!!'*",
        ]
    )


def test_module_with_several_folders_fails_alike_in_marker_and_factory(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    """Which of several folders `module=` names is not guessed, by the marker nor the factory."""
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.pgmig(migrations=["migrations", "more"], module="shop")
        def test_marked(pgmig_schema):
            pass

        async def test_factory(pgmig_factory):
            await pgmig_factory(migrations=["migrations", "more"], module="shop")
        """,
    )
    write_migrations(pytester.path, {"001_x.sql": "CREATE TABLE x (id int);"}, name="more")
    result = run(pytester, server_dsn, "-p", "no:randomly")
    # the marker is read while the test is set up, the factory called in its body
    result.assert_outcomes(errors=1, failed=1)
    result.stdout.fnmatch_lines_random(
        [
            "*pgmig marker: module='shop' needs exactly one migrations folder, this test has 2;"
            " name each folder as NAME=PATH in migrations= instead*",
            "*pgmig_factory: module='shop' needs exactly one migrations folder, this test has 2;"
            " name each folder as NAME=PATH in migrations= instead*",
        ]
    )


def test_overriding_pgmig_server_in_a_conftest_takes_effect(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    """The schemas land on the server the conftest's pgmig_server names, not the run's."""
    make_project(
        pytester,
        """
        import psycopg

        def test_on_the_overridden_server(pgmig_schema, pgmig_server):
            assert pgmig_server.source == "overridden"
            with psycopg.connect(pgmig_schema.dsn) as conn:
                assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
        """,
    )
    pytester.makeconftest(
        f"""
        import pytest
        from pytest_pgmig.servers.info import ServerInfo
        from pytest_pgmig.servers.probe import probe

        DSN = {server_dsn!r}

        @pytest.fixture(scope="session")
        def pgmig_server():
            return ServerInfo(DSN, "h", 5432, "postgres", "postgres", probe(DSN), "overridden")
        """
    )
    # no server source can work: only the override gives the tests a server
    result = pytester.runpytest(
        "--pgmig-migrations=migrations", "--pgmig-server=docker", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=1)


def test_a_positional_marker_argument_fails_clearly(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.pgmig("elsewhere/migrations")
        def test_marked(pgmig_schema):
            pass
        """,
    )
    result = pytester.runpytest("--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}")
    result.assert_outcomes(errors=1)
    text = result.stdout.str()
    assert "pgmig marker: takes keyword arguments only" in text
    assert "@pytest.mark.pgmig(migrations='elsewhere/migrations')" in text
