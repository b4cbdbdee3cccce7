"""pgmig_psycopg_tx and pgmig_tx: the test's work rolled back, nothing to reset, nothing left."""

from __future__ import annotations

import re

import pytest
from plugin_support import make_project
from reliability_support import text_of

pytestmark = pytest.mark.usefixtures("clean_env")

# The first tests leave everything a transaction can hold and what outlives one (sequences,
# PREPARE, advisory locks); the second find none of it. Numbered to run in order.
CARRY_TESTS = """
import psycopg
import pytest


SEEN = set()


@pytest.mark.parametrize("i", range(4))
def test_1_psycopg_leaves_everything(pgmig_psycopg_tx, i):
    conn = pgmig_psycopg_tx
    SEEN.add(id(conn))
    conn.execute("INSERT INTO users (name) VALUES ('left behind')")
    conn.commit()  # a savepoint: the test reads its own writes, rolled back with the rest
    with conn.transaction():
        conn.execute("INSERT INTO users (name) VALUES ('in a block')")
    with pytest.raises(psycopg.errors.UndefinedTable):
        conn.execute("SELECT * FROM missing")
    conn.rollback()  # back to the last commit(): the error is gone, the writes stay
    assert conn.execute("SELECT count(*) FROM users").fetchone() == (3,)
    # a sequence moved in a block that was rolled back stays moved: set back all the same
    with pytest.raises(ZeroDivisionError), conn.transaction():
        conn.execute("SELECT nextval('users_id_seq')")
        1 / 0
    conn.execute("SET statement_timeout = '1234ms'")
    conn.execute("CREATE TEMP TABLE scratch (x int)")
    conn.execute("CREATE TABLE made_here (x int)")
    conn.execute("PREPARE leftover AS SELECT 1")
    conn.execute("SELECT pg_advisory_lock(4242)")
    conn.execute("DECLARE leftover_cursor CURSOR WITH HOLD FOR SELECT 1")


@pytest.mark.parametrize("i", range(4))
async def test_1_asyncpg_leaves_everything(pgmig_tx, i):
    conn = pgmig_tx
    async with conn.transaction():  # a savepoint
        await conn.execute("INSERT INTO users (name) VALUES ('left behind')")
    await conn.execute("SET work_mem = '7MB'")
    await conn.execute("CREATE TABLE made_here (x int)")
    await conn.execute("SELECT pg_advisory_lock(4243)")
    assert await conn.fetchval("SELECT count(*) FROM users") == 2
    with pytest.raises(ZeroDivisionError):
        async with conn.transaction():
            await conn.fetchval("SELECT setval('users_id_seq', 100)")
            1 / 0


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("i", range(2))
async def test_1_asyncpg_on_a_module_loop(pgmig_tx, i):
    assert await pgmig_tx.fetchval("SELECT count(*) FROM users") == 1
    await pgmig_tx.execute("INSERT INTO users (name) VALUES ('on the module loop')")


@pytest.mark.parametrize("i", range(4))
def test_2_nothing_carried(pgmig_psycopg_tx, i):
    conn = pgmig_psycopg_tx
    # (under -n 2 a worker may have run no test_1)
    assert not SEEN or id(conn) in SEEN, "the connection was not kept"
    assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)  # the seed row
    # the sequence is where migrating left it: the next id is the seed's + 1
    conn.execute("INSERT INTO users (name) VALUES ('next')")
    assert conn.execute("SELECT max(id) FROM users").fetchone() == (2,)
    assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
    assert conn.execute("SHOW work_mem").fetchone() == ("4MB",)
    assert conn.execute("SELECT to_regclass('pg_temp.scratch')").fetchone() == (None,)
    assert conn.execute("SELECT to_regclass('made_here')").fetchone() == (None,)
    prepared = "SELECT count(*) FROM pg_prepared_statements WHERE from_sql"
    assert conn.execute(prepared).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pg_cursors").fetchone() == (0,)
    # (the same kept connection: another worker may hold its own test's lock meanwhile)
    locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    assert conn.execute(locks).fetchone() == (0,)
"""


@pytest.mark.parametrize(
    "args",
    [["-p", "no:randomly"], ["-n", "2", "-p", "no:randomly", "--pgmig-scope=worker"]],
    ids=["serial, scope test", "-n 2, scope worker"],
)
def test_a_rolled_back_test_leaves_nothing_and_costs_no_reset(
    pytester: pytest.Pytester, run_base: str, args: list[str]
) -> None:
    make_project(pytester, CARRY_TESTS)
    result = pytester.runpytest_subprocess("--pgmig-migrations=migrations", *args)
    assert result.ret == 0, text_of(result)
    result.assert_outcomes(passed=14)
    # every test's work was rolled back: no schema was reset
    result.stdout.fnmatch_lines(["schemas: * 0 resets for reuse, 14 rolled back (no reset)"])


FALLBACK_TESTS = """
import psycopg


def test_1_raw_commit(pgmig_psycopg_tx):
    pgmig_psycopg_tx.execute("COMMIT")  # ends the fixture's transaction: this one is durable
    pgmig_psycopg_tx.execute("INSERT INTO users (name) VALUES ('committed')")


def test_2_an_error_left_unhandled(pgmig_psycopg_tx):
    pgmig_psycopg_tx.execute("INSERT INTO users (name) VALUES ('x')")
    try:
        pgmig_psycopg_tx.execute("SELECT * FROM missing")
    except psycopg.errors.UndefinedTable:
        pass  # the transaction stays aborted: still the fixture's, rolled back


def test_3_also_the_dsn(pgmig_psycopg_tx, pgmig_dsn):
    with psycopg.connect(pgmig_dsn, autocommit=True) as other:
        other.execute("INSERT INTO users (name) VALUES ('elsewhere')")


async def test_4_asyncpg_raw_commit(pgmig_tx):
    await pgmig_tx.execute("COMMIT; INSERT INTO users (name) VALUES ('committed')")


def test_5_clean(pgmig_psycopg_tx):
    assert pgmig_psycopg_tx.execute("SELECT name FROM users").fetchall() == [("seed",)]
"""


def run_in_order(pytester: pytest.Pytester, tests: str, passed: int) -> pytest.RunResult:
    """`tests` run in their order in worker scope (one schema), each expected to pass."""
    make_project(pytester, tests)
    result = pytester.runpytest_subprocess(
        "--pgmig-migrations=migrations", "-p", "no:randomly", "--pgmig-scope=worker"
    )
    assert result.ret == 0, text_of(result)
    result.assert_outcomes(passed=passed)
    return result


def test_what_escapes_the_transaction_gets_a_reset(
    pytester: pytest.Pytester, run_base: str
) -> None:
    result = run_in_order(pytester, FALLBACK_TESTS, passed=5)
    # three resets (the raw COMMITs, the DSN); an aborted transaction rolls back as well
    result.stdout.fnmatch_lines(["schemas: * 3 resets for reuse, 2 rolled back (no reset)"])


def test_a_failure_inside_the_transaction_is_the_tests_failure(
    pytester: pytest.Pytester, run_base: str
) -> None:
    make_project(
        pytester,
        """
        def test_psycopg(pgmig_psycopg_tx):
            pgmig_psycopg_tx.execute("SELECT 1 / 0")


        async def test_asyncpg(pgmig_tx):
            await pgmig_tx.execute("INSERT INTO users (id, name) VALUES (1, 'dup')")


        def test_after(pgmig_psycopg_tx):
            assert pgmig_psycopg_tx.execute("SELECT count(*) FROM users").fetchone() == (1,)
        """,
    )
    result = pytester.runpytest_subprocess("--pgmig-migrations=migrations", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=2, errors=0)
    out = text_of(result)
    assert "DivisionByZero" in out and "UniqueViolationError" in out
    assert not re.search(r"ERROR at teardown", out)


ENDED_TESTS = """
import time

import psycopg

PIDS = []


def test_1_keeps_a_connection(pgmig_psycopg_tx):
    PIDS.append(pgmig_psycopg_tx.info.backend_pid)


def test_2_its_session_is_ended(pgmig_server):
    # as a reset ends idle sessions on a schema past a few
    with psycopg.connect(pgmig_server.dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (PIDS[0],))
        deadline = time.monotonic() + 10
        gone = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = %s"
        while not admin.execute(gone, (PIDS[0],)).fetchone()[0]:
            assert time.monotonic() < deadline, "the session was not ended"
            time.sleep(0.02)


def test_3_gets_a_new_connection(pgmig_psycopg_tx):
    assert pgmig_psycopg_tx.info.backend_pid != PIDS[0]
    assert pgmig_psycopg_tx.execute("SELECT count(*) FROM users").fetchone() == (1,)
"""


def test_a_kept_connection_ended_meanwhile_is_replaced(
    pytester: pytest.Pytester, run_base: str
) -> None:
    run_in_order(pytester, ENDED_TESTS, passed=3)
