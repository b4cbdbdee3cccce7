"""One module's migrations into one schema: plan, lock, apply, record; failures raise."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from pytest_pgmig.engine.apply import Applier, ApplyOptions, is_the_sql, is_transient
from pytest_pgmig.engine.database import Connection
from pytest_pgmig.engine.files import MigrationFile
from pytest_pgmig.engine.formats import Reading, load_migrations
from pytest_pgmig.engine.plan import pending
from pytest_pgmig.engine.tracking import AppliedRow, Tracking
from pytest_pgmig.errors import MigrationError

logger = logging.getLogger("pytest_pgmig.engine.migrations")


@dataclass(frozen=True)
class Applied:
    """A file this run applied, and how long it took."""

    filename: str
    ms: float


@dataclass
class Outcome:
    """What a run found and did: ``status`` is ``up_to_date``, ``dry_run`` or ``success``."""

    status: str
    skipped: list[str]
    pending: list[MigrationFile] = field(default_factory=list)
    done: list[Applied] = field(default_factory=list)
    error: MigrationError | None = None  # status "error" (only with ``report=True``)
    failed: str | None = None  # the file that raised it


class Runner:
    """Applies the pending files of ``folder`` to ``schema`` under one module name.

    The algorithm of sqlx's migrator, over pgdbm's tracking table: answer "up to date" from
    one query when it can; otherwise take the module's advisory lock, create the table if
    needed, re-read what is applied (another process may have been first), refuse modified
    files, and apply the rest in version order, each file with its row in one transaction.

    Example::

        runner = Runner("app", Path("migrations"), "myapp")
        outcome = await runner.upgrade(conn)   # raises MigrationError naming the file
    """

    def __init__(
        self,
        schema: str | None,
        folder: Path,
        module_name: str,
        *,
        table: str = "schema_migrations",
        options: ApplyOptions | None = None,
        reading: Reading | None = None,
    ) -> None:
        self.folder = folder
        self.reading = reading
        self.tracking = Tracking(schema, table, module_name)
        self.applier = Applier(schema, folder, self.tracking, options or ApplyOptions())

    async def upgrade(
        self, conn: Connection, *, dry_run: bool = False, report: bool = False
    ) -> Outcome:
        """Apply every pending file; raise `MigrationError` at the first that fails.

        With ``report`` a file that fails as it runs ends the run with status ``error``
        and the error in the outcome instead (pgdbm's status dicts are built from it); bad
        files and modified checksums raise either way, before anything runs.
        """
        files = load_migrations(self.folder, self.reading)
        if await self.tracking.matches(conn, files):
            return Outcome("up_to_date", [file.filename for file in files])
        applied = await self.tracking.applied(conn)
        todo = pending(files, _checksums(applied))
        if not todo:
            return Outcome("up_to_date", list(applied or {}))
        if dry_run:
            return Outcome("dry_run", list(applied or {}), todo)
        await self.tracking.lock(conn)
        try:
            if applied is None:
                await self.tracking.ensure(conn)
            applied = await self.tracking.applied(conn) or {}
            todo = pending(files, _checksums(applied))
            if not todo:
                return Outcome("up_to_date", list(applied))
            outcome = Outcome("success", list(applied), todo)
            batch = self.applier.options.batch
            index = 0
            while index < len(todo):
                if batch:
                    done, batch = await self._apply_batch(conn, todo[index:], outcome)
                    index += done
                    if done:
                        continue
                file = todo[index]
                index += 1
                try:
                    ms = await self.applier.apply_file(conn, file)
                except MigrationError as exc:
                    logger.info("%s", exc)
                    if not report:
                        raise
                    outcome.status, outcome.error, outcome.failed = "error", exc, file.filename
                    return outcome
                outcome.done.append(Applied(file.filename, ms))
            logger.info(
                "Applied %d migrations in %.1f ms",
                len(outcome.done),
                sum(a.ms for a in outcome.done),
            )
            return outcome
        finally:
            await self.tracking.unlock(conn)

    async def _apply_batch(
        self, conn: Connection, todo: list[MigrationFile], outcome: Outcome
    ) -> tuple[int, bool]:
        """Apply the leading run of transactional files of `todo` in one transaction
        (`ApplyOptions.batch`): how many were applied, and whether to batch again. A failed
        run is left to be applied one file at a time, which names the failing file."""
        run = list(itertools.takewhile(lambda f: f.plan.transactional, todo))
        if len(run) < 2:
            return 0, True
        try:
            ms = await self.applier.apply_many(conn, run)
        except asyncpg.PostgresError as exc:
            # a statement that ran past statement_timeout is the SQL's: one file at a time
            # names it; a cancel from elsewhere, a shutdown or a lost connection is not
            timed_out = isinstance(exc, asyncpg.QueryCanceledError) and "timeout" in str(exc)
            if not (is_the_sql(exc) or is_transient(exc) or timed_out):
                raise MigrationError(
                    f"Migrating {self.folder} failed: {type(exc).__name__}: {exc}",
                    hint="Nothing of these files was applied (they ran in one transaction).",
                ) from exc
            return 0, False
        except MigrationError:
            return 0, False
        outcome.done += [Applied(file.filename, ms / len(run)) for file in run]
        return len(run), True


def _checksums(applied: dict[str, AppliedRow] | None) -> dict[str, str]:
    return {name: row.checksum for name, row in (applied or {}).items()}
