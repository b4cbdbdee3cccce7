"""Every tool's folder through the plugin: detected, applied as its tool applies it, reset,
its downs checked; serial and under xdist, both scopes, on the embedded server and a DSN."""

from __future__ import annotations

import textwrap

import pytest
from format_sets import ENV, SETS, FormatSet
from plugin_support import INI_ASYNC, sql
from reliability_support import text_of

pytestmark = pytest.mark.usefixtures("clean_env")


def project(
    pytester: pytest.Pytester, fset: FormatSet, extra: dict[str, str] | None = None
) -> None:
    fset.write(pytester.path / "migrations", extra)
    pytester.makepyfile(test_app=textwrap.dedent(fset.tests))
    pytester.makeini(INI_ASYNC + fset.ini)


def count_tests(fset: FormatSet) -> int:
    return fset.tests.count("def test_") - 1 + fset.tests.count("range(4)") * 4


@pytest.mark.parametrize("name", sorted(SETS))
@pytest.mark.parametrize("mode", ["dsn, -n 2, scope test", "embedded, serial, scope worker"])
def test_a_tools_folder_runs_unchanged(
    pytester: pytest.Pytester,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    mode: str,
) -> None:
    fset = SETS[name]
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    project(pytester, fset)
    args = ["--pgmig-migrations=migrations", "-rA", "-p", "no:randomly"]
    if mode.startswith("dsn"):
        args += ["-n", "2", f"--pgmig-dsn={request.getfixturevalue('fresh_database')}"]
    else:
        request.getfixturevalue("run_base")
        args += ["--pgmig-scope=worker"]
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == 0, text_of(result)
    downs = 0 if name == "prisma" else 1  # Prisma keeps no downs: no down check
    result.assert_outcomes(passed=count_tests(fset) + downs)
    # the header says what was detected, and why
    result.stdout.fnmatch_lines([f"pgmig: server *; migrations *=migrations ({name}: *"])
    if downs:
        result.stdout.fnmatch_lines(["PASSED ::pgmig.down[[]*[]]"])


@pytest.mark.parametrize("name", sorted(n for n in SETS if SETS[n].broken_down))
def test_a_wrong_down_is_named_with_its_object(
    pytester: pytest.Pytester,
    server_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    fset = SETS[name]
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    project(pytester, fset, fset.broken_down)
    result = pytester.runpytest_subprocess(
        "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}", "-k", "pgmig"
    )
    assert result.ret == 1, text_of(result)
    result.assert_outcomes(failed=1, deselected=count_tests(fset))
    assert fset.broken_says in text_of(result)


def test_format_is_forced_from_the_ini_and_shown(
    pytester: pytest.Pytester, server_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # plain files that a tool's detection would not see as its own: goose named outright
    fset = SETS["goose"]
    project(pytester, fset)
    pytester.makeini(INI_ASYNC + "pgmig_format = goose\n")
    monkeypatch.setenv("PGMIG_TEST_OWNER", "team-a")
    result = pytester.runpytest_subprocess(
        "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}", "-k", "sections"
    )
    result.stdout.fnmatch_lines(["pgmig: server *; migrations *=migrations (goose [[]ini *[]])*"])


def test_a_missing_envsub_variable_names_the_variable(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    project(pytester, SETS["goose"])
    result = pytester.runpytest_subprocess(
        "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}", "-k", "sections"
    )
    # the folder is refused at start-up, before any server work
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stderr.str()
    assert "goose migration 00005_owner.sql line 4: environment variable PGMIG_TEST_OWNER " in text
    assert "Set PGMIG_TEST_OWNER in the environment of the test run" in text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    ("files", "says"),
    [
        (
            {"00001_a.sql": "-- +goose Up\nSELECT 1;\n", "00002_b.go": "package migrations\n"},
            "version 2 is a Go migration",
        ),
        (
            {"001_a.sql": "-- +goose Up\nSELECT 1;\n", "002_b.sql": "-- migrate:up\nSELECT 1;\n"},
            "mixes formats: goose ('-- +goose Up' in 001_a.sql) and dbmate",
        ),
        (
            {"env.py": "", "script.py.mako": "", "versions/1_a.py": "revision = 'a'\n"},
            "this is an Alembic history",
        ),
        ({"changelog.xml": "<databaseChangeLog/>"}, "this is a Liquibase changelog"),
    ],
    ids=["goose-go", "mixed", "alembic", "liquibase"],
)
def test_a_folder_we_cannot_run_fails_at_start_up(
    pytester: pytest.Pytester, server_dsn: str, files: dict[str, str], says: str
) -> None:
    FormatSet("x", files, "").write(pytester.path / "migrations")
    pytester.makepyfile(test_app="def test_x(pgmig_dsn):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert says in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


def test_a_changed_repeatable_does_not_fail_the_lock(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    fset = SETS["flyway"]
    project(pytester, fset)
    args = ["--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}", "-k", "pgmig"]
    pytester.runpytest_subprocess("--pgmig-lock", *args).assert_outcomes(deselected=5, passed=2)
    folder = pytester.path / "migrations"
    (folder / "R__user_names.sql").write_text(
        "CREATE OR REPLACE VIEW user_names AS SELECT lower(name) AS name FROM users;\n"
    )
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(deselected=5, passed=2)  # the lock and the down check
    (folder / "V1_1__owner.sql").write_text("ALTER TABLE users ADD COLUMN owner text;\n")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(deselected=5, passed=1, failed=1)
    result.stdout.fnmatch_lines(["*V1_1__owner.sql: locked *, current *"])


@pytest.mark.parametrize("isolation", ["auto", "schema"])
def test_a_set_naming_public_moves_to_a_database_under_auto(
    pytester: pytest.Pytester, fresh_database: str, isolation: str
) -> None:
    # as a large Prisma folder does: a table made unqualified, then named as "public"."User"
    files = {
        "migration_lock.toml": 'provider = "postgresql"\n',
        "20240101000000_init/migration.sql": 'CREATE TABLE "User" ("id" SERIAL PRIMARY KEY);\n',
        "20240102000000_backfill/migration.sql": (
            'DO $$ BEGIN\n  INSERT INTO "public"."User" DEFAULT VALUES;\nEND $$;\n'
        ),
    }
    FormatSet("x", files, "").write(pytester.path / "migrations")
    pytester.makepyfile(
        test_app="""
        import psycopg

        def test_user(pgmig_dsn):
            with psycopg.connect(pgmig_dsn) as conn:
                assert conn.execute('SELECT count(*) FROM "User"').fetchone()[0] == 1
        """
    )
    result = pytester.runpytest_subprocess(
        "--pgmig-migrations=migrations",
        f"--pgmig-dsn={fresh_database}",
        f"--pgmig-isolation={isolation}",
    )
    if isolation == "schema":
        result.assert_outcomes(failed=1)
        assert 'relation "public.User" does not exist' in text_of(result)
        return
    assert result.ret == 0, text_of(result)
    result.stdout.fnmatch_lines(
        [
            "*isolation: database for * (auto: */20240102000000_backfill: "
            "a name qualified with public*"
        ]
    )
    # nothing of it is left in the user's database
    assert sql(fresh_database, "SELECT to_regclass('public.\"User\"')") == [(None,)]


DECLARED = {
    "001_messages.up.sql": (
        "CREATE TABLE message (id serial PRIMARY KEY, body text, updated_at timestamptz);\n"
    ),
    "001_messages.down.sql": "DROP TABLE message;\n",
    "002_drop_updated.up.sql": "ALTER TABLE message DROP COLUMN updated_at;\n",
    # existing rows need a value: the down gives the column a default it never had
    "002_drop_updated.down.sql": (
        "-- pgmig:down-differs column message.updated_at default\n"
        "ALTER TABLE message ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();\n"
    ),
}


@pytest.mark.parametrize(
    ("down", "outcome", "says"),
    [
        (
            DECLARED["002_drop_updated.down.sql"],
            "passed",
            "*: 2 down file(s) undo their up exactly; 1 difference(s) accepted by -- "
            "pgmig:down-differs: 002_drop_updated.down.sql: column message.updated_at default*",
        ),
        (
            DECLARED["002_drop_updated.down.sql"].split("\n", 1)[1],
            "failed",
            '*column "updated_at" of message differs after 002_drop_updated.down.sql: before *',
        ),
        (
            "-- pgmig:down-differs column message.body default\n"
            + DECLARED["002_drop_updated.down.sql"],
            "failed",
            "*line 1: '-- pgmig:down-differs column message.body default' matches no difference*",
        ),
        (
            "-- pgmig:down-differs column message.body default\n"
            "ALTER TABLE message ADD COLUMN updated_at timestamptz;\n",
            "failed",
            "*002_drop_updated.down.sql line 1: '-- pgmig:down-differs column message.body "
            "default' matches no difference*",
        ),
    ],
    ids=["declared", "undeclared", "one-of-two-stale", "declared-but-none"],
)
def test_a_down_declares_a_difference_it_makes_on_purpose(
    pytester: pytest.Pytester, server_dsn: str, down: str, outcome: str, says: str
) -> None:
    FormatSet("x", {**DECLARED, "002_drop_updated.down.sql": down}, "").write(
        pytester.path / "migrations"
    )
    pytester.makepyfile(test_app="def test_x(pgmig_dsn):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}", "-k", "pgmig", "-rA"
    )
    result.assert_outcomes(deselected=1, **{outcome: 1})
    result.stdout.fnmatch_lines([says])


def test_a_failing_migration_names_the_file_its_tool_keeps_it_in(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    fset = SETS["prisma"]
    broken = {
        "20240102000000_posts/migration.sql": 'CREATE TABLE "Post" (id int REFERENCES "Nope");\n'
    }
    project(pytester, fset, broken)
    result = pytester.runpytest_subprocess(
        "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}", "-p", "no:randomly"
    )
    text = text_of(result)
    assert "Migration '20240102000000_posts' failed at line 1: UndefinedTableError" in text
    assert (
        "Fix the SQL in " + str(pytester.path / "migrations/20240102000000_posts/migration.sql")
        in text
    )


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (
            ["--pgmig-format=liquibase"],
            {},
            "invalid --pgmig-format value 'liquibase': choose one of auto, files, goose",
        ),
        ([], {"PGMIG_FORMAT": "Goose"}, None),
        (
            [],
            {"PGMIG_PLACEHOLDERS": "owner"},
            "invalid placeholder 'owner': write NAME=VALUE (from PGMIG_PLACEHOLDERS)",
        ),
        ([], {"PGMIG_PLACEHOLDERS": "owner=team-a; unused=x"}, None),
    ],
    ids=["bad-format", "env-format", "bad-placeholder", "env-placeholders"],
)
def test_format_and_placeholder_settings(
    pytester: pytest.Pytester,
    server_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    says: str | None,
) -> None:
    fset = SETS["flyway"] if "PGMIG_PLACEHOLDERS" in env else SETS["goose"]
    monkeypatch.setenv("PGMIG_TEST_OWNER", "team-a")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    project(pytester, fset)
    pytester.makeini(INI_ASYNC)  # the placeholders come from the environment alone
    result = pytester.runpytest_subprocess(
        "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}", "-k", "pgmig", *args
    )
    if says is not None:
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert says in result.stderr.str()
        return
    assert result.ret == 0, text_of(result)
    result.assert_outcomes(passed=1, deselected=count_tests(fset))
