"""Database isolation: each set migrated once into a template database, copies reset in place."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg

from pytest_pgmig.engine.apply import ApplyOptions
from pytest_pgmig.engine.runner import Runner
from pytest_pgmig.engine.templates import quote_identifier
from pytest_pgmig.errors import CannotCreateDatabases, MigrationError, MigrationFailed
from pytest_pgmig.isolation import dbreset, registry
from pytest_pgmig.isolation.base import Context, MigrationSet, PgmigSchema, Sets, Slot
from pytest_pgmig.isolation.cluster import ClusterCheck
from pytest_pgmig.isolation.migrate import migration_failed
from pytest_pgmig.isolation.pool import ControlSession, SetPool
from pytest_pgmig.isolation.reset import TRACKING_TABLE
from pytest_pgmig.isolation.workspace import Procedure, T, Workspace
from pytest_pgmig.runtime import close_or_terminate
from pytest_pgmig.servers.dsn import with_database

# the schema a database's migrations land in when they name none, as in production
PUBLIC = "public"


# files run as written (no search_path of ours after public, CREATE EXTENSION kept), but
# none may change the roles, databases or settings the whole server shares
_AS_WRITTEN = ApplyOptions(search_path=(), check=ClusterCheck(), batch=True)


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
        self._pools: dict[tuple[str, Sets], SetPool] = {}
        # one template per set, whichever lanes (test, worker, factory) clone it, and the
        # state its copies start in
        self._templates: dict[Sets, tuple[str, str]] = {}
        # a session in each copy that has been reset, by database name
        self._resetters: dict[str, asyncpg.Connection] = {}

    async def start(self) -> list[str]:
        """Connect, check the role may create databases, take a lease, reap dead runs'."""
        settings = {
            "application_name": f"pgmig-control:{self.context.run}:{self.context.worker}"[:63],
            "client_min_messages": "warning",
        }
        self._conn = await asyncpg.connect(
            self.context.admin_dsn, server_settings=settings, timeout=10
        )
        may, superuser = await self._conn.fetchrow(
            "SELECT rolcreatedb OR rolsuper, rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        self._replica = bool(superuser)
        if not may:
            role = await self._conn.fetchval("SELECT current_user")
            await self._conn.close()
            raise CannotCreateDatabases(
                f"database isolation needs a role that may create databases, and {role!r} "
                f"lacks the CREATEDB privilege. Grant it (ALTER ROLE {role} CREATEDB), connect "
                "as a role that has it, or use --pgmig-isolation=schema (migrations that "
                "write outside their schema then fail, naming the file)."
            )
        self._lease = await registry.enter(self._conn, own_server=self.context.own_server)
        return await registry.reap(self._conn)

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
        # a second test of the set is here: from now on a copy is made while the last is
        # cloned again (a run of one test never pays for the spare)
        if spare and not pool.free and not pool.pending:
            pool.pending.append(asyncio.create_task(self._spare(sets, lane)))
        return slot

    def take_ready(self, sets: Sets, lane: str) -> Slot | None:
        """None: a database's slots are always handed out through `acquire`."""
        return None

    def give_back(self, slot: Slot) -> bool:
        """False: a database is reset after every test (see `release`)."""
        return False

    async def release(self, slot: Slot) -> None:
        """Reset the test's database in the background (ending its sessions) for a later test."""
        pool = self._pools[(slot.lane, slot.key)]
        pool.pending.append(asyncio.create_task(self._reset(slot)))

    async def keep(self, slot: Slot) -> None:
        """Keep a failed test's database for inspection: never reset, reused or dropped."""
        name = database_of(slot)
        await self._end_resetter(name)
        async with self.op:
            await registry.keep(self.conn, name, table="databases")
        self._mine.remove(name)
        self.stats.kept += 1

    async def close(self) -> None:
        """Drop every database this process made (kept ones stay), then disconnect."""
        conn = self._conn
        if conn is None:
            return
        await self.settle(self._pools.values(), timeout=5)
        for name in list(self._resetters):
            await self._end_resetter(name)
        try:
            if conn.is_closed():
                conn = await asyncpg.connect(self.context.admin_dsn, timeout=10)
            dropped = await registry.drop_databases(conn, self._mine, lease=self._lease)
            self.stats.databases_dropped += len(dropped)
            self._mine = []
            await self.leave(conn)
        finally:
            await close_or_terminate(conn)
            if self._conn is not None and not self._conn.is_closed():
                await close_or_terminate(self._conn)

    async def check(self, sets: Sets, procedure: Procedure[T]) -> T:
        """Run a migration check (`pytest_pgmig.checks`) in an empty database of its own,
        made and dropped like a test's; files run there as they do into a template."""
        async with self.op:
            name = await self._register("chk", template=None)
        try:
            conn = await self._migrating_session(name)
            try:
                dsn = with_database(self.context.admin_dsn, name)
                return await procedure(Workspace(conn, PUBLIC, _AS_WRITTEN, database=True, dsn=dsn))
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
        name = await self._register("tpl", template=None)
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
        conn = await self._migrating_session(database)
        applied = 0
        try:
            for mset in sets:
                if mset.reading.alembic:
                    applied += await self._alembic(database, mset, keep=conn.get_server_pid())
                    continue
                if not mset.module:  # a schema a suite's fixture makes for its manager
                    await conn.execute(
                        f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(mset.schema or PUBLIC)}"
                    )
                    continue
                # public first on search_path, as a new database has it; the tracking table
                # named with its schema, so a file that empties search_path (pg_dump) works;
                # a set a suite applies through a manager bound to a schema goes there, with
                # public after it, as pgdbm's managers set search_path
                options = _AS_WRITTEN
                if mset.schema not in (None, PUBLIC):
                    options = dataclasses.replace(options, search_path=(PUBLIC,))
                runner = Runner(
                    mset.schema or PUBLIC,
                    mset.path,
                    mset.module,
                    table=mset.table or TRACKING_TABLE,
                    options=options,
                    reading=mset.reading,
                )
                try:
                    applied += len((await runner.upgrade(conn)).done)
                except MigrationError as exc:
                    raise migration_failed(mset, exc) from None
            state = await dbreset.prepare(conn, replica=self._replica, log=self.context.own_server)
        finally:
            # the template must have no session left, or it cannot be copied
            await close_or_terminate(conn)
        return applied, state

    async def _alembic(self, database: str, mset: MigrationSet, *, keep: int) -> int:
        """Apply an Alembic history to `database` with Alembic itself (once per set and
        process: the template; `pytest_pgmig.alembic.runs` says where); the sessions its
        env.py left there (all but `keep`, ours) are ended, or the template could not be
        copied."""
        from pytest_pgmig.alembic.runs import upgrade_heads
        from pytest_pgmig.alembic.target import Target

        target = Target.from_dsn(with_database(self.context.admin_dsn, database))
        context = self.context
        try:
            revisions = await upgrade_heads(
                mset.path, target, context.alembic_env, context.alembic_hook
            )
        except MigrationError as exc:
            raise migration_failed(mset, exc) from None
        finally:
            await self.conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> $2",
                database,
                keep,
            )
        return revisions

    async def _migrating_session(self, database: str) -> asyncpg.Connection:
        settings = {
            "application_name": f"pgmig-migrate:{self.context.run}"[:63],
            "statement_timeout": str(int(self.context.statement_timeout * 1000)),
            "client_min_messages": "warning",
        }
        dsn = with_database(self.context.admin_dsn, database)
        return await asyncpg.connect(dsn, server_settings=settings, timeout=10)

    async def _clone(self, template: tuple[str, str], sets: Sets, lane: str) -> Slot:
        name = await self._register("d", template=template[0])
        lib = sets[0].module if sets else self.context.module_default
        modules = {mset.module: mset.module for mset in sets}
        schema = PgmigSchema(
            name=PUBLIC,
            module_name=modules.get(lib, lib),
            dsn=with_database(self.context.admin_dsn, name),
            module_names=modules,
            database=name,
        )
        return Slot(schema=schema, key=sets, state=template[1], lane=lane)

    async def _register(self, kind: str, *, template: str | None) -> str:
        self._counter += 1
        name = f"pgmig_{self.context.run}_{self.context.worker}_{kind}{self._counter}"
        await registry.register_database(
            self.conn,
            name,
            lease=self._lease,
            run=self.context.run,
            worker=self.context.worker,
            template=template,
        )
        self._mine.append(name)
        self.stats.databases_created += 1
        return name

    async def _spare(self, sets: Sets, lane: str) -> Slot | None:
        async with self.op:
            return await self._clone(self._templates[sets], sets, lane)

    async def _reset(self, slot: Slot) -> Slot | None:
        """Undo a test's work in its database: the slot, clean, or None when it was dropped.

        First what the test left running or in a transaction (and idle sessions past a
        few); if a lock still times out, every session in the database. A test that changed
        DDL, or a reset that failed, has the database cloned again instead.
        """
        name = database_of(slot)
        for every in (False, True):
            try:
                conn = await self._resetter(name)
                state = await conn.fetchval(
                    dbreset.RESET, slot.state, every, self.context.own_server
                )
            except asyncpg.LockNotAvailableError:
                continue
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                self.warnings.append(
                    f"pgmig: resetting database {name} failed ({type(exc).__name__}: {exc}); "
                    "it is cloned again instead, which is slower."
                )
                break
            if state is None:
                break  # DDL changed: only a new copy is clean
            slot.state = state
            self.stats.databases_reset += 1
            return slot
        return await self._recycle(slot)

    async def _resetter(self, name: str) -> asyncpg.Connection:
        """The session that resets copy `name`, opened at its first reset."""
        conn = self._resetters.get(name)
        if conn is None or conn.is_closed():
            dsn = with_database(self.context.admin_dsn, name)
            conn = await asyncpg.connect(dsn, server_settings=self.reset_settings(), timeout=10)
            self._resetters[name] = conn
        return conn

    async def _end_resetter(self, name: str) -> None:
        conn = self._resetters.pop(name, None)
        if conn is not None and not conn.is_closed():
            await close_or_terminate(conn)

    async def _recycle(self, slot: Slot) -> Slot | None:
        """The slot's database dropped and copied again from the template: clean, same DSN."""
        name = database_of(slot)
        await self._end_resetter(name)
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


def database_of(slot: Slot) -> str:
    """The database a slot of database isolation lives in."""
    assert slot.schema.database is not None
    return slot.schema.database
