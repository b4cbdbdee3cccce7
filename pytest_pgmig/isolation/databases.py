"""Database isolation: each set migrated once into a template database, copies reset in place."""

from __future__ import annotations

import asyncpg

from pytest_pgmig.errors import CannotCreateDatabases, MigrationFailed
from pytest_pgmig.isolation import dbreset, registry
from pytest_pgmig.isolation.base import Context, PgmigSchema, Sets, Slot
from pytest_pgmig.isolation.database_resets import DatabaseResets, database_of
from pytest_pgmig.isolation.migrate import IN_DATABASE, SetMigrator
from pytest_pgmig.isolation.strategy import ControlSession, SetPool
from pytest_pgmig.isolation.workspace import Procedure, T, Workspace
from pytest_pgmig.runtime import close_or_terminate
from pytest_pgmig.servers.dsn import with_database


class DatabaseIsolation(ControlSession):
    """A database per test (or worker), cloned from a template database migrated once.

    For migration sets a schema cannot hold: a pg_dump baseline that qualifies every name
    with `public.`, a library keeping tables in a fixed schema of its own. The files run as
    they would in production (no search_path of ours, `CREATE EXTENSION` as written) into a
    template database; each test gets a `CREATE DATABASE ... TEMPLATE` copy of it. A used
    copy is reset in place in the background, like a schema (`dbreset`: every schema's rows,
    seeds and sequences), on a session of its own in the copy; a copy whose DDL a test
    changed is dropped and cloned again under the same name. Every database is recorded in
    the registry like a schema.

    Example::

        isolation = DatabaseIsolation(Context(admin_dsn=dsn, run="ab12cd34", worker="gw0"))
        await isolation.start()
        slot = await isolation.acquire((MigrationSet("app", Path("migrations")),))
        ...  # the test uses slot.schema.dsn, a DSN of its own database
        await isolation.release(slot)
        await isolation.close()
    """

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        # one template per set, whichever lanes (test, worker, factory) clone it, and the
        # state its copies start in
        self._templates: dict[Sets, tuple[str, str]] = {}
        self._resets = DatabaseResets(self)
        self._migrator = SetMigrator(
            alembic_env=context.alembic_env, alembic_hook=context.alembic_hook
        )

    async def start(self) -> list[str]:
        """Connect, check the role may create databases, take a lease, reap dead runs'."""
        conn = await self.open_control()
        may, superuser = await conn.fetchrow(
            "SELECT rolcreatedb OR rolsuper, rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        self.replica = bool(superuser)
        if not may:
            role = await conn.fetchval("SELECT current_user")
            await conn.close()
            raise CannotCreateDatabases(
                f"database isolation needs a role that may create databases, and {role!r} "
                f"lacks the CREATEDB privilege. Grant it (ALTER ROLE {role} CREATEDB), connect "
                "as a role that has it, or use --pgmig-isolation=schema (migrations that "
                "write outside their schema then fail, naming the file)."
            )
        self._lease = await registry.enter(conn, own_server=self.context.own_server)
        return await registry.reap(conn)

    async def acquire(
        self, sets: Sets, *, spare: bool = False, lane: str = "", database: bool = True
    ) -> Slot:
        """A clean copy of the set's template database; the template is made on first use."""
        pool = self._pools.setdefault((lane, sets), SetPool())
        slot = await pool.take()
        if slot is None:
            async with self.op:
                template = await self._template(pool, sets)
                return await self._clone(template, sets, lane)
        if spare:
            self._prepare_spare(pool, sets, lane)
        return slot

    def take_ready(self, sets: Sets, lane: str) -> Slot | None:
        """None: a database's slots are always handed out through `acquire`."""
        return None

    def give_back(self, slot: Slot) -> bool:
        """False: a database is reset after every test (see `release`)."""
        return False

    async def keep(self, slot: Slot) -> None:
        """Keep a failed test's database for inspection: never reset, reused or dropped."""
        name = database_of(slot)
        await self._resets.end(name)
        async with self.op:
            await registry.keep(self.conn, name, table="databases")
        self._mine.remove(name)
        self.stats.kept += 1

    async def _end_sessions(self) -> None:
        await self._resets.close()

    async def _drop_mine(self, conn: asyncpg.Connection) -> None:
        dropped = await registry.drop_databases(conn, self._mine, lease=self._lease)
        self.stats.databases_dropped += len(dropped)
        self._mine = []

    async def check(self, sets: Sets, procedure: Procedure[T]) -> T:
        """Run a migration check (`pytest_pgmig.checks`) in an empty database of its own,
        made and dropped like a test's; files run there as they do into a template."""
        async with self.op:
            name = await self.claim("chk", database=True)
        try:
            conn = await self.connect("migrate", name)
            try:
                dsn = with_database(self.context.admin_dsn, name)
                return await procedure(Workspace(conn, IN_DATABASE, dsn=dsn))
            finally:
                await close_or_terminate(conn)
        finally:
            async with self.op:
                await self._discard(name)

    # -- making databases -------------------------------------------------------------------

    async def _template(self, pool: SetPool, sets: Sets) -> tuple[str, str]:
        """The set's template database and its state, made on first use (holds `op`)."""
        if sets in self._templates:
            return self._templates[sets]
        name = await self.claim("tpl", database=True)
        try:
            applied, state = await self._migrate(name, sets)
            self.stats.migrations += applied
        except MigrationFailed as exc:
            await self._discard(name)
            if not exc.transient:
                pool.failure, pool.reported = exc, True
            raise
        except BaseException:
            await self._discard(name)
            raise
        self._templates[sets] = (name, state)
        return name, state

    async def _migrate(self, database: str, sets: Sets) -> tuple[int, str]:
        """Apply every set to `database` as production would, and make it able to reset its
        copies: the number of files applied, and the state the copies start in."""
        conn = await self.connect("migrate", database)
        try:
            dsn = with_database(self.context.admin_dsn, database)
            applied = await self._migrator.migrate(conn, IN_DATABASE, sets, dsn=dsn)
            state = await dbreset.prepare(conn, replica=self.replica, log=self.context.own_server)
        finally:
            # the template must have no session left, or it cannot be copied
            await close_or_terminate(conn)
        return applied, state

    async def _clone(self, template: tuple[str, str], sets: Sets, lane: str) -> Slot:
        name = await self.claim("d", database=True, template=template[0])
        schema = PgmigSchema(
            name=IN_DATABASE.schema,
            module_name=IN_DATABASE.module_name(self.context.lib(sets)),
            dsn=with_database(self.context.admin_dsn, name),
            module_names=IN_DATABASE.module_names(sets),
            database=name,
        )
        return Slot(schema=schema, key=sets, state=template[1], lane=lane)

    async def _spare(self, sets: Sets, lane: str) -> Slot | None:
        async with self.op:
            return await self._clone(self._templates[sets], sets, lane)

    async def _reset(self, slot: Slot) -> Slot | None:
        """Undo a test's work in its database: the slot, clean, or None when it was dropped.
        A test that changed DDL, or a reset that failed, has the database cloned again."""
        state = await self._resets.run(slot)
        if state is None:
            return await self._recycle(slot)
        slot.state = state
        self.stats.databases_reset += 1
        return slot

    async def _recycle(self, slot: Slot) -> Slot | None:
        """The slot's database dropped and copied again from the template: clean, same DSN."""
        name = database_of(slot)
        await self._resets.end(name)
        async with self.op:
            try:
                await registry.drop_database(self.conn, name)
                template, state = self._templates[slot.key]
                await registry.create_database(self.conn, name, template=template)
                slot.state = state
            except asyncpg.PostgresError as exc:
                self.warnings.append(
                    f"pgmig: could not clone database {name} again ({type(exc).__name__}: "
                    f"{exc}); its tests get new databases instead."
                )
                await self._discard(name)
                return None
        self.stats.databases_reused += 1
        return slot

    async def _discard(self, name: str) -> None:
        dropped = await registry.drop_databases(self.conn, [name], lease=self._lease)
        self.stats.databases_dropped += len(dropped)
        if name in self._mine:
            self._mine.remove(name)
