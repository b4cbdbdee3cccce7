"""Reliability matrix, bad input: a clear message naming the thing and the fix, nothing left."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import psycopg
import pytest
from plugin_support import INI_ASYNC, MIGRATIONS, make_project, run_dirs, sql, write_migrations
from reliability_support import objects, pgmig_schemas, registered, text_of, usage_error

from pytest_pgmig.servers import runfolders

pytestmark = pytest.mark.usefixtures("clean_env")
ROOT = Path(__file__).resolve().parents[2]

ONE_TEST = """
import pytest

def test_it(pgmig_schema):
    pass
"""


# --- the migrations folder -------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["missing", "empty", "a file"])
def test_bad_folder_stops_the_run_before_any_server_starts(
    pytester: pytest.Pytester, run_base: Path, problem: str
) -> None:
    if problem == "empty":
        pytester.mkdir("migrations")
    elif problem == "a file":
        pytester.makefile(".sql", migrations="CREATE TABLE t ();")
        os.rename(pytester.path / "migrations.sql", pytester.path / "migrations")
    pytester.makepyfile(test_x=ONE_TEST)
    pytester.makeini(INI_ASYNC)
    text = usage_error(pytester.runpytest("--pgmig-migrations=migrations"))
    expected = {
        "missing": "does not exist. Fix the path",
        "empty": "holds no .sql files. Add migrations such as 001_create_users.sql",
        "a file": "is not a folder: point it at the folder of .sql files",
    }[problem]
    assert f"pgmig migrations folder '{pytester.path / 'migrations'}' (from cli) {expected}" in text
    # nothing was started, so nothing is left behind
    assert run_dirs(run_base) == []


NOBODY = 65534
# The venv's interpreter may live under /root, which `nobody` cannot enter: use the system
# one of the same version, with the venv's packages and the project on its path.
SYSTEM_PYTHON = Path("/usr/bin/python3")


def nobody_can_run_pytest() -> bool:
    if os.geteuid() != 0 or not SYSTEM_PYTHON.exists():
        return False
    version = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return version == str(sys.version_info[:2])


as_nobody = pytest.mark.skipif(
    not nobody_can_run_pytest(), reason="needs root and a system python3 of the same version"
)


def run_as_nobody(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest in `project` as the `nobody` account (root can read any folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGMIG_", "PYTEST_"))}
    env.update(
        HOME=str(project),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=os.pathsep.join([sysconfig.get_paths()["purelib"], str(ROOT)]),
        PGMIG_INITDB_CACHE="0",
        PGMIG_RUN_BASE=str(project / "run"),
    )
    return subprocess.run(
        [str(SYSTEM_PYTHON), "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
    )


@contextmanager
def open_project(tests: str) -> Iterator[Path]:
    """A project folder everyone may write to, removed afterwards."""
    project = Path(tempfile.mkdtemp(prefix="pgr-", dir="/tmp"))
    try:
        os.chmod(project, 0o777)
        (project / "test_x.py").write_text(tests)
        yield project
    finally:
        for run in run_dirs(project / "run"):
            runfolders.stop_run_dir(run)
        runfolders.remove_tree(project)


OTHER_SET = """
@pytest.mark.pgmig(migrations="good")
def test_other_migrations_still_work(pgmig_dsn):
    pass
"""


@as_nobody
def test_unreadable_folder() -> None:
    with open_project(ONE_TEST) as project:
        folder = write_migrations(project)
        os.chmod(folder, 0o000)
        out = run_as_nobody(project, "--pgmig-migrations=migrations")
        text = out.stdout + out.stderr
        assert out.returncode == pytest.ExitCode.USAGE_ERROR, text
        assert (
            f"pgmig migrations folder '{folder}' (from cli) cannot be read (Permission denied): "
            "check its permissions." in text
        )
        assert "Traceback" not in text


@as_nobody
def test_unreadable_migration_file() -> None:
    with open_project(ONE_TEST + OTHER_SET) as project:
        write_migrations(project, {"001_ok.sql": "CREATE TABLE ok (n int);"}, "good")
        folder = write_migrations(project)
        os.chmod(folder / "002_items.sql", 0o000)
        out = run_as_nobody(project, "--pgmig-migrations=migrations", "-rf")
        text = out.stdout + out.stderr
        assert out.returncode == pytest.ExitCode.TESTS_FAILED, text
        assert "1 failed, 1 passed" in text, text
        assert f"pgmig: migration {folder / '002_items.sql'} failed" in text
        assert "Permission denied" in text and "lost the PostgreSQL server" not in text
        assert "Traceback" not in text and " ERROR " not in text
        assert run_dirs(project / "run") == []


# --- file contents ---------------------------------------------------------------------------

CHECK_TABLES = """
async def test_applied(pgmig_conn, pgmig_schema):
    names = await pgmig_conn.fetch(
        "SELECT filename FROM schema_migrations WHERE module_name = $1 ORDER BY filename",
        pgmig_schema.module_name,
    )
    assert [r[0] for r in names] == ["001_users.sql", "002_bom.sql", "003_crlf.sql"]
    assert await pgmig_conn.fetchval("SELECT count(*) FROM users") == 0
    assert await pgmig_conn.fetchval("SELECT count(*) FROM bom") == 1
    assert await pgmig_conn.fetchval("SELECT count(*) FROM crlf") == 1
"""


def test_bom_crlf_and_files_that_are_not_migrations(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    folder = make_project(
        pytester, CHECK_TABLES, files={"001_users.sql": MIGRATIONS["001_users.sql"]}
    )
    bom = "CREATE TABLE {{tables.bom}} (n int);\nINSERT INTO {{tables.bom}} VALUES (1);\n"
    (folder / "002_bom.sql").write_bytes(b"\xef\xbb\xbf" + bom.encode())
    crlf = "CREATE TABLE crlf (n int);\r\nINSERT INTO crlf VALUES (1);\r\n"
    (folder / "003_crlf.sql").write_bytes(crlf.encode())
    # none of these is a migration: ignored, not an error
    (folder / "README.md").write_text("# notes\nDROP TABLE users;\n")
    (folder / "notes.txt").write_text("junk")
    (folder / "004_old.sql.bak").write_text("DROP TABLE users;")
    (folder / ".005_hidden.sql").write_text("DROP TABLE users;")
    (folder / "006_folder.sql").mkdir()
    result = pytester.runpytest(f"--pgmig-dsn={server_dsn}", "--pgmig-migrations=migrations")
    result.assert_outcomes(passed=1)


def run_failing(pytester: pytest.Pytester, dsn: str, files: dict[str, str | bytes]) -> str:
    """A project whose migrations are broken: its two tests FAIL (not ERROR), no traceback."""
    folder = pytester.mkdir("migrations")
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode()
        (folder / name).write_bytes(data)
    pytester.makeini(INI_ASYNC)
    pytester.makepyfile(
        test_project="""
        def test_first(pgmig_schema):
            pass

        def test_second(pgmig_dsn):
            pass
        """
    )
    result = pytester.runpytest(f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations", "-rf")
    result.assert_outcomes(failed=2, errors=0)
    text = text_of(result)
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    assert "see the first failing test for details" in text
    return text


def test_file_that_is_not_utf8(pytester: pytest.Pytester, server_dsn: str) -> None:
    latin1 = "CREATE TABLE t (n text);\nINSERT INTO t VALUES ('café');\n".encode("latin-1")
    text = run_failing(pytester, server_dsn, {"001_ok.sql": "SELECT 1;", "002_latin1.sql": latin1})
    assert f"pgmig: migration {pytester.path / 'migrations' / '002_latin1.sql'} failed" in text
    assert "byte offset 51" in text and "line 2" in text and "UTF-8" in text


SIXTY_LINES = "\n".join(
    [f"-- line {n}: a comment, as migrations often carry" for n in range(1, 11)]
    + [f"CREATE TABLE t{n} (id int PRIMARY KEY, note text);" for n in range(11, 40)]
    + ["CREATE TABLE broken (id int PRIMARY KEY,, note text);"]
    + [f"INSERT INTO t11 VALUES ({n}, 'row');" for n in range(41, 61)]
)


def test_syntax_error_at_line_40_of_60(pytester: pytest.Pytester, server_dsn: str) -> None:
    assert len(SIXTY_LINES.splitlines()) == 60
    text = run_failing(pytester, server_dsn, {**MIGRATIONS, "003_big.sql": SIXTY_LINES})
    path = pytester.path / "migrations" / "003_big.sql"
    assert f"pgmig: migration {path} failed (module " in text
    assert (
        "Migration '003_big.sql' failed at line 40: PostgresSyntaxError: syntax error at or "
        in text
    )
    assert "40 | CREATE TABLE broken (id int PRIMARY KEY,, note text);" in text
    caret = next(line for line in text.splitlines() if re.fullmatch(r" +\| +\^", line))
    excerpt = next(line for line in text.splitlines() if line.lstrip().startswith("40 |"))
    assert excerpt.index(",, note") + 1 == caret.index("^")  # under the second comma
    assert f"Fix the SQL in {path}" in text
    # the lines around it are shown, not the whole file
    assert "39 | CREATE TABLE t39" in text and "55 | " not in text


# --- a migration that waits forever ----------------------------------------------------------

LOCKED = """\
CREATE TABLE {{tables.copy}} (n int);
INSERT INTO {{tables.copy}} SELECT n FROM reliability_ext.locked;
"""
SLEEPS = "SELECT pg_sleep(600);\n"


@pytest.mark.parametrize(
    ("source", "waits_on"), [("cli", "lock"), ("env", "lock"), ("ini", "pg_sleep")]
)
def test_waiting_migration_is_bounded_by_the_statement_timeout(
    pytester: pytest.Pytester,
    server_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    waits_on: str,
) -> None:
    body = LOCKED if waits_on == "lock" else SLEEPS
    make_project(pytester, ONE_TEST, files={**MIGRATIONS, "003_waits.sql": body})
    args = [f"--pgmig-dsn={server_dsn}", "--pgmig-migrations=migrations"]
    if source == "cli":
        args.append("--pgmig-statement-timeout=1.5")
    elif source == "env":
        monkeypatch.setenv("PGMIG_STATEMENT_TIMEOUT", "1.5")
    else:
        pytester.makeini(INI_ASYNC + "pgmig_statement_timeout = 1.5\n")
    sql(server_dsn, "CREATE SCHEMA IF NOT EXISTS reliability_ext")
    sql(server_dsn, "CREATE TABLE IF NOT EXISTS reliability_ext.locked (n int)")
    # another session holds the table the migration reads, for longer than the run may take
    with psycopg.connect(server_dsn) as holder:
        holder.execute("LOCK TABLE reliability_ext.locked IN ACCESS EXCLUSIVE MODE")
        began = time.monotonic()
        result = pytester.runpytest(*args)
        elapsed = time.monotonic() - began
        holder.rollback()
    sql(server_dsn, "DROP SCHEMA reliability_ext CASCADE")
    result.assert_outcomes(failed=1)
    text = text_of(result)
    assert elapsed < 45, elapsed  # the lock was never released: only the timeout ended it
    path = pytester.path / "migrations" / "003_waits.sql"
    assert f"pgmig: migration {path} failed" in text
    assert "canceling statement due to statement timeout" in text
    assert "Traceback" not in text


# --- module names and marker values with SQL in them -----------------------------------------

HOSTILE = """
import pytest

def record(name, value):
    with open(name, "w") as out:
        out.write(value)

async def tracked(conn, schema):
    rows = await conn.fetch("SELECT DISTINCT module_name FROM schema_migrations")
    return sorted(r[0] for r in rows)

async def test_configured(pgmig_conn, pgmig_schema):
    assert await tracked(pgmig_conn, pgmig_schema) == [pgmig_schema.module_name]
    record("configured.txt", pgmig_schema.module_name)

@pytest.mark.pgmig(module='Evil"; DROP SCHEMA victim CASCADE; --')
async def test_marker(pgmig_conn, pgmig_schema):
    assert await tracked(pgmig_conn, pgmig_schema) == [pgmig_schema.module_name]
    record("marker.txt", pgmig_schema.module_name)

async def test_factory(pgmig_factory):
    other = await pgmig_factory(module="X'); DROP TABLE victim.students; --")
    record("factory.txt", other.module_name)
"""


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (None, "robert_drop_table_victim_students"),
        ("--pgmig-module=Spaced Name WITH Caps", "spaced_name_with_caps"),
        ("--pgmig-migrations=o'hara\"; DROP SCHEMA victim CASCADE;--=migrations", None),
    ],
    ids=["folder-name", "cli-module", "name-in-path-spec"],
)
def test_hostile_module_names_are_normalised_never_executed(
    pytester: pytest.Pytester, server_dsn: str, option: str | None, expected: str | None
) -> None:
    sql(server_dsn, "DROP SCHEMA IF EXISTS victim CASCADE")
    sql(server_dsn, "CREATE SCHEMA victim; CREATE TABLE victim.students (name text)")
    sql(server_dsn, "INSERT INTO victim.students VALUES ('robert')")
    before_objects, before_schemas = objects(server_dsn), pgmig_schemas(server_dsn)
    project = pytester.mkdir("Robert'); DROP TABLE victim.students;--")
    write_migrations(project)
    pytester.makepyfile(test_hostile=HOSTILE)
    pytester.makeini(INI_ASYNC)
    args = [f"--pgmig-dsn={server_dsn}", "-rf"]
    if option is not None and option.startswith("--pgmig-migrations"):
        args.append(option.replace("=migrations", f"={project / 'migrations'}"))
        expected = "o_hara_drop_schema_victim_cascade"
    else:
        args.append(f"--pgmig-migrations={project / 'migrations'}")
        if option is not None:
            args.append(option)
    try:
        result = pytester.runpytest(*args)
        result.assert_outcomes(passed=3)
        assert (pytester.path / "configured.txt").read_text().startswith(f"{expected}_pgmig_")
        marker = (pytester.path / "marker.txt").read_text()
        assert marker.startswith("evil_drop_schema_victim_cascade_pgmig_")
        factory = (pytester.path / "factory.txt").read_text()
        assert factory.startswith("x_drop_table_victim_students_pgmig_")
        # nothing ran: the victim is intact, and no object appeared or vanished anywhere
        assert sql(server_dsn, "SELECT name FROM victim.students") == [("robert",)]
        assert objects(server_dsn) == before_objects
        assert pgmig_schemas(server_dsn) == before_schemas
    finally:
        sql(server_dsn, "DROP SCHEMA IF EXISTS victim CASCADE")


BAD_MARKERS = """
import pytest

@pytest.mark.pgmig(module="x" * 64)
def test_marker_too_long(pgmig_schema):
    pass

@pytest.mark.pgmig(module='";--')
def test_marker_nothing_left(pgmig_schema):
    pass
"""


def test_unusable_marker_module_is_one_clean_message(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    before = registered(server_dsn)
    make_project(pytester, BAD_MARKERS)
    result = pytester.runpytest(f"--pgmig-dsn={server_dsn}", "--pgmig-migrations=migrations")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == 2, outcomes
    result.stdout.fnmatch_lines_random(
        [
            "*pgmig marker: module name 'xxxx*' is 64 characters long; use at most 36*",
            "*pgmig marker: invalid module name '\";--': use letters, digits and underscores*",
        ]
    )
    assert registered(server_dsn) == before
    text = text_of(result)
    assert "During handling of the above exception" not in text
    # once in the error section (with CI set, pytest also prints it in the short summary)
    sections = [line for line in text.splitlines() if not line.startswith(("ERROR ", "FAILED "))]
    assert sum("is 64 characters long" in line for line in sections) == 1, text


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("cli", "x" * 64, "module name 'xxxx*' is 64 characters long; use at most 36"),
        ("cli", "A" * 37 + "'; --", "module name *AAAA* is 37 characters long"),
        ("env", "é" * 32, "invalid module name 'éééé*': use letters, digits and underscores"),
        ("env", '"""', 'invalid module name \'"""\': use letters, digits and underscores'),
        ("env", "  ", None),  # blank: the default applies
    ],
    ids=[
        "cli-64-bytes",
        "cli-37-after-normalising",
        "env-64-bytes-utf8",
        "env-quotes",
        "env-blank",
    ],
)
def test_unusable_module_names_are_usage_errors(
    pytester: pytest.Pytester,
    server_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    value: str,
    message: str | None,
) -> None:
    before = registered(server_dsn)
    make_project(pytester, ONE_TEST)
    args = [f"--pgmig-dsn={server_dsn}", "--pgmig-migrations=migrations"]
    if where == "cli":
        args.append(f"--pgmig-module={value}")
    else:
        monkeypatch.setenv("PGMIG_MODULE", value)
    result = pytester.runpytest(*args)
    if message is None:
        result.assert_outcomes(passed=1)
        return
    text = usage_error(result)
    assert any(fnmatch(line, f"*{message}*") for line in text.splitlines()), text
    assert registered(server_dsn) == before
