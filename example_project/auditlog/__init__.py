"""auditlog: an append-only audit log, a dual-mode library with migrations of its own.

Dual mode: it runs its own migrations in whatever schema its database manager works in,
tracked as ``module_name=f"auditlog_{schema}"``, so one database can hold it beside an
application (sharing the schema and its ``schema_migrations`` table) or in schemas of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pytest_pgmig import AsyncDatabaseManager, AsyncMigrationManager

MIGRATIONS = Path(__file__).parent / "migrations"

__all__ = ["MIGRATIONS", "AuditEntry", "AuditLog"]


@dataclass(frozen=True)
class AuditEntry:
    """Who did what to which target, and when."""

    id: int
    actor: str
    action: str
    target: str | None
    details: dict[str, Any]
    at: datetime


class AuditLog:
    """An audit log in ``db``'s schema.

    Example::

        log = AuditLog(db)
        await log.initialize()  # applies auditlog's migrations as auditlog_<schema>
        await log.record("ada", "login")
    """

    def __init__(self, db: AsyncDatabaseManager) -> None:
        self.db = db

    @property
    def module_name(self) -> str:
        """The name auditlog's migrations are tracked under in this schema."""
        return f"auditlog_{self.db.schema}"

    def migrations(self) -> AsyncMigrationManager:
        """The migration manager for this schema's copy of the library."""
        return AsyncMigrationManager(
            self.db, migrations_path=str(MIGRATIONS), module_name=self.module_name
        )

    async def initialize(self) -> dict[str, Any]:
        """Apply auditlog's pending migrations (a no-op when up to date)."""
        result = await self.migrations().apply_pending_migrations()
        if result["status"] not in ("success", "up_to_date"):
            raise RuntimeError(f"auditlog migrations failed: {result}")
        return result

    async def record(
        self, actor: str, action: str, target: str | None = None, **details: Any
    ) -> AuditEntry:
        """Append one entry."""
        row = await self.db.fetch_one(
            "INSERT INTO {{tables.audit_entries}} (actor, action, target, details) "
            "VALUES ($1, $2, $3, $4::jsonb) RETURNING id, actor, action, target, details, at",
            actor,
            action,
            target,
            json.dumps(details),
        )
        assert row is not None
        return _entry(row)

    async def by_actor(self, actor: str) -> list[AuditEntry]:
        """An actor's entries, newest first."""
        rows = await self.db.fetch_all(
            "SELECT id, actor, action, target, details, at FROM {{tables.audit_entries}} "
            "WHERE actor = $1 ORDER BY at DESC, id DESC",
            actor,
        )
        return [_entry(row) for row in rows]


def _entry(row: dict[str, Any]) -> AuditEntry:
    return AuditEntry(**{**row, "details": json.loads(row["details"])})
