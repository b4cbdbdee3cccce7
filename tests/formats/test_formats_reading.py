"""Reading each tool's folder without a server: detection, order, sections, downs, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from format_sets import ENV, SETS, FormatSet

from pytest_pgmig.engine.formats import Reading, detect, load_migrations
from pytest_pgmig.errors import MigrationError


def folder(tmp_path: Path, files: dict[str, str]) -> Path:
    return FormatSet("x", files, "").write(tmp_path / "migrations")


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


PLACEHOLDERS = Reading("auto", (("owner", "team-a"),))


@pytest.mark.parametrize(
    ("name", "order"),
    [
        ("goose", ["1", "2", "3", "4", "5"]),
        ("dbmate", ["20240101000000", "20240102000000", "20240103000000"]),
        ("prisma", ["20240101000000_init", "20240102000000_posts"]),
        (
            "diesel",
            [
                "00000000000000_diesel_initial_setup",
                "2024-01-01-000000_create_users",
                "2024-01-02-000000_index_names",
                "2024-01-03-000000_guard_history",
            ],
        ),
        (
            "flyway",
            ["V1__create_users.sql", "V1_1__owner.sql", "V2__index.sql", "R__user_names.sql"],
        ),
        ("sqitch", ["users", "shout@v1.0", "shout"]),
        (
            "yoyo",
            [
                "20240101_01_abcde-create-users.sql",
                "20231231_01_zzzzz-seed.sql",
                "20240102_01_fghij-index.sql",
            ],
        ),
    ],
)
def test_each_tool_is_detected_and_ordered_as_it_orders(
    tmp_path: Path, name: str, order: list[str]
) -> None:
    path = SETS[name].write(tmp_path / "migrations")
    assert detect(path, PLACEHOLDERS).format == name
    migrations = load_migrations(path, PLACEHOLDERS)
    keys = [m.version if name in ("goose", "dbmate") else m.filename for m in migrations]
    assert keys == order


def test_goose_up_keeps_the_files_line_numbers_and_leaves_the_down_out(tmp_path: Path) -> None:
    path = SETS["goose"].write(tmp_path / "migrations")
    first, _, _, happy, owner = load_migrations(path)
    assert "DROP TABLE" not in first.content
    assert first.content.split("\n")[2] == "CREATE TABLE users ("  # line 3 of the file
    assert first.down is not None and first.down.text.strip() == "DROP TABLE users;"
    assert not happy.plan.transactional
    assert happy.plan.reason == "line 1: -- +goose NO TRANSACTION"
    assert "'team-a'" in owner.content and "'eu'" in owner.content
    assert "${NOT_SUBSTITUTED}" in owner.content  # after ENVSUB OFF


def test_an_edited_down_section_is_not_an_edited_migration(tmp_path: Path) -> None:
    path = SETS["goose"].write(tmp_path / "migrations")
    before = load_migrations(path)[0].checksum
    text = (path / "00001_create_users.sql").read_text()
    (path / "00001_create_users.sql").write_text(
        text.replace("DROP TABLE users;", "DROP TABLE users CASCADE;")
    )
    assert load_migrations(path)[0].checksum == before
    (path / "00001_create_users.sql").write_text(text.replace("'seed'", "'seeded'"))
    assert load_migrations(path)[0].checksum != before


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"00001_a.sql": "SELECT 1;\n-- +goose Up\n"}, "line 1: SQL before '-- +goose Up'"),
        (
            {"00001_a.sql": "-- +goose Up\nSELECT 1;\n", "00002_b.sql": "SELECT 2;\n"},
            "00002_b.sql: it has no '-- +goose Up' annotation",
        ),
        (
            {"00001_a.sql": "-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n"},
            "line 2: '-- +goose StatementBegin' is never ended",
        ),
        (
            {"00001_a.sql": "-- +goose Up\nSELECT 1;\n", "01_b.sql": "-- +goose Up\nSELECT 1;\n"},
            "01_b.sql: 00001_a.sql has the same version 1",
        ),
        (
            {"00001_a.sql": "-- +goose Up\nSELECT 1;\n", "00002_b.go": "package m\n"},
            "version 2 is a Go migration",
        ),
        (
            {"1_a.sql": "create table a ();\n-- migrate:up\nselect 1;\n"},
            "line 1 holds SQL outside the up and down blocks",
        ),
        (
            {"1_a.sql": "-- migrate:up\nselect 1;\n", "2_b.sql": "-- migrate:down\nselect 1;\n"},
            "2_b.sql: it has no '-- migrate:up' block",
        ),
        (
            {"migration_lock.toml": 'provider = "mysql"\n', "1_a/migration.sql": "SELECT 1;"},
            'migration_lock.toml says provider = "mysql"',
        ),
        ({"1_a/up.sql": "SELECT 1;", "2_b/down.sql": "SELECT 1;"}, "2_b: it has no up.sql"),
        (
            {"V1__a.sql": "SELECT '${region}';", "R__v.sql": "SELECT 1;"},
            "no value for placeholder ${region}",
        ),
        (
            {"V1__a.sql": "SELECT 1;", "V1.0__b.sql": "SELECT 1;", "R__v.sql": "SELECT 1;"},
            "has the same version 1",
        ),
        (
            {
                "sqitch.plan": (
                    "b [a] 2024-01-01T00:00:00Z x <x@x> # b\na 2024-01-01T00:00:00Z x <x@x>\n"
                ),
                "deploy/a.sql": "",
                "deploy/b.sql": "",
            },
            "change b requires a, which the plan does not deploy before it",
        ),
        ({"sqitch.plan": "a 2024-01-01T00:00:00Z x <x@x>\n"}, "deploy/a.sql does not exist"),
        (
            {
                "sqitch.plan": "a 2024-01-01T00:00:00Z x <x@x>\n",
                "deploy/a.sql": "BEGIN;\n\\set n 3\nSELECT :n;\nCOMMIT;\n",
            },
            "deploy/a.sql line 2: \\set is a psql meta-command",
        ),
        (
            {
                "a.sql": "-- depends: b\nSELECT 1;",
                "b.sql": "-- depends: a\nSELECT 1;",
                "b.rollback.sql": "",
            },
            "its dependencies form a cycle: a -> b -> a",
        ),
        (
            {"a.sql": "-- depends: c\nSELECT 1;", "a.rollback.sql": ""},
            "it depends on c, which is not in",
        ),
        (
            {
                "a.sql": "SELECT 1;",
                "b.py": "from yoyo import step\nsteps = []\n",
                "a.rollback.sql": "",
            },
            "b.py: it is a Python migration",
        ),
        (
            {"env.py": "", "script.py.mako": "", "versions/a.py": "down_revision = None\n"},
            "this is an Alembic history",
        ),
        (
            {"db.changelog-master.yaml": "databaseChangeLog:\n  - include: x\n"},
            "this is a Liquibase changelog",
        ),
        ({"20240101_init.go": "package migrations\n"}, "it holds Go migrations only"),
        (
            {"1_a.sql": "-- +goose Up\nSELECT 1;\n", "2_b.sql": "-- migrate:up\nSELECT 1;\n"},
            "mixes formats: goose ('-- +goose Up' in 1_a.sql) and dbmate "
            "('-- migrate:up' in 2_b.sql)",
        ),
    ],
)
def test_what_the_tool_would_refuse_is_refused_by_name(
    tmp_path: Path, files: dict[str, str], says: str
) -> None:
    path = folder(tmp_path, files)
    with pytest.raises(MigrationError) as caught:
        load_migrations(path)
    assert says in str(caught.value)
    assert caught.value.hint or "Hint" in str(caught.value)


def test_a_missing_envsub_variable_is_an_error_and_a_default_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGMIG_TEST_OWNER")
    path = SETS["goose"].write(tmp_path / "migrations")
    with pytest.raises(MigrationError, match="environment variable PGMIG_TEST_OWNER is not set"):
        load_migrations(path)
    monkeypatch.setenv("PGMIG_TEST_OWNER", "b")  # a changed variable is read again
    assert "'b'" in load_migrations(path)[4].content


def test_dbmate_reads_markers_only_at_the_start_of_a_line(tmp_path: Path) -> None:
    path = SETS["dbmate"].write(tmp_path / "migrations")
    _, mood, happy = load_migrations(path)
    assert "(indented: dbmate reads this" in mood.content
    assert mood.down is not None and "drop type mood" in mood.down.text
    assert not happy.plan.transactional


def test_flyway_placeholders_repeatables_and_undo(tmp_path: Path) -> None:
    path = SETS["flyway"].write(tmp_path / "migrations")
    v1, owner, index, view = load_migrations(path, PLACEHOLDERS)
    assert "{{schema_name}}.users" in v1.content  # the test's schema, rendered when it runs
    assert "DEFAULT 'team-a'" in owner.content
    assert owner.down is not None and owner.down.name == "U1_1__owner.sql"
    assert index.plan.reason is not None and not index.plan.transactional
    assert view.repeatable and not v1.repeatable
    # V files alone read as plain files; a placeholder in one makes the folder Flyway's
    plain = folder(tmp_path / "p", {"V1__a.sql": "SELECT 1;", "V2__b.sql": "SELECT 2;"})
    assert detect(plain).format == "files"
    (plain / "V3__c.sql").write_text("SELECT '${flyway:defaultSchema}';")
    assert detect(plain).format == "flyway"


def test_sqitch_is_found_from_its_deploy_folder_and_names_reworked_scripts(tmp_path: Path) -> None:
    root = SETS["sqitch"].write(tmp_path / "flipr")
    found = detect(root / "deploy")
    assert (found.format, found.root) == ("sqitch", root)
    old = load_migrations(root / "deploy")[1]
    assert old.path == root / "deploy" / "shout@v1.0.sql"
    assert old.verify is not None and old.verify.name == "verify/shout@v1.0.sql"


def test_a_forced_format_is_used_as_given(tmp_path: Path) -> None:
    path = folder(tmp_path, {"001_a.sql": "SELECT 1;\n"})
    assert detect(path).format == "files"
    with pytest.raises(MigrationError, match=r"001_a.sql: it has no '-- \+goose Up'"):
        load_migrations(path, Reading("goose"))


@pytest.mark.parametrize(
    ("sql_error", "excerpt", "moves"),
    [
        ('UndefinedTableError: relation "public.User" does not exist', "", True),
        ("UndefinedFunctionError: function public.touch() does not exist", "", True),
        # another missing object on a line that names public: not the set's own public name
        (
            'UndefinedObjectError: role "finki_admin" does not exist',
            "  34 | alter table public.professor",
            False,
        ),
        ('UndefinedTableError: relation "users" does not exist', "  3 | FROM public_users", False),
    ],
)
def test_only_a_missing_public_name_moves_a_set_to_a_database(
    sql_error: str, excerpt: str, moves: bool
) -> None:
    from pytest_pgmig.isolation.base import MigrationSet
    from pytest_pgmig.isolation.migrate import outside_write

    problem = MigrationError("x", "002_b.sql", sql_error=sql_error, excerpt=excerpt)
    assert (outside_write(MigrationSet("app", Path("m")), problem) is not None) is moves


def test_sqitch_is_found_through_the_top_dir_of_its_conf(tmp_path: Path) -> None:
    root = SETS["sqitch"].write(tmp_path / "api" / "deploy_db")
    (tmp_path / "api" / "sqitch.conf").write_text("[core]\n\tengine = pg\n\ttop_dir = deploy_db\n")
    # a stale plan beside the conf is not the one sqitch reads
    (tmp_path / "api" / "sqitch.plan").write_text("gone 2024-01-01T00:00:00Z x <x@x>\n")
    found = detect(tmp_path / "api")
    assert (found.format, found.root) == ("sqitch", root)
    assert load_migrations(tmp_path / "api")[0].filename == "users"


def test_the_docs_format_examples_read_as_they_say(tmp_path: Path) -> None:
    import re

    page = Path(__file__).resolve().parents[2] / "docs" / "formats.md"
    readme = page.read_text(encoding="utf-8")
    found = re.findall(r"```sql\n-- (\w+): (\S+)\n(.*?)```", readme, re.DOTALL)
    examples = {tool: (name, text) for tool, name, text in found}
    assert set(examples) == {"goose", "dbmate"}
    for tool, (name, text) in examples.items():
        path = folder(tmp_path / tool, {name: text})
        assert detect(path).format == tool
        (migration,) = load_migrations(path)
        assert migration.down is not None and migration.down.text.strip()
    goose = load_migrations(tmp_path / "goose" / "migrations")[0]
    assert not goose.plan.transactional
