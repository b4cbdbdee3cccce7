"""pgmig_psycopg: one psycopg connection reused test after test, carrying nothing across."""

from __future__ import annotations

import pytest
from plugin_support import make_project
from reliability_support import text_of

pytestmark = pytest.mark.usefixtures("clean_env")

# The first test leaves everything a session can hold; the second gets the same connection
# and finds none of it. Numbered so that they run in order on one worker.
CARRY_TESTS = """
import psycopg
import pytest

SEEN = {}


@pytest.mark.parametrize("i", range(7))
def test_1_leave_everything(pgmig_psycopg, i):
    conn = pgmig_psycopg
    assert conn.autocommit is False  # psycopg's default, like pytest-postgresql's fixture
    SEEN.setdefault("ids", set()).add(id(conn))
    conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    conn.read_only = False
    conn.execute("INSERT INTO users (name) VALUES ('left behind')")
    for _ in range(8):  # psycopg prepares a query on the server from its 5th run
        conn.execute("SELECT count(*) FROM users WHERE name <> %s", ("x",))
    conn.execute("SET statement_timeout = '1234ms'")
    conn.execute("SET search_path = pg_catalog")
    conn.execute("CREATE TEMP TABLE scratch (x int)")
    conn.execute("PREPARE leftover AS SELECT 1")
    conn.execute("LISTEN leftover_channel")
    conn.execute("SELECT pg_advisory_lock(4242)")
    conn.execute("DECLARE leftover_cursor CURSOR WITH HOLD FOR SELECT 1")
    conn.execute("SET ROLE NONE")
    if i % 2:
        conn.commit()  # the session state stays; and psycopg's own cache is not cleared
    # else a transaction left open, with writes in it


@pytest.mark.parametrize("i", range(7))
def test_2_nothing_carried(pgmig_psycopg, pgmig_schema, i):
    conn = pgmig_psycopg
    assert id(conn) in SEEN["ids"], "the connection was not reused"
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.autocommit is False and conn.isolation_level is None and conn.read_only is None
    assert conn.execute("SELECT current_schema()").fetchone() == (pgmig_schema.name,)
    assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)  # the seed row only
    assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
    assert conn.execute("SELECT to_regclass('pg_temp.scratch')").fetchone() == (None,)
    prepared = "SELECT count(*) FROM pg_prepared_statements WHERE from_sql"
    assert conn.execute(prepared).fetchone() == (0,)  # PREPARE'd; psycopg's own stay
    for _ in range(8):  # psycopg's own prepared statements still work
        assert conn.execute("SELECT count(*) FROM users WHERE name <> %s", ("x",)).fetchone()
    assert conn.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM pg_cursors").fetchone() == (0,)
    locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    assert conn.execute(locks).fetchone() == (0,)
    assert conn.execute("SELECT current_setting('transaction_isolation')").fetchone() == (
        "read committed",
    )
    conn.rollback()


def test_3_ddl_replaces_the_schema_and_the_connection(pgmig_psycopg):
    pgmig_psycopg.execute("CREATE TABLE extra (id int)")
    pgmig_psycopg.commit()
    SEEN["ddl"] = id(pgmig_psycopg)


@pytest.mark.parametrize("i", range(2))
def test_4_a_new_schema_gets_a_working_connection(pgmig_psycopg, i):
    assert pgmig_psycopg.execute("SELECT to_regclass('extra')").fetchone() == (None,)
    assert pgmig_psycopg.execute("SELECT count(*) FROM users").fetchone() == (1,)
"""


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "n2"])
@pytest.mark.parametrize("scope", ["test", "worker"])
def test_a_reused_connection_carries_nothing_into_the_next_test(
    pytester: pytest.Pytester, server_dsn: str, xdist: bool, scope: str
) -> None:
    make_project(
        pytester, CARRY_TESTS, ini="[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    )
    args = ["-p", "no:randomly", "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}"]
    args.append(f"--pgmig-scope={scope}")
    if xdist:
        # one file, one worker: the tests run in order, on that worker's connections
        result = pytester.runpytest_subprocess(*args, "-n", "2", "--dist=loadfile")
    else:
        result = pytester.runpytest(*args)
    result.assert_outcomes(passed=17)


def test_without_psycopg_the_fixture_says_how_to_get_it(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    make_project(pytester, "def test_a(pgmig_psycopg):\n    pass\n", ini=None)
    # psycopg made unimportable for this run only
    pytester.makeconftest("import sys\nsys.modules['psycopg'] = None\n")
    result = pytester.runpytest_subprocess(
        "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}"
    )
    result.assert_outcomes(errors=1)
    text = text_of(result)
    assert "pgmig_psycopg needs psycopg 3" in text and "pytest-pgmig[psycopg]" in text
    assert "Traceback" not in text
