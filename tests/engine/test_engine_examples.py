"""Every code example of the pgdbm migrations reference page, run with `from pytest_pgmig import`.

The page's "postgresql://localhost/myapp" becomes a DSN of the test server whose connections
have a throwaway schema first on search_path (the examples name no schema), and files the
page shows are written into ./migrations of a temporary working directory.
"""

# ruff: noqa: F811  (pytest fixtures imported from engine_support are redefined as arguments)

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
import pytest_asyncio
from engine_support import admin_dsn, schema, write  # noqa: F401

from pytest_pgmig import (
    AsyncDatabaseManager,
    AsyncMigrationManager,
    DatabaseConfig,
    Migration,
    MigrationError,
)
from pytest_pgmig.servers.dsn import with_search_path

pytestmark = pytest.mark.asyncio

PAGE_FILES = {
    "001_initial_schema.sql": """-- migrations/001_initial_schema.sql
CREATE TABLE IF NOT EXISTS {{tables.users}} (
    id SERIAL PRIMARY KEY,
    email VARCHAR(255) UNIQUE NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS {{tables.posts}} (
    id SERIAL PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES {{tables.users}}(id) ON DELETE CASCADE,
    title VARCHAR(500) NOT NULL,
    content TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
""",
    "002_add_indexes.sql": """-- migrations/002_add_indexes.sql
CREATE INDEX IF NOT EXISTS users_email ON {{tables.users}} (email);
CREATE INDEX IF NOT EXISTS posts_user_id ON {{tables.posts}} (user_id);
CREATE INDEX IF NOT EXISTS posts_created ON {{tables.posts}} (created_at DESC);
""",
    "003_add_column.sql": """ALTER TABLE {{tables.users}}
    ADD COLUMN IF NOT EXISTS full_name VARCHAR(255),
    ADD COLUMN IF NOT EXISTS updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP;
""",
    "004_add_triggers.sql": """-- migrations/003_add_triggers.sql
CREATE OR REPLACE FUNCTION {{schema}}.update_timestamp()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = CURRENT_TIMESTAMP;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER update_users_timestamp
    BEFORE UPDATE ON {{tables.users}}
    FOR EACH ROW
    EXECUTE FUNCTION {{schema}}.update_timestamp();
""",
    "005_seed_data.sql": """-- migrations/004_seed_data.sql
INSERT INTO {{tables.users}} (email, full_name) VALUES
    ('admin@example.com', 'Admin User'),
    ('support@example.com', 'Support User')
ON CONFLICT (email) DO NOTHING;
""",
}

TEMPLATE_FILES = {
    "001_create_users.sql": """-- migrations/001_create_users.sql
CREATE TABLE IF NOT EXISTS {{tables.users}} (
    id SERIAL PRIMARY KEY,
    email VARCHAR(255) UNIQUE NOT NULL,
    password_hash TEXT NOT NULL,
    full_name VARCHAR(255),
    is_active BOOLEAN DEFAULT true,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX IF NOT EXISTS users_email ON {{tables.users}} (email);
CREATE INDEX IF NOT EXISTS users_created ON {{tables.users}} (created_at DESC);

-- Trigger using schema placeholder
CREATE OR REPLACE FUNCTION {{schema}}.update_updated_at()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = CURRENT_TIMESTAMP;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER users_updated_at
    BEFORE UPDATE ON {{tables.users}}
    FOR EACH ROW
    EXECUTE FUNCTION {{schema}}.update_updated_at();
""",
    "002_manual_transaction.sql": """-- migrations/002_manual_transaction.sql
BEGIN;

CREATE TABLE {{tables.posts}} (
    id SERIAL PRIMARY KEY,
    title TEXT NOT NULL
);

-- If this fails, whole migration rolls back
CREATE INDEX posts_title ON {{tables.posts}} (title);

COMMIT;
""",
    "003_create_index_concurrently.sql": """-- migrations/003_create_index_concurrently.sql
-- CREATE INDEX CONCURRENTLY cannot run in transaction
CREATE INDEX CONCURRENTLY users_email_concurrent ON {{tables.users}} (email);
""",
}


@pytest_asyncio.fixture
async def dsn(admin_dsn: str, schema: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    return with_search_path(admin_dsn, schema)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write(tmp_path / "migrations", dict(PAGE_FILES))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest_asyncio.fixture
async def setup(dsn: str, project: Path) -> AsyncIterator[tuple[Any, Any]]:
    """The page's "Basic Setup" example, verbatim but for the import and the DSN."""
    config = DatabaseConfig(connection_string=dsn)
    db = AsyncDatabaseManager(config)
    await db.connect()
    migrations = AsyncMigrationManager(db, migrations_path="./migrations", module_name="myapp")
    yield db, migrations
    await db.disconnect()


async def test_basic_setup(setup: tuple[Any, Any], capsys: pytest.CaptureFixture[str]) -> None:
    db, migrations = setup
    # Apply all pending
    result = await migrations.apply_pending_migrations()
    if result["status"] == "success":
        print(f"Applied {len(result['applied'])} migrations")
        for mig in result["applied"]:
            print(f" - {mig['filename']} ({mig['execution_time_ms']:.1f}ms)")
    out = capsys.readouterr().out
    assert out.startswith("Applied 5 migrations\n - 001_initial_schema.sql (")
    assert await db.fetch_value("SELECT count(*) FROM {{tables.users}}") == 2


async def test_dry_run_and_status(
    setup: tuple[Any, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, migrations = setup
    # Check what would be applied without applying
    result = await migrations.apply_pending_migrations(dry_run=True)
    if result["status"] == "dry_run":
        print(f"Would apply {len(result['pending'])} migrations:")
        for filename in result["pending"]:
            print(f" - {filename}")
    assert capsys.readouterr().out.startswith("Would apply 5 migrations:\n - 001_initial_schema")

    await migrations.apply_pending_migrations()
    # Get applied migrations
    applied = await migrations.get_applied_migrations()
    print(f"Applied: {list(applied.keys())}")
    # Get pending migrations
    pending = await migrations.get_pending_migrations()
    print(f"Pending: {[m.filename for m in pending]}")
    # Get history
    history = await migrations.get_migration_history(limit=5)
    for entry in history:
        print(f"{entry['applied_at']}: {entry['filename']} ({entry['execution_time_ms']:.1f}ms)")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Applied: {sorted(PAGE_FILES)}"
    assert out[1] == "Pending: []"
    assert len(out) == 7 and out[2].endswith(")") and "005_seed_data.sql" in out[2]

    # Migration History
    history = await migrations.get_migration_history(limit=10)
    for entry in history:
        print(f"""
    Migration: {entry["filename"]}
    Module: {entry["module_name"]}
    Applied: {entry["applied_at"]}
    Time: {entry["execution_time_ms"]}ms
    Checksum: {entry["checksum"]}
    """)
    printed = capsys.readouterr().out
    assert printed.count("Module: myapp") == 5 and "Checksum: " in printed


async def test_create_migration_examples(
    setup: tuple[Any, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, migrations = setup
    await migrations.apply_pending_migrations()
    # Create new migration
    path = await migrations.create_migration(
        name="add_users_avatar",
        content="""
    ALTER TABLE {{tables.users}} ADD COLUMN avatar_url VARCHAR(500);
    """,
        auto_transaction=True,  # Wraps in BEGIN/COMMIT
    )
    print(f"Created migration: {path}")
    created = Path(path)
    assert created.parent == Path("migrations").resolve()
    assert created.name.endswith("_add_users_avatar.sql")
    assert created.read_text().startswith("BEGIN;\n")
    assert capsys.readouterr().out.startswith("Created migration: ")
    assert (await migrations.apply_pending_migrations())["status"] == "success"


async def test_development_methods_example(dsn: str, tmp_path: Path) -> None:
    db = AsyncDatabaseManager(DatabaseConfig(connection_string=dsn))
    await db.connect()
    migrations = AsyncMigrationManager(db, str(tmp_path / "fresh"), module_name="fresh")
    path = await migrations.create_migration(
        name="add_users_table",
        content="CREATE TABLE {{tables.users}} (id SERIAL PRIMARY KEY)",
        auto_transaction=True,  # Wraps in BEGIN/COMMIT
    )
    assert Path(path).name[:16].replace("_", "").isdigit()
    assert (await migrations.apply_pending_migrations())["status"] == "success"
    await db.disconnect()


async def test_rollback_record_example(setup: tuple[Any, Any]) -> None:
    _, migrations = setup
    await migrations.apply_pending_migrations()
    # Remove migration from tracking (doesn't undo changes!)
    await migrations.rollback_migration("003_add_column.sql")
    # Migration can now be re-applied
    result = await migrations.apply_pending_migrations()
    # Will apply 003_add_column.sql again
    assert [m["filename"] for m in result["applied"]] == ["003_add_column.sql"]


async def test_error_handling_example(
    setup: tuple[Any, Any], project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, migrations = setup
    write(project / "migrations", {"006_broken.sql": "ALTER TABLE {{tables.nope}} ADD x int;"})
    result = await migrations.apply_pending_migrations()
    if result["status"] == "error":
        print(f"Failed on: {result['failed_migration']}")
        print(f"Error: {result['error']}")
        print(f"Successfully applied: {result['applied']}")
    elif result["status"] == "success":
        print(f"Applied {len(result['applied'])} migrations")
    elif result["status"] == "up_to_date":
        print("No pending migrations")
    out = capsys.readouterr().out
    assert out.startswith("Failed on: 006_broken.sql\nError: Migration '006_broken.sql' failed")
    assert "Successfully applied: [{'filename': '001_initial_schema.sql'" in out

    # Standard Application Setup refuses to start on that result
    with pytest.raises(RuntimeError, match="Migration failed"):
        if result["status"] != "success" and result["status"] != "up_to_date":
            raise RuntimeError(f"Migration failed: {result}")


async def test_standard_application_setup(dsn: str, project: Path) -> None:
    # In application startup (FastAPI lifespan, etc.)
    config = DatabaseConfig(connection_string=dsn)
    db = AsyncDatabaseManager(config)
    await db.connect()

    migrations = AsyncMigrationManager(db, migrations_path="./migrations", module_name="myapp")
    for _ in range(2):
        result = await migrations.apply_pending_migrations()
        if result["status"] != "success" and result["status"] != "up_to_date":
            raise RuntimeError(f"Migration failed: {result}")
    assert result["status"] == "up_to_date"
    await db.disconnect()


async def test_multi_service_dual_mode_and_custom_table(
    admin_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("users", "orders", "payments"):
        write(tmp_path / "migrations" / name, {"001_init.sql": f"CREATE TABLE {name}_t (id int);"})
    pool = await asyncpg.create_pool(admin_dsn, min_size=1, max_size=3)
    prefix = f"ex_{uuid4().hex[:8]}"
    users_db, orders_db, payments_db = (
        AsyncDatabaseManager(pool=pool, schema=f"{prefix}_{name}")
        for name in ("users", "orders", "payments")
    )
    try:
        # Each service runs its own migrations
        services = [
            (users_db, str(tmp_path / "migrations/users"), "users"),
            (orders_db, str(tmp_path / "migrations/orders"), "orders"),
            (payments_db, str(tmp_path / "migrations/payments"), "payments"),
        ]
        for db, path, name in services:
            migrations = AsyncMigrationManager(db, path, module_name=name)
            result = await migrations.apply_pending_migrations()
            if result["status"] == "success":
                print(f"{name}: Applied {len(result['applied'])} migrations")
        assert capsys.readouterr().out == (
            "users: Applied 1 migrations\norders: Applied 1 migrations\n"
            "payments: Applied 1 migrations\n"
        )

        library_migrations = tmp_path / "migrations" / "users"

        class MyLibrary:
            def __init__(self, db: AsyncDatabaseManager) -> None:
                self.db = db

            async def initialize(self) -> dict[str, Any]:
                # Library ALWAYS runs its own migrations
                migrations = AsyncMigrationManager(
                    self.db,
                    migrations_path=str(library_migrations),
                    module_name=f"mylib_{self.db.schema}",  # Include schema!
                )
                return await migrations.apply_pending_migrations()

        assert (await MyLibrary(orders_db).initialize())["status"] == "success"
        assert (await MyLibrary(orders_db).initialize())["status"] == "up_to_date"

        tenant_id = 42
        write(tmp_path / "tenant_migrations", {"001_t.sql": "CREATE TABLE tenant_t (id int);"})
        # Use different table name (e.g., for multi-tenant)
        migrations = AsyncMigrationManager(
            payments_db,
            migrations_path=str(tmp_path / "tenant_migrations"),
            migrations_table="tenant_migrations",  # Custom table name
            module_name=f"tenant_{tenant_id}",
        )
        assert (await migrations.apply_pending_migrations())["status"] == "success"
    finally:
        for db in (users_db, orders_db, payments_db):
            await db.execute(f'DROP SCHEMA IF EXISTS "{db.schema}" CASCADE')
        await pool.close()


async def test_pre_flight_and_development_workflow(
    setup: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, migrations = setup
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    # Check pending before applying
    pending = await migrations.get_pending_migrations()
    if pending:
        print(f"Found {len(pending)} pending migrations:")
        for mig in pending:
            print(f"  - {mig.filename}")
        # Ask user confirmation
        if input("Apply? (y/n): ") == "y":
            result = await migrations.apply_pending_migrations()
    else:
        print("Schema is up to date")
    assert result["status"] == "success"
    assert capsys.readouterr().out.startswith("Found 5 pending migrations:\n")

    # 1. Create migration
    path = await migrations.create_migration(
        name="add_user_roles",
        content="""
    CREATE TABLE {{tables.roles}} (
        id SERIAL PRIMARY KEY,
        name VARCHAR(100) UNIQUE NOT NULL
    );

    ALTER TABLE {{tables.users}} ADD COLUMN role_id INTEGER REFERENCES {{tables.roles}}(id);
    """,
    )
    # 2. Apply it
    result = await migrations.apply_pending_migrations()
    assert result["applied"][0]["filename"] == Path(path).name
    # 3. If something wrong, rollback the record
    await migrations.rollback_migration("20251025_143022_add_user_roles.sql")
    # 4. Fix the file, re-apply
    result = await migrations.apply_pending_migrations()
    assert result["status"] == "up_to_date"


async def test_checksum_validation_example(setup: tuple[Any, Any], project: Path) -> None:
    _, migrations = setup
    await migrations.apply_pending_migrations()
    (project / "migrations" / "002_add_indexes.sql").write_text("-- edited\n")
    with pytest.raises(MigrationError, match="has been modified after being applied!"):
        # If migration file changes after being applied
        result = await migrations.apply_pending_migrations()
        assert result


async def test_common_mistakes(dsn: str, admin_dsn: str, schema: str) -> None:
    db = AsyncDatabaseManager(DatabaseConfig(connection_string=dsn))
    # WRONG - schema parameter doesn't exist
    with pytest.raises(TypeError):
        AsyncMigrationManager(
            db,
            "migrations",
            schema="myschema",  # type: ignore[arg-type]
        )
    pool = await asyncpg.create_pool(admin_dsn, min_size=1, max_size=1)
    try:
        db = AsyncDatabaseManager(pool=pool, schema=schema)
        migrations = AsyncMigrationManager(db, "migrations", module_name="myapp")
        assert migrations.module_name == "myapp"
        # Default module name
        assert AsyncMigrationManager(db, "migrations").module_name == schema
    finally:
        await pool.close()


async def test_template_and_transaction_examples(setup: tuple[Any, Any], project: Path) -> None:
    db, _ = setup
    write(project / "other", dict(TEMPLATE_FILES))
    migrations = AsyncMigrationManager(db, "./other", module_name="templates")
    result = await migrations.apply_pending_migrations()
    assert result["status"] == "success", result
    assert len(result["applied"]) == 3


async def test_migration_class() -> None:
    migration = Migration(filename="001_users.sql", checksum="abc", content="SELECT 1;")
    assert migration.applied_at is None and migration.module_name is None
    assert not migration.is_applied and migration.version == "001"
