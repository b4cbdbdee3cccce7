"""Applying one file: in one transaction with its tracking row, or statement by statement."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import asyncpg

from pytest_pgmig.engine.database import Connection
from pytest_pgmig.engine.files import MigrationFile, parse_version
from pytest_pgmig.engine.sqltext import ScriptPlan, Statement, blank, excerpt, line_of
from pytest_pgmig.engine.templates import (
    TemplateError,
    quote_identifier,
    render,
    render_with_map,
    source_index,
)
from pytest_pgmig.engine.tracking import Tracking
from pytest_pgmig.errors import (
    InvalidMigrationFile,
    MigrationError,
    MigrationSQLError,
    TransientMigrationError,
)

logger = logging.getLogger("pytest_pgmig.engine.migrations")

# deadlock, serialization failure, lock timeout: another session's timing, not the SQL
_TRANSIENT = {"40P01", "40001", "55P03"}
# a batched file's start and duration (see `Applier.apply_many`)
_FILE_STARTED = "pgmig.file_started"
_FILE_MS = (
    f"(extract(epoch FROM clock_timestamp() - current_setting('{_FILE_STARTED}')::timestamptz)"
    " * 1000)::float8"
)
# SQLSTATE classes of what went wrong around the SQL, not in it: connection, resources,
# operator intervention (a cancel, a shutdown), system and internal errors
_NOT_THE_SQL = ("08", "53", "57", "58", "XX")
# internal errors of a catalog row whose object another session dropped meanwhile
_DROPPED_MEANWHILE = ("could not open relation with OID", "cache lookup failed for")


# the tracking SQL to send after a file, given its time in ms (None: timed by the server)
Track = Callable[[float | None], str]


def _untracked(ms: float | None) -> str:
    return ""


class FileCheck(Protocol):
    """A check run in each file's transaction, e.g. `pytest_pgmig.isolation.guard.Guard`."""

    def before_sql(self) -> str:
        """SQL sent first in the file's transaction."""

    def after_sql(self) -> str:
        """SQL sent after the file, before its tracking row; raises to fail the file."""

    async def preflight(
        self, conn: Connection, filename: str, statement: Statement, text: str
    ) -> None:
        """Before a statement that cannot run in a transaction: raise to refuse it."""

    def explain(
        self, filename: str, exc: asyncpg.PostgresError, *, committed: bool
    ) -> MigrationError | None:
        """The failure to report for an error the check raised, or None for any other."""


class RaisingCheck:
    """A `FileCheck` whose `after_sql` raises one SQLSTATE of its own: `explain` turns that
    error, and no other, into the failure `failure` describes."""

    sqlstate = ""

    def explain(
        self, filename: str, exc: asyncpg.PostgresError, *, committed: bool
    ) -> MigrationError | None:
        if getattr(exc, "sqlstate", None) != self.sqlstate:
            return None
        return self.failure(filename, exc, committed=committed)

    def failure(
        self, filename: str, exc: asyncpg.PostgresError, *, committed: bool
    ) -> MigrationError:
        raise NotImplementedError


@dataclass(frozen=True)
class ApplyOptions:
    """How the pytest plugin has files run; not part of pgdbm's API (defaults: pgdbm's way).

    ``search_path``: the schemas after the manager's own while a file runs.
    ``skip``: statements left out, by their first words (the plugin installs extensions
    itself: ``(("CREATE", "EXTENSION"),)``). ``check``: run in each file's transaction.
    ``batch``: consecutive transactional files run in one transaction and one round trip
    (a throwaway schema's migration: a failure anywhere runs them again one by one, so the
    error and the check name the file).
    """

    search_path: tuple[str, ...] = ("public",)
    skip: tuple[tuple[str, ...], ...] = ()
    check: FileCheck | None = None
    batch: bool = False

    def skips(self, statement: Statement) -> bool:
        return any(statement.head[: len(head)] == head for head in self.skip)


class Applier:
    """Runs migration files into one schema and records them in its tracking table."""

    def __init__(
        self, schema: str | None, folder: Path, tracking: Tracking, options: ApplyOptions
    ) -> None:
        self.schema = schema
        self.folder = folder
        self.tracking = tracking
        self.options = options
        # where each migration's up is, for messages: a tool's name for a migration (a
        # Prisma folder, a sqitch change) is not a file in the folder
        self._sources: dict[str, Path] = {}

    async def apply(
        self, conn: Connection, filename: str, checksum: str, plan: ScriptPlan
    ) -> float:
        """Apply one file and record it; its time in milliseconds. Raises `MigrationError`."""
        return await self.run(
            conn, filename, plan, lambda ms: self.tracking.record_sql(filename, checksum, ms)
        )

    async def apply_file(self, conn: Connection, file: MigrationFile) -> float:
        """`apply` for a migration as loaded (see `_record`)."""
        self._sources[file.filename] = file.path
        return await self.run(conn, file.filename, file.plan, lambda ms: self._record(file, ms))

    def _record(self, file: MigrationFile, ms: float | None = None, elapsed_sql: str = "") -> str:
        """A loaded migration's tracking row (replaced for a repeatable one), after the SQL
        its tool keeps its own history with (`MigrationFile.record`)."""
        row = self.tracking.record_sql(
            file.filename, file.checksum, ms, elapsed_sql=elapsed_sql, replace=file.repeatable
        )
        return f"{file.record};{row}" if file.record else row

    async def apply_many(self, conn: Connection, files: Sequence[MigrationFile]) -> float:
        """Apply transactional files in one transaction, each followed by its tracking row
        (timed by the server from the file's start); their time in milliseconds. Raises
        `asyncpg.PostgresError` or `MigrationError`, the transaction rolled back: the caller
        applies the files one by one to say which failed."""
        check = self.options.check
        parts = ["BEGIN;", check.before_sql() if check is not None else ""]
        for file in files:
            parts += [
                f"SELECT set_config('{_FILE_STARTED}', clock_timestamp()::text, true);",
                self._set_path("SET LOCAL"),
                self._render(file.filename, self._template(file.plan)),
                "\n;",
                self._record(file, elapsed_sql=_FILE_MS),
                ";",
            ]
        parts += [check.after_sql() if check is not None else "", "COMMIT;"]
        started = time.perf_counter()
        try:
            await conn.execute("".join(parts))
        except asyncpg.PostgresError:
            await rollback(conn)
            raise
        return (time.perf_counter() - started) * 1000

    async def revert(self, conn: Connection, filename: str, plan: ScriptPlan, *, up: str) -> float:
        """Run down file `filename` and delete the row of `up`, the file it reverts."""
        return await self.run(conn, filename, plan, lambda ms: self.tracking.forget_sql(up))

    async def run(
        self, conn: Connection, filename: str, plan: ScriptPlan, track: Track | None = None
    ) -> float:
        """Run one file, then the tracking SQL `track` gives (none: the tables stay as they
        are, as for a file run a second time); its time in milliseconds."""
        track = track or _untracked
        if plan.transactional:
            return await self._in_transaction(conn, filename, plan, track)
        return await self._autocommit(conn, filename, plan, track)

    async def _in_transaction(
        self, conn: Connection, filename: str, plan: ScriptPlan, track: Track
    ) -> float:
        # One round trip: the file, its tracking row and the commit in a single
        # simple-query message. The file's own BEGIN/COMMIT were blanked by the planner.
        check = self.options.check
        prefix = "BEGIN;" + self._set_path("SET LOCAL")
        if check is not None:
            prefix += check.before_sql()
        template = self._template(plan)
        script = self._render(filename, template)
        after = check.after_sql() if check is not None else ""
        started = time.perf_counter()
        try:
            await conn.execute(f"{prefix}{script}\n;{after}{track(None)};COMMIT;")
        except asyncpg.PostgresError as exc:
            await rollback(conn)
            located = None
            if self._unplaced(filename, plan, exc):
                located = await self._locate(conn, filename, plan)
            raise self._sql_error(filename, plan, template, exc, len(prefix), located) from exc
        return (time.perf_counter() - started) * 1000

    def _template(self, plan: ScriptPlan) -> str:
        """The file's script to render, the statements the options skip blanked out."""
        return blank(plan.script, [s for s in plan.statements if self.options.skips(s)])

    def _unplaced(self, filename: str, plan: ScriptPlan, exc: asyncpg.PostgresError) -> bool:
        """Whether a failed file is worth running again to find its failing statement: the
        server gave no position, and the error is the SQL's own, not another session's timing
        nor the check's (whose file wrote outside its schema: run again, a nextval() there
        would not roll back)."""
        if getattr(exc, "position", None) or is_transient(exc) or not is_the_sql(exc):
            return False
        check = self.options.check
        return check is None or check.explain(filename, exc, committed=False) is None

    async def _locate(self, conn: Connection, filename: str, plan: ScriptPlan) -> int | None:
        """Where a file failed when the server did not say (``function g() does not exist``):
        its statements run again one at a time, in a transaction rolled back."""
        statements = [s for s in plan.statements if s.kind == "sql" and not self.options.skips(s)]
        if len(statements) < 2:
            return statements[0].start if statements else None
        try:
            await conn.execute("BEGIN;" + self._set_path("SET LOCAL"))
            for statement in statements:
                text = plan.text[statement.start : statement.end]
                try:
                    await conn.execute(self._render(filename, text))
                except asyncpg.PostgresError:
                    return statement.start
        except (asyncpg.PostgresError, MigrationError):
            pass
        finally:
            await rollback(conn)
        return None

    async def _autocommit(
        self, conn: Connection, filename: str, plan: ScriptPlan, track: Track
    ) -> float:
        logger.info(
            "Applying '%s' outside a transaction (%s): statements commit one by one.",
            filename,
            plan.reason,
        )
        started = time.perf_counter()
        check = self.options.check
        old_path = await conn.fetchval("SELECT current_setting('search_path')")
        if self.schema is not None:
            await conn.execute(self._set_path("SET"))
        try:
            for statement in plan.statements:
                if self.options.skips(statement):
                    continue
                text = plan.text[statement.start : statement.end]
                prefix = suffix = ""
                if check is not None and statement.kind == "no_transaction":
                    await check.preflight(conn, filename, statement, text)
                elif check is not None and statement.kind == "sql":
                    # each statement checked in a transaction of its own
                    prefix = f"BEGIN;{check.before_sql()}"
                    suffix = f";{check.after_sql()}COMMIT;"
                try:
                    await conn.execute(prefix + self._render(filename, text) + suffix)
                except asyncpg.PostgresError as exc:
                    await rollback(conn)
                    raise self._sql_error(
                        filename, plan, text, exc, len(prefix), statement.start
                    ) from exc
            elapsed = (time.perf_counter() - started) * 1000
            tracking_sql = track(elapsed)
            if tracking_sql:
                await conn.execute(tracking_sql)
        finally:
            await conn.execute("SELECT set_config('search_path', $1, false)", old_path)
        return elapsed

    def _set_path(self, command: str) -> str:
        """``SET [LOCAL] search_path`` to the schema and the options' schemas, or ``""``."""
        if self.schema is None:
            return ""
        path = dict.fromkeys([self.schema, *self.options.search_path])
        return f"{command} search_path TO {', '.join(map(quote_identifier, path))};"

    def _render(self, filename: str, text: str) -> str:
        try:
            return render(text, self.schema)
        except TemplateError as exc:
            raise InvalidMigrationFile(
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
        check = self.options.check
        if check is not None:
            failure = check.explain(filename, exc, committed=not plan.transactional)
            if failure is not None:
                return failure
        # asyncpg's str() already ends with DETAIL and HINT: the server's message alone
        sql_error = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
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
            source = self._sources.get(filename, self.folder / filename)
            hint = (
                f"Nothing of '{filename}' was applied (the file and its tracking row share "
                f"one transaction). Fix the SQL in {source} and run the migrations again."
            )
        else:
            hint = (
                f"'{filename}' runs outside a transaction ({plan.reason}), so the statements "
                "before the failing one stay committed: make them idempotent (IF NOT EXISTS), "
                "fix the failing statement and run the migrations again."
            )
        kind = TransientMigrationError if is_transient(exc) else MigrationSQLError
        return kind(
            f"Migration '{filename}' failed{where}: {sql_error}",
            migration_file=filename,
            version=parse_version(filename),
            sql_error=sql_error,
            line=line,
            excerpt=snippet,
            hint=hint,
            transient=kind is TransientMigrationError,
        )


def is_transient(exc: asyncpg.PostgresError) -> bool:
    """Whether running the same SQL again may succeed: a concurrent session got in the way.

    A unique violation in a system catalog (two sessions creating one type or extension
    at once) counts; one in a user's table does not. So does a relation dropped by another
    session between a catalog scan and its opening (``could not open relation with OID``,
    met by the outside-write check on a server others change).
    """
    state = getattr(exc, "sqlstate", None)
    constraint = getattr(exc, "constraint_name", None) or ""
    message = getattr(exc, "message", None) or ""
    return (
        state in _TRANSIENT
        or (state == "23505" and constraint.startswith("pg_"))
        or (state == "XX000" and message.startswith(_DROPPED_MEANWHILE))
    )


def is_the_sql(exc: asyncpg.PostgresError) -> bool:
    """Whether the error comes from the SQL that ran, so that running it again (to find the
    failing statement, or one file at a time) is worth it: not a cancel, a shutdown, a lost
    connection, exhausted resources or an internal error."""
    state = getattr(exc, "sqlstate", None) or ""
    return state[:2] not in _NOT_THE_SQL


async def rollback(conn: Connection) -> None:
    """End a failed transaction, if one is still open."""
    if not conn.is_closed() and conn.is_in_transaction():
        await conn.execute("ROLLBACK")
