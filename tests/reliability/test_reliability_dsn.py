"""Reliability matrix, DSN problems and secrets, on a cluster with a TCP port and passwords."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from plugin_support import make_project, sql, write_migrations
from reliability_support import (
    PASSWORD,
    SECRET_STEM,
    TcpCluster,
    assert_no_password,
    needs_binaries,
    pgmig_schemas,
    start_tcp_cluster,
    text_of,
    usage_error,
)

from pytest_pgmig.servers import probe

pytestmark = [pytest.mark.usefixtures("clean_env"), needs_binaries]

ROLE = "pgmig_app"
DATABASE = "appdb"


@pytest.fixture(scope="module")
def tcp() -> Iterator[TcpCluster]:
    """A cluster on 127.0.0.1 where `pgmig_app` (not a superuser) logs in with PASSWORD."""
    cluster = start_tcp_cluster()
    try:
        escaped = PASSWORD.replace("'", "''")
        sql(cluster.admin_dsn, f"CREATE ROLE {ROLE} LOGIN PASSWORD '{escaped}'")
        sql(cluster.admin_dsn, f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def app_dsn(tcp: TcpCluster) -> str:
    return tcp.tcp_dsn(ROLE, PASSWORD, DATABASE)


def test_wrong_password(pytester: pytest.Pytester, tcp: TcpCluster) -> None:
    wrong = f"{SECRET_STEM}-wrong@/:%"
    write_migrations(pytester.path)
    pytester.makepyfile(test_x="def test_x(pgmig_dsn): pass")
    result = pytester.runpytest(
        f"--pgmig-dsn={tcp.tcp_dsn(ROLE, wrong, DATABASE)}", "--pgmig-migrations=migrations"
    )
    text = usage_error(result)
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{tcp.port} (database 'appdb'" in text
    assert f"password authentication failed for user '{ROLE}'" in text
    assert_no_password(text, wrong)


def test_missing_database_with_a_password(pytester: pytest.Pytester, tcp: TcpCluster) -> None:
    write_migrations(pytester.path)
    pytester.makepyfile(test_x="def test_x(pgmig_dsn): pass")
    dsn = tcp.tcp_dsn(ROLE, PASSWORD, "no_such_db")
    text = usage_error(pytester.runpytest(f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations"))
    assert "database 'no_such_db' does not exist" in text
    assert_no_password(text)


def test_server_older_than_the_oldest_supported_major(
    pytester: pytest.Pytester, app_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No server older than 12 exists here: the real server answers, its version is replaced.

    pytester runs the inner pytest in this process, so the replaced version reaches the
    plugin's start-up probe, and the user sees the message the version check produces.
    """
    monkeypatch.setattr(probe, "_fetch", fake_version(110022))
    write_migrations(pytester.path)
    pytester.makepyfile(test_x="def test_x(pgmig_dsn): pass")
    text = usage_error(
        pytester.runpytest(f"--pgmig-dsn={app_dsn}", "--pgmig-migrations=migrations")
    )
    assert "PostgreSQL 11.22 at 127.0.0.1:" in text
    assert "is older than 12, the oldest version pytest-pgmig supports. Use a newer server." in text
    assert_no_password(text)


def fake_version(num: int) -> object:
    real = probe._fetch

    async def fetch(dsn: str, timeout: float) -> tuple[int, bool]:
        _, superuser = await real(dsn, timeout)  # the connection (and password) is real
        return num, superuser

    return fetch


# --- a whole run with a password: nothing shows it ------------------------------------------

SECRETS_TESTS = """
import logging
import warnings
import pytest

log = logging.getLogger("app")

def test_prints_fixtures(pgmig_server, pgmig_schema):
    print("server:", pgmig_server, repr(pgmig_server))
    print("schema:", pgmig_schema, repr(pgmig_schema))
    log.warning("server %r schema %r", pgmig_server, pgmig_schema)
    warnings.warn(f"schema {pgmig_schema!r} on {pgmig_server!r}")
    assert pgmig_server.port == {port}

async def test_uses_it(pgmig_conn):
    assert await pgmig_conn.fetchval("SELECT current_user") == "{role}"

def test_fails_and_is_kept(pgmig_server, pgmig_schema):
    assert False, repr(pgmig_schema)

@pytest.mark.pgmig(migrations="broken")
def test_broken_migration(pgmig_schema):
    pass

@pytest.mark.pgmig(scope="worker")
async def test_worker_scope(pgmig_pool, pgmig_migrations):
    assert (await pgmig_migrations.apply_pending_migrations())["status"] == "up_to_date"
"""


@pytest.mark.parametrize(
    ("xdist", "form"),
    [(False, "url"), (False, "keywords"), (True, "url")],
    ids=["serial", "serial-keyword-dsn", "n2"],
)
def test_no_password_anywhere_in_a_full_run(
    pytester: pytest.Pytester,
    tcp: TcpCluster,
    app_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    xdist: bool,
    form: str,
) -> None:
    """Header, captured output, logs, warnings, failures, --pgmig-keep hints, summary, junit."""
    if form == "keywords":
        app_dsn = (
            f"host=127.0.0.1 port={tcp.port} dbname={DATABASE} user={ROLE} password='{PASSWORD}'"
        )
    before = pgmig_schemas(tcp.admin_dsn.replace("/postgres?", f"/{DATABASE}?"))
    make_project(pytester, SECRETS_TESTS.replace("{port}", str(tcp.port)).replace("{role}", ROLE))
    broken = pytester.mkdir("broken")
    (broken / "001_bad.sql").write_text("SELECT * FROM missing_table;\n")
    monkeypatch.setenv("PGMIG_DSN", app_dsn)  # env: the header names its source
    junit = pytester.path / "junit.xml"
    args = [
        "--pgmig-migrations=migrations",
        "--pgmig-keep",
        "-rA",
        "--log-level=DEBUG",
        "-o",
        "log_cli=true",
        f"--junitxml={junit}",
        "-p",
        "no:randomly",
    ]
    if xdist:
        result = pytester.runpytest_subprocess("-n", "2", *args, timeout=120)
    else:
        result = pytester.runpytest(*args)
    result.assert_outcomes(passed=3, failed=2)
    text = text_of(result)
    assert f"pgmig: server dsn 127.0.0.1:{tcp.port} PostgreSQL " in text
    kept = re.findall(r"schema (pgmig_\w+) kept; inspect it with: psql '([^']+)'", text)
    assert kept, text
    for _, psql_dsn in kept:
        assert psql_dsn.startswith(f"postgresql://{ROLE}:***@"), psql_dsn
        assert "127.0.0.1" in psql_dsn and str(tcp.port) in psql_dsn and DATABASE in psql_dsn
    assert "missing_table" in text  # the broken migration was reported
    assert_no_password(text)
    assert_no_password(junit.read_text())
    # the kept schema is left for inspection; the next run's start-up reaps it
    admin = tcp.admin_dsn.replace("/postgres?", f"/{DATABASE}?")
    assert {name for name, _ in kept} <= pgmig_schemas(admin)
    pytester.makepyfile(test_project="def test_again(pgmig_dsn): pass")
    pytester.runpytest("--pgmig-migrations=migrations").assert_outcomes(passed=1)
    assert pgmig_schemas(admin) == before
