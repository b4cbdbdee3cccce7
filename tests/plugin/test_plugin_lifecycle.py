"""Schemas' lives on a shared server: --pgmig-keep, a killed run's leftovers, others' schemas."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from plugin_support import make_project, schemas_like, sql
from reliability_support import tool

from pytest_pgmig.servers import binaries

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def own_dsn() -> Iterator[str]:
    """A server of this module's own: no other test's run reaps or creates schemas on it."""
    from pytest_pgmig.servers.sources import start_server

    handle = start_server(requested="local")
    try:
        yield handle.info.dsn
    finally:
        handle.stop()


def wait_for(predicate: object, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def registered(dsn: str) -> set[str]:
    """What the registry records (nothing once the last run removed it)."""
    if sql(dsn, "SELECT to_regnamespace('pgmig_registry') IS NULL") == [(True,)]:
        return set()
    return {r[0] for r in sql(dsn, "SELECT name FROM pgmig_registry.schemas")}


def forget(dsn: str, name: str) -> None:
    sql(dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    sql(dsn, "DELETE FROM pgmig_registry.schemas WHERE name = %s", name)


# --- --pgmig-keep ----------------------------------------------------------------------------

KEEP_TESTS = """
async def test_fails(pgmig_conn):
    await pgmig_conn.execute("INSERT INTO users (name) VALUES ('evidence')")
    assert False, "boom"

def test_passes(pgmig_schema):
    with open("passed.txt", "w") as out:
        out.write(pgmig_schema.name)
"""


@pytest.mark.parametrize("scope", ["test", "worker"])
def test_keep_keeps_only_the_failing_tests_schema(
    pytester: pytest.Pytester, own_dsn: str, scope: str
) -> None:
    make_project(pytester, KEEP_TESTS)
    result = pytester.runpytest(
        f"--pgmig-dsn={own_dsn}",
        "--pgmig-migrations=migrations",
        f"--pgmig-scope={scope}",
        "--pgmig-keep",
        "-p",
        "no:randomly",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*- pgmig: schema kept -*",
            "test_project.py::test_fails: schema pgmig_* kept; inspect it with: psql '*'",
            "*= pgmig =*",
            "schemas: * created, * dropped, 1 kept, *",
            "test_project.py::test_fails: schema pgmig_* kept; inspect it with: psql '*'",
        ]
    )
    match = re.search(
        r"schema (pgmig_\w+) kept; inspect it with: psql '([^']+)'", result.stdout.str()
    )
    assert match is not None
    kept, psql_dsn = match.groups()
    try:
        assert schemas_like(own_dsn, kept) == {kept}
        assert sql(psql_dsn, "SELECT current_schema(), array_agg(name ORDER BY id) FROM users") == [
            (kept, ["seed", "evidence"])
        ]
        psql = binaries.find_bindir()
        if psql is not None and (psql / "psql").exists():
            out = subprocess.run(
                [str(psql / "psql"), psql_dsn, "-Atc", "SELECT count(*) FROM users"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.stdout.strip() == "2", out
        passed = (pytester.path / "passed.txt").read_text()
        if scope == "test":
            assert passed != kept
            assert schemas_like(own_dsn, passed) == set()
        # nothing of this run is left but the kept schema
        run = kept.split("_")[1]
        assert schemas_like(own_dsn, f"pgmig_{run}_%") == {kept}
    finally:
        forget(own_dsn, kept)


def test_without_keep_a_failing_tests_schema_goes(pytester: pytest.Pytester, own_dsn: str) -> None:
    make_project(pytester, KEEP_TESTS.replace("passed.txt", "name.txt"))
    result = pytester.runpytest(f"--pgmig-dsn={own_dsn}", "--pgmig-migrations=migrations")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.no_fnmatch_line("*kept; inspect it*")
    result.stdout.fnmatch_lines(["schemas: * 0 kept, *"])
    name = (pytester.path / "name.txt").read_text()
    assert schemas_like(own_dsn, "pgmig_" + name.split("_")[1] + "_%") == set()


# --- a killed run ----------------------------------------------------------------------------

HOLD = """
import os, time

def test_hold(pgmig_schema, pgmig_conn_sync):
    with open("held.txt.tmp", "w") as out:
        out.write(pgmig_schema.name)
    os.replace("held.txt.tmp", "held.txt")
    time.sleep(120)
"""


def start_holding_run(pytester: pytest.Pytester, dsn: str, *args: str) -> subprocess.Popen[bytes]:
    """A pytest process that holds a schema in a sleeping test until it is killed."""
    pytester.makeconftest(
        """
        import psycopg, pytest

        @pytest.fixture
        def pgmig_conn_sync(pgmig_dsn):
            with psycopg.connect(pgmig_dsn) as conn:
                conn.execute("INSERT INTO users (name) VALUES ('held')")
                conn.commit()
                yield conn
        """
    )
    make_project(pytester, HOLD)
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", *args],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def held_schema(pytester: pytest.Pytester, proc: subprocess.Popen[bytes]) -> str:
    held = pytester.path / "held.txt"

    def ready() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        return held.exists()

    wait_for(ready, what="the holding test to start")
    return held.read_text()


def test_schemas_of_a_killed_run_are_removed_by_the_next_run(
    pytester: pytest.Pytester, own_dsn: str
) -> None:
    proc = start_holding_run(
        pytester, own_dsn, f"--pgmig-dsn={own_dsn}", "--pgmig-migrations=migrations"
    )
    try:
        name = held_schema(pytester, proc)
        run = name.split("_")[1]
        theirs = schemas_like(own_dsn, f"pgmig_{run}_%")
        assert name in theirs and len(theirs) >= 1
        assert theirs <= registered(own_dsn)

        # a run while the first one lives leaves its schemas alone
        pytester.makepyfile(test_other="def test_other(pgmig_dsn): pass")
        other = pytester.runpytest(
            f"--pgmig-dsn={own_dsn}", "--pgmig-migrations=migrations", "test_other.py"
        )
        other.assert_outcomes(passed=1)
        assert schemas_like(own_dsn, f"pgmig_{run}_%") == theirs
        assert sql(own_dsn, f'SELECT name FROM "{name}".users ORDER BY id') == [
            ("seed",),
            ("held",),
        ]

        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # its control session ends when the server notices the dead client
    wait_for(
        lambda: (
            not sql(
                own_dsn,
                "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE %s",
                f"pgmig-control:{run}%",
            )
        ),
        what="the killed run's sessions to end",
    )
    assert schemas_like(own_dsn, f"pgmig_{run}_%") == theirs  # nobody reaped yet

    result = pytester.runpytest(
        f"--pgmig-dsn={own_dsn}", "--pgmig-migrations=migrations", "test_other.py"
    )
    result.assert_outcomes(passed=1)
    assert schemas_like(own_dsn, f"pgmig_{run}_%") == set()
    assert not theirs & registered(own_dsn)


# --- schemas the plugin did not create -------------------------------------------------------

FOREIGN = ("pgmig_fake", "app_data", "pgmig_deadbeef_main_s1")


def snapshot(dsn: str) -> dict[str, object]:
    state: dict[str, object] = {}
    for schema in FOREIGN:
        tables = sql(
            dsn,
            "SELECT c.relname, c.relkind, c.oid FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s ORDER BY c.relname",
            schema,
        )
        state[schema] = tables
        for relname, relkind, _ in tables:
            if relkind == "r":
                state[f"{schema}.{relname}"] = sql(
                    dsn, f'SELECT * FROM "{schema}"."{relname}" ORDER BY 1'
                )
    return state


def pg_dump(dsn: str) -> str:
    args = [tool("pg_dump"), "--no-owner", f"--dbname={dsn}"]
    for schema in FOREIGN:
        args += ["-n", schema]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    # \restrict lines carry a random key per dump
    return "\n".join(
        line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
    )


FULL_SESSION = """
import pytest

async def test_ddl(pgmig_conn):
    await pgmig_conn.execute("CREATE TABLE extra (x int); INSERT INTO users (name) VALUES ('a')")

def test_sync(pgmig_dsn):
    import psycopg
    with psycopg.connect(pgmig_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM users")

async def test_factory(pgmig_factory):
    await pgmig_factory()

@pytest.mark.pgmig(scope="worker")
async def test_worker(pgmig_pool):
    await pgmig_pool.execute("INSERT INTO users (name) VALUES ('w')")

@pytest.mark.pgmig(migrations="broken")
def test_broken(pgmig_schema):
    pass

def test_fails(pgmig_schema):
    assert False
"""


def test_schemas_the_plugin_did_not_create_are_untouched(
    pytester: pytest.Pytester, own_dsn: str
) -> None:
    for schema in FOREIGN:
        sql(own_dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        sql(own_dsn, f'CREATE SCHEMA "{schema}"')
        sql(
            own_dsn,
            f'CREATE TABLE "{schema}".users (id serial PRIMARY KEY, name text);'
            f"INSERT INTO \"{schema}\".users (name) VALUES ('keep me'), ('me too');"
            f'CREATE TABLE "{schema}".schema_migrations (filename text)',
        )
    try:
        before, dump_before = snapshot(own_dsn), pg_dump(own_dsn)
        broken = pytester.mkdir("broken")
        (broken / "001_x.sql").write_text("SELECT * FROM nowhere;")
        make_project(pytester, FULL_SESSION)
        result = pytester.runpytest(
            f"--pgmig-dsn={own_dsn}", "--pgmig-migrations=migrations", "--pgmig-keep"
        )
        result.assert_outcomes(passed=4, failed=2)
        kept = re.findall(r"schema (pgmig_\w+) kept", result.stdout.str())
        for name in kept:
            forget(own_dsn, name)
        # and a second run, which reaps whatever dead runs left
        result = pytester.runpytest(f"--pgmig-dsn={own_dsn}", "--pgmig-migrations=migrations")
        result.assert_outcomes(passed=4, failed=2)
        assert snapshot(own_dsn) == before
        assert pg_dump(own_dsn) == dump_before
        # (the registry too: the last run on the database removed it)
        assert schemas_like(own_dsn, "pgmig_%") == {"pgmig_fake", "pgmig_deadbeef_main_s1"}
    finally:
        for schema in FOREIGN:
            sql(own_dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --- teardown and stray sessions -------------------------------------------------------------

STRAY = """
import psycopg

held = []

def test_leaves_a_lock_behind(pgmig_dsn):
    conn = psycopg.connect(pgmig_dsn)
    conn.execute("INSERT INTO users (name) VALUES ('stray')")
    conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    held.append(conn)  # never committed, never closed

def test_next_test_is_clean(pgmig_dsn):
    with psycopg.connect(pgmig_dsn, connect_timeout=5) as conn:
        conn.execute("SET lock_timeout = '20s'")
        assert conn.execute("SELECT array_agg(name) FROM users").fetchone()[0] == ["seed"]
"""


@pytest.mark.parametrize("scope", ["test", "worker"])
def test_teardown_ends_a_session_the_test_left_open(
    pytester: pytest.Pytester, own_dsn: str, scope: str
) -> None:
    make_project(pytester, STRAY)
    started = time.monotonic()
    result = pytester.runpytest(
        f"--pgmig-dsn={own_dsn}", "--pgmig-migrations=migrations", f"--pgmig-scope={scope}"
    )
    result.assert_outcomes(passed=2)
    # bounded by the plugin's lock timeout, not by the stray session
    assert time.monotonic() - started < 20


# --- xdist against a DSN ---------------------------------------------------------------------

XDIST_KEEP = """
import os
import pytest

@pytest.mark.parametrize("n", range(4))
def test_fails(pgmig_schema, n):
    assert n < 2, os.environ["PYTEST_XDIST_WORKER"]
"""


def test_xdist_with_dsn_reports_kept_schemas_of_every_worker(
    pytester: pytest.Pytester, own_dsn: str
) -> None:
    make_project(pytester, XDIST_KEEP)
    result = pytester.runpytest_subprocess(
        "-n", "2", f"--pgmig-dsn={own_dsn}", "--pgmig-migrations=migrations", "--pgmig-keep"
    )
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        ["*= pgmig =*", "server: dsn, PostgreSQL *", "schemas: * 2 kept, *"]
    )
    kept = re.findall(r"^test_project.py::\S+: schema (pgmig_\w+) kept", result.stdout.str(), re.M)
    try:
        assert len(set(kept)) == 2
        assert all(schemas_like(own_dsn, name) == {name} for name in kept)
        runs = {name.split("_")[1] for name in kept}
        assert len(runs) == 1  # one run, whichever worker made the schema
        (run,) = runs
        assert schemas_like(own_dsn, f"pgmig_{run}_%") == set(kept)
    finally:
        for name in kept:
            forget(own_dsn, name)


# --- event loops -----------------------------------------------------------------------------


def test_connections_belong_to_the_tests_loop_whatever_the_fixture_loop_scope(
    pytester: pytest.Pytester, own_dsn: str
) -> None:
    make_project(
        pytester,
        """
        import asyncio

        async def test_on_my_loop(pgmig_conn):
            assert pgmig_conn._loop is asyncio.get_running_loop()
            assert await pgmig_conn.fetchval("SELECT 1") == 1
        """,
        ini="[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = module\n",
    )
    result = pytester.runpytest(f"--pgmig-dsn={own_dsn}", "--pgmig-migrations=migrations")
    result.assert_outcomes(passed=1)


def test_a_bad_loop_scope_is_named(pytester: pytest.Pytester, own_dsn: str) -> None:
    make_project(
        pytester,
        """
        import pytest

        @pytest.mark.asyncio(loop_scope="galaxy")
        async def test_on_no_loop(pgmig_conn):
            pass
        """,
        ini="[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n",
    )
    result = pytester.runpytest(f"--pgmig-dsn={own_dsn}", "--pgmig-migrations=migrations")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*'galaxy'*"])
