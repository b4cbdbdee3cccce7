"""Where a migration check runs: a throwaway schema or database of its own, never a test's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg  # type: ignore[import-untyped]

from pytest_pgmig.checks import snapshot
from pytest_pgmig.engine.apply import Applier, ApplyOptions
from pytest_pgmig.engine.runner import Runner
from pytest_pgmig.engine.tracking import Tracking
from pytest_pgmig.errors import CheckFailed, MigrationError
from pytest_pgmig.isolation.base import MigrationSet, Sets
from pytest_pgmig.isolation.reset import TRACKING_TABLE

T = TypeVar("T")


@dataclass(frozen=True)
class Workspace:
    """A connection into an empty schema (or database) made for one check, and how files run
    there: as the tests' migrations run under the same isolation.

    `schema` is where files run: the throwaway schema, or `public` of a throwaway database
    (`database` true), whose every schema a snapshot then covers.
    """

    conn: asyncpg.Connection
    schema: str
    options: ApplyOptions
    database: bool = False
    # its own DSN (the schema first on search_path), for a tool that connects itself
    dsn: str = ""

    def module_name(self, mset: MigrationSet) -> str:
        """The set's module_name here, as the tests' schemas (or databases) have it."""
        return mset.module if self.database else f"{mset.module}_{self.schema}"

    async def snapshot(self, *, rows: bool = False) -> snapshot.Snapshot:
        """The structure of what the files may change here (and each table's rows)."""
        return await snapshot.take(
            self.conn, None if self.database else [self.schema], home=self.schema, rows=rows
        )

    async def prepare(self, sets: Sets) -> Applier:
        """Migrate the sets before the last, as tests get them (their failures raise, as
        the tests' would); an applier for the last set, its tracking table made (so that no
        snapshot sees it appear)."""
        *before, last = sets
        for mset in before:
            runner = Runner(
                self.schema,
                mset.path,
                self.module_name(mset),
                table=TRACKING_TABLE,
                options=self.options,
                reading=mset.reading,
            )
            await runner.upgrade(self.conn)
        tracking = Tracking(self.schema, TRACKING_TABLE, self.module_name(last))
        await tracking.ensure(self.conn)
        return Applier(self.schema, last.path, tracking, self.options)


# a check, run by an isolation in a workspace it made (`Isolation.check`)
Procedure = Callable[["Workspace"], Awaitable[T]]


def file_failed(what: str, exc: MigrationError, fix: str) -> CheckFailed:
    """A check failure for a file the server refused: where, PostgreSQL's words, the fix."""
    parts = [f"{what}: {exc.message}"]
    if exc.excerpt:
        parts.append(exc.excerpt)
    parts.append(fix)
    return CheckFailed("\n".join(parts))
