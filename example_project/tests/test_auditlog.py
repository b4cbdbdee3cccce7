"""A second module sharing the database: auditlog, a dual-mode library, via `pgmig_factory`."""

from __future__ import annotations

import asyncpg
import pytest
from pytest_pgmig import AsyncDatabaseManager, DatabaseConfig

import auditlog
from taskq import TaskQueue


async def test_factory_gives_auditlog_its_own_schema(pgmig_factory, pgmig_schema) -> None:
    audit = await pgmig_factory(migrations=auditlog.MIGRATIONS, module="auditlog")
    assert audit.name != pgmig_schema.name
    assert audit.module_name == f"auditlog_{audit.name}"

    db = AsyncDatabaseManager(DatabaseConfig(connection_string=audit.dsn, schema=audit.name))
    await db.connect()
    try:
        log = AuditLog(db)
        # dual mode: the library's own initialize() finds its migrations already applied
        assert (await log.initialize())["status"] == "up_to_date"
        await log.record("ada", "job.enqueue", "emails", job_id=1)
        await log.record("ada", "job.cancel", "emails", job_id=1)
        entries = await log.by_actor("ada")
        assert [e.action for e in entries] == ["job.cancel", "job.enqueue"]
        assert entries[0].details == {"job_id": 1}
        # the app's tables are not in auditlog's schema
        assert await db.fetch_value("SELECT to_regclass('jobs')") is None
    finally:
        await db.disconnect()


async def test_auditlog_is_append_only(pgmig_factory) -> None:
    audit = await pgmig_factory(migrations=auditlog.MIGRATIONS, module="auditlog")
    conn = await asyncpg.connect(audit.dsn)
    try:
        await conn.execute("INSERT INTO audit_entries (actor, action) VALUES ('ada', 'login')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("DELETE FROM audit_entries")
    finally:
        await conn.close()


async def test_auditlog_beside_the_app_in_one_schema(pgmig_db: AsyncDatabaseManager) -> None:
    # The other half of dual mode: the library migrates the app's own schema, tracked in the
    # same schema_migrations table under its own module_name.
    log = AuditLog(pgmig_db)
    result = await log.initialize()
    assert result["status"] == "success"
    assert [m["filename"] for m in result["applied"]] == [
        "001_audit_entries.sql",
        "002_audit_entries_append_only.sql",
    ]
    modules = await pgmig_db.fetch_all(
        "SELECT module_name, count(*) AS files FROM {{tables.schema_migrations}} "
        "GROUP BY module_name ORDER BY module_name"
    )
    assert modules == [
        {"module_name": f"auditlog_{pgmig_db.schema}", "files": 2},
        {"module_name": f"taskq_{pgmig_db.schema}", "files": 8},
    ]
    job = await TaskQueue(pgmig_db).enqueue("default")
    entry = await log.record("system", "job.enqueue", str(job.id))
    assert entry.target == str(job.id)


AuditLog = auditlog.AuditLog
