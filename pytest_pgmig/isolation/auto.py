"""Automatic isolation: schemas, and a database for a set that writes outside its schema."""

from __future__ import annotations

from pytest_pgmig.errors import CannotCreateDatabases, MigrationError, MigrationFailed
from pytest_pgmig.isolation.base import Context, Sets, Slot, Stats
from pytest_pgmig.isolation.databases import DatabaseIsolation
from pytest_pgmig.isolation.migrate import migration_failed, outside_write
from pytest_pgmig.isolation.schemas import SchemaIsolation
from pytest_pgmig.isolation.workspace import Procedure, T


class AutoIsolation:
    """The `Isolation` of `--pgmig-isolation=auto`: a schema per test until a set can't.

    A set whose files write outside the schema they migrate (the outside-write check found
    it, and rolled the file back; or a file failed on a name it qualifies with ``public``)
    is migrated into a template database instead, and runs
    under database isolation for the rest of the process. Both strategies count into one
    `Stats`, whose `switched` lines say which set moved and why.
    """

    def __init__(self, context: Context) -> None:
        self.schemas = SchemaIsolation(context)
        self.databases = DatabaseIsolation(context)
        self.stats: Stats = self.schemas.stats
        self.databases.stats = self.stats
        self.warnings: list[str] = self.schemas.warnings
        self.databases.warnings = self.warnings
        self._moved: set[Sets] = set()
        self._databases_started = False
        self._refused: MigrationFailed | None = None  # the role may not create databases

    async def start(self) -> list[str]:
        return await self.schemas.start()

    async def acquire(
        self, sets: Sets, *, spare: bool = False, lane: str = "", database: bool = False
    ) -> Slot:
        if database:
            await self._start_databases(None)
        elif sets not in self._moved:
            try:
                return await self.schemas.acquire(sets, spare=spare, lane=lane)
            except MigrationFailed as exc:
                if exc.outside is None:
                    raise
                self._moved.add(sets)
                self._note(sets, exc.outside)
                await self._start_databases(exc)
        if self._refused is not None:
            raise self._refused.again()
        return await self.databases.acquire(sets, spare=spare, lane=lane)

    async def check(self, sets: Sets, procedure: Procedure[T]) -> T:
        """Run a migration check where the set's tests run: in a schema, or in a database
        once its files are found to write outside their schema (then the tests move too).
        An Alembic history's checks run Alembic in a database of their own."""
        if any(m.reading.alembic for m in sets):
            await self._start_databases(None)
        elif sets not in self._moved:
            try:
                return await self.schemas.check(sets, procedure)
            except MigrationError as exc:
                if outside_write(sets[-1], exc) is None:
                    raise
                cause = migration_failed(sets[-1], exc)
                assert cause.outside is not None
                self._moved.add(sets)
                self._note(sets, cause.outside)
                await self._start_databases(cause)
        if self._refused is not None:
            raise self._refused.again()
        return await self.databases.check(sets, procedure)

    async def _start_databases(self, cause: MigrationFailed | None) -> None:
        """Start database isolation for a set that moves (`cause`), or for tests that want a
        database of their own (pgdbm's fixtures, no cause)."""
        if self._databases_started or self._refused is not None:
            return
        try:
            await self.databases.start()
        except CannotCreateDatabases as exc:
            if cause is None:
                self._refused = MigrationFailed(f"pgmig: {exc}", f"pgmig: {exc}")
            else:
                full = (
                    f"{cause.full}\npgmig: auto isolation would move this set to a database, "
                    f"but {exc}"
                )
                self._refused = MigrationFailed(full, f"{cause.brief}; and {exc}")
            raise self._refused from None
        self._databases_started = True

    def take_ready(self, sets: Sets, lane: str) -> Slot | None:
        return None if sets in self._moved else self.schemas.take_ready(sets, lane)

    def give_back(self, slot: Slot) -> bool:
        return self._owner(slot).give_back(slot)

    async def release(self, slot: Slot) -> None:
        await self._owner(slot).release(slot)

    async def keep(self, slot: Slot) -> None:
        await self._owner(slot).keep(slot)

    async def close(self) -> None:
        try:
            if self._databases_started:
                await self.databases.close()
        finally:
            await self.schemas.close()

    def _owner(self, slot: Slot) -> SchemaIsolation | DatabaseIsolation:
        return self.databases if slot.schema.database is not None else self.schemas

    def _note(self, sets: Sets, why: str) -> None:
        label = ", ".join(f"{m.module}={m.path}" for m in sets)
        line = (
            f"isolation: database for {label} (auto: {why} is outside the test's schema; "
            "pgmig_isolation = database skips this detection next time)"
        )
        if line not in self.stats.switched:
            self.stats.switched.append(line)
