"""Where migration sets are applied: a throwaway schema, or the schemas of a throwaway database.

The one rule for module names lives here: in a schema, `<lib>_<schema>` (pgdbm's form, one
tracking row set per schema), in a database of its own, `<lib>` as written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import asyncpg

from pytest_pgmig.engine.apply import ApplyOptions
from pytest_pgmig.engine.runner import Runner
from pytest_pgmig.isolation.reset import TRACKING_TABLE
from pytest_pgmig.isolation.sets import MigrationSet, Sets

# the schema a database's migrations land in when they name none, as in production
PUBLIC = "public"


@dataclass(frozen=True)
class Place:
    """Where files run and how: `schema` (a test's schema, or `public` of a database of its
    own when `database`), with `options` (search_path, statements left out, the check)."""

    schema: str
    options: ApplyOptions
    database: bool = False

    def module_name(self, module: str) -> str:
        """A set's module_name here, as the tests' schemas (or databases) have it."""
        return module if self.database else f"{module}_{self.schema}"

    def module_names(self, sets: Sets) -> dict[str, str]:
        return {mset.module: self.module_name(mset.module) for mset in sets}

    def runner(self, mset: MigrationSet) -> Runner:
        """The engine's runner for `mset` here. In a database, a set a suite applies through
        a manager bound to a schema (or another tracking table) goes there, with public
        after it on search_path, as pgdbm's managers set it."""
        schema, options, table = self.schema, self.options, TRACKING_TABLE
        if self.database:
            schema, table = mset.schema or self.schema, mset.table or table
            if schema != PUBLIC:
                options = dataclasses.replace(options, search_path=(PUBLIC,))
        return Runner(
            schema,
            mset.path,
            self.module_name(mset.module),
            table=table,
            options=options,
            reading=mset.reading,
        )

    async def apply(self, conn: asyncpg.Connection, mset: MigrationSet) -> int:
        """Apply `mset`'s pending files here; how many ran (raises `MigrationError`)."""
        return len((await self.runner(mset).upgrade(conn)).done)
