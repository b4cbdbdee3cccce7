"""Where a migration check runs: a throwaway schema or database of its own, never a test's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from pytest_pgmig.engine.apply import Applier, ApplyOptions
from pytest_pgmig.engine.tracking import Tracking
from pytest_pgmig.isolation.place import Place
from pytest_pgmig.isolation.reset import TRACKING_TABLE
from pytest_pgmig.isolation.sets import MigrationSet, Sets

T = TypeVar("T")


@dataclass(frozen=True)
class Workspace:
    """A connection into an empty place made for one check (`pytest_pgmig.isolation.place`),
    where files run as the tests' migrations run under the same isolation: a throwaway
    schema, or `public` of a throwaway database, whose every schema a snapshot then covers.
    """

    conn: asyncpg.Connection
    place: Place
    # its own DSN (the schema first on search_path), for a tool that connects itself
    dsn: str = ""

    @property
    def schema(self) -> str:
        return self.place.schema

    @property
    def options(self) -> ApplyOptions:
        return self.place.options

    @property
    def database(self) -> bool:
        return self.place.database

    def module_name(self, mset: MigrationSet) -> str:
        return self.place.module_name(mset.module)

    async def prepare(self, sets: Sets) -> Applier:
        """Migrate the sets before the last, as tests get them (their failures raise, as
        the tests' would); an applier for the last set, its tracking table made (so that no
        snapshot sees it appear)."""
        *before, last = sets
        for mset in before:
            await self.place.apply(self.conn, mset)
        tracking = Tracking(self.schema, TRACKING_TABLE, self.module_name(last))
        await tracking.ensure(self.conn)
        return Applier(self.schema, last.path, tracking, self.options)


# a check, run by an isolation in a workspace it made (`Isolation.check`)
Procedure = Callable[["Workspace"], Awaitable[T]]
