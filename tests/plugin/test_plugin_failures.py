"""Broken migrations FAIL the tests that need them (never ERROR), and pgmig.lock catches edits."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from plugin_support import MIGRATIONS, make_project, write_migrations

from pytest_pgmig.plugin.settings import default_module

pytestmark = pytest.mark.usefixtures("clean_env")

TESTS = """
import pytest

def test_first(pgmig_schema):
    pass

async def test_second(pgmig_conn):
    pass

def test_third(pgmig_dsn):
    pass

def test_no_database():
    pass

@pytest.mark.pgmig(migrations="good_migrations")
async def test_other_migrations_still_work(pgmig_conn):
    assert await pgmig_conn.fetchval("SELECT count(*) FROM ok") == 0
"""


def run_broken(
    pytester: pytest.Pytester, dsn: str, files: dict[str, str], *args: str
) -> pytest.RunResult:
    write_migrations(
        pytester.path, {"001_ok.sql": "CREATE TABLE {{tables.ok}} (n int);"}, "good_migrations"
    )
    make_project(pytester, TESTS, files=files)
    result = pytester.runpytest(f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations", "-rf", *args)
    # every test that needs the broken migrations FAILS; the session goes on
    result.assert_outcomes(failed=3, passed=2, errors=0)
    text = result.stdout.str()
    assert "During handling of the above exception" not in text
    assert "Traceback" not in text
    # reported once in full, then briefly (counted in the failure sections: with CI set,
    # pytest also prints each whole message in the short summary)
    sections = [line for line in text.splitlines() if line.startswith("pgmig: migration")]
    assert sum("see the first failing test for details" in line for line in sections) == 2
    return result


def test_sql_error_names_file_line_and_excerpt(pytester: pytest.Pytester, server_dsn: str) -> None:
    broken = (
        "CREATE TABLE {{tables.tags}} (id int);\n"
        "INSERT INTO {{tables.tags}} VALUES (1);\n"
        "INSERT INTO {{tables.no_such_table}} VALUES (1);\n"
    )
    files = {**MIGRATIONS, "003_tags.sql": broken}
    result = run_broken(pytester, server_dsn, files)
    folder = pytester.path / "migrations"
    result.stdout.fnmatch_lines(
        [
            "*_ test_first _*",
            f"pgmig: migration {folder}/003_tags.sql failed (module *):",
            "Migration '003_tags.sql' failed at line 3: UndefinedTableError: relation "
            "*no_such_table* does not exist",
            "*3 | INSERT INTO {{tables.no_such_table}} VALUES (1);",
            "*^",
            f"*Fix the SQL in {folder}/003_tags.sql*",
            "*_ test_second _*",
            f"pgmig: migration {folder}/003_tags.sql is broken (*line 3*); see the first failing "
            "test for details",
        ]
    )
    result.stdout.fnmatch_lines(
        ["FAILED test_project.py::test_first - *", "FAILED test_project.py::test_second - *"]
    )


def test_bad_file_name(pytester: pytest.Pytester, server_dsn: str) -> None:
    files = {**MIGRATIONS, "add_tags.sql": "SELECT 1;"}
    result = run_broken(pytester, server_dsn, files)
    result.stdout.fnmatch_lines(
        [
            "*_ test_first _*",
            "pgmig: migration */migrations/add_tags.sql failed (module *):",
            "Migration file name(s) 'add_tags.sql' in * match no accepted pattern: 001_name.sql*",
            "Rename the file(s)*",
        ]
    )


def test_duplicate_version(pytester: pytest.Pytester, server_dsn: str) -> None:
    files = {**MIGRATIONS, "002_more.sql": "SELECT 1;"}
    result = run_broken(pytester, server_dsn, files)
    result.stdout.fnmatch_lines(
        [
            "*_ test_first _*",
            "Migration files '002_items.sql' and '002_more.sql' share version 2.",
            "Give each file its own version number*",
        ]
    )


def test_failure_in_worker_scope(pytester: pytest.Pytester, server_dsn: str) -> None:
    files = {**MIGRATIONS, "003_bad.sql": "CREATE TABLE {{tables.t}} (id int REFERENCES nowhere);"}
    result = run_broken(pytester, server_dsn, files, "--pgmig-scope=worker")
    result.stdout.fnmatch_lines(["*003_bad.sql failed*", "*nowhere*"])


def test_unterminated_sql(pytester: pytest.Pytester, server_dsn: str) -> None:
    files = {**MIGRATIONS, "003_bad.sql": "SELECT 1;\nSELECT 'never closed;\n"}
    result = run_broken(pytester, server_dsn, files)
    result.stdout.fnmatch_lines(
        ["*/migrations/003_bad.sql failed*", "Migration '003_bad.sql' line 2: unterminated*"]
    )


# --- pgmig.lock ------------------------------------------------------------------------------


def engine_checksum(text: str) -> str:
    return hashlib.sha256(text.replace("\r\n", "\n").strip().encode()).hexdigest()


USES = """
async def test_uses(pgmig_conn):
    assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 1
"""


def lock_project(pytester: pytest.Pytester, dsn: str) -> tuple[Path, list[str]]:
    folder = make_project(pytester, USES)
    args = [f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations"]
    result = pytester.runpytest(*args, "--pgmig-lock")
    result.assert_outcomes(passed=2)  # the test and the lock check
    result.stdout.fnmatch_lines(
        [f"pgmig: {folder}/pgmig.lock: locked 2 new migration(s): 001_users.sql, 002_items.sql"]
    )
    return folder, args


def lock_lines(folder: Path) -> dict[str, str]:
    entries = {}
    for line in (folder / "pgmig.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split("  ")
            entries[name] = digest
    return entries


def test_lock_writes_checksums(pytester: pytest.Pytester, server_dsn: str) -> None:
    folder, args = lock_project(pytester, server_dsn)
    assert lock_lines(folder) == {name: engine_checksum(text) for name, text in MIGRATIONS.items()}
    # a second --pgmig-lock with nothing new changes nothing
    before = (folder / "pgmig.lock").read_text()
    result = pytester.runpytest(*args, "--pgmig-lock", "-v")
    result.assert_outcomes(passed=2)
    lib = default_module(pytester.path / "migrations")
    result.stdout.fnmatch_lines([f"*pgmig*lock[[]{lib}[]] PASSED*"])
    result.stdout.fnmatch_lines(["pgmig: */pgmig.lock: locked 0 new migration(s)"])
    assert (folder / "pgmig.lock").read_text() == before


def test_edited_locked_migration_fails_the_lock_item(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    folder, args = lock_project(pytester, server_dsn)
    locked = lock_lines(folder)["001_users.sql"]
    edited = MIGRATIONS["001_users.sql"].replace("name text NOT NULL", "name text")
    (folder / "001_users.sql").write_text(edited)
    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=1, passed=1, errors=0)
    lib = default_module(pytester.path / "migrations")
    result.stdout.fnmatch_lines(
        [
            f"*_ pgmig.lock[[]{lib}[]] _*",
            f"pgmig.lock: 1 locked migration(s) in {folder} changed:",
            f"  001_users.sql: locked {locked}, current {engine_checksum(edited)}",
            "An applied migration must not change: restore it*",
        ]
    )
    result.stdout.fnmatch_lines([f"FAILED *pgmig.lock[[]{lib}[]]*"])
    # --pgmig-lock never rewrites a locked entry: the edit stays a failure
    result = pytester.runpytest(*args, "--pgmig-lock")
    result.assert_outcomes(failed=1, passed=1)
    assert lock_lines(folder)["001_users.sql"] == locked


def test_deleted_locked_migration_fails(pytester: pytest.Pytester, server_dsn: str) -> None:
    folder, args = lock_project(pytester, server_dsn)
    locked = lock_lines(folder)["002_items.sql"]
    (folder / "002_items.sql").unlink()
    pytester.makepyfile(test_project="def test_plain(pgmig_dsn): pass")
    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([f"  002_items.sql: locked {locked}, current (file deleted)"])


def test_new_migration_is_fine_and_lock_adds_it(pytester: pytest.Pytester, server_dsn: str) -> None:
    folder, args = lock_project(pytester, server_dsn)
    new = "CREATE TABLE {{tables.tags}} (id int);"
    (folder / "003_tags.sql").write_text(new)
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=2)
    assert "003_tags.sql" not in lock_lines(folder)
    result = pytester.runpytest(*args, "--pgmig-lock")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["pgmig: */pgmig.lock: locked 1 new migration(s): 003_tags.sql"])
    assert lock_lines(folder)["003_tags.sql"] == engine_checksum(new)
    assert len(lock_lines(folder)) == 3


def test_malformed_lock_file(pytester: pytest.Pytester, server_dsn: str) -> None:
    folder = make_project(pytester, USES)
    (folder / "pgmig.lock").write_text("not a checksum line\n")
    result = pytester.runpytest(f"--pgmig-dsn={server_dsn}", "--pgmig-migrations=migrations")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*pgmig.lock:1: expected '<sha256>  <file name>'*"])
