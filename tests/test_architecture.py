"""The plugin's seams: fixtures that compose, the marker's signature, the reset builder, imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from plugin_support import make_project

from pytest_pgmig.isolation.reset import Known, Table, Template, reset_function_sql

pytestmark = pytest.mark.usefixtures("clean_env")


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


TABLES = [Table("orders", "id, total", "(r).id, (r).total"), Table("tags", "id", "(r).id")]
TEMPLATE = Template("tpl_1", {"orders": "abc123"}, ())
SEEN = Known((16400, 16410), (16420,), 16430)


def test_reset_builder_replica_deletes_and_reseeds_through_text() -> None:
    sql = reset_function_sql("s_1", TABLES, TEMPLATE, replica=True, seen=SEEN)
    assert 'DELETE FROM "s_1"."tags";' in sql
    assert "TRUNCATE" not in sql
    assert (
        'INSERT INTO "s_1"."orders" (id, total) OVERRIDING SYSTEM VALUE '
        'SELECT (r).id, (r).total FROM (SELECT s.r::"s_1"."orders" AS r '
        'FROM "tpl_1"."orders" AS s) AS seed;'
    ) in sql
    assert "IS DISTINCT FROM E'abc123'" in sql
    # the state reads the schema's catalog rows by oid
    assert "state_v2(E's_1', ARRAY[E'schema_migrations'], p_log, '{16400,16410}'" in sql


def test_reset_builder_without_superuser_truncates_what_holds_rows() -> None:
    sql = reset_function_sql("s_1", TABLES, TEMPLATE, replica=False, seen=SEEN)
    assert "EXECUTE 'TRUNCATE ' || array_to_string(dirty, ', ') || ' CASCADE';" in sql
    assert "DELETE FROM" not in sql
    assert sql.startswith('CREATE OR REPLACE FUNCTION pgmig_registry."reset_s_1"')


def test_loading_the_plugin_imports_no_driver() -> None:
    code = (
        "import sys, pytest, pytest_pgmig.plugin\n"
        "heavy = [m for m in ('asyncpg', 'pytest_pgmig.isolation.schemas', "
        "'pytest_pgmig.servers.embedded') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
