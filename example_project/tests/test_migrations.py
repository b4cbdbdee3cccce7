"""The migrations themselves, through `pgmig_migrations` (the manager that migrated the schema)."""

from __future__ import annotations

from pytest_pgmig import AsyncDatabaseManager, AsyncMigrationManager, DatabaseConfig

from taskq import MIGRATIONS, TaskQueue, migrate

# 008_job_labels.down.sql is the reverse of its .up.sql: never applied, nor tracked
FILES = sorted(path.name for path in MIGRATIONS.glob("*.sql") if ".down." not in path.name)


async def test_rerun_is_up_to_date(pgmig_migrations: AsyncMigrationManager) -> None:
    result = await pgmig_migrations.apply_pending_migrations()
    assert result["status"] == "up_to_date"
    assert result["applied"] == []
    assert sorted(result["skipped"]) == FILES


async def test_dry_run_lists_nothing_pending(pgmig_migrations: AsyncMigrationManager) -> None:
    result = await pgmig_migrations.apply_pending_migrations(dry_run=True)
    assert result.get("pending", []) == []
    assert await pgmig_migrations.get_pending_migrations() == []


async def test_history_lists_every_file(
    pgmig_migrations: AsyncMigrationManager, pgmig_schema
) -> None:
    history = await pgmig_migrations.get_migration_history(limit=100)
    assert sorted(entry["filename"] for entry in history) == FILES
    assert {entry["module_name"] for entry in history} == {f"taskq_{pgmig_schema.name}"}
    assert pgmig_migrations.module_name == pgmig_schema.module_name == f"taskq_{pgmig_schema.name}"


async def test_checksums_match_the_files(pgmig_migrations: AsyncMigrationManager) -> None:
    applied = await pgmig_migrations.get_applied_migrations()
    on_disk = {m.filename: m.checksum for m in await pgmig_migrations.find_migration_files()}
    assert {name: m.checksum for name, m in applied.items()} == on_disk
    assert len(on_disk) >= 6


async def test_app_startup_agrees_with_the_plugin(pgmig_schema) -> None:
    # The wiring of the README, on the test's schema: the app's own migrate() tracks the
    # files as taskq_<schema>, the same module_name the plugin used, so nothing is pending.
    db = AsyncDatabaseManager(
        DatabaseConfig(connection_string=pgmig_schema.dsn, schema=pgmig_schema.name)
    )
    await db.connect()
    try:
        assert (await migrate(db))["status"] == "up_to_date"
        tq = TaskQueue(db)
        await tq.enqueue("emails", {"to": "ada@example.com"}, dedupe_key="welcome:ada")
        claimed = await tq.claim("emails", worker="w1")
        assert claimed is not None
        assert (await tq.complete(claimed.id, worker="w1")).status == "done"
    finally:
        await db.disconnect()
