"""Migration and AsyncMigrationManager: pgdbm's migration API (status dicts) over the runner."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pytest_pgmig.engine.database import AsyncDatabaseManager
from pytest_pgmig.engine.files import MigrationFile, parse_version, plan_for, version_key
from pytest_pgmig.engine.formats import load_migrations
from pytest_pgmig.engine.plan import pending
from pytest_pgmig.engine.runner import Applied, Outcome, Runner
from pytest_pgmig.engine.sqltext import ScanError, analyze
from pytest_pgmig.engine.templates import TemplateError, validate_identifier
from pytest_pgmig.engine.tracking import AppliedRow
from pytest_pgmig.errors import MigrationError

logger = logging.getLogger(__name__)


@dataclass
class Migration:
    """A migration file, or a row of the tracking table (then ``content`` is ``""``).

    Example::

        for migration in await migrations.get_pending_migrations():
            print(migration.version, migration.filename, migration.checksum[:12])
    """

    filename: str
    checksum: str
    content: str
    applied_at: datetime | None = None
    module_name: str | None = None

    @property
    def is_applied(self) -> bool:
        """Whether the tracking table records this migration."""
        return self.applied_at is not None

    @property
    def version(self) -> str:
        """The version from the file name: ``"001"``, ``"1"`` (``V1__x``), ``"20251025120000"``."""
        return parse_version(self.filename) or self.filename.split(".")[0]


class AsyncMigrationManager:
    """Applies a folder of ``.sql`` migrations to the schema of an `AsyncDatabaseManager`.

    Each file runs with ``search_path`` set to the schema and commits together with its
    row in the tracking table (``migrations_table`` in the same schema, rows isolated by
    ``module_name``). A run holds pgdbm's advisory lock, so concurrent processes, and
    pgdbm 0.5.0 itself, apply each file exactly once.

    Example::

        migrations = AsyncMigrationManager(db, migrations_path="./migrations", module_name="myapp")
        result = await migrations.apply_pending_migrations()
        if result["status"] == "error":
            raise RuntimeError(result["error"])
    """

    def __init__(
        self,
        db_manager: AsyncDatabaseManager,
        migrations_path: str = "./migrations",
        migrations_table: str = "schema_migrations",
        module_name: str | None = None,
        **unexpected: object,
    ) -> None:
        if "schema" in unexpected:
            raise TypeError(
                "AsyncMigrationManager takes no 'schema' argument: the schema comes from the "
                "database manager, e.g. AsyncDatabaseManager(pool=pool, schema='myschema')."
            )
        if unexpected:
            raise TypeError(
                f"AsyncMigrationManager got unexpected keyword arguments: {', '.join(unexpected)}"
            )
        self.db = db_manager
        self.migrations_path = Path(migrations_path).resolve()
        try:
            table = validate_identifier(migrations_table, "migrations table").lower()
        except TemplateError as exc:
            raise MigrationError(str(exc), hint="Pass a plain table name.") from None
        self.migrations_table = migrations_table
        self.module_name = module_name or self.db.schema or "default"
        self.schema = self.db.schema
        self._runner = Runner(self.schema, self.migrations_path, self.module_name, table=table)
        self._tracking = self._runner.tracking

    # -- discovery --------------------------------------------------------------------

    async def find_migration_files(self) -> list[Migration]:
        """The migration files on disk, in version order (raises `MigrationError` if invalid)."""
        return [_migration(file) for file in load_migrations(self.migrations_path)]

    async def get_applied_migrations(self) -> dict[str, Migration]:
        """``{filename: Migration}`` of this module's rows; ``{}`` if there is no table yet."""
        async with self.db.acquire() as conn:
            rows = await self._tracking.applied(conn) or {}
        return {name: _applied(row) for name, row in rows.items()}

    async def get_pending_migrations(self) -> list[Migration]:
        """Files not applied yet, in order. Creates nothing; raises on a changed checksum."""
        files = load_migrations(self.migrations_path)
        applied = await self.get_applied_migrations()
        checksums = {name: row.checksum for name, row in applied.items()}
        return [_migration(file) for file in pending(files, checksums)]

    async def get_migration_history(self, limit: int = 10) -> list[dict[str, Any]]:
        """The last ``limit`` rows, newest first: filename, checksum, module_name, applied_at,
        applied_by and execution_time_ms."""
        async with self.db.acquire() as conn:
            return await self._tracking.history(conn, limit)

    # -- applying ---------------------------------------------------------------------

    async def ensure_migrations_table(self) -> None:
        """Create the schema and the tracking table if missing (safe under concurrency)."""
        async with self.db.acquire() as conn:
            await self._tracking.ensure(conn)

    async def apply_pending_migrations(self, dry_run: bool = False) -> dict[str, Any]:
        """Apply every pending file in order; see the module docs for the result dict.

        Returns ``status`` ``"up_to_date"``, ``"dry_run"`` (with ``pending``),
        ``"success"`` or ``"error"`` (with ``failed_migration``, ``error``, ``line`` and
        ``excerpt``; files before it stay applied). Bad files and changed checksums raise
        `MigrationError` before anything runs.
        """
        async with self.db.acquire() as conn:
            return _status(await self._runner.upgrade(conn, dry_run=dry_run, report=True))

    async def apply_migration(self, migration: Migration) -> float:
        """Apply one migration now and record it; return its time in milliseconds.

        Raises `MigrationError` (with ``line`` and ``excerpt``) if its SQL fails.
        """
        plan = plan_for(migration.content, migration.filename)
        async with self.db.acquire() as conn:
            await self._tracking.lock(conn)
            try:
                await self._tracking.ensure(conn)
                return await self._runner.applier.apply(
                    conn, migration.filename, migration.checksum, plan
                )
            finally:
                await self._tracking.unlock(conn)

    # -- development ------------------------------------------------------------------

    async def create_migration(self, name: str, content: str, auto_transaction: bool = True) -> str:
        """Write ``<YYYYmmdd_HHMMSS>_<name>.sql`` and return its path.

        With ``auto_transaction`` the content is wrapped in ``BEGIN; ... COMMIT;`` (unless
        it has its own, or must run outside a transaction). The timestamp is moved forward
        if needed so that the new file sorts after every existing one.

        Example::

            path = await migrations.create_migration(
                "add_users_avatar", "ALTER TABLE {{tables.users}} ADD COLUMN avatar_url text;"
            )
        """
        if not name or name.startswith(".") or any(sep in name for sep in "/\\"):
            raise ValueError(f"Invalid migration name {name!r}: use letters, digits and '_'.")
        self.migrations_path.mkdir(parents=True, exist_ok=True)
        latest = max(
            (
                version_key(version)
                for path in self.migrations_path.glob("*.sql")
                if (version := parse_version(path.name)) is not None
            ),
            default=(-1,),
        )
        stamp = datetime.now().replace(microsecond=0)
        while latest < (10**14,) and (int(stamp.strftime("%Y%m%d%H%M%S")),) <= latest:
            stamp += timedelta(seconds=1)
        path = self.migrations_path / f"{stamp:%Y%m%d_%H%M%S}_{name}.sql"
        if auto_transaction:
            content = _wrap_in_transaction(content)
        path.write_text(content, encoding="utf-8")
        logger.info("Created migration %s", path)
        return str(path)

    async def rollback_migration(self, filename: str) -> None:
        """Delete the tracking row of ``filename`` (the schema change itself stays)."""
        async with self.db.acquire() as conn:
            await self._tracking.forget(conn, filename)


def _status(outcome: Outcome) -> dict[str, Any]:
    if outcome.status == "up_to_date":
        return _up_to_date(outcome.skipped)
    if outcome.status == "dry_run":
        return {
            "status": "dry_run",
            "pending": [file.filename for file in outcome.pending],
            "applied": [],
            "skipped": outcome.skipped,
            "total": len(outcome.pending) + len(outcome.skipped),
        }
    applied = [_done(a) for a in outcome.done]
    if outcome.error is not None:
        return {
            "status": "error",
            "failed_migration": outcome.failed,
            "error": str(outcome.error),
            "line": outcome.error.line,
            "excerpt": outcome.error.excerpt,
            "applied": applied,
            "skipped": outcome.skipped,
        }
    return {
        "status": "success",
        "applied": applied,
        "skipped": outcome.skipped,
        "total": len(outcome.skipped) + len(outcome.done),
        "total_time_ms": sum(a.ms for a in outcome.done),
    }


def _done(applied: Applied) -> dict[str, Any]:
    return {"filename": applied.filename, "execution_time_ms": applied.ms}


def _migration(file: MigrationFile) -> Migration:
    return Migration(filename=file.filename, checksum=file.checksum, content=file.content)


def _applied(row: AppliedRow) -> Migration:
    return Migration(
        filename=row.filename,
        checksum=row.checksum,
        content="",
        applied_at=row.applied_at,
        module_name=row.module_name,
    )


def _up_to_date(skipped: list[str]) -> dict[str, Any]:
    return {"status": "up_to_date", "applied": [], "skipped": skipped, "total": len(skipped)}


def _wrap_in_transaction(content: str) -> str:
    """``BEGIN; <content>; COMMIT;`` unless it has its own or cannot run in a transaction."""
    try:
        plan = analyze(content)
    except ScanError:
        return content  # reported, with its line, when the file is loaded
    if not plan.transactional or any(s.kind == "begin" for s in plan.statements):
        return content
    if plan.statements and not content[: plan.statements[-1].end].endswith(";"):
        end = plan.statements[-1].end
        content = f"{content[:end]};{content[end:]}"
    return f"BEGIN;\n\n{content.strip()}\n\nCOMMIT;\n"
