"""Reliability matrix, faults: leaks, killed workers and runs, Ctrl-C, a dying server."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from plugin_support import make_project, run_dirs, sql, write_migrations
from reliability_support import (
    finish,
    kill_group,
    local_server,
    needs_binaries,
    pgmig_schemas,
    postmaster_pid,
    registered,
    running,
    server_gone_message,
    spawn_pytest,
    wait_file,
    wait_for,
)

pytestmark = [pytest.mark.usefixtures("clean_env"), needs_binaries]


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    """A server of this module's own: only these tests' runs create or reap schemas on it."""
    with local_server(max_connections=200) as handle:
        yield handle.info.dsn


def run_of(schema: str) -> str:
    """The run id inside a schema name `pgmig_<run>_<worker>_<kind><n>`."""
    return schema.split("_")[1]


def of_run(dsn: str, run: str) -> set[str]:
    return {name for name in pgmig_schemas(dsn) if run_of(name) == run}


def sessions_of_run(dsn: str, run: str) -> int:
    rows = sql(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
        f"pgmig-control:{run}%",
    )
    return int(rows[0][0])


# --- a test that leaks connections and locks -------------------------------------------------

RECORD = """
import psycopg

leaked = []

def record(name):
    with open("schemas.txt", "a") as out:
        out.write(name + "\\n")
"""

LEAKS = (
    RECORD
    + """

def test_leaks_connections_and_a_lock(pgmig_dsn, pgmig_schema):
    record(pgmig_schema.name)
    for _ in range(5):
        leaked.append(psycopg.connect(pgmig_dsn, autocommit=True))
    conn = psycopg.connect(pgmig_dsn)
    conn.execute("INSERT INTO users (name) VALUES ('leaked')")
    conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    leaked.append(conn)  # a transaction left open, holding the lock

async def test_leaks_a_pool_and_changes_ddl(pgmig_dsn, pgmig_schema):
    import asyncpg
    record(pgmig_schema.name)
    pool = await asyncpg.create_pool(pgmig_dsn, min_size=3, max_size=3)
    conn = await pool.acquire()
    tx = conn.transaction()
    await tx.start()
    await conn.execute("CREATE TABLE extra (n int); LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    leaked.append(pool)  # never released, never closed

def test_next_test_is_clean(pgmig_dsn, pgmig_schema):
    record(pgmig_schema.name)
    with psycopg.connect(pgmig_dsn, connect_timeout=10) as conn:
        conn.execute("SET lock_timeout = '30s'")
        assert conn.execute("SELECT array_agg(name) FROM users").fetchone()[0] == ["seed"]
        assert conn.execute("SELECT to_regclass('extra')").fetchone()[0] is None

def test_last_one_leaks_too(pgmig_dsn, pgmig_schema):
    record(pgmig_schema.name)
    conn = psycopg.connect(pgmig_dsn)
    conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    leaked.append(conn)  # still open when the session ends
"""
)


def run_leaky(pytester: pytest.Pytester, dsn: str, tests: str, *args: str) -> tuple[str, str]:
    """Run `tests` in a process of its own (leaked connections live until it exits)."""
    make_project(pytester, tests)
    started = time.monotonic()
    result = pytester.runpytest_subprocess(
        f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations", "-rA", *args, timeout=120
    )
    elapsed = time.monotonic() - started
    text = "\n".join(result.outlines + result.errlines)
    assert elapsed < 60, (elapsed, text)
    assert result.ret == pytest.ExitCode.OK, text
    names = set((pytester.path / "schemas.txt").read_text().split())
    return run_of(next(iter(names))), text


@pytest.mark.parametrize("scope", ["test", "worker"])
def test_leaked_connections_and_locks_do_not_stall_teardown(
    pytester: pytest.Pytester, dsn: str, scope: str
) -> None:
    """A lock left by a session on the test's DSN (test_plugin_lifecycle.py covers one)."""
    run, text = run_leaky(pytester, dsn, LEAKS, f"--pgmig-scope={scope}")
    assert "4 passed" in text, text
    assert "could not drop" not in text, text
    # the run removed every schema of its own before it ended
    assert of_run(dsn, run) == set()
    assert not {name for name in registered(dsn) if run_of(name) == run}


ADMIN_LOCK = (
    RECORD
    + """
def test_admin_session_locks_the_schema(pgmig_server, pgmig_schema):
    # a session the plugin cannot tell by its application_name: opened on the admin DSN
    record(pgmig_schema.name)
    conn = psycopg.connect(pgmig_server.dsn)
    conn.execute(f'LOCK TABLE "{pgmig_schema.name}".users IN ACCESS EXCLUSIVE MODE')
    leaked.append(conn)

def test_next_test(pgmig_dsn, pgmig_schema):
    record(pgmig_schema.name)
"""
)


def test_a_lock_from_a_session_on_another_dsn_does_not_stall_teardown(
    pytester: pytest.Pytester, dsn: str
) -> None:
    run, text = run_leaky(pytester, dsn, ADMIN_LOCK)
    assert "2 passed" in text, text
    assert "could not drop" not in text, text
    assert of_run(dsn, run) == set()


LOCK_KEPT = """
def test_fails(pgmig_schema):
    with open("kept.txt", "w") as out:
        out.write(pgmig_schema.name)
    assert False
"""


def test_a_leftover_schema_in_use_does_not_stop_the_next_run(
    pytester: pytest.Pytester, dsn: str
) -> None:
    import psycopg

    make_project(pytester, LOCK_KEPT)
    args = [f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations"]
    pytester.runpytest_subprocess(*args, "--pgmig-keep").assert_outcomes(failed=1)
    kept = (pytester.path / "kept.txt").read_text()
    try:
        # someone inspects the kept schema in psql, inside an open transaction
        with psycopg.connect(dsn) as inspector:
            inspector.execute(f'SELECT * FROM "{kept}".users')
            pytester.makepyfile(test_project="def test_ok(pgmig_dsn): pass")
            started = time.monotonic()
            result = pytester.runpytest_subprocess(*args, timeout=120)
            elapsed = time.monotonic() - started
            inspector.rollback()
        result.assert_outcomes(passed=1)
        assert elapsed < 60
    finally:
        sql(dsn, f'DROP SCHEMA IF EXISTS "{kept}" CASCADE')
        sql(dsn, "DELETE FROM pgmig_registry.schemas WHERE name = %s", kept)


# --- kill -9 of an xdist worker --------------------------------------------------------------

KILLED_WORKER = """
import os, signal
import pytest

def record(name, text):
    with open(name + ".tmp", "w") as out:
        out.write(text)
    os.replace(name + ".tmp", name)

def test_killed_mid_test(pgmig_schema, pgmig_dsn):
    import psycopg
    with psycopg.connect(pgmig_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO users (name) VALUES ('doomed')")
    record("doomed.txt", pgmig_schema.name)
    os.kill(os.getpid(), signal.SIGKILL)

@pytest.mark.parametrize("n", range(8))
def test_after(pgmig_schema, n):
    with open(f"after-{n}.txt", "w") as out:
        out.write(pgmig_schema.name)
"""


def test_kill_9_of_an_xdist_worker(pytester: pytest.Pytester, dsn: str) -> None:
    make_project(pytester, KILLED_WORKER)
    args = [f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations", "-n", "2"]
    started = time.monotonic()
    result = pytester.runpytest_subprocess(*args, timeout=120)
    assert time.monotonic() - started < 90
    result.assert_outcomes(passed=8, failed=1)
    result.stdout.fnmatch_lines(["*worker 'gw*' crashed while running *test_killed_mid_test*"])
    doomed = (pytester.path / "doomed.txt").read_text()
    run = run_of(doomed)
    # xdist replaced the worker; the dead worker's schemas are removed by the replacement's
    # start-up reap or, if its session was not yet gone then, by the next run's
    if doomed in pgmig_schemas(dsn):
        pytester.makepyfile(test_project="def test_next(pgmig_dsn): pass")
        pytester.runpytest(f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations")
    assert doomed not in pgmig_schemas(dsn)
    assert doomed not in registered(dsn)
    assert of_run(dsn, run) == set()
    assert sessions_of_run(dsn, run) == 0


# --- Ctrl-C while migrations run -------------------------------------------------------------

SLOW_MIGRATION = {
    "001_users.sql": "CREATE TABLE {{tables.users}} (id serial PRIMARY KEY, name text);",
    "002_slow.sql": "SELECT pg_sleep(60);\nCREATE TABLE {{tables.after_sleep}} (n int);",
}


def test_sigint_during_migrations_leaves_nothing(pytester: pytest.Pytester, dsn: str) -> None:
    make_project(pytester, "def test_it(pgmig_schema):\n    pass\n", files=SLOW_MIGRATION)
    write_migrations(pytester.path, name="good")
    before = pgmig_schemas(dsn)
    proc = spawn_pytest(pytester.path, f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations")
    with running(proc):

        def sleeping() -> bool:
            assert proc.poll() is None, finish(proc)
            return bool(
                sql(
                    dsn,
                    "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' "
                    "AND application_name LIKE 'pgmig-control:%' AND pid <> pg_backend_pid()",
                )
            )

        wait_for(sleeping, what="the migration to start sleeping")
        run = run_of(next(iter(pgmig_schemas(dsn) - before)))
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out = finish(proc, timeout=60)
    assert time.monotonic() - started < 30, out
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    wait_for(lambda: sessions_of_run(dsn, run) == 0, 30, "the run's sessions to end")
    left = of_run(dsn, run)
    # whatever it left, the next run removes at start-up
    pytester.makepyfile(test_project="def test_next(pgmig_dsn): pass")
    next_run = pytester.runpytest_subprocess(
        f"--pgmig-dsn={dsn}", "--pgmig-migrations=good", "-p", "no:randomly"
    )
    next_run.assert_outcomes(passed=1)
    assert of_run(dsn, run) == set()
    assert not {name for name in registered(dsn) if run_of(name) == run}
    # and the interrupted run itself should have left nothing
    assert "could not drop" not in out, out
    assert left == set(), out


# --- the whole run killed, while another run lives -------------------------------------------

HOLDING = """
import os, time
import pytest

@pytest.mark.parametrize("n", range(2))
def test_hold(pgmig_schema, pgmig_dsn, n):
    import psycopg
    with psycopg.connect(pgmig_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO users (name) VALUES ('held')")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(f"held-{worker}.tmp", "w") as out:
        out.write(pgmig_schema.name)
    os.replace(f"held-{worker}.tmp", f"held-{worker}.txt")
    time.sleep(300)
"""

FULL_RUN = """
import pytest

@pytest.mark.parametrize("n", range(6))
async def test_test_scope(pgmig_conn, n):
    await pgmig_conn.execute("INSERT INTO users (name) VALUES ('x')")
    assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 2

@pytest.mark.pgmig(scope="worker")
@pytest.mark.parametrize("n", range(6))
async def test_worker_scope(pgmig_conn, n):
    await pgmig_conn.execute("INSERT INTO users (name) VALUES ('x')")
    assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 2

def test_fails(pgmig_schema):
    assert False
"""


def held_rows(dsn: str, schema: str) -> list[tuple[object, ...]]:
    return sql(dsn, f'SELECT name FROM "{schema}".users ORDER BY id')


def test_killed_run_is_reaped_and_a_live_concurrent_run_never_is(
    pytester: pytest.Pytester, dsn: str
) -> None:
    holder_dir = pytester.mkdir("holder")
    runner_dir = pytester.mkdir("runner")
    for folder, tests in ((holder_dir, HOLDING), (runner_dir, FULL_RUN)):
        (folder / "test_project.py").write_text(tests)
        (folder / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
        write_migrations(folder)
    args = [f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations", "-n", "2"]
    holder = spawn_pytest(holder_dir, *args)
    with running(holder):
        held = {wait_file(holder_dir / f"held-{w}.txt", holder) for w in ("gw0", "gw1")}
        run = run_of(next(iter(held)))
        theirs = of_run(dsn, run)
        assert held <= theirs
        # a whole other run (-n 2, both scopes, a failure) while the holder lives
        runner = spawn_pytest(runner_dir, *args)
        with running(runner):
            out = finish(runner)
        assert "12 passed" in out and "1 failed" in out, out
        assert of_run(dsn, run) == theirs
        for name in held:
            assert held_rows(dsn, name) == [("seed",), ("held",)]
        # now the holder dies outright: run, controller and workers
        kill_group(holder)
        holder.communicate()
    wait_for(lambda: sessions_of_run(dsn, run) == 0, 30, "the killed run's sessions to end")
    assert of_run(dsn, run) == theirs  # nobody reaped while nobody started
    # the next run reaps them at start-up
    runner = spawn_pytest(runner_dir, *args, "-k", "test_test_scope")
    with running(runner):
        out = finish(runner)
    assert "6 passed" in out, out
    assert of_run(dsn, run) == set()
    assert not {name for name in registered(dsn) if run_of(name) == run}


# --- two independent runs at once ------------------------------------------------------------

ISOLATED = """
import os
import pytest

@pytest.mark.parametrize("n", range(8))
async def test_isolated(pgmig_conn, pgmig_schema, n):
    await pgmig_conn.execute("INSERT INTO users (name) VALUES ($1)", os.getcwd())
    assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 2
    with open(f"seen-{n}.txt", "w") as out:
        out.write(pgmig_schema.name)
"""


def test_two_independent_runs_at_once(pytester: pytest.Pytester, dsn: str) -> None:
    """8 concurrent migrators on one schema: tests/engine/test_engine_concurrency.py."""
    folders = [pytester.mkdir("one"), pytester.mkdir("two")]
    for folder in folders:
        (folder / "test_project.py").write_text(ISOLATED)
        (folder / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
        write_migrations(folder)
    args = [f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations", "-n", "2"]
    procs = [spawn_pytest(folder, *args) for folder in folders]
    outs = [finish(proc) for proc in procs]
    for out in outs:
        assert "8 passed" in out, out
    seen = [{(f / f"seen-{n}.txt").read_text() for n in range(8)} for f in folders]
    runs = [{run_of(name) for name in names} for names in seen]
    assert len(runs[0]) == len(runs[1]) == 1 and runs[0] != runs[1]
    for (run,) in runs:
        assert of_run(dsn, run) == set()


# --- the server dies mid-run -----------------------------------------------------------------

DYING = """
import os, signal, time
import pytest

def kill_server(postmaster):
    # the whole server at once, as when its machine or container goes away
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == postmaster:
                children.append(int(entry))
    if os.environ.get("KILL_HOW") == "stop":
        # pg_ctl stop -m fast: the server ends every session and shuts down in order
        os.kill(postmaster, signal.SIGINT)
    else:
        for pid in [postmaster, *children]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in [postmaster, *children]):
        assert time.monotonic() < deadline
        time.sleep(0.05)

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

def test_before(pgmig_schema):
    pass

def test_kills_the_server(request, pgmig_server, pgmig_schema):
    kill_server(int(os.environ["KILL_PID"]) or {postmaster})
    # teardown comes once the plugin's own connection has seen the server go
    from pytest_pgmig.plugin.state import state_of
    isolation = state_of(request.config).isolation
    control = getattr(isolation, "schemas", isolation)._conn
    deadline = time.monotonic() + 30
    while not control.is_closed():
        assert time.monotonic() < deadline, "the plugin's connection never saw the server go"
        time.sleep(0.01)

@pytest.mark.parametrize("n", range(5))
def test_after(pgmig_schema, n):
    pass

@pytest.mark.parametrize("n", range(3))
async def test_after_async(pgmig_conn, n):
    pass
"""

EMBEDDED_POSTMASTER = (
    "int(open(os.path.join(pgmig_server.host, 'data', 'postmaster.pid')).read().split()[0])"
)


def assert_fails_fast(result: pytest.RunResult, elapsed: float) -> str:
    text = "\n".join(result.outlines + result.errlines)
    assert elapsed < 60, (elapsed, text)
    assert "INTERNALERROR" not in text, text
    outcomes = result.parseoutcomes()
    # test_before passes; the test that kills the server passes too, or fails in teardown;
    # the first test after it passes too when the schema it is handed was reset (in the
    # background) before the server died: it never needs the server
    passed = outcomes.get("passed", 0)
    assert passed in (1, 2, 3), text
    failed = [line for line in result.outlines if line.startswith("FAILED test_project.py::")]
    errors = [line for line in result.outlines if line.startswith("ERROR test_project.py::")]
    assert len(failed) + len(errors) >= 8 - max(0, passed - 2), text
    assert text.count("pgmig: lost the PostgreSQL server ") >= 7 - max(0, passed - 2), text
    assert server_gone_message(text), text
    # only the killing test may error (in its own teardown); every later test FAILS with
    # the lost-server message, never with a driver's traceback
    assert all("test_kills_the_server" in line for line in errors), text
    assert "InternalClientError" not in text, text
    return text


def test_embedded_server_dies_mid_run(
    pytester: pytest.Pytester, run_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILL_PID", "0")
    monkeypatch.setenv("KILL_HOW", "kill")
    make_project(pytester, DYING.replace("{postmaster}", EMBEDDED_POSTMASTER))
    started = time.monotonic()
    result = pytester.runpytest_subprocess("--pgmig-migrations=migrations", "-p", "no:randomly")
    assert_fails_fast(result, time.monotonic() - started)
    # the dead server's folder is removed all the same
    wait_for(lambda: run_dirs(run_base) == [], 30, "the run folder to be removed")


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_dsn_server_dies_mid_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The DSN's server is killed outright, or stopped in order (`pg_ctl stop -m fast`)."""
    with local_server() as handle:
        monkeypatch.setenv("KILL_PID", str(postmaster_pid(handle)))
        monkeypatch.setenv("KILL_HOW", how)
        make_project(pytester, DYING.replace("{postmaster}", "0"))
        started = time.monotonic()
        result = pytester.runpytest_subprocess(
            f"--pgmig-dsn={handle.info.dsn}", "--pgmig-migrations=migrations", "-p", "no:randomly"
        )
        text = assert_fails_fast(result, time.monotonic() - started)
    assert re.search(r"pgmig: lost the PostgreSQL server postgresql://postgres@", text), text
