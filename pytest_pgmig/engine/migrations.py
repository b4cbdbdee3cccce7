"""Migration and AsyncMigrationManager: pgdbm's migration API, race-free and pgdbm-compatible."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from pytest_pgmig.engine.database import (
    AsyncDatabaseManager,
    Connection,
    create_schema_sql,
    run_locked_ddl,
)
from pytest_pgmig.engine.files import (
    MigrationFile,
    fingerprint,
    load_migrations,
    parse_version,
    plan_for,
    version_key,
)
from pytest_pgmig.engine.sqltext import ScanError, ScriptPlan, analyze, excerpt, line_of
from pytest_pgmig.engine.templates import (
    TemplateError,
    quote_identifier,
    render,
    render_with_map,
    source_index,
    sql_literal,
    validate_identifier,
)
from pytest_pgmig.errors import MigrationError
from pytest_pgmig.isolation import extensions, guard

logger = logging.getLogger(__name__)

# pgdbm 0.5.0's columns, with the page's wider module_name and REAL timings; applied_by
# keeps pgdbm's history query working on a table we created.
_TABLE_COLUMNS = """
    id SERIAL PRIMARY KEY,
    filename VARCHAR(255) NOT NULL,
    checksum VARCHAR(64) NOT NULL,
    module_name VARCHAR(255),
    applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    applied_by VARCHAR(100) DEFAULT CURRENT_USER,
    execution_time_ms REAL,
    UNIQUE (filename, module_name)
"""
# What reading a tracking table that does not exist yet raises.
_NO_TABLE = (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError)
# Server-side duration of the current simple-query message: the file just run.
_ELAPSED_MS = "(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::float8"


@dataclass(frozen=True)
class ApplyOptions:
    """How the pytest plugin has files run; not part of pgdbm's API (defaults: pgdbm's way).

    ``search_path``: the schemas after the manager's own while a file runs.
    ``skip_extensions``: ``CREATE EXTENSION`` statements are left out (the caller installs
    the extensions once per database). ``guard``: the schema whose transaction is checked
    for writes outside it (`pytest_pgmig.isolation.guard`), or ``None``.
    """

    search_path: tuple[str, ...] = ("public",)
    skip_extensions: bool = False
    guard: str | None = None


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
        self.options = ApplyOptions()
        self.migrations_path = Path(migrations_path).resolve()
        try:
            table = validate_identifier(migrations_table, "migrations table").lower()
        except TemplateError as exc:
            raise MigrationError(str(exc), hint="Pass a plain table name.") from None
        self.migrations_table = migrations_table
        self.module_name = module_name or self.db.schema or "default"
        self.schema = self.db.schema
        self._table = quote_identifier(table)
        if self.schema is not None:
            self._table = f"{quote_identifier(self.schema)}.{self._table}"
        self._index = quote_identifier(f"idx_{table}_module")
        self._lock_key = f"pgdbm_migration_{self.module_name}"
        self._select_applied = (
            f"SELECT filename, checksum, applied_at, module_name FROM {self._table} "
            'WHERE module_name = $1 OR module_name IS NULL ORDER BY filename COLLATE "C"'
        )
        # One row instead of one per file for the common "nothing to do" answer.
        self._select_fingerprint = (
            "SELECT count(*), encode(sha256(convert_to(string_agg(filename || ':' || checksum, "
            f"E'\\n' ORDER BY filename COLLATE \"C\"), 'UTF8')), 'hex') FROM {self._table} "
            "WHERE module_name = $1 OR module_name IS NULL"
        )

    # -- discovery --------------------------------------------------------------------

    async def find_migration_files(self) -> list[Migration]:
        """The migration files on disk, in version order (raises `MigrationError` if invalid)."""
        return [_migration(file) for file in load_migrations(self.migrations_path)]

    async def get_applied_migrations(self) -> dict[str, Migration]:
        """``{filename: Migration}`` of this module's rows; ``{}`` if there is no table yet."""
        async with self.db.acquire() as conn:
            return await self._read_applied(conn) or {}

    async def get_pending_migrations(self) -> list[Migration]:
        """Files not applied yet, in order. Creates nothing; raises on a changed checksum."""
        files = load_migrations(self.migrations_path)
        applied = await self.get_applied_migrations()
        return [_migration(file) for file in self._pending(files, applied)]

    async def get_migration_history(self, limit: int = 10) -> list[dict[str, Any]]:
        """The last ``limit`` rows, newest first: filename, checksum, module_name, applied_at,
        applied_by and execution_time_ms."""
        query = (
            "SELECT filename, checksum, module_name, applied_at, applied_by, execution_time_ms "
            f"FROM {self._table} WHERE module_name = $1 OR module_name IS NULL "
            "ORDER BY applied_at DESC, id DESC LIMIT $2"
        )
        async with self.db.acquire() as conn:
            try:
                rows = await conn.fetch(query, self.module_name, limit)
            except _NO_TABLE:
                return []
        return [dict(row) for row in rows]

    # -- applying ---------------------------------------------------------------------

    async def ensure_migrations_table(self) -> None:
        """Create the schema and the tracking table if missing (safe under concurrency)."""
        async with self.db.acquire() as conn:
            await self._ensure_table(conn)

    async def apply_pending_migrations(self, dry_run: bool = False) -> dict[str, Any]:
        """Apply every pending file in order; see the module docs for the result dict.

        Returns ``status`` ``"up_to_date"``, ``"dry_run"`` (with ``pending``),
        ``"success"`` or ``"error"`` (with ``failed_migration``, ``error``, ``line`` and
        ``excerpt``; files before it stay applied). Bad files and changed checksums raise
        `MigrationError` before anything runs.
        """
        return await self._run(dry_run=dry_run, raise_errors=False)

    async def migrate(self) -> int:
        """Apply every pending file in order; return how many were applied.

        The plugin's path: a failing file raises its `MigrationError` (``transient`` set when
        a concurrent session got in the way) instead of returning an ``"error"`` status.
        """
        result = await self._run(dry_run=False, raise_errors=True)
        return len(result.get("applied", ()))

    async def _run(self, *, dry_run: bool, raise_errors: bool) -> dict[str, Any]:
        files = load_migrations(self.migrations_path)
        async with self.db.acquire() as conn:
            if await self._all_applied(conn, files):
                return _up_to_date([file.filename for file in files])
            applied = await self._read_applied(conn)
            pending = self._pending(files, applied or {})
            if not pending:
                return _up_to_date(list(applied or {}))
            if dry_run:
                return {
                    "status": "dry_run",
                    "pending": [file.filename for file in pending],
                    "applied": [],
                    "skipped": list(applied or {}),
                    "total": len(pending) + len(applied or {}),
                }
            await self._lock(conn)
            try:
                if applied is None:
                    await self._ensure_table(conn)
                # Another process may have applied files while we waited for the lock.
                applied = await self._read_applied(conn) or {}
                pending = self._pending(files, applied)
                if not pending:
                    return _up_to_date(list(applied))
                return await self._apply_all(conn, pending, applied, raise_errors)
            finally:
                await self._unlock(conn)

    async def apply_migration(self, migration: Migration) -> float:
        """Apply one migration now and record it; return its time in milliseconds.

        Raises `MigrationError` (with ``line`` and ``excerpt``) if its SQL fails.
        """
        plan = plan_for(migration.content, migration.filename)
        async with self.db.acquire() as conn:
            await self._lock(conn)
            try:
                await self._ensure_table(conn)
                return await self._apply_one(conn, migration.filename, migration.checksum, plan)
            finally:
                await self._unlock(conn)

    async def _apply_all(
        self,
        conn: Connection,
        pending: list[MigrationFile],
        applied: dict[str, Migration],
        raise_errors: bool,
    ) -> dict[str, Any]:
        done: list[dict[str, Any]] = []
        total_ms = 0.0
        for file in pending:
            try:
                elapsed = await self._apply_one(conn, file.filename, file.checksum, file.plan)
            except MigrationError as exc:
                logger.info("%s", exc)
                if raise_errors:
                    raise
                return {
                    "status": "error",
                    "failed_migration": file.filename,
                    "error": str(exc),
                    "line": exc.line,
                    "excerpt": exc.excerpt,
                    "applied": done,
                    "skipped": list(applied),
                }
            done.append({"filename": file.filename, "execution_time_ms": elapsed})
            total_ms += elapsed
        logger.info("Applied %d migrations in %.1f ms", len(done), total_ms)
        return {
            "status": "success",
            "applied": done,
            "skipped": list(applied),
            "total": len(applied) + len(done),
            "total_time_ms": total_ms,
        }

    async def _apply_one(
        self, conn: Connection, filename: str, checksum: str, plan: ScriptPlan
    ) -> float:
        if plan.transactional:
            return await self._apply_in_transaction(conn, filename, checksum, plan)
        return await self._apply_autocommit(conn, filename, checksum, plan)

    async def _apply_in_transaction(
        self, conn: Connection, filename: str, checksum: str, plan: ScriptPlan
    ) -> float:
        # One round trip: the file, its tracking row and the commit in a single
        # simple-query message. The file's own BEGIN/COMMIT were blanked by the planner.
        opts = self.options
        prefix = "BEGIN;" + self._set_path("SET LOCAL")
        if opts.guard is not None:
            prefix += guard.before_sql(opts.guard)
        template = self._script(filename, plan, plan.script)
        script = self._render(filename, template)
        check = guard.after_sql(opts.guard) if opts.guard is not None else ""
        record = (
            f"INSERT INTO {self._table} (filename, checksum, module_name, execution_time_ms) "
            f"VALUES ({sql_literal(filename)}, {sql_literal(checksum)}, "
            f"{sql_literal(self.module_name)}, {_ELAPSED_MS})"
        )
        started = time.perf_counter()
        try:
            await conn.execute(f"{prefix}{script}\n;{check}{record};COMMIT;")
        except asyncpg.PostgresError as exc:
            await _rollback(conn)
            raise self._sql_error(filename, plan, template, exc, len(prefix), None) from exc
        return (time.perf_counter() - started) * 1000

    def _set_path(self, command: str) -> str:
        """``SET [LOCAL] search_path`` to the schema and the options' schemas, or ``""``."""
        if self.schema is None:
            return ""
        path = dict.fromkeys([self.schema, *self.options.search_path])
        return f"{command} search_path TO {', '.join(map(quote_identifier, path))};"

    def _script(self, filename: str, plan: ScriptPlan, script: str) -> str:
        """The script as run: without its CREATE EXTENSION statements if the options say so."""
        if not self.options.skip_extensions:
            return script
        return extensions.blank_statements(
            script, extensions.find_extensions(plan.text, plan.statements, filename)
        )

    async def _apply_autocommit(
        self, conn: Connection, filename: str, checksum: str, plan: ScriptPlan
    ) -> float:
        logger.info(
            "Applying '%s' outside a transaction (%s): statements commit one by one.",
            filename,
            plan.reason,
        )
        started = time.perf_counter()
        opts = self.options
        old_path = await conn.fetchval("SELECT current_setting('search_path')")
        if self.schema is not None:
            await conn.execute(self._set_path("SET"))
        skipped = (
            {r.start for r in extensions.find_extensions(plan.text, plan.statements, filename)}
            if opts.skip_extensions
            else set()
        )
        try:
            for statement in plan.statements:
                if statement.start in skipped:
                    continue
                text = plan.text[statement.start : statement.end]
                prefix = suffix = ""
                if opts.guard is not None and statement.kind == "no_transaction":
                    await guard.check_target(conn, filename, opts.guard, statement, text)
                elif opts.guard is not None and statement.kind == "sql":
                    prefix, suffix = (
                        f"BEGIN;{guard.before_sql(opts.guard)}",
                        ";" + "".join((guard.after_sql(opts.guard), "COMMIT;")),
                    )
                try:
                    await conn.execute(prefix + self._render(filename, text) + suffix)
                except asyncpg.PostgresError as exc:
                    await _rollback(conn)
                    raise self._sql_error(
                        filename, plan, text, exc, len(prefix), statement.start
                    ) from exc
            elapsed = (time.perf_counter() - started) * 1000
            await conn.execute(
                f"INSERT INTO {self._table} (filename, checksum, module_name, execution_time_ms) "
                "VALUES ($1, $2, $3, $4::float8)",
                filename,
                checksum,
                self.module_name,
                elapsed,
            )
        finally:
            await conn.execute("SELECT set_config('search_path', $1, false)", old_path)
        return elapsed

    def _render(self, filename: str, text: str) -> str:
        try:
            return render(text, self.schema)
        except TemplateError as exc:
            raise MigrationError(
                f"Migration '{filename}': {exc}",
                migration_file=filename,
                hint="Fix the placeholder in the file and run the migrations again.",
            ) from None

    def _sql_error(
        self,
        filename: str,
        plan: ScriptPlan,
        template: str,
        exc: asyncpg.PostgresError,
        prefix: int,
        offset: int | None,
    ) -> MigrationError:
        """Turn a server error into a MigrationError pointing at the line of the file."""
        if self.options.guard is not None:
            outside = guard.explain(
                filename, self.options.guard, exc, committed=not plan.transactional
            )
            if outside is not None:
                return outside
        sql_error = f"{type(exc).__name__}: {exc}"
        for extra in ("detail", "hint"):
            value = getattr(exc, extra, None)
            if value:
                sql_error += f"\n{extra.upper()}: {value}"
        line = snippet = None
        position = getattr(exc, "position", None)
        if position:
            _, replacements = render_with_map(template, self.schema)
            rendered_index = int(position) - 1 - prefix
            if rendered_index >= 0:
                index = source_index(replacements, rendered_index) + (offset or 0)
                if index <= len(plan.text):
                    line = line_of(plan.text, index)
                    snippet = excerpt(plan.text, index)
        elif offset is not None:
            line = line_of(plan.text, offset)
            snippet = excerpt(plan.text, offset)
        where = f" at line {line}" if line else ""
        if plan.transactional:
            hint = (
                f"Nothing of '{filename}' was applied (the file and its tracking row share "
                f"one transaction). Fix the SQL in {self.migrations_path / filename} and run "
                "the migrations again."
            )
        else:
            hint = (
                f"'{filename}' runs outside a transaction ({plan.reason}), so the statements "
                "before the failing one stay committed: make them idempotent (IF NOT EXISTS), "
                "fix the failing statement and run the migrations again."
            )
        return MigrationError(
            f"Migration '{filename}' failed{where}: {sql_error}",
            migration_file=filename,
            version=parse_version(filename),
            sql_error=sql_error,
            line=line,
            excerpt=snippet,
            hint=hint,
            transient=is_transient(exc),
        )

    # -- tracking ---------------------------------------------------------------------

    async def _all_applied(self, conn: Connection, files: tuple[MigrationFile, ...]) -> bool:
        """Whether the tracked rows are exactly ``files`` with their checksums."""
        try:
            count, digest = await conn.fetchrow(self._select_fingerprint, self.module_name)
        except _NO_TABLE:
            return False
        return bool(count == len(files) and digest == fingerprint(files))

    async def _read_applied(self, conn: Connection) -> dict[str, Migration] | None:
        try:
            rows = await conn.fetch(self._select_applied, self.module_name)
        except _NO_TABLE:
            return None
        return {
            row["filename"]: Migration(
                filename=row["filename"],
                checksum=row["checksum"],
                content="",
                applied_at=row["applied_at"],
                module_name=row["module_name"],
            )
            for row in rows
        }

    def _pending(
        self, files: tuple[MigrationFile, ...], applied: dict[str, Migration]
    ) -> list[MigrationFile]:
        pending = []
        for file in files:
            row = applied.get(file.filename)
            if row is None:
                pending.append(file)
            elif row.checksum != file.checksum:
                raise MigrationError(
                    f"Migration '{file.filename}' has been modified after being applied!\n"
                    f"Expected checksum: {row.checksum}\n"
                    f"Current checksum: {file.checksum}",
                    migration_file=file.filename,
                    version=file.version,
                    hint="Restore the applied file and put the change in a new migration (in "
                    f"development, rollback_migration('{file.filename}') lets it run again).",
                )
        return pending

    async def _ensure_table(self, conn: Connection) -> None:
        ddl = [
            f"CREATE TABLE IF NOT EXISTS {self._table} ({_TABLE_COLUMNS})",
            f"CREATE INDEX IF NOT EXISTS {self._index} ON {self._table} (module_name, filename)",
        ]
        if self.schema is not None:
            ddl.insert(0, create_schema_sql(self.schema))
        await run_locked_ddl(conn, self.schema, ";".join(ddl))

    async def _lock(self, conn: Connection) -> None:
        # Polled rather than waited for: a session blocked in pg_advisory_lock() holds a
        # snapshot, and CREATE INDEX CONCURRENTLY run by the lock holder waits for every
        # older snapshot to go away, which would deadlock the two.
        delay = 0.001
        while not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", self._lock_key):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _unlock(self, conn: Connection) -> None:
        try:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", self._lock_key)
        except Exception:
            # A connection we cannot unlock must not go back to the pool holding the lock.
            conn.terminate()

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
            with contextlib.suppress(*_NO_TABLE):
                await conn.execute(
                    f"DELETE FROM {self._table} WHERE filename = $1 AND module_name = $2",
                    filename,
                    self.module_name,
                )


# deadlock, serialization failure, lock timeout: another session's timing, not the SQL
_TRANSIENT = {"40P01", "40001", "55P03"}


def is_transient(exc: asyncpg.PostgresError) -> bool:
    """Whether running the same SQL again may succeed: a concurrent session got in the way.

    A unique violation in a system catalog (two sessions creating one type or extension
    at once) counts; one in a user's table does not.
    """
    state = getattr(exc, "sqlstate", None)
    constraint = getattr(exc, "constraint_name", None) or ""
    return state in _TRANSIENT or (state == "23505" and constraint.startswith("pg_"))


def _migration(file: MigrationFile) -> Migration:
    return Migration(filename=file.filename, checksum=file.checksum, content=file.content)


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


async def _rollback(conn: Connection) -> None:
    if not conn.is_closed() and conn.is_in_transaction():
        await conn.execute("ROLLBACK")
