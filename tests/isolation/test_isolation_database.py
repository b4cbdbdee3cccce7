"""Database isolation: sets a schema cannot hold run in cloned databases, chosen by auto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from plugin_support import make_project, role_dsn, sql, write_migrations
from reliability_support import pg_dump, text_of

pytestmark = pytest.mark.usefixtures("clean_env")

# pg_dump's shape: search_path emptied, every name qualified with public., sequences, a view,
# a function and its trigger, OWNER TO the connecting role, a seed row
PG_DUMP = {
    "001_baseline.sql": """
SET statement_timeout = 0;
SET client_encoding = 'UTF8';
SELECT pg_catalog.set_config('search_path', '', false);
CREATE TABLE public.actor (id integer NOT NULL, name text NOT NULL);
CREATE SEQUENCE public.actor_id_seq AS integer START WITH 1 INCREMENT BY 1 CACHE 1;
ALTER SEQUENCE public.actor_id_seq OWNED BY public.actor.id;
ALTER TABLE ONLY public.actor ALTER COLUMN id SET DEFAULT nextval('public.actor_id_seq'::regclass);
ALTER TABLE ONLY public.actor ADD CONSTRAINT actor_pkey PRIMARY KEY (id);
CREATE VIEW public.actor_names AS SELECT name FROM public.actor;
CREATE FUNCTION public.shout() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN NEW.name := upper(NEW.name); RETURN NEW; END $$;
CREATE TRIGGER actor_shout BEFORE INSERT ON public.actor
    FOR EACH ROW EXECUTE FUNCTION public.shout();
ALTER TABLE public.actor OWNER TO CURRENT_USER;
ALTER FUNCTION public.shout() OWNER TO CURRENT_USER;
INSERT INTO public.actor (name) VALUES ('seed');
""",
}
PG_DUMP_TESTS = """
import psycopg, pytest

@pytest.mark.parametrize("i", range(3))
def test_clean_database(pgmig_dsn, pgmig_schema, i):
    assert pgmig_schema.database is not None and pgmig_schema.name == "public"
    with psycopg.connect(pgmig_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT name FROM actor").fetchall() == [("SEED",)]
        conn.execute("INSERT INTO public.actor (name) VALUES ('x')")
        assert conn.execute("SELECT count(*) FROM actor_names").fetchone()[0] == 2
        assert conn.execute("SELECT max(id) FROM actor").fetchone()[0] == 2
        conn.execute("CREATE TABLE leftover (id int)")  # DDL goes with the database

@pytest.mark.asyncio
async def test_asyncpg_fixtures(pgmig_conn, pgmig_db):
    assert await pgmig_conn.fetchval("SELECT count(*) FROM actor") == 1
    assert await pgmig_db.fetch_value("SELECT count(*) FROM {{tables.actor}}") == 1
    assert await pgmig_conn.fetchval("SELECT to_regclass('leftover')") is None
"""

# a pgdbm-style library: main tables in {{tables.x}}, four more in a fixed schema it creates
FIXED_SCHEMA = {
    "001_core.sql": """
CREATE TABLE IF NOT EXISTS {{tables.users}} (id serial PRIMARY KEY, email text UNIQUE);
""",
    "002_mcp.sql": """
CREATE SCHEMA IF NOT EXISTS mcp_client;
CREATE TABLE IF NOT EXISTS mcp_client.servers (id serial PRIMARY KEY, url text NOT NULL);
CREATE TABLE IF NOT EXISTS mcp_client.tools (
    id serial PRIMARY KEY, server_id int REFERENCES mcp_client.servers (id), name text
);
CREATE TABLE IF NOT EXISTS mcp_client.resources (id serial PRIMARY KEY, uri text);
CREATE TABLE IF NOT EXISTS mcp_client.prompts (id serial PRIMARY KEY, body text);
INSERT INTO mcp_client.servers (url) VALUES ('http://seed');
""",
}
FIXED_SCHEMA_TESTS = """
import psycopg, pytest

@pytest.mark.parametrize("i", range(3))
def test_both_schemas_clean(pgmig_dsn, i):
    with psycopg.connect(pgmig_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 0
        assert conn.execute("SELECT url FROM mcp_client.servers").fetchall() == [("http://seed",)]
        conn.execute("INSERT INTO users (email) VALUES ('a@example.com')")
        conn.execute("INSERT INTO mcp_client.tools (server_id, name) VALUES (1, 't')")

@pytest.mark.asyncio
async def test_migrations_are_up_to_date(pgmig_migrations, pgmig_schema):
    assert pgmig_migrations.module_name == pgmig_schema.module_name
    assert (await pgmig_migrations.apply_pending_migrations())["status"] == "up_to_date"
"""

SETS = {
    "pg_dump": (PG_DUMP, PG_DUMP_TESTS, 4),
    "fixed-schema": (FIXED_SCHEMA, FIXED_SCHEMA_TESTS, 4),
}


def server_state(dsn: str) -> tuple[object, ...]:
    """What a run must leave as it found it: databases, roles, the DSN database's dump."""
    databases = sql(dsn, "SELECT datname FROM pg_database ORDER BY 1")
    roles = sql(dsn, "SELECT rolname FROM pg_roles ORDER BY 1")
    return databases, roles, pg_dump(dsn)


@pytest.mark.parametrize("case", sorted(SETS))
@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "n2"])
@pytest.mark.parametrize("scope", ["test", "worker"])
def test_auto_moves_the_set_to_a_database_on_a_dsn(
    pytester: pytest.Pytester, fresh_database: str, case: str, xdist: bool, scope: str
) -> None:
    files, tests, count = SETS[case]
    make_project(pytester, tests, files=files)
    before = server_state(fresh_database)
    args = ["-p", "no:randomly", "--pgmig-migrations=migrations", f"--pgmig-scope={scope}"]
    args += [f"--pgmig-dsn={fresh_database}"] + (["-n", "2"] if xdist else [])
    result = pytester.runpytest_subprocess(*args)
    text = text_of(result)
    assert result.ret == 0, text
    result.assert_outcomes(passed=count)
    assert "isolation: database for" in text and "is outside the test's schema" in text
    assert "pgmig_isolation = database skips this detection" in text
    assert server_state(fresh_database) == before


@pytest.mark.parametrize("case", sorted(SETS))
def test_database_isolation_on_the_embedded_server(
    pytester: pytest.Pytester, run_base: Path, case: str
) -> None:
    files, tests, count = SETS[case]
    make_project(pytester, tests, files=files)
    for scope in ("test", "worker"):
        result = pytester.runpytest_subprocess(
            "-n", "2", "--pgmig-migrations=migrations", f"--pgmig-scope={scope}"
        )
        assert result.ret == 0, text_of(result)
        result.assert_outcomes(passed=count)


def test_forced_database_isolation_and_the_header(
    pytester: pytest.Pytester, fresh_database: str
) -> None:
    """`database` skips the detection: even a set that fits a schema gets databases."""
    make_project(
        pytester,
        """
        def test_a(pgmig_schema, pgmig_dsn):
            assert pgmig_schema.database and pgmig_schema.database in pgmig_dsn
        """,
    )
    result = pytester.runpytest(
        "--pgmig-migrations=migrations",
        f"--pgmig-dsn={fresh_database}",
        "-o",
        "pgmig_isolation=database",
    )
    text = text_of(result)
    result.assert_outcomes(passed=1)
    assert "isolation database [ini" in text
    # the template and the test's copy, reset in place at its teardown; a run of one test
    # makes no spare copy
    assert "databases: 2 created, 2 dropped, 1 resets for reuse, 0 cloned again" in text, text
    assert "isolation: database for" not in text  # not switched: asked for


def test_schema_isolation_keeps_the_failure(pytester: pytest.Pytester, server_dsn: str) -> None:
    make_project(pytester, "def test_a(pgmig_schema): pass\n", files=PG_DUMP)
    result = pytester.runpytest(
        "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}", "--pgmig-isolation=schema"
    )
    result.assert_outcomes(failed=1)
    assert "writes outside the schema it migrates" in text_of(result)


def test_bad_isolation_is_a_usage_error(pytester: pytest.Pytester) -> None:
    make_project(pytester, "def test_a(): pass\n")
    result = pytester.runpytest("--pgmig-isolation=cluster")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "choose one of auto, schema, database" in text_of(result)


def test_a_role_is_not_moved_to_a_database(pytester: pytest.Pytester, fresh_database: str) -> None:
    """A role is the server's, not a database's: auto keeps failing, and leaves none."""
    role = {"001_role.sql": "CREATE ROLE pgmig_db_test_role NOLOGIN;\n"}
    make_project(pytester, "def test_a(pgmig_schema): pass\n", files=role)
    before = server_state(fresh_database)
    for isolation in ("auto", "database"):
        result = pytester.runpytest(
            "--pgmig-migrations=migrations",
            f"--pgmig-dsn={fresh_database}",
            f"--pgmig-isolation={isolation}",
        )
        result.assert_outcomes(failed=1)
        assert "pgmig_db_test_role" in text_of(result) or "creates or drops a role" in text_of(
            result
        )
    assert server_state(fresh_database) == before


@pytest.fixture
def plain_role_dsn(server_dsn: str) -> Iterator[str]:
    """A role that owns its database but may not create databases."""
    yield from role_dsn(server_dsn, "NOCREATEDB")


@pytest.fixture
def createdb_role_dsn(server_dsn: str) -> Iterator[str]:
    """A role that may create databases but is no superuser (a CI service's usual user)."""
    yield from role_dsn(server_dsn, "CREATEDB")


def test_a_role_without_createdb_is_told_what_to_do(
    pytester: pytest.Pytester, plain_role_dsn: str
) -> None:
    make_project(pytester, "def test_a(pgmig_schema): pass\ndef test_b(pgmig_schema): pass\n")
    result = pytester.runpytest(
        "--pgmig-migrations=migrations",
        f"--pgmig-dsn={plain_role_dsn}",
        "--pgmig-isolation=database",
    )
    result.assert_outcomes(failed=2)
    text = text_of(result)
    assert "CREATEDB" in text and "--pgmig-isolation=schema" in text
    assert "Traceback" not in text
    # auto: the set that needs a database fails saying both things
    write_migrations(pytester.path, PG_DUMP, "dump")
    result = pytester.runpytest("--pgmig-migrations=dump", f"--pgmig-dsn={plain_role_dsn}")
    result.assert_outcomes(failed=2)
    text = text_of(result)
    assert "writes outside the schema" in text and "CREATEDB" in text


def our_databases(dsn: str) -> set[str]:
    return {r[0] for r in sql(dsn, "SELECT datname FROM pg_database WHERE datname LIKE 'pgmig_%'")}


def ours_on_the_server(dsn: str) -> set[str]:
    """The databases and login roles of runs on the server (schemas' roles: roles.py)."""
    roles = {r[0] for r in sql(dsn, "SELECT rolname FROM pg_roles WHERE rolname LIKE 'pgmig_%'")}
    return our_databases(dsn) | roles


@pytest.mark.parametrize("case", ["pg_dump", "schemas"])
def test_a_killed_runs_databases_and_roles_are_removed_by_the_next_run(
    pytester: pytest.Pytester, fresh_database: str, case: str
) -> None:
    """A killed run's template and copies (database isolation), or its schemas' login roles
    (schema isolation), are dropped by the next run."""
    make_project(
        pytester,
        """
        import os, time
        def test_hang(pgmig_schema):
            open(os.environ["READY"], "w").close()
            time.sleep(60)
        """,
        files=PG_DUMP if case == "pg_dump" else None,
    )
    ready = pytester.path / "ready"
    env = {**os.environ, "READY": str(ready)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--pgmig-migrations=migrations",
            f"--pgmig-dsn={fresh_database}",
        ],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists()
        left = ours_on_the_server(fresh_database)
        assert left, "the hanging run made no database or role"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert ours_on_the_server(fresh_database) == left  # killed: nothing dropped them
    (pytester.path / "test_next.py").write_text("def test_next(pgmig_schema):\n    pass\n")
    result = pytester.runpytest(
        "test_next.py", "--pgmig-migrations=migrations", f"--pgmig-dsn={fresh_database}"
    )
    result.assert_outcomes(passed=1)
    assert not ours_on_the_server(fresh_database)


EQUIVALENCE_TESTS = """
import psycopg, pytest

def snapshot(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT table_schema, table_name, column_name, data_type, column_default "
            "FROM information_schema.columns WHERE table_schema NOT IN "
            "('pg_catalog', 'information_schema') ORDER BY 1, 2, 3"
        ).fetchall()
        objects = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2"
        ).fetchall()
        rows = conn.execute(
            "SELECT a.*, s.* FROM public.actor a FULL JOIN mcp_client.servers s ON s.id = a.id"
        ).fetchall()
        seq = conn.execute(
            "SELECT last_value, is_called FROM public.actor_id_seq "
            "UNION ALL SELECT last_value, is_called FROM mcp_client.servers_id_seq"
        ).fetchall()
        functions = conn.execute(
            "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public' ORDER BY 1"
        ).fetchall()
    return columns, objects, rows, seq, functions

SEEN = []

@pytest.mark.parametrize("i", range(3))
def test_reset_database_equals_a_fresh_clone(pgmig_schema, i):
    now = snapshot(pgmig_schema.dsn)
    if SEEN:
        assert now == SEEN[0]
    else:
        SEEN.append(now)
    with psycopg.connect(pgmig_schema.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.actor (name) VALUES ('dirty')")
        conn.execute("UPDATE public.actor SET name = 'changed' WHERE id = 1")
        conn.execute("INSERT INTO mcp_client.servers (url) VALUES ('http://test')")
        conn.execute("DELETE FROM mcp_client.servers WHERE url = 'http://seed'")
        conn.execute("SELECT nextval('public.actor_id_seq')")
        if DDL:
            conn.execute("ALTER TABLE public.actor ADD COLUMN extra int")
            conn.execute("CREATE SCHEMA scratch")
            conn.execute("CREATE FUNCTION public.more() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    # a session left in a transaction holding locks, and an idle one: the reset ends the first
    LEFT.append(psycopg.connect(pgmig_schema.dsn))
    LEFT[-1].execute("LOCK TABLE mcp_client.servers IN ACCESS EXCLUSIVE MODE")
    LEFT.append(psycopg.connect(pgmig_schema.dsn, autocommit=True))

LEFT = []
"""


@pytest.mark.parametrize("ddl", [False, True], ids=["rows", "ddl"])
@pytest.mark.parametrize("scope", ["test", "worker"])
def test_a_reset_database_equals_a_fresh_clone(
    pytester: pytest.Pytester, server_dsn: str, scope: str, ddl: bool
) -> None:
    """Rows, seeds and sequences are reset in place; changed DDL gets a new copy."""
    check_equivalence(pytester, server_dsn, scope=scope, ddl=ddl)


@pytest.mark.parametrize("ddl", [False, True], ids=["rows", "ddl"])
def test_a_reset_database_equals_a_fresh_clone_without_superuser(
    pytester: pytest.Pytester, createdb_role_dsn: str, ddl: bool
) -> None:
    """A role that is no superuser resets by TRUNCATE, triggers and foreign keys live."""
    check_equivalence(pytester, createdb_role_dsn, scope="test", ddl=ddl)


def check_equivalence(pytester: pytest.Pytester, dsn: str, *, scope: str, ddl: bool) -> None:
    files = {**PG_DUMP, "002_mcp.sql": FIXED_SCHEMA["002_mcp.sql"]}
    make_project(pytester, f"DDL = {ddl}\n" + EQUIVALENCE_TESTS, files=files)
    result = pytester.runpytest(
        "-p",
        "no:randomly",
        "--pgmig-migrations=migrations",
        f"--pgmig-dsn={dsn}",
        f"--pgmig-scope={scope}",
    )
    result.assert_outcomes(passed=3)
    text = text_of(result)
    # three tests on one copy: two resets, then the last one's at close
    again = "3 cloned again" if ddl else "0 cloned again"
    assert f"{0 if ddl else 3} resets for reuse, {again}" in text, text


def test_one_template_serves_every_lane(pytester: pytest.Pytester, server_dsn: str) -> None:
    """A set migrated once per process, whether its tests run in test or worker scope."""
    make_project(
        pytester,
        """
        import pytest

        def test_test_scope(pgmig_schema):
            assert pgmig_schema.database

        @pytest.mark.pgmig(scope="worker")
        def test_worker_scope(pgmig_schema):
            assert pgmig_schema.database
        """,
    )
    result = pytester.runpytest(
        "-p",
        "no:randomly",
        "--pgmig-migrations=migrations",
        f"--pgmig-dsn={server_dsn}",
        "--pgmig-isolation=database",
    )
    result.assert_outcomes(passed=2)
    text = text_of(result)
    # the template and one copy per scope, each reset in place at its teardown
    assert "databases: 3 created, 3 dropped, 2 resets for reuse, 0 cloned again" in text, text
    assert "migrations applied: 2" in text, text


def test_a_kept_connection_survives_a_reset(pytester: pytest.Pytester, server_dsn: str) -> None:
    """An idle session a harness keeps across tests stays, and sees the reset database."""
    make_project(
        pytester,
        """
        import psycopg

        KEPT = {}

        def conn_for(dsn):
            if dsn not in KEPT:
                KEPT[dsn] = psycopg.connect(dsn, autocommit=True)
            return KEPT[dsn]

        def test_a(pgmig_dsn):
            conn_for(pgmig_dsn).execute("INSERT INTO public.actor (name) VALUES ('a')")

        def test_b(pgmig_dsn):
            conn = conn_for(pgmig_dsn)
            assert len(KEPT) == 1 and not conn.closed
            assert conn.execute("SELECT name FROM actor").fetchall() == [("SEED",)]
        """,
        files=PG_DUMP,
    )
    result = pytester.runpytest(
        "-p",
        "no:randomly",
        "--pgmig-migrations=migrations",
        f"--pgmig-dsn={server_dsn}",
        "--pgmig-scope=worker",
    )
    result.assert_outcomes(passed=2)
