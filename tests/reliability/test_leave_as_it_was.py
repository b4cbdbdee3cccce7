"""A user's database after runs on it: exactly as it was, the plugin's registry included."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plugin_support import make_project, sql
from reliability_support import text_of, tool

pytestmark = pytest.mark.usefixtures("clean_env")

# pg_dump 15.14 and later frame a dump with a random key: not the database's content
_FRAME = re.compile(r"^\\(un)?restrict .*$", re.MULTILINE)

TRIGRAMS = {
    "001_users.sql": "CREATE EXTENSION IF NOT EXISTS pg_trgm;\n"
    "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL);\n"
    "CREATE INDEX users_name ON users USING gin (name gin_trgm_ops);\n",
}
# installs its extension before its file fails
BROKEN = {"001_tags.sql": "CREATE EXTENSION IF NOT EXISTS hstore;\nCREATE TABLE tags (x nope);\n"}

TESTS = """
import os
import time

import psycopg
import pytest


@pytest.mark.parametrize("i", range(4))
def test_users(pgmig_dsn, i):
    with psycopg.connect(pgmig_dsn) as conn:
        conn.execute("INSERT INTO users (name) VALUES ('ada')")


def test_waits_to_be_killed(pgmig_dsn):
    if os.environ.get("WAIT_HERE"):
        open(os.environ["WAIT_HERE"], "w").close()
        time.sleep(120)
"""


def snapshot(dsn: str) -> str:
    """The database's dump, the server's roles, databases and the database's event triggers."""
    dumps = [
        _FRAME.sub("", subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        for command in (
            [tool("pg_dump"), "--no-comments", "-d", dsn],
            [tool("pg_dumpall"), "--roles-only", "-d", dsn],
        )
    ]
    databases = sql(dsn, "SELECT datname FROM pg_database ORDER BY 1")
    triggers = sql(dsn, "SELECT evtname FROM pg_event_trigger ORDER BY 1")
    return "\n".join([*dumps, str(databases), str(triggers)])


def run(folder: Path, dsn: str, *args: str, env: dict[str, str] | None = None) -> str:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*cmd, f"--pgmig-dsn={dsn}", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    return done.stdout + done.stderr


def test_runs_leave_the_database_exactly_as_it_was(
    pytester: pytest.Pytester, fresh_database: str
) -> None:
    make_project(pytester, TESTS, files=TRIGRAMS)
    (pytester.path / "broken").mkdir()
    for name, text in BROKEN.items():
        (pytester.path / "broken" / name).write_text(text)
    dsn = fresh_database
    before = snapshot(dsn)
    folder = pytester.path

    serial = run(folder, dsn, "--pgmig-migrations=migrations")
    assert "5 passed" in serial, serial
    assert "removed extension pg_trgm, schema pgmig_registry" in serial, serial
    assert snapshot(dsn) == before

    # with the DDL log: event triggers in the database while the run lasts
    xdist = run(folder, dsn, "--pgmig-migrations=migrations", "-n", "2", env={"PGMIG_DDL_LOG": "1"})
    assert "5 passed" in xdist and "ddl log on" in xdist, xdist
    assert snapshot(dsn) == before

    # two at once: one killed while its schema exists, one whose set fails to migrate
    marker = folder / "waiting"
    killed = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            f"--pgmig-dsn={dsn}",
            "--pgmig-migrations=migrations",
            "-k",
            "killed",
        ],
        cwd=folder,
        env={**os.environ, "WAIT_HERE": str(marker)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the run to be killed never reached its test"
        failing = run(folder, dsn, "--pgmig-migrations=broken", "-k", "users")
        assert "4 failed" in failing, failing
        # the killed run still holds its lease: the registry and extensions stay for it
        assert "removed" not in failing, failing
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert snapshot(dsn) != before  # the killed run's schema, role and the registry

    # the next run drops what the killed one left, and then everything runs made
    after = run(folder, dsn, "--pgmig-migrations=migrations", "-k", "users")
    assert "4 passed" in after, after
    assert "removed extension hstore, extension pg_trgm, schema pgmig_registry" in after, after
    assert snapshot(dsn) == before


def test_keep_registry_keeps_them_and_says_so(
    pytester: pytest.Pytester, fresh_database: str
) -> None:
    make_project(pytester, TESTS, files=TRIGRAMS)
    result = pytester.runpytest_subprocess(
        f"--pgmig-dsn={fresh_database}", "--pgmig-migrations=migrations", "-k", "users"
    )
    result.stdout.fnmatch_lines(["pgmig: server dsn *; keep registry off [[]default[]]*"])
    pytester.makeini("[pytest]\npgmig_keep_registry = true\n")
    result = pytester.runpytest_subprocess(
        f"--pgmig-dsn={fresh_database}", "--pgmig-migrations=migrations", "-k", "users"
    )
    assert result.ret == 0, text_of(result)
    result.stdout.fnmatch_lines(["pgmig: server dsn *; keep registry on [[]ini *[]]*"])
    assert sql(fresh_database, "SELECT to_regnamespace('pgmig_registry') IS NOT NULL") == [(True,)]
    assert sql(fresh_database, "SELECT extname FROM pg_extension WHERE extname = 'pg_trgm'") == [
        ("pg_trgm",)
    ]


def test_an_extension_the_database_had_stays(
    pytester: pytest.Pytester, fresh_database: str
) -> None:
    sql(fresh_database, "CREATE EXTENSION pg_trgm")
    make_project(pytester, TESTS, files=TRIGRAMS)
    result = pytester.runpytest_subprocess(
        f"--pgmig-dsn={fresh_database}", "--pgmig-migrations=migrations", "-k", "users"
    )
    assert result.ret == 0, text_of(result)
    result.stdout.fnmatch_lines(["registry: the last run on this database removed schema *"])
    assert sql(fresh_database, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'") == [
        (1,)
    ]
