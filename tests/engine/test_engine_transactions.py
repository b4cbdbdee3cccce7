"""Transaction handling, non-transactional files and error positions, on a real server."""

# ruff: noqa: F811  (pytest fixtures imported from engine_support are redefined as arguments)

from __future__ import annotations

from pathlib import Path

import pytest
from engine_support import admin_dsn, db, schema, write  # noqa: F401

from pytest_pgmig import AsyncDatabaseManager, AsyncMigrationManager, MigrationError

pytestmark = pytest.mark.asyncio


def module(db: AsyncDatabaseManager) -> str:
    # Unique per test: the migration lock is keyed on the module name alone (as in pgdbm).
    return f"app_{db.schema}"


async def run(db: AsyncDatabaseManager, folder: Path) -> dict[str, object]:
    migrations = AsyncMigrationManager(db, str(folder), module_name=module(db))
    return await migrations.apply_pending_migrations()


async def tables(db: AsyncDatabaseManager) -> list[str]:
    rows = await db.fetch_all(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 AND tablename <> "
        "'schema_migrations' ORDER BY 1",
        db.schema,
    )
    return [row["tablename"] for row in rows]


async def tracked(db: AsyncDatabaseManager) -> list[str]:
    rows = await db.fetch_all("SELECT filename FROM {{tables.schema_migrations}} ORDER BY id")
    return [row["filename"] for row in rows]


async def advisory_locks(db: AsyncDatabaseManager) -> int:
    """How many sessions hold the test's migration lock."""
    query = """
        SELECT count(*) FROM pg_locks, (SELECT hashtext($1)::bigint AS key) AS k
        WHERE locktype = 'advisory' AND objid = (key & 4294967295)::oid
          AND classid = ((key >> 32) & 4294967295)::oid
    """
    return int(await db.fetch_value(query, f"pgdbm_migration_{module(db)}"))


async def test_explicit_begin_commit_file_applies(db: AsyncDatabaseManager, tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        {
            "001_posts.sql": "BEGIN;\nCREATE TABLE {{tables.posts}} (id serial PRIMARY KEY, "
            "title text NOT NULL);\nCREATE INDEX posts_title ON {{tables.posts}} (title);\n"
            "COMMIT;\n"
        },
    )
    result = await run(db, folder)
    assert result["status"] == "success"
    assert await tables(db) == ["posts"]
    assert await tracked(db) == ["001_posts.sql"]
    assert await advisory_locks(db) == 0


async def test_failing_explicit_transaction_rolls_back_the_whole_file(
    db: AsyncDatabaseManager, tmp_path: Path
) -> None:
    folder = write(
        tmp_path / "m",
        {
            "001_ok.sql": "CREATE TABLE ok (id int);",
            "002_bad.sql": "BEGIN;\nCREATE TABLE half (id int);\nCOMMIT;\nBEGIN;\n"
            "CREATE TABLE half2 (id int);\nINSERT INTO half2 VALUES ('x');\nCOMMIT;\n",
            "003_never.sql": "CREATE TABLE never (id int);",
        },
    )
    result = await run(db, folder)
    assert result["status"] == "error"
    assert result["failed_migration"] == "002_bad.sql"
    assert [a["filename"] for a in result["applied"]] == ["001_ok.sql"]  # type: ignore[attr-defined]
    assert result["skipped"] == []
    assert result["line"] == 6
    assert "INSERT INTO half2 VALUES ('x');" in str(result["excerpt"])
    assert "invalid input syntax for type integer" in str(result["error"])
    assert "Fix the SQL" in str(result["error"])
    # Neither the file's first COMMIT nor anything after it stayed.
    assert await tables(db) == ["ok"]
    assert await tracked(db) == ["001_ok.sql"]
    assert await advisory_locks(db) == 0
    # Fixed, the run resumes where it stopped.
    write(folder, {"002_bad.sql": "CREATE TABLE half (id int);"})
    again = await run(db, folder)
    assert again["status"] == "success"
    assert await tracked(db) == ["001_ok.sql", "002_bad.sql", "003_never.sql"]


async def test_error_line_and_caret_account_for_templates(
    db: AsyncDatabaseManager, tmp_path: Path
) -> None:
    folder = write(
        tmp_path / "m",
        {
            "001_a.sql": "-- users\nCREATE TABLE {{tables.users}} (id int);\n"
            "SELECT id FROM {{tables.users}} WHERE {{schema}}.nope(id);\n"
        },
    )
    result = await run(db, folder)
    assert result["status"] == "error" and result["line"] == 3
    excerpt = str(result["excerpt"]).splitlines()
    assert excerpt[1] == "   3 | SELECT id FROM {{tables.users}} WHERE {{schema}}.nope(id);"
    assert excerpt[2].index("^") == excerpt[1].index("{{schema}}")


async def test_apply_migration_raises_with_line(db: AsyncDatabaseManager, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": "SELECT 1;\n\nSELEC 2;\n"})
    migrations = AsyncMigrationManager(db, str(folder), module_name=module(db))
    (migration,) = await migrations.find_migration_files()
    with pytest.raises(MigrationError) as info:
        await migrations.apply_migration(migration)
    error = info.value
    assert error.migration_file == "001_a.sql" and error.line == 3
    assert error.sql_error is not None and "syntax error" in error.sql_error
    assert error.excerpt is not None and error.excerpt.splitlines()[-1] == "     | ^"
    assert "001_a.sql" in str(error) and "line 3" in str(error)
    assert await advisory_locks(db) == 0


@pytest.mark.parametrize(
    "body",
    [
        "CREATE INDEX CONCURRENTLY t_a ON t (a);",
        "-- pgdbm:no-transaction\nCREATE INDEX t_a ON t (a);",
        "VACUUM t;\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_a ON {{tables.t}} (a);",
    ],
)
async def test_non_transactional_files_run_outside_a_transaction(
    db: AsyncDatabaseManager, tmp_path: Path, body: str
) -> None:
    folder = write(
        tmp_path / "m", {"001_t.sql": "CREATE TABLE t (a int);", "002_idx.sql": body + "\n"}
    )
    result = await run(db, folder)
    assert result["status"] == "success", result
    assert await tracked(db) == ["001_t.sql", "002_idx.sql"]
    index = await db.fetch_value(
        "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 't'", db.schema
    )
    assert index == "t_a"
    async with db.acquire() as conn:
        assert await conn.fetchval("SHOW search_path") == f'"{db.schema}", public'


async def test_failing_non_transactional_file_keeps_earlier_statements_untracked(
    db: AsyncDatabaseManager, tmp_path: Path
) -> None:
    folder = write(
        tmp_path / "m",
        {
            "001_t.sql": "CREATE TABLE t (a int);",
            "002_idx.sql": "CREATE INDEX CONCURRENTLY t_a ON t (a);\n"
            "CREATE INDEX CONCURRENTLY t_b ON t (nope);\n",
        },
    )
    result = await run(db, folder)
    assert result["status"] == "error" and result["failed_migration"] == "002_idx.sql"
    assert result["line"] == 2
    assert "idempotent" in str(result["error"])
    assert await tracked(db) == ["001_t.sql"]
    assert await advisory_locks(db) == 0
    async with db.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SHOW search_path") == f'"{db.schema}", public'


async def test_runtime_error_without_position(db: AsyncDatabaseManager, tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        {"001_a.sql": "CREATE TABLE a (id int PRIMARY KEY);\nINSERT INTO a VALUES (1), (1);\n"},
    )
    result = await run(db, folder)
    # the server gives no position: the engine finds the failing statement itself
    assert result["status"] == "error" and result["line"] == 2
    assert "UniqueViolation" in str(result["error"])
    assert await tables(db) == []


async def test_dollar_quotes_and_begin_atomic_bodies(
    db: AsyncDatabaseManager, tmp_path: Path
) -> None:
    folder = write(
        tmp_path / "m",
        {
            "001_f.sql": "BEGIN;\n"
            "CREATE FUNCTION {{schema}}.f() RETURNS int LANGUAGE plpgsql AS $body$\n"
            "BEGIN\n  RETURN 1; -- COMMIT;\nEND\n$body$;\n"
            "CREATE FUNCTION g() RETURNS int LANGUAGE sql\n"
            "BEGIN ATOMIC\n  SELECT 1;\n  SELECT CASE WHEN true THEN 2 END;\nEND;\n"
            "COMMENT ON FUNCTION f() IS 'it''s; COMMIT;';\n"
            "END;\n",
        },
    )
    assert (await run(db, folder))["status"] == "success"
    assert await db.fetch_value("SELECT {{schema}}.f() + {{schema}}.g()") == 3


async def test_bom_and_crlf_files_apply(db: AsyncDatabaseManager, tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        {
            "001_bom.sql": b"\xef\xbb\xbfCREATE TABLE bom (id int);\r\n",
            "002_crlf.sql": b"CREATE TABLE crlf (id int);\r\n\r\nSELEC 1;\r\n",
        },
    )
    result = await run(db, folder)
    assert result["status"] == "error" and result["failed_migration"] == "002_crlf.sql"
    assert result["line"] == 3
    assert await tables(db) == ["bom"]


# -- batched files (the plugin's throwaway schemas: ApplyOptions(batch=True)) ---------------

BATCHED = {
    "001_a.sql": "CREATE TABLE a (id int PRIMARY KEY);",
    # pg_dump's habit: a session-wide search_path change must not carry into the next file
    "002_b.sql": "SELECT pg_catalog.set_config('search_path', '', false);\n"
    "CREATE TABLE {{tables.b}} (id int REFERENCES {{tables.a}});",
    "003_c.sql": "CREATE TABLE c (n int);",
    "004_idx.sql": "CREATE INDEX CONCURRENTLY c_n ON c (n);",
    "005_d.sql": "CREATE TABLE d (n int);\nINSERT INTO c VALUES (1);",
    "006_e.sql": "ALTER TABLE d ADD COLUMN m int;",
}


async def batched(admin_dsn: str, schema: str, folder: Path) -> list[tuple[str, float]]:
    import asyncpg

    from pytest_pgmig.engine.apply import ApplyOptions
    from pytest_pgmig.engine.runner import Runner

    conn = await asyncpg.connect(admin_dsn)
    try:
        runner = Runner(schema, folder, "app", options=ApplyOptions(batch=True))
        await runner.upgrade(conn)
    finally:
        rows = await conn.fetch(
            f'SELECT filename, execution_time_ms FROM "{schema}".schema_migrations ORDER BY 1'
        )
        await conn.close()
    return [(row[0], row[1]) for row in rows]


async def test_batched_files_apply_in_order_each_tracked_and_timed(
    admin_dsn: str, schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_pgmig.engine.apply import Applier

    runs: list[list[str]] = []
    apply_many = Applier.apply_many

    async def spy(self: Applier, conn: object, files: list) -> float:  # type: ignore[type-arg]
        runs.append([f.filename for f in files])
        return await apply_many(self, conn, files)

    monkeypatch.setattr(Applier, "apply_many", spy)
    rows = await batched(admin_dsn, schema, write(tmp_path / "m", BATCHED))
    assert [name for name, _ in rows] == sorted(BATCHED)
    assert all(ms is not None and ms >= 0 for _, ms in rows)
    # two runs of transactional files, either side of the one that cannot be in a transaction
    assert runs == [["001_a.sql", "002_b.sql", "003_c.sql"], ["005_d.sql", "006_e.sql"]]


async def test_a_failing_file_in_a_batch_is_named_with_its_line(
    admin_dsn: str, schema: str, tmp_path: Path
) -> None:
    broken = {
        **BATCHED,
        "006_e.sql": "ALTER TABLE d ADD COLUMN m int;\nALTER TABLE nope ADD x int;",
    }
    with pytest.raises(MigrationError) as raised:
        await batched(admin_dsn, schema, write(tmp_path / "m", broken))
    assert raised.value.migration_file == "006_e.sql" and raised.value.line == 2
    # the batch before the failing one was rolled back and applied again file by file
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        tracked = await conn.fetch(f'SELECT filename FROM "{schema}".schema_migrations ORDER BY 1')
    finally:
        await conn.close()
    assert [r[0] for r in tracked] == sorted(BATCHED)[:5]
