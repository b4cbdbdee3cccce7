"""Resetting schema isolation's used schemas: a function each, run on a session of its own."""

from __future__ import annotations

import re

import asyncpg

from pytest_pgmig.isolation import registry, reset
from pytest_pgmig.isolation.base import Sets, Slot
from pytest_pgmig.isolation.strategy import ControlSession
from pytest_pgmig.runtime import close_or_terminate


class SchemaResets:
    """Undoes a test's work in its schema for `owner` (a `SchemaIsolation`): what each
    schema held when first migrated, the reset function each gets at its first reset, the
    session they run on, and a warning once per set when one cannot run."""

    def __init__(self, owner: ControlSession) -> None:
        self.owner = owner
        self._conn: asyncpg.Connection | None = None
        # what each schema held when its state was first taken: its fingerprint reads it
        self._known: dict[str, reset.Known] = {}
        self._warned: set[Sets] = set()

    @property
    def conn(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            raise ConnectionError("pytest-pgmig's reset connection to the server is closed")
        return self._conn

    async def start(self) -> None:
        self._conn = await self.owner.connect("reset")

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await close_or_terminate(self._conn)

    async def state(self, name: str) -> str:
        """Freshly migrated schema `name`'s state, remembering what it holds (holds `op`)."""
        self._known[name], state = await reset.known_and_state(
            self.owner.conn, name, log=self.owner.context.own_server
        )
        return state

    def forget(self, name: str) -> None:
        self._known.pop(name, None)

    async def run(self, slot: Slot, template: reset.Template | None) -> str | None:
        """The schema's new state (the caller holds `op`); None when the test changed its
        DDL, locks held it up twice or the reset failed: the schema must be replaced."""
        try:
            return await self._run(slot, template)
        except asyncpg.PostgresError as exc:
            self._failed(slot, _describe(exc))
            return None

    async def _run(self, slot: Slot, template: reset.Template | None) -> str | None:
        if slot.reset_fn is None:
            name = slot.schema.name
            tables = await reset.tables(self.owner.conn, name)
            await self.owner.conn.execute(
                reset.reset_function_sql(
                    name, tables, template, replica=self.owner.replica, seen=self._known[name]
                )
            )
            slot.reset_fn = registry.reset_function(name)
        # First what the test left running or in a transaction through the schema's DSN (and
        # idle sessions past a few); if a lock still times out, every session on the schema.
        for every in (False, True):
            try:
                state: str | None = await self.conn.fetchval(
                    f"SELECT {slot.reset_fn}($1, $2, $3, $4)",
                    slot.state,
                    registry.app_name(slot.schema.name),
                    every,
                    self.owner.context.own_server,
                )
                return state
            except asyncpg.LockNotAvailableError:
                continue
        self._failed(slot, "a lock in the schema or its template was still held")
        return None

    def _failed(self, slot: Slot, cause: str) -> None:
        """Count a reset that could not run, and warn once per migration set."""
        label = ", ".join(f"{m.module}={m.path}" for m in slot.key) or "(no migrations)"
        stats = self.owner.stats
        stats.reset_failed += 1
        stats.reset_cause = stats.reset_cause or f"{label}: {cause}"
        if slot.key not in self._warned:
            self._warned.add(slot.key)
            self.owner.warnings.append(
                f"pgmig: resetting a schema of migration set {label} failed ({cause}); "
                "its tests get freshly migrated schemas instead, which is slower. Please "
                "report this with the migration that creates the table named."
            )


def _describe(exc: asyncpg.PostgresError) -> str:
    """The error of a reset function, naming the table its failing statement was about."""
    table = getattr(exc, "table_name", None)
    query = getattr(exc, "internal_query", None) or ""
    if not table:
        match = re.search(r'(?:INSERT INTO|DELETE FROM)\s+"?[^".\s]+"?\."?([^".\s]+)"?', query)
        table = match.group(1) if match else None
    where = f"table {table}: " if table else ""
    return f"{where}{type(exc).__name__}: {exc}"
