"""pgmig.down[...] and pgmig.idempotent[...]: down files that undo, migrations that run twice."""

from __future__ import annotations

import pytest
from plugin_support import INI_ASYNC, make_project, sql

from pytest_pgmig.checks.snapshot import Difference, differences, explain
from pytest_pgmig.plugin.settings import BadValue, switch_type

pytestmark = pytest.mark.usefixtures("clean_env")

USES = """
def test_uses_the_schema(pgmig_dsn):
    pass
"""

# one up/down pair per kind of object the check compares, and one file without a down
REVERSIBLE = {
    "001_users.up.sql": (
        "CREATE TYPE mood AS ENUM ('ok', 'meh');\n"
        "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, m mood);\n"
        "COMMENT ON TABLE users IS 'people';\n"
    ),
    "001_users.down.sql": "DROP TABLE users;\nDROP TYPE mood;\n",
    "002_more.up.sql": (
        "ALTER TABLE users ADD COLUMN name text DEFAULT 'x' CHECK (name <> '');\n"
        "CREATE UNIQUE INDEX users_email ON users (email);\n"
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN NEW; END $$;\n"
        "CREATE TRIGGER users_touch BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION touch();\n"
        "CREATE VIEW named AS SELECT id, name FROM users;\n"
        "CREATE SEQUENCE tickets START 100;\n"
        "COMMENT ON COLUMN users.email IS 'login';\n"
    ),
    "002_more.down.sql": (
        "COMMENT ON COLUMN users.email IS NULL;\n"
        "DROP SEQUENCE tickets;\nDROP VIEW named;\nDROP TRIGGER users_touch ON users;\n"
        "DROP FUNCTION touch();\nDROP INDEX users_email;\nALTER TABLE users DROP COLUMN name;\n"
    ),
    "003_seed.sql": "INSERT INTO users (email) VALUES ('a@example.com');\n",
}


def run(pytester: pytest.Pytester, dsn: str, files: dict[str, str], *args: str) -> pytest.RunResult:
    make_project(pytester, USES, files=files)
    return pytester.runpytest(f"--pgmig-dsn={dsn}", "--pgmig-migrations=migrations", *args)


def lib(pytester: pytest.Pytester) -> str:
    from pytest_pgmig.plugin.settings import default_module

    return default_module(pytester.path / "migrations")


def test_a_correct_set_passes_and_counts_the_file_without_a_down(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    result = run(pytester, server_dsn, REVERSIBLE, "-rA")
    result.assert_outcomes(passed=2)
    name = lib(pytester)
    result.stdout.fnmatch_lines(
        [
            f"pgmig.down[[]{name}[]]: 2 down file(s) undo their up exactly; 1 migration(s) "
            "without a down, skipped: 003_seed.sql (* s)",
            f"PASSED ::pgmig.down[[]{name}[]]",
        ]
    )
    # the check's schema is gone with the run; the header says the check is on
    result.stdout.fnmatch_lines(["pgmig: *; checks down on [[]default[]], idempotent off *"])
    assert not sql(server_dsn, "SELECT 1 FROM pg_namespace WHERE nspname LIKE 'pgmig_%chk%'")


# 002_more.down.sql, a statement a line
MORE_DOWN = [
    "COMMENT ON COLUMN users.email IS NULL;",
    "DROP SEQUENCE tickets;",
    "DROP VIEW named;",
    "DROP TRIGGER users_touch ON users;",
    "DROP FUNCTION touch();",
    "DROP INDEX users_email;",
    "ALTER TABLE users DROP COLUMN name;",
]


@pytest.mark.parametrize(
    ("left", "found"),
    [
        ("DROP INDEX", 'index "users_email" on users is still there after 002_more.down.sql'),
        ("ALTER TABLE", 'column "name" of users is still there after 002_more.down.sql'),
        ("DROP FUNCTION", 'function "touch"() is still there after 002_more.down.sql'),
        (
            "DROP TRIGGER|DROP FUNCTION",
            'trigger "users_touch" on users is still there after 002_more.down.sql',
        ),
        (
            "COMMENT",
            'comment on column "email" of users is still there after 002_more.down.sql',
        ),
        ("DROP SEQUENCE", 'sequence "tickets" is still there after 002_more.down.sql'),
    ],
)
def test_a_down_that_leaves_something_fails_naming_file_and_object(
    pytester: pytest.Pytester, server_dsn: str, left: str, found: str
) -> None:
    down = "\n".join(line for line in MORE_DOWN if not line.startswith(tuple(left.split("|"))))
    result = run(pytester, server_dsn, {**REVERSIBLE, "002_more.down.sql": down})
    result.assert_outcomes(passed=1, failed=1)
    name = lib(pytester)
    result.stdout.fnmatch_lines(
        [
            f"*_ pgmig.down[[]{name}[]] _*",
            "002_more.down.sql does not undo 002_more.up.sql:",
            f"  {found}",
            "Make 002_more.down.sql undo exactly what 002_more.up.sql does.",
        ]
    )
    result.stdout.fnmatch_lines([f"pgmig.down[[]{name}[]]: failed: 002_more.down.sql *"])


def test_an_empty_down_marks_an_irreversible_migration(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    # golang-migrate wants both files: a team marks a migration it cannot undo with a down
    # that holds only a comment
    files = {**REVERSIBLE, "001_users.down.sql": "-- cannot be undone: data would be lost\n"}
    result = run(pytester, server_dsn, files)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"pgmig.down[[]{lib(pytester)}[]]: 1 down file(s) undo their up exactly; 1 "
            "migration(s) without a down, skipped: 003_seed.sql; 1 migration(s) with an empty "
            "down (irreversible), skipped: 001_users.up.sql (* s)"
        ]
    )


def test_a_down_that_errors_fails_naming_file_and_line(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    down = "DROP TABLE users;\n\n-- the type is gone already\nDROP TYPE moods;\n"
    result = run(pytester, server_dsn, {**REVERSIBLE, "001_users.down.sql": down})
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "001_users.down.sql fails: Migration '001_users.down.sql' failed at line 4: "
            'UndefinedObjectError: type "moods" does not exist',
            "   4 | DROP TYPE moods;",
            "Fix */migrations/001_users.down.sql so that it undoes 001_users.up.sql.",
        ]
    )


def test_a_down_that_changes_what_was_there_fails(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    down = "\n".join([*MORE_DOWN, "ALTER TABLE users ALTER email DROP NOT NULL;"])
    result = run(pytester, server_dsn, {**REVERSIBLE, "002_more.down.sql": down})
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            '  column "email" of users differs after 002_more.down.sql: before '
            "002_more.up.sql it was 'text not null', now 'text'"
        ]
    )


def test_an_up_that_cannot_run_again_after_its_down_fails(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    files = {
        "001_users.up.sql": "CREATE TABLE users (email text UNIQUE);\n",
        "001_users.down.sql": "DROP TABLE users;\n",
        "002_admin.up.sql": "CREATE TABLE notes (n int);\n"
        "INSERT INTO users VALUES ('admin@example.com');\n",
        # the structure comes back, the seed row stays: the up cannot run again
        "002_admin.down.sql": "DROP TABLE notes;\n",
    }
    result = run(pytester, server_dsn, files)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "002_admin.up.sql fails when applied again after 002_admin.down.sql: Migration "
            "'002_admin.up.sql' failed at line 2: UniqueViolationError: *",
            "002_admin.down.sql leaves something behind that 002_admin.up.sql creates: *",
        ]
    )


IDEMPOTENT = {
    "001_users.sql": "CREATE TABLE IF NOT EXISTS users (id serial, email text UNIQUE);\n",
    "002_seed.sql": "INSERT INTO users (email) VALUES ('root@example.com') ON CONFLICT DO NOTHING;",
}


def test_idempotent_check_is_opt_in_and_passes_an_idempotent_set(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    result = run(pytester, server_dsn, IDEMPOTENT, "-rA")
    result.assert_outcomes(passed=1)  # off by default, and no down files: no check item
    result = pytester.runpytest(
        f"--pgmig-dsn={server_dsn}", "--pgmig-migrations=migrations", "--pgmig-check-idempotent"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "pgmig: *; checks down on [[]default[]], idempotent on [[]cli[]]",
            f"pgmig.idempotent[[]{lib(pytester)}[]]: 2 migration(s) run a second time without "
            "error or change (* s)",
        ]
    )


@pytest.mark.parametrize(
    ("seed", "found"),
    [
        (
            "INSERT INTO users (email) VALUES ('root@example.com');\n",
            [
                "002_seed.sql fails when run a second time: Migration '002_seed.sql' failed at "
                "line 1: UniqueViolationError: *",
            ],
        ),
        (
            "INSERT INTO users (email) VALUES (NULL);\n",
            [
                "002_seed.sql changes what is there when run a second time:",
                '  rows of table "users" differ after running 002_seed.sql a second time: after '
                "the first run it was '1 row, md5 *', now '2 rows, md5 *'",
            ],
        ),
        (
            "CREATE INDEX ON users (email);\n",
            [
                "002_seed.sql changes what is there when run a second time:",
                '  index "users_email_idx1" on users is new after running 002_seed.sql a second '
                "time",
            ],
        ),
    ],
    ids=["error", "rows", "unnamed-index"],
)
def test_a_file_that_cannot_run_twice_fails_the_idempotent_item(
    pytester: pytest.Pytester, server_dsn: str, seed: str, found: list[str]
) -> None:
    pytester.makeini(INI_ASYNC + "pgmig_check_idempotent = on\n")
    make_project(pytester, USES, files={**IDEMPOTENT, "002_seed.sql": seed}, ini=None)
    result = pytester.runpytest(f"--pgmig-dsn={server_dsn}", "--pgmig-migrations=migrations")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*_ pgmig.idempotent[[]{lib(pytester)}[]] _*", *found])
    result.stdout.fnmatch_lines(["pgmig: *, idempotent on [[]ini tox.ini[]]"])


def test_xdist_runs_each_check_exactly_once(pytester: pytest.Pytester, server_dsn: str) -> None:
    tests = "".join(f"\ndef test_{n}(pgmig_dsn):\n    pass\n" for n in range(6))
    make_project(pytester, tests, files=REVERSIBLE)
    result = pytester.runpytest_subprocess(
        f"--pgmig-dsn={server_dsn}",
        "--pgmig-migrations=migrations",
        "--pgmig-check-idempotent",
        "-n",
        "2",
        "-rA",
    )
    # REVERSIBLE's seed is not idempotent: the opt-in item fails, the down item passes
    result.assert_outcomes(passed=7, failed=1)
    out = result.stdout.str()
    name = lib(pytester)
    lines = out.splitlines()
    for check, outcome in (
        (f"pgmig.down[{name}]", "PASSED"),
        (f"pgmig.idempotent[{name}]", "FAILED"),
    ):
        # one summary line each, from the one worker that ran it
        assert sum(line.startswith(f"{check}: ") for line in lines) == 1, out
        assert sum(line.startswith(f"{outcome} ::{check}") for line in lines) == 1, out


def test_the_checks_turn_off_from_cli_env_and_ini(
    pytester: pytest.Pytester, server_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(pytester, server_dsn, REVERSIBLE, "--pgmig-no-check-down").assert_outcomes(passed=1)
    monkeypatch.setenv("PGMIG_CHECK_DOWN", "off")
    result = pytester.runpytest(f"--pgmig-dsn={server_dsn}", "--pgmig-migrations=migrations")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pgmig: *; checks down off [[]env PGMIG_CHECK_DOWN[]]*"])
    # the command line wins over the environment
    result = pytester.runpytest(
        f"--pgmig-dsn={server_dsn}", "--pgmig-migrations=migrations", "--pgmig-check-down"
    )
    result.assert_outcomes(passed=2)
    monkeypatch.delenv("PGMIG_CHECK_DOWN")
    pytester.makeini(INI_ASYNC + "pgmig_check_down = false\n")
    result = pytester.runpytest(f"--pgmig-dsn={server_dsn}", "--pgmig-migrations=migrations")
    result.assert_outcomes(passed=1)
    pytester.makeini(INI_ASYNC + "pgmig_check_down = maybe\n")
    result = pytester.runpytest(f"--pgmig-dsn={server_dsn}", "--pgmig-migrations=migrations")
    result.stderr.fnmatch_lines(["*invalid value 'maybe': use on or off (from pgmig_check_down)*"])


def test_a_set_that_writes_outside_its_schema_is_checked_in_a_database(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    files = {
        "001_audit.up.sql": "CREATE SCHEMA audit;\nCREATE TABLE audit.log (n int);\n",
        "001_audit.down.sql": "DROP TABLE audit.log;\n",
    }
    result = run(pytester, server_dsn, files)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "001_audit.down.sql does not undo 001_audit.up.sql:",
            '  schema "audit" is still there after 001_audit.down.sql',
            "isolation: database for *",
        ]
    )
    assert not sql(server_dsn, "SELECT 1 FROM pg_database WHERE datname LIKE 'pgmig_%chk%'")


@pytest.mark.parametrize(
    ("app", "ext"),
    [
        ("CREATE TABLE base (id int PRIMARY KEY);", "CREATE TABLE ext (id int REFERENCES base);"),
        # the first set writes outside its schema: auto isolation checks in a database
        ("CREATE SCHEMA audit;\nCREATE TABLE audit.log (n int);", "CREATE TABLE ext (id int);"),
    ],
    ids=["on-top", "after-an-outside-writer"],
)
def test_a_later_set_is_checked_on_top_of_the_sets_before_it(
    pytester: pytest.Pytester, server_dsn: str, app: str, ext: str
) -> None:
    make_project(pytester, USES, files={"001_app.sql": app})
    plugin = pytester.path / "plugin_migrations"
    plugin.mkdir()
    (plugin / "001_ext.up.sql").write_text(ext)
    (plugin / "001_ext.down.sql").write_text("DROP TABLE ext;\n")
    result = pytester.runpytest(
        f"--pgmig-dsn={server_dsn}",
        "--pgmig-migrations=app=migrations",
        "--pgmig-migrations=plugin=plugin_migrations",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["pgmig.down[[]plugin[]]: 1 down file(s) undo their up exactly*"])
    assert not sql(server_dsn, "SELECT 1 FROM pg_database WHERE datname LIKE 'pgmig_%chk%'")


# -- pure logic -----------------------------------------------------------------------------


def test_differences_name_what_is_left_missing_and_changed() -> None:
    before = {'table "t"': "", 'column "a" of t': "int", 'index "i" on t': "CREATE INDEX"}
    after = {'table "t"': "", 'column "a" of t': "bigint", 'view "v"': "SELECT 1"}
    found = differences(before, after)
    assert found == [
        Difference('column "a" of t', "int", "bigint"),
        Difference('index "i" on t', "CREATE INDEX", None),
        Difference('view "v"', None, "SELECT 1"),
    ]
    assert explain(found, "after x.down.sql", "before x.up.sql").splitlines() == [
        "  column \"a\" of t differs after x.down.sql: before x.up.sql it was 'int', now 'bigint'",
        '  index "i" on t is missing after x.down.sql (it was there before x.up.sql)',
        '  view "v" is still there after x.down.sql',
    ]
    assert explain(found, "w", "v", limit=1).splitlines()[-1] == "  ... and 2 more"


def test_a_changed_function_shows_its_first_differing_line() -> None:
    old = "CREATE FUNCTION f()\n RETURNS int\nAS $$select 1$$"
    new = "CREATE FUNCTION f()\n RETURNS int\nAS $$select 2$$"
    (diff,) = differences({"function f": old}, {"function f": new})
    assert diff.describe("after d", "before u") == (
        "function f differs after d: before u it was 'AS $$select 1$$', now 'AS $$select 2$$'"
    )


def test_a_bad_ddl_log_value_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, server_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PGMIG_DDL_LOG takes the same on/off values as the checks' switches
    monkeypatch.setenv("PGMIG_DDL_LOG", "sometimes")
    result = run(pytester, server_dsn, REVERSIBLE)
    result.stderr.fnmatch_lines(["*invalid value 'sometimes': use on or off (from PGMIG_DDL_LOG)*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


@pytest.mark.parametrize(
    ("raw", "value"), [("on", True), ("OFF", False), ("1", True), ("no", False)]
)
def test_switch_values(raw: str, value: bool) -> None:
    assert switch_type(raw) is value
    with pytest.raises(BadValue, match="invalid value 'maybe': use on or off"):
        switch_type("maybe")


def test_a_set_whose_extension_cannot_be_installed_fails_its_check_with_the_reason(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    files = {
        **REVERSIBLE,
        "000_ext.up.sql": "CREATE EXTENSION IF NOT EXISTS no_such_extension_here;\n",
        "000_ext.down.sql": "DROP EXTENSION no_such_extension_here;\n",
    }
    result = run(pytester, server_dsn, files)
    result.assert_outcomes(failed=2)
    text = result.stdout.str()
    assert "no_such_extension_here" in text
    # the check's failure is its message, not a traceback through the plugin
    assert "Traceback" not in text and "pytest_pgmig/" not in text, text
