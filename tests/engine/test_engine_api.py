"""AsyncMigrationManager and AsyncDatabaseManager against a real server."""

# ruff: noqa: F811  (pytest fixtures imported from engine_support are redefined as arguments)

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from engine_support import admin_dsn, db, schema, write  # noqa: F401

from pytest_pgmig import (
    AsyncDatabaseManager,
    AsyncMigrationManager,
    ChecksumMismatch,
    DatabaseConfig,
    InvalidMigrationFile,
    MigrationError,
    MigrationSQLError,
    TransientMigrationError,
)
from pytest_pgmig.engine.files import checksum

pytestmark = pytest.mark.asyncio

USERS = "CREATE TABLE {{tables.users}} (id serial PRIMARY KEY, email text UNIQUE);\n"
POSTS = "CREATE TABLE posts (id serial PRIMARY KEY, user_id int REFERENCES users (id));\n"


async def tracked(db: AsyncDatabaseManager, table: str = "schema_migrations") -> list[str]:
    rows = await db.fetch_all(f"SELECT filename FROM {{{{tables.{table}}}}} ORDER BY id")
    return [row["filename"] for row in rows]


async def test_apply_then_up_to_date(db: AsyncDatabaseManager, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"001_users.sql": USERS, "002_posts.sql": POSTS})
    migrations = AsyncMigrationManager(db, str(folder), module_name="app")
    result = await migrations.apply_pending_migrations()
    assert result["status"] == "success"
    assert [m["filename"] for m in result["applied"]] == ["001_users.sql", "002_posts.sql"]
    assert all(m["execution_time_ms"] > 0 for m in result["applied"])
    assert result["skipped"] == [] and result["total"] == 2 and result["total_time_ms"] > 0
    again = await migrations.apply_pending_migrations()
    assert again == {
        "status": "up_to_date",
        "applied": [],
        "skipped": ["001_users.sql", "002_posts.sql"],
        "total": 2,
    }
    write(folder, {"003_more.sql": "ALTER TABLE users ADD COLUMN name text;"})
    third = await migrations.apply_pending_migrations()
    assert third["status"] == "success"
    assert third["skipped"] == ["001_users.sql", "002_posts.sql"] and third["total"] == 3


async def test_plain_sql_lands_in_the_managers_schema(
    db: AsyncDatabaseManager, schema: str, tmp_path: Path
) -> None:
    folder = write(tmp_path / "m", {"001_users.sql": USERS, "002_posts.sql": POSTS})
    await AsyncMigrationManager(db, str(folder), module_name="app").apply_pending_migrations()
    where = await db.fetch_value(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'posts' "
        "AND table_schema = $1",
        schema,
    )
    assert where == schema
    # The search_path of the connection is not left changed for later users.
    async with db.acquire() as conn:
        assert await conn.fetchval("SHOW search_path") == f'"{schema}", public'


async def test_pending_and_dry_run_create_nothing(
    db: AsyncDatabaseManager, schema: str, tmp_path: Path
) -> None:
    folder = write(tmp_path / "m", {"001_users.sql": USERS})
    migrations = AsyncMigrationManager(db, str(folder), module_name="app")
    assert await migrations.get_applied_migrations() == {}
    assert [m.filename for m in await migrations.get_pending_migrations()] == ["001_users.sql"]
    assert await migrations.get_migration_history() == []
    result = await migrations.apply_pending_migrations(dry_run=True)
    assert result == {
        "status": "dry_run",
        "pending": ["001_users.sql"],
        "applied": [],
        "skipped": [],
        "total": 1,
    }
    tables = await db.fetch_value("SELECT count(*) FROM pg_tables WHERE schemaname = $1", schema)
    assert tables == 0


async def test_checksum_mismatch_raises_the_pages_text(
    db: AsyncDatabaseManager, tmp_path: Path
) -> None:
    folder = write(tmp_path / "m", {"001_users.sql": USERS})
    migrations = AsyncMigrationManager(db, str(folder), module_name="app")
    await migrations.apply_pending_migrations()
    old = checksum(USERS)
    edited = USERS.replace("email text", "mail text")
    write(folder, {"001_users.sql": edited})
    expected = (
        "Migration '001_users.sql' has been modified after being applied!\n"
        f"Expected checksum: {old}\n"
        f"Current checksum: {checksum(edited)}"
    )
    for call in (migrations.apply_pending_migrations, migrations.get_pending_migrations):
        with pytest.raises(MigrationError) as info:
            await call()
        assert str(info.value).startswith(expected + "\n")
        assert info.value.message == expected
        assert "new migration" in str(info.value)
        assert info.value.migration_file == "001_users.sql"
        # its own kind, with both checksums
        assert isinstance(info.value, ChecksumMismatch)
        assert (info.value.expected, info.value.actual) == (old, checksum(edited))


async def test_module_isolation_and_custom_table(db: AsyncDatabaseManager, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": "CREATE TABLE IF NOT EXISTS a (id int);"})
    first = AsyncMigrationManager(db, str(folder), module_name="one")
    second = AsyncMigrationManager(db, str(folder), module_name="two")
    assert (await first.apply_pending_migrations())["status"] == "success"
    assert (await second.apply_pending_migrations())["status"] == "success"
    history = await second.get_migration_history()
    assert [(h["filename"], h["module_name"]) for h in history] == [("001_a.sql", "two")]
    custom = AsyncMigrationManager(db, str(folder), migrations_table="tenant_migrations")
    assert custom.module_name == db.schema
    assert (await custom.apply_pending_migrations())["status"] == "success"
    assert await tracked(db, "tenant_migrations") == ["001_a.sql"]


async def test_rollback_migration_and_apply_migration(
    db: AsyncDatabaseManager, tmp_path: Path
) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": "CREATE TABLE IF NOT EXISTS a (id int);"})
    migrations = AsyncMigrationManager(db, str(folder), module_name="app")
    await migrations.apply_pending_migrations()
    await migrations.rollback_migration("001_a.sql")
    await migrations.rollback_migration("nope.sql")
    assert await migrations.get_applied_migrations() == {}
    (pending,) = await migrations.get_pending_migrations()
    elapsed = await migrations.apply_migration(pending)
    assert elapsed > 0
    applied = await migrations.get_applied_migrations()
    assert applied["001_a.sql"].is_applied and applied["001_a.sql"].checksum == pending.checksum
    assert applied["001_a.sql"].version == "001"
    with pytest.raises(MigrationSQLError, match="UniqueViolation") as info:
        await migrations.apply_migration(pending)
    assert not isinstance(info.value, TransientMigrationError) and not info.value.transient


async def test_history_rows(db: AsyncDatabaseManager, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": "SELECT 1;", "002_b.sql": "SELECT 2;"})
    migrations = AsyncMigrationManager(db, str(folder), module_name="app")
    await migrations.apply_pending_migrations()
    history = await migrations.get_migration_history(limit=1)
    assert len(history) == 1
    entry = history[0]
    assert entry["filename"] == "002_b.sql" and entry["module_name"] == "app"
    assert entry["checksum"] == checksum("SELECT 2;")
    assert entry["applied_by"] == "postgres" and entry["applied_at"] is not None
    assert isinstance(entry["execution_time_ms"], float)


async def test_create_migration(db: AsyncDatabaseManager, tmp_path: Path) -> None:
    folder = tmp_path / "new"
    migrations = AsyncMigrationManager(db, str(folder), module_name="app")
    first = Path(await migrations.create_migration("add_users", USERS))
    second = Path(await migrations.create_migration("add_idx", "CREATE INDEX i ON users (email);"))
    plain = Path(await migrations.create_migration("seed", "SELECT 1;", auto_transaction=False))
    assert first.parent == folder.resolve()
    assert first.name.endswith("_add_users.sql") and len(first.name.split("_")[1]) == 6
    assert first.read_text() == f"BEGIN;\n\n{USERS.strip()}\n\nCOMMIT;\n"
    assert plain.read_text() == "SELECT 1;"
    assert [m.filename for m in await migrations.find_migration_files()] == [
        first.name,
        second.name,
        plain.name,
    ]
    result = await migrations.apply_pending_migrations()
    assert result["status"] == "success" and len(result["applied"]) == 3
    with pytest.raises(ValueError, match="Invalid migration name"):
        await migrations.create_migration("../evil", "SELECT 1;")


async def test_bad_files_fail_before_anything_runs(
    db: AsyncDatabaseManager, tmp_path: Path
) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);", "x.sql": ""})
    migrations = AsyncMigrationManager(db, str(folder), module_name="app")
    with pytest.raises(InvalidMigrationFile, match=r"'x\.sql'"):
        await migrations.apply_pending_migrations()
    assert await migrations.get_applied_migrations() == {}
    with pytest.raises(InvalidMigrationFile, match="does not exist"):
        await AsyncMigrationManager(db, str(tmp_path / "none")).apply_pending_migrations()


async def test_schema_argument_is_a_type_error(db: AsyncDatabaseManager) -> None:
    with pytest.raises(TypeError, match="schema comes from the database manager"):
        AsyncMigrationManager(db, "migrations", schema="myschema")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword arguments: colour"):
        AsyncMigrationManager(db, "migrations", colour="blue")  # type: ignore[arg-type]
    with pytest.raises(MigrationError, match="migrations table"):
        AsyncMigrationManager(db, "migrations", migrations_table="bad-name")


async def test_database_manager_methods(db: AsyncDatabaseManager, schema: str) -> None:
    assert db.prepare_query("SELECT * FROM {{tables.users}}") == f'SELECT * FROM "{schema}"."users"'
    assert await db.execute("CREATE TABLE {{tables.users}} (id int PRIMARY KEY, email text)") == (
        "CREATE TABLE"
    )
    await db.executemany("INSERT INTO {{tables.users}} VALUES ($1, $2)", [(1, "a"), (2, "b")])
    assert await db.fetch_one("SELECT * FROM {{tables.users}} WHERE id = $1", 1) == {
        "id": 1,
        "email": "a",
    }
    assert await db.fetch_one("SELECT * FROM {{tables.users}} WHERE id = 9") is None
    assert len(await db.fetch_all("SELECT * FROM {{tables.users}}")) == 2
    assert await db.fetch_value("SELECT email FROM {{tables.users}} WHERE id = $1", 2) == "b"
    assert await db.fetch_value("SELECT 1, 2", column=1) == 2
    with pytest.raises(RuntimeError, match="boom"):
        async with db.transaction() as tx:
            await tx.execute("DELETE FROM {{tables.users}}")
            raise RuntimeError("boom")
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO {{tables.users}} VALUES (3, 'c')")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with tx.transaction() as nested:
                await nested.execute("INSERT INTO {{tables.users}} VALUES (3, 'dup')")
        assert await tx.fetch_value("SELECT count(*) FROM {{tables.users}}") == 3
        assert tx.connection is not None
    async with db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users") == 3


async def test_database_manager_on_a_pool(admin_dsn: str, schema: str) -> None:
    pool = await asyncpg.create_pool(admin_dsn, min_size=1, max_size=2)
    try:
        db = AsyncDatabaseManager(pool=pool, schema=schema)
        await db.connect()  # a no-op with an external pool
        assert db.schema == schema and db.pool is pool
        await db.execute(f'CREATE SCHEMA "{schema}"')
        await db.execute("CREATE TABLE {{tables.t}} (id int)")
        assert await db.fetch_value("SELECT count(*) FROM {{tables.t}}") == 0
        await db.disconnect()  # leaves the pool open
        assert not pool._closed
        assert AsyncDatabaseManager(pool=pool).schema == "public"
    finally:
        await pool.close()
    with pytest.raises(ValueError, match="either a DatabaseConfig or pool"):
        AsyncDatabaseManager()
    with pytest.raises(ValueError, match="DatabaseConfig\\(schema"):
        AsyncDatabaseManager(DatabaseConfig(connection_string=admin_dsn), schema="x")
    with pytest.raises(ValueError, match="Invalid schema"):
        DatabaseConfig(connection_string=admin_dsn, schema="bad name")
    config = DatabaseConfig(connection_string="postgresql://u:secret@h/db", password="secret")
    assert "secret" not in repr(config)


async def test_connect_creates_the_schema(admin_dsn: str, schema: str) -> None:
    db = AsyncDatabaseManager(DatabaseConfig(connection_string=admin_dsn, schema=schema))
    with pytest.raises(RuntimeError, match="connect"):
        await db.fetch_value("SELECT 1")
    await db.connect()
    try:
        assert await db.fetch_value("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema)
        assert await db.fetch_value("SELECT current_schema()") == schema
    finally:
        await db.disconnect()


async def test_a_lock_another_session_holds_is_a_transient_error(
    db: AsyncDatabaseManager, admin_dsn: str, schema: str, tmp_path: Path
) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);"})
    migrations = AsyncMigrationManager(db, str(folder), module_name="app")
    await migrations.apply_pending_migrations()
    write(
        folder, {"002_b.sql": "SET LOCAL lock_timeout = '50ms';\nALTER TABLE a ADD COLUMN b int;"}
    )
    holder = await asyncpg.connect(admin_dsn)
    try:
        async with holder.transaction():
            await holder.execute(f'LOCK TABLE "{schema}".a IN ACCESS EXCLUSIVE MODE')
            with pytest.raises(TransientMigrationError, match="LockNotAvailable") as info:
                (pending,) = await migrations.get_pending_migrations()
                await migrations.apply_migration(pending)
            assert info.value.transient and isinstance(info.value, MigrationSQLError)
    finally:
        await holder.close()
