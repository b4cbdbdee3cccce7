"""Alembic histories through --pgmig-alembic: env.py shapes, drivers, where they land."""

from __future__ import annotations

import textwrap

import pytest
from alembic_projects import (
    CACHED_SETTINGS,
    ENV_ASYNC,
    ENV_CACHED,
    ENV_POSTGRES,
    ENV_SYNC,
    POSTGRES_ENV,
    TESTS,
    write_project,
)
from plugin_support import INI_ASYNC, sql
from reliability_support import text_of

from pytest_pgmig.alembic.target import Target, render

pytestmark = pytest.mark.usefixtures("clean_env")

SYNC_ENV = "pgmig_alembic_env = DATABASE_URL={url:psycopg}\n"
ASYNC_ENV = "pgmig_alembic_env =\n    ASYNC_DATABASE_URL={url:asyncpg}\n    UNUSED={host}\n"


def project(pytester: pytest.Pytester, env_py: str, ini: str) -> None:
    write_project(pytester.path / "db", env_py)
    pytester.makepyfile(test_app=textwrap.dedent(TESTS))
    pytester.makeini(INI_ASYNC + ini)


SHAPES = {
    "sync env.py on psycopg": (ENV_SYNC, SYNC_ENV),
    "async env.py on asyncpg": (ENV_ASYNC, ASYNC_ENV),
    "POSTGRES_* variables on psycopg2": (ENV_POSTGRES, POSTGRES_ENV),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mode", ["dsn, -n 2, scope test", "embedded, serial, scope worker"])
def test_an_alembic_history_is_applied_once_and_reset_between_tests(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, shape: str, mode: str
) -> None:
    # pg_trgm's operator class used unqualified, in a schema per worker of one database
    project(pytester, *SHAPES[shape])
    args = ["--pgmig-alembic=db", "-p", "no:randomly"]
    dsn = None
    if mode.startswith("dsn"):
        dsn = request.getfixturevalue("fresh_database")
        args += ["-n", "2", f"--pgmig-dsn={dsn}"]
    else:
        request.getfixturevalue("run_base")
        args.append("--pgmig-scope=worker")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == 0, text_of(result)
    result.assert_outcomes(passed=8)  # 4 + 2 engines + heads + down
    result.stdout.fnmatch_lines(
        ["pgmig: server *; migrations *=db/alembic.ini (alembic) [[]cli[]]*"]
    )
    # the tests ran in schemas (the down check alone has a database)
    result.stdout.no_fnmatch_line("*isolation: database for*")
    if dsn is not None:
        # nothing in the user's database
        assert sql(dsn, "SELECT to_regclass('public.items')") == [(None,)]
        assert sql(dsn, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgmig%'") == [(0,)]


def test_each_schema_gets_its_own_upgrade_whatever_the_application_caches(
    pytester: pytest.Pytester, run_base: str
) -> None:
    # the settings module reads DATABASE_URL once per process: a second upgrade in the pytest
    # process would go to the first schema, and leave the second one empty
    project(pytester, ENV_CACHED, SYNC_ENV)
    (pytester.path / "db" / "appsettings.py").write_text(CACHED_SETTINGS)
    pytester.makepyfile(
        test_app="""
        import psycopg


        async def test_two_schemas_at_once(pgmig_factory):
            first, second = await pgmig_factory(), await pgmig_factory()
            assert first.name != second.name
            for schema in (first, second):
                with psycopg.connect(schema.dsn) as conn:
                    assert conn.execute("SELECT current_schema()").fetchone()[0] == schema.name
                    assert conn.execute("SELECT title FROM items").fetchall() == [("seed",)]
                    conn.execute("INSERT INTO users (name) VALUES ('ada')")
                    found = "SELECT count(*) FROM users WHERE name % 'ad'"
                    assert conn.execute(found).fetchone()[0] == 1
        """
    )
    result = pytester.runpytest_subprocess("--pgmig-alembic=db", "-p", "no:randomly", "-k", "two")
    assert result.ret == 0, text_of(result)
    result.assert_outcomes(passed=3)  # with heads and down, never deselected


def test_the_ini_url_and_the_connection_attribute_reach_the_target(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    # env.py files that read the ini's URL, or take config.attributes["connection"]
    env_py = """\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    section = config.get_section(config.config_ini_section)
    engine = engine_from_config(section, poolclass=pool.NullPool)
    connection = engine.connect()
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
"""
    project(pytester, env_py, "")
    result = pytester.runpytest_subprocess("--pgmig-alembic=db", f"--pgmig-dsn={server_dsn}")
    assert result.ret == 0, text_of(result)
    result.assert_outcomes(passed=8)  # 4 + 2 engines + heads + down


def test_a_failing_revision_is_a_failed_test_naming_its_file(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    project(pytester, ENV_SYNC, SYNC_ENV)
    revision = pytester.path / "db" / "migrations" / "versions" / "b2_items.py"
    revision.write_text(
        revision.read_text().replace('"items",', '"items", sa.Column("x", sa.Nope),')
    )
    result = pytester.runpytest_subprocess("--pgmig-alembic=db", f"--pgmig-dsn={server_dsn}")
    assert result.ret == 1
    text = text_of(result)
    assert "Alembic upgrade of" in text and "AttributeError" in text
    assert "db/migrations/versions/b2_items.py failed (module" in text


def test_a_missing_alembic_ini_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app="def test_x(pgmig_dsn):\n    pass\n")
    result = pytester.runpytest_subprocess("--pgmig-alembic=nowhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "pgmig Alembic history" in result.stderr.str()
    assert "does not exist: point --pgmig-alembic at your alembic.ini" in result.stderr.str()


def test_the_conftest_hook_adjusts_the_config(pytester: pytest.Pytester, server_dsn: str) -> None:
    # an env.py that reads an application settings object the hook provides
    env_py = ENV_SYNC.replace(
        'os.environ["DATABASE_URL"]', 'context.config.attributes["app_settings"]["url"]'
    )
    project(pytester, env_py, "")
    pytester.makeconftest(
        """
        def pytest_pgmig_alembic_config(config, target):
            config.attributes["app_settings"] = {"url": target.url("psycopg")}
        """
    )
    result = pytester.runpytest_subprocess("--pgmig-alembic=db", f"--pgmig-dsn={server_dsn}")
    assert result.ret == 0, text_of(result)
    result.assert_outcomes(passed=7)  # no down check where the hook is needed


def test_a_flask_migrate_project_runs_in_its_app_context(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    from alembic_projects import write_flask_project

    write_flask_project(pytester.path)
    pytester.makeini(INI_ASYNC)
    result = pytester.runpytest_subprocess(
        "--pgmig-alembic=migrations", f"--pgmig-dsn={server_dsn}", "-p", "no:randomly"
    )
    assert result.ret == 0, text_of(result)
    result.assert_outcomes(passed=3)  # the tests and heads (a hook: no down check)


def test_templates_render_every_placeholder() -> None:
    target = Target("db.local", 5433, "app", "s3cr:t", "test_1", schema="s1")
    assert render("{url}", target) == "postgresql://app:s3cr%3At@db.local:5433/test_1"
    assert render("{url:asyncpg}", target).startswith("postgresql+asyncpg://app:")
    assert render("{host}:{port}/{database}?{user}&{password}&{schema}", target) == (
        "db.local:5433/test_1?app&s3cr:t&s1"
    )
    socket = Target.from_dsn("postgresql://postgres@/postgres?host=%2Fdev%2Fshm%2Fpg&port=5432")
    assert socket.url("psycopg") == (
        "postgresql+psycopg://postgres@/postgres?host=%2Fdev%2Fshm%2Fpg&port=5432"
    )
    assert render("{host}", socket) == "/dev/shm/pg"


@pytest.mark.parametrize("merged", [True, False], ids=["merged", "two-heads"])
def test_a_branched_history_with_a_fixed_schema(
    pytester: pytest.Pytester, server_dsn: str, merged: bool
) -> None:
    from alembic_projects import BRANCH_TESTS, BRANCHES, MERGE

    project(pytester, ENV_SYNC, SYNC_ENV)
    versions = pytester.path / "db" / "migrations" / "versions"
    for name, text in {**BRANCHES, **(MERGE if merged else {})}.items():
        (versions / name).write_text(text)
    (pytester.path / "test_app.py").unlink()  # its revision is b2's: here the heads are later
    pytester.makepyfile(test_branches=textwrap.dedent(BRANCH_TESTS))
    result = pytester.runpytest_subprocess(
        "--pgmig-alembic=db", f"--pgmig-dsn={server_dsn}", "-n", "2", "-p", "no:randomly"
    )
    # upgrade heads applies both branches either way; only the heads check tells them apart
    if merged:
        assert result.ret == 0, text_of(result)
        result.assert_outcomes(passed=3)  # the test, heads, and down (branched: not walked)
    else:
        result.assert_outcomes(passed=2, failed=1)
        result.stdout.fnmatch_lines(["*alembic.ini has 2 heads: * Merge them*"])
    # the schema "projects" moved the history to databases; none of it stays on the server
    result.stdout.fnmatch_lines(
        ["*isolation: database for *alembic.ini (auto: *schema projects (created*"]
    )
    assert sql(server_dsn, "SELECT to_regnamespace('projects')") == [(None,)]


def test_a_fixed_schema_under_schema_isolation_is_a_failure_naming_it(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    from alembic_projects import BRANCH_TESTS, BRANCHES, MERGE

    project(pytester, ENV_SYNC, SYNC_ENV + "pgmig_isolation = schema\n")
    versions = pytester.path / "db" / "migrations" / "versions"
    for name, text in {**BRANCHES, **MERGE}.items():
        (versions / name).write_text(text)
    (pytester.path / "test_app.py").unlink()
    pytester.makepyfile(test_branches=textwrap.dedent(BRANCH_TESTS))
    result = pytester.runpytest_subprocess(
        "--pgmig-alembic=db", f"--pgmig-dsn={server_dsn}", "-p", "no:randomly", "-k", "both"
    )
    result.assert_outcomes(passed=1, failed=2)  # the down check's upgrade fails the same
    result.stdout.fnmatch_lines(
        [
            "*alembic.ini writes outside the schema it migrates: schema projects (created*",
            "*runs under database isolation: pgmig_isolation = auto*",
        ]
    )
    assert sql(server_dsn, "SELECT to_regnamespace('projects')") == [(None,)]


def test_the_engines_on_an_sql_set_in_a_schema(pytester: pytest.Pytester, server_dsn: str) -> None:
    from plugin_support import make_project

    make_project(
        pytester,
        """
        from sqlalchemy import text


        def test_sync(pgmig_engine, pgmig_schema):
            with pgmig_engine.connect() as conn:
                assert conn.execute(text("SELECT current_schema()")).scalar() == pgmig_schema.name
                assert conn.execute(text("SELECT count(*) FROM users")).scalar() == 1


        async def test_async(pgmig_async_engine, pgmig_schema):
            async with pgmig_async_engine.connect() as conn:
                schema = (await conn.execute(text("SELECT current_schema()"))).scalar()
                assert schema == pgmig_schema.name
        """,
    )
    result = pytester.runpytest_subprocess(
        "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}", "-p", "no:randomly"
    )
    assert result.ret == 0, text_of(result)
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize("wrong", [False, True], ids=["correct", "leaves-the-index"])
def test_each_downgrade_undoes_its_upgrade(
    pytester: pytest.Pytester, server_dsn: str, wrong: bool
) -> None:
    project(pytester, ENV_SYNC, SYNC_ENV)
    if wrong:
        revision = pytester.path / "db" / "migrations" / "versions" / "a1_users.py"
        text = revision.read_text().replace(
            'op.drop_table("users")', 'op.drop_column("users", "name")'
        )
        revision.write_text(text)
    result = pytester.runpytest_subprocess(
        "--pgmig-alembic=db", f"--pgmig-dsn={server_dsn}", "-k", "pgmig", "-rA"
    )
    if not wrong:
        assert result.ret == 0, text_of(result)
        result.stdout.fnmatch_lines(
            ["*pgmig.down[[]*[]]: 2 downgrade(s) undo their upgrade exactly*"]
        )
        return
    result.assert_outcomes(passed=1, failed=1, deselected=6)
    result.stdout.fnmatch_lines(
        [
            "a1_users.py: its downgrade does not undo its upgrade:",
            '*table "users" is still there after downgrading a1*',
        ]
    )


MODELS_ENV = ENV_SYNC.replace(
    "target_metadata = None",
    """import sqlalchemy as sa

target_metadata = sa.MetaData()
sa.Table("users", target_metadata, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("name", sa.Text, nullable=False), sa.Index("users_name_trgm", "name"))
sa.Table("items", target_metadata, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("title", sa.Text, nullable=False), sa.Index("items_title", "title"))
""",
)


@pytest.mark.parametrize("drift", [False, True], ids=["match", "a-model-column-not-migrated"])
def test_models_match_is_opt_in_and_names_the_difference(
    pytester: pytest.Pytester, server_dsn: str, drift: bool
) -> None:
    env_py = MODELS_ENV
    if drift:
        env_py = env_py.replace(
            'sa.Column("title", sa.Text, nullable=False)',
            'sa.Column("title", sa.Text, nullable=False), sa.Column("price", sa.Integer)',
        )
    project(pytester, env_py, SYNC_ENV + "pgmig_check_models = on\n")
    result = pytester.runpytest_subprocess(
        "--pgmig-alembic=db", f"--pgmig-dsn={server_dsn}", "-k", "models", "-rA"
    )
    if not drift:
        assert result.ret == 0, text_of(result)
        result.assert_outcomes(passed=3, deselected=6)  # heads, down, models: never deselected
        return
    result.assert_outcomes(passed=2, failed=1, deselected=6)
    assert "price" in text_of(result)
    assert "do not match what alembic.ini's history makes" in text_of(result)
