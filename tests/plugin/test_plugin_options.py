"""Options from each source in the report header, usage errors, and the plugin switched off."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from plugin_support import make_project, run_dirs, write_migrations

pytestmark = pytest.mark.usefixtures("clean_env")

USES_SCHEMA = """
async def test_uses_schema(pgmig_conn, pgmig_schema):
    assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 1
"""
ASYNC_INI_LINES = "asyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"


def header(result: pytest.RunResult) -> str:
    lines = [line for line in result.outlines if line.startswith("pgmig:")]
    assert len(lines) >= 1, result.outlines
    return lines[0]


def test_cli_source_in_header(pytester: pytest.Pytester, server_dsn: str) -> None:
    make_project(pytester, USES_SCHEMA)
    result = pytester.runpytest(
        f"--pgmig-dsn={server_dsn}",
        "--pgmig-migrations=migrations",
        "--pgmig-module=Shop",
        "--pgmig-scope=worker",
        "--pgmig-isolation=schema",
        "--pgmig-keep",
    )
    result.assert_outcomes(passed=1)
    line = header(result)
    assert line.startswith("pgmig: server dsn ")
    assert " PostgreSQL " in line
    assert (
        "[cli]; migrations shop=migrations [cli]; scope worker [cli]; isolation schema [cli]; "
        "keep True [cli]"
    ) in line


def test_env_source_in_header(
    pytester: pytest.Pytester, server_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_project(pytester, USES_SCHEMA)
    monkeypatch.setenv("PGMIG_DSN", server_dsn)
    monkeypatch.setenv("PGMIG_MIGRATIONS", "migrations")
    monkeypatch.setenv("PGMIG_MODULE", "envlib")
    monkeypatch.setenv("PGMIG_SCOPE", "worker")
    monkeypatch.setenv("PGMIG_ISOLATION", "Database")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    line = header(result)
    assert "[env PGMIG_DSN]; migrations envlib=migrations [env PGMIG_MIGRATIONS]" in line
    assert "scope worker [env PGMIG_SCOPE]; isolation database [env PGMIG_ISOLATION]" in line
    assert "keep False [default]" in line


def test_env_source_in_a_subprocess(
    pytester: pytest.Pytester, server_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_project(pytester, USES_SCHEMA)
    monkeypatch.setenv("PGMIG_DSN", server_dsn)
    monkeypatch.setenv("PGMIG_MIGRATIONS", str(pytester.path / "migrations"))
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    assert "[env PGMIG_MIGRATIONS]; scope test [default]" in header(result)


INI_FILES = {
    "pyproject.toml": (
        "[tool.pytest.ini_options]\n"
        'asyncio_mode = "auto"\n'
        'asyncio_default_fixture_loop_scope = "function"\n'
        'pgmig_migrations = ["migrations"]\n'
        'pgmig_dsn = "{dsn}"\n'
        'pgmig_scope = "worker"\n'
        'pgmig_module = "inilib"\n'
        "pgmig_keep = true\n"
    ),
    "pytest.ini": (
        "[pytest]\n" + ASYNC_INI_LINES + "pgmig_migrations = migrations\n"
        "pgmig_dsn = {dsn}\npgmig_scope = worker\npgmig_module = inilib\npgmig_keep = true\n"
    ),
    "tox.ini": (
        "[pytest]\n" + ASYNC_INI_LINES + "pgmig_migrations =\n    migrations\n"
        "pgmig_dsn = {dsn}\npgmig_scope = worker\npgmig_module = inilib\npgmig_keep = true\n"
    ),
}


@pytest.mark.parametrize("ini_name", sorted(INI_FILES))
def test_ini_source_in_header(pytester: pytest.Pytester, server_dsn: str, ini_name: str) -> None:
    make_project(pytester, USES_SCHEMA, ini=None)
    (pytester.path / ini_name).write_text(INI_FILES[ini_name].format(dsn=server_dsn))
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    line = header(result)
    source = f"[ini {ini_name}]"
    assert "PostgreSQL 1" in line and f"{source}; migrations inilib=migrations {source}" in line
    assert f"scope worker {source}; isolation auto [default]; keep True {source}" in line


def test_cli_beats_env_beats_ini(
    pytester: pytest.Pytester, server_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("cli_migrations", "env_migrations", "ini_migrations"):
        table = name.split("_")[0]
        write_migrations(
            pytester.path, {"001_t.sql": f"CREATE TABLE {{{{tables.{table}}}}} ();"}, name
        )
    pytester.makepyfile(
        test_project="""
        async def test_which(pgmig_conn):
            found = await pgmig_conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
            print("TABLES", sorted(r[0] for r in found))
        """
    )
    pytester.makeini(
        "[pytest]\n" + ASYNC_INI_LINES + "pgmig_migrations = ini_migrations\n"
        "pgmig_scope = worker\npgmig_server = docker\n"
        f"pgmig_dsn = {server_dsn}\n"
    )
    monkeypatch.setenv("PGMIG_MIGRATIONS", "env_migrations")
    monkeypatch.setenv("PGMIG_SCOPE", "test")
    monkeypatch.setenv("PGMIG_SERVER", "auto")

    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    line = header(result)
    assert "env_migrations [env PGMIG_MIGRATIONS]; scope test [env PGMIG_SCOPE]" in line
    assert "[ini tox.ini]; migrations" in line  # the DSN still comes from the ini
    result.stdout.fnmatch_lines(["*TABLES ?'env', 'schema_migrations'?*"])

    result = pytester.runpytest("-s", "--pgmig-migrations=cli_migrations", "--pgmig-scope=worker")
    result.assert_outcomes(passed=1)
    assert "cli_migrations [cli]; scope worker [cli]" in header(result)
    result.stdout.fnmatch_lines(["*TABLES ?'cli', 'schema_migrations'?*"])


def test_several_migrations_modules_from_ini(pytester: pytest.Pytester, server_dsn: str) -> None:
    write_migrations(
        pytester.path, {"001_invoices.sql": "CREATE TABLE {{tables.invoices}} (n int);"}, "billing"
    )
    make_project(
        pytester,
        """
        async def test_both(pgmig_conn, pgmig_schema):
            assert set(pgmig_schema.module_names) == {"core", "billing"}
            assert pgmig_schema.module_name == "core_" + pgmig_schema.name
            assert pgmig_schema.module_names["billing"] == "billing_" + pgmig_schema.name
            assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 1
            assert await pgmig_conn.fetchval("SELECT count(*) FROM invoices") == 0
        """,
        ini="[pytest]\n" + ASYNC_INI_LINES + "pgmig_migrations =\n    core=migrations\n"
        "    billing=billing\n",
    )
    result = pytester.runpytest(f"--pgmig-dsn={server_dsn}")
    result.assert_outcomes(passed=1)
    assert "migrations core=migrations, billing=billing [ini tox.ini]" in header(result)


# --- usage errors ----------------------------------------------------------------------------


def usage_error(result: pytest.RunResult) -> str:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, (result.ret, result.outlines)
    text = "\n".join(result.errlines + result.outlines)
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    return text


@pytest.mark.parametrize("source", ["cli", "env", "ini"])
def test_missing_migrations_folder(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    args: list[str] = []
    if source == "cli":
        args.append("--pgmig-migrations=no_such_dir")
    elif source == "env":
        monkeypatch.setenv("PGMIG_MIGRATIONS", "no_such_dir")
    else:
        pytester.makeini("[pytest]\npgmig_migrations = no_such_dir\n")
    text = usage_error(pytester.runpytest(*args))
    where = {"cli": "cli", "env": "env PGMIG_MIGRATIONS", "ini": "ini tox.ini"}[source]
    assert (
        f"pgmig migrations folder '{pytester.path / 'no_such_dir'}' (from {where}) does not exist"
        in text
    )
    assert "Fix the path" in text


def test_migrations_folder_without_sql(pytester: pytest.Pytester) -> None:
    folder = pytester.mkdir("migrations")
    (folder / "README.md").write_text("nothing here")
    (folder / "001_init.sql.bak").write_text("CREATE TABLE t ();")
    pytester.makepyfile(test_x="def test_x(): pass")
    text = usage_error(pytester.runpytest("--pgmig-migrations=migrations"))
    assert f"'{folder}' (from cli) holds no .sql files" in text
    assert "Add migrations such as 001_create_users.sql" in text


def test_migrations_path_is_a_file(pytester: pytest.Pytester) -> None:
    pytester.makefile(".sql", schema="CREATE TABLE t ();")
    pytester.makepyfile(test_x="def test_x(): pass")
    text = usage_error(pytester.runpytest("--pgmig-migrations=schema.sql"))
    assert "schema.sql' (from cli) is not a folder" in text


def test_unknown_scope_from_cli(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    text = usage_error(pytester.runpytest("--pgmig-scope=session"))
    assert "invalid --pgmig-scope value 'session': choose one of test, worker" in text


def test_unknown_scope_from_env(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    monkeypatch.setenv("PGMIG_SCOPE", "module")
    text = usage_error(pytester.runpytest())
    assert (
        "invalid --pgmig-scope value 'module': choose one of test, worker (from PGMIG_SCOPE)"
        in text
    )


def test_unknown_scope_from_ini(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    pytester.makeini("[pytest]\npgmig_scope = per-class\n")
    text = usage_error(pytester.runpytest())
    assert "invalid --pgmig-scope value 'per-class'" in text and "(from pgmig_scope)" in text


def test_unknown_server_source(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    text = usage_error(pytester.runpytest("--pgmig-server=cloud"))
    assert "invalid --pgmig-server value 'cloud': choose one of auto, local, wheel, docker" in text


def test_module_for_several_folders_is_an_error(pytester: pytest.Pytester) -> None:
    write_migrations(pytester.path)
    write_migrations(pytester.path, name="more")
    pytester.makepyfile(test_x="def test_x(): pass")
    text = usage_error(
        pytester.runpytest(
            "--pgmig-migrations=a=migrations", "--pgmig-migrations=b=more", "--pgmig-module=x"
        )
    )
    assert "names one module, but 2 migrations folders are configured" in text


PASSWORD = "p@ss/w:rd%"
BAD_DSNS = {
    "url": "postgresql://alice:p%40ss%2Fw%3Ard%25@127.0.0.1:1/appdb",
    "raw-url": "postgresql://alice:p@ss/w:rd%@127.0.0.1:1/appdb",
    "keywords": "host=127.0.0.1 port=1 dbname=appdb user=alice password='p@ss/w:rd%'",
}


@pytest.mark.parametrize("dsn", list(BAD_DSNS.values()), ids=list(BAD_DSNS))
def test_unreachable_dsn_is_a_usage_error_without_password(
    pytester: pytest.Pytester, dsn: str
) -> None:
    write_migrations(pytester.path)
    pytester.makepyfile(test_x="def test_x(pgmig_dsn): pass")
    started = time.monotonic()
    result = pytester.runpytest(f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations")
    assert time.monotonic() - started < 10
    text = usage_error(result)
    assert "cannot connect to PostgreSQL at 127.0.0.1:1 (database 'appdb', user 'alice'" in text
    assert "connection refused" in text
    for secret in (PASSWORD, "p%40ss", "p@ss", "w:rd", "w%3Ard", "rd%25"):
        assert secret not in text, secret


def test_dsn_of_a_missing_database(pytester: pytest.Pytester, server_dsn: str) -> None:
    dsn = server_dsn.replace("/postgres?", "/no_such_db?")
    assert dsn != server_dsn
    pytester.makepyfile(test_x="def test_x(pgmig_dsn): pass")
    text = usage_error(pytester.runpytest(f"--pgmig-dsn={dsn}"))
    assert "database 'no_such_db' does not exist" in text


# --- the plugin off, or not needed -----------------------------------------------------------


def test_disabled_with_p_no_pgmig(pytester: pytest.Pytester) -> None:
    write_migrations(pytester.path)
    pytester.makepyfile(
        test_x="""
        def test_plain():
            pass

        def test_wants_schema(pgmig_dsn):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:pgmig")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'pgmig_dsn' not found*"])
    assert not [line for line in result.outlines if line.startswith("pgmig")]
    result.stdout.no_fnmatch_line("*= pgmig =*")
    # its options are gone too
    result = pytester.runpytest("-p", "no:pgmig", "--pgmig-migrations=migrations")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --pgmig-migrations=migrations*"])


def test_no_pgmig_fixture_starts_no_server(pytester: pytest.Pytester, run_base: Path) -> None:
    make_project(
        pytester,
        f"""
        import os

        def test_plain():
            assert not os.path.exists({str(run_base)!r}) or os.listdir({str(run_base)!r}) == []

        async def test_async_plain():
            pass
        """,
    )
    result = pytester.runpytest("--pgmig-migrations=migrations")
    result.assert_outcomes(passed=2)
    assert "started on first use" in header(result)
    result.stdout.no_fnmatch_line("*= pgmig =*")
    result.stdout.no_fnmatch_line("*schemas:*")
    assert run_dirs(run_base) == []
