"""Schema isolation: this process's throwaway schemas, handed out, reset, kept and dropped."""

from __future__ import annotations

import asyncio

import asyncpg

from pytest_pgmig.engine.templates import quote_identifier
from pytest_pgmig.errors import MigrationFailed
from pytest_pgmig.isolation import registry, reset
from pytest_pgmig.isolation.base import Context, PgmigSchema, Sets, Slot
from pytest_pgmig.isolation.migrate import SetMigrator, in_schema
from pytest_pgmig.isolation.roles import FALLBACK, Roles
from pytest_pgmig.isolation.schema_resets import SchemaResets
from pytest_pgmig.isolation.strategy import ControlSession, SetPool
from pytest_pgmig.isolation.workspace import Procedure, T, Workspace

# how often a migration that met a concurrent session (deadlock, lock timeout, ...) is tried
TRANSIENT_TRIES = 3


class SchemaIsolation(ControlSession):
    """A schema per test (or worker): the `Isolation` the fixtures use, on one server.

    Schemas are created and migrated on a control connection, recorded in the registry under
    this process's lease, reset on a session of their own, and dropped by this process alone.

    Example::

        isolation = SchemaIsolation(Context(admin_dsn=dsn, run="ab12cd34", worker="gw0"))
        await isolation.start()
        slot = await isolation.acquire((MigrationSet("app", Path("migrations")),))
        ...  # the test uses slot.schema.dsn
        await isolation.release(slot)
        await isolation.close()
    """

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self._migrator = SetMigrator(
            alembic_env=context.alembic_env, alembic_hook=context.alembic_hook
        )
        self._resets = SchemaResets(self)
        self._roles = Roles(context.admin_dsn, enabled=False)

    # -- the Isolation interface ----------------------------------------------------------

    async def start(self) -> list[str]:
        """Connect, take this process's lease, and drop what dead runs left behind."""
        conn = await self.open_control()
        self.replica = bool(
            await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        )
        self._roles = Roles.for_server(
            self.context.admin_dsn, superuser=self.replica, own_server=self.context.own_server
        )
        await self._resets.start()
        self._lease = await registry.enter(conn, own_server=self.context.own_server)
        return await registry.reap(conn)

    async def acquire(
        self, sets: Sets, *, spare: bool = False, lane: str = "", database: bool = False
    ) -> Slot:
        """A clean migrated schema for `sets`: a reset one if any is ready, else a new one
        (`database` is not for this strategy to give: `--pgmig-isolation=schema` was asked).

        With `spare`, one more schema is kept in preparation in the background, so that a
        test's schema can be reset off the next test's path (not for an Alembic history:
        a later schema costs it a process of its own, `pytest_pgmig.alembic.runs`).
        """
        spare = spare and not any(m.reading.alembic for m in sets)
        pool = self._pools.setdefault((lane, sets), SetPool())
        slot = await pool.take()
        if slot is None:
            async with self.op:
                try:
                    slot = await self._create(sets, kind="s", lane=lane)
                except MigrationFailed as exc:
                    if not exc.transient:
                        pool.failure, pool.reported = exc, True
                    raise
                if pool.template is None and sets:
                    pool.template = await self._keep_seeds(slot.schema.name)
                slot.undo = reset.sequences_sql(slot.schema.name, pool.template)
                return slot
        if spare:
            self._prepare_spare(pool, sets, lane)
        if slot.undo is None:
            slot.undo = reset.sequences_sql(slot.schema.name, pool.template)
        return slot

    async def keep(self, slot: Slot) -> None:
        """Keep a failed test's schema for inspection: never reset, reused or dropped."""
        async with self.op:
            await registry.keep(self.conn, slot.schema.name)
        self._mine.remove(slot.schema.name)
        self.stats.kept += 1

    async def check(self, sets: Sets, procedure: Procedure[T]) -> T:
        """Run a migration check (`pytest_pgmig.checks`) in an empty schema of its own,
        made and dropped like a test's; files run there as in a test's schema."""
        async with self.op:
            name = await self.claim("chk")
            try:
                search_path = await self._migrator.search_path(self.conn, name, sets)
                place = in_schema(name, search_path[1:], check=True)
                # a tool that connects itself (Alembic) logs in as the tests' schemas do
                dsn = ""
                if any(m.reading.alembic for m in sets):
                    dsn = await self._dsn(name, search_path)
                return await procedure(Workspace(self.conn, place, dsn=dsn))
            finally:
                await self.conn.execute("RESET ALL")  # what the files SET, as after migrating
                await self._discard(name)

    # -- creating ---------------------------------------------------------------------------

    async def _create(self, sets: Sets, *, kind: str, lane: str = "") -> Slot:
        """Create, register and migrate a schema (the caller holds `op`); transient errors
        are tried again in a new schema."""
        for attempt in range(1, TRANSIENT_TRIES + 1):
            name = await self.claim(kind)
            try:
                # the schema's own DSN first: an Alembic history logs in with it
                search_path = await self._migrator.search_path(self.conn, name, sets)
                dsn = await self._dsn(name, search_path)
                place = in_schema(name)
                applied = await self._migrator.migrate(self.conn, place, sets, dsn=dsn)
                break
            except MigrationFailed as exc:
                await self._discard(name)
                if not exc.transient or attempt == TRANSIENT_TRIES:
                    raise
                await asyncio.sleep(0.05 * attempt)
            except Exception:
                await self._discard(name)
                raise
        # (a cancelled migration, Ctrl-C, leaves the schema to close(): the connection is
        # still busy with the statement being cancelled)
        self.stats.migrations += applied
        state = await self._resets.state(name)
        schema = PgmigSchema(
            name=name,
            module_name=place.module_name(self.context.lib(sets)),
            dsn=dsn,
            module_names=place.module_names(sets),
            plain_dsn=self.context.admin_dsn if self._roles.why_not else dsn,
            server_settings={
                "search_path": ", ".join(quote_identifier(s) for s in search_path),
                "application_name": registry.app_name(name),
            },
        )
        return Slot(schema=schema, key=sets, state=state, lane=lane)

    async def _dsn(self, name: str, search_path: tuple[str, ...]) -> str:
        """The schema's DSN (see `roles.Roles`); the summary says once when it has options."""
        dsn = await self._roles.dsn(self.conn, name, search_path[1:])
        if self._roles.why_not:
            note = "drivers: " + FALLBACK.format(why=self._roles.why_not)
            if note not in self.stats.notes:
                self.stats.notes.append(note)
        return dsn

    async def _keep_seeds(self, name: str) -> reset.Template:
        """What freshly migrated schema `name` holds, its seed rows kept as text in a
        schema of their own (the caller holds `op`)."""
        store = await self.claim("tpl")
        return await reset.keep_seeds(self.conn, await reset.capture(self.conn, name), store)

    async def _spare(self, sets: Sets, lane: str) -> Slot | None:
        async with self.op:
            try:
                return await self._create(sets, kind="s", lane=lane)
            except MigrationFailed as exc:
                pool = self._pools[(lane, sets)]
                if not exc.transient and pool.failure is None:
                    pool.failure = exc
                return None  # the foreground acquire reports it

    # -- resetting --------------------------------------------------------------------------

    async def _reset(self, slot: Slot) -> Slot | None:
        """Undo a test's work in its schema: the slot, clean, or None when it was dropped."""
        async with self.op:
            state = await self._resets.run(slot, self._pools[(slot.lane, slot.key)].template)
            if state is None:
                await self._discard(slot.schema.name)
                return None
            slot.state = state
            self.stats.reused += 1
            return slot

    # -- dropping ---------------------------------------------------------------------------

    async def _discard(self, name: str) -> None:
        """Drop one schema of ours now, ending the sessions still on it."""
        await registry.terminate_sessions(self.conn, [name])
        self.stats.dropped += len(await registry.drop(self.conn, [name], lease=self._lease))
        self._resets.forget(name)
        if name in self._mine:
            self._mine.remove(name)

    async def _drop_mine(self, conn: asyncpg.Connection) -> None:
        await registry.terminate_sessions(conn, self._mine)
        self.stats.dropped += len(await registry.drop(conn, self._mine, lease=self._lease))
        self._mine = []

    async def _end_sessions(self) -> None:
        await self._resets.close()
