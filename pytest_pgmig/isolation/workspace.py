"""Where a migration check runs: a throwaway schema or database of its own, never a test's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from pytest_pgmig.engine.apply import Applier, ApplyOptions
from pytest_pgmig.engine.runner import Runner
from pytest_pgmig.engine.tracking import Tracking
from pytest_pgmig.isolation.reset import TRACKING_TABLE
from pytest_pgmig.isolation.sets import MigrationSet, Sets

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
