"""Schema isolation: this process's throwaway schemas, handed out, reset, kept and dropped."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import asyncpg

from pytest_pgmig.engine.apply import ApplyOptions
from pytest_pgmig.engine.templates import quote_identifier
from pytest_pgmig.errors import MigrationFailed
from pytest_pgmig.isolation import registry, reset
from pytest_pgmig.isolation.base import Context, PgmigSchema, Sets, Slot
from pytest_pgmig.isolation.guard import Guard
from pytest_pgmig.isolation.migrate import CHECK_SKIP, SetMigrator
from pytest_pgmig.isolation.pool import ControlSession, SetPool
from pytest_pgmig.isolation.roles import FALLBACK, Roles
from pytest_pgmig.isolation.workspace import Procedure, T, Workspace
from pytest_pgmig.runtime import close_or_terminate

# how often a migration that met a concurrent session (deadlock, lock timeout, ...) is tried
TRANSIENT_TRIES = 3
# a test that leaves a lock held must not stall teardown for long
LOCK_TIMEOUT_MS = 5000
# what `_run_reset` answers when locks held it up twice: the schema must be replaced
_LOCKED = "locked"


@dataclass
class _SetPool(SetPool):
    """One migration set's schemas, and the seed rows and sequences a reset restores (taken
    from its first schema, before a test had it)."""

    template: reset.Template | None = None


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
        self._reset_conn: asyncpg.Connection | None = None
        self._server_pid = 0
        self._pools: dict[tuple[str, Sets], _SetPool] = {}
        self._warned: set[Sets] = set()
        self._migrator = SetMigrator(
            alembic_env=context.alembic_env, alembic_hook=context.alembic_hook
        )
        # what each schema held when its state was first taken: its fingerprint reads it
        self._known: dict[str, reset.Known] = {}
        self._roles = Roles(context.admin_dsn, enabled=False)

    @property
    def reset_conn(self) -> asyncpg.Connection:
        if self._reset_conn is None or self._reset_conn.is_closed():
            raise ConnectionError("pytest-pgmig's reset connection to the server is closed")
        return self._reset_conn

    # -- the Isolation interface ----------------------------------------------------------

    async def start(self) -> list[str]:
        """Connect, take this process's lease, and drop what dead runs left behind."""
        settings = {
            "application_name": f"pgmig-control:{self.context.run}:{self.context.worker}"[:63],
            "lock_timeout": str(LOCK_TIMEOUT_MS),
            "statement_timeout": str(int(self.context.statement_timeout * 1000)),
            "client_min_messages": "warning",
        }
        self._conn = await asyncpg.connect(
            self.context.admin_dsn, server_settings=settings, timeout=10
        )
        self._server_pid = self._conn.get_server_pid()
        # resets run on a session of their own (see `reset_settings`)
        self._replica = bool(
            await self._conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        )
        self._roles = Roles.for_server(
            self.context.admin_dsn, superuser=self._replica, own_server=self.context.own_server
        )
        self._reset_conn = await asyncpg.connect(
            self.context.admin_dsn, server_settings=self.reset_settings(), timeout=10
        )
        self._lease = await registry.enter(self._conn, own_server=self.context.own_server)
        return await registry.reap(self._conn)

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
        pool = self._pools.setdefault((lane, sets), _SetPool())
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
        # A second test of this set is here: from now on one schema is prepared while the
        # previous one is reset (a run of one test never pays for the spare).
        if spare and not pool.free and not pool.pending:
            pool.pending.append(asyncio.create_task(self._spare(sets, lane)))
        if slot.undo is None:
            slot.undo = reset.sequences_sql(slot.schema.name, pool.template)
        return slot

    def take_ready(self, sets: Sets, lane: str) -> Slot | None:
        """A clean schema ready now, taken without the loop's thread (None: `acquire`).

        Only for the thread that calls `acquire` and `release` through the runtime, between
        those calls: they alone touch a pool's free list (background resets and spares hand
        their slots over through `pending`), so no lock is needed.
        """
        pool = self._pools.get((lane, sets))
        if pool is None or not pool.free or pool.failure is not None:
            return None
        return pool.free.pop()

    def give_back(self, slot: Slot) -> bool:
        """Take back a schema whose test's work was rolled back (its `undo` run by the
        rollback fixtures), clean as it is, without the loop's thread (as `take_ready`)."""
        if slot.undo is None:
            return False
        self.stats.rolled_back += 1
        self._pools[(slot.lane, slot.key)].free.append(slot)
        return True

    async def release(self, slot: Slot) -> None:
        """Reset a test's schema in the background (ending its sessions) for a later test.

        The reset runs on the server while pytest reports the test and sets up the next;
        the next `acquire` of the set waits for it when no other schema is clean.
        """
        self._pools[(slot.lane, slot.key)].pending.append(asyncio.create_task(self._reset(slot)))

    async def keep(self, slot: Slot) -> None:
        """Keep a failed test's schema for inspection: never reset, reused or dropped."""
        async with self.op:
            await registry.keep(self.conn, slot.schema.name)
        self._mine.remove(slot.schema.name)
        self.stats.kept += 1

    async def close(self) -> None:
        """Drop every schema this process made (kept ones stay), then disconnect."""
        conn = self._conn
        if conn is None:
            return
        await self.settle(self._pools.values(), timeout=LOCK_TIMEOUT_MS / 1000)
        try:
            if self._mine:
                await self._drop_mine(conn)
            await self.leave(conn)
        finally:
            for session in (conn, self._reset_conn):
                if session is not None and not session.is_closed():
                    await close_or_terminate(session)

    async def check(self, sets: Sets, procedure: Procedure[T]) -> T:
        """Run a migration check (`pytest_pgmig.checks`) in an empty schema of its own,
        made and dropped like a test's; files run there as in a test's schema."""
        async with self.op:
            name = self._next_name("chk")
            await registry.register(
                self.conn, name, lease=self._lease, run=self.context.run, worker=self.context.worker
            )
            self._mine.append(name)
            self.stats.created += 1
            try:
                path: tuple[str, ...] = ()
                for mset in sets:
                    path += await self._migrator.extension_path(self.conn, mset)
                options = ApplyOptions(
                    search_path=tuple(dict.fromkeys(path)), skip=CHECK_SKIP, check=Guard(name)
                )
                # a tool that connects itself (Alembic) logs in as the tests' schemas do
                dsn = ""
                if any(m.reading.alembic for m in sets):
                    dsn = await self._dsn(name, (name, *options.search_path))
                return await procedure(Workspace(self.conn, name, options, dsn=dsn))
            finally:
                await self.conn.execute("RESET ALL")  # what the files SET, as after migrating
                await self._discard(name)

    # -- creating ---------------------------------------------------------------------------

    async def _create(self, sets: Sets, *, kind: str, lane: str = "") -> Slot:
        """Create, register and migrate a schema (the caller holds `op`); transient errors
        are tried again in a new schema."""
        for attempt in range(1, TRANSIENT_TRIES + 1):
            name = self._next_name(kind)
            await registry.register(
                self.conn, name, lease=self._lease, run=self.context.run, worker=self.context.worker
            )
            self._mine.append(name)
            self.stats.created += 1
            try:
                # the schema's own DSN first: an Alembic history logs in with it
                search_path = await self._migrator.search_path(self.conn, name, sets)
                dsn = await self._dsn(name, search_path)
                migrated = await self._migrator.migrate(self.conn, name, sets, dsn=dsn)
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
        self.stats.migrations += migrated.applied
        self._known[name], state = await reset.known_and_state(
            self.conn, name, log=self.context.own_server
        )
        lib = sets[0].module if sets else self.context.module_default
        schema = PgmigSchema(
            name=name,
            module_name=migrated.module_names.get(lib, f"{lib}_{name}"),
            dsn=dsn,
            module_names=migrated.module_names,
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
        store = self._next_name("tpl")
        await registry.register(
            self.conn, store, lease=self._lease, run=self.context.run, worker=self.context.worker
        )
        self._mine.append(store)
        self.stats.created += 1
        return await reset.keep_seeds(self.conn, await reset.capture(self.conn, name), store)

    async def _spare(self, sets: Sets, lane: str) -> Slot | None:
        async with self.op:
            try:
                return await self._create(sets, kind="s", lane=lane)
            except MigrationFailed as exc:
                self._broken((lane, sets), exc)
                return None  # the foreground acquire reports it

    def _broken(self, key: tuple[str, Sets], exc: MigrationFailed) -> None:
        pool = self._pools[key]
        if not exc.transient and pool.failure is None:
            pool.failure = exc

    def _next_name(self, kind: str) -> str:
        self._counter += 1
        return f"pgmig_{self.context.run}_{self.context.worker}_{kind}{self._counter}"

    # -- resetting --------------------------------------------------------------------------

    async def _reset(self, slot: Slot) -> Slot | None:
        """Undo a test's work in its schema: the slot, clean, or None when it was dropped."""
        async with self.op:
            try:
                state = await self._run_reset(slot)
            except asyncpg.PostgresError as exc:
                self._reset_failed(slot, _describe_reset_error(exc))
                state = None
            if state is None:
                await self._discard(slot.schema.name)
                return None
            slot.state = state
            self.stats.reused += 1
            return slot

    async def _run_reset(self, slot: Slot) -> str | None:
        """The schema's new state; None when the test changed its DDL or locks held it up."""
        pool = self._pools[(slot.lane, slot.key)]
        if slot.reset_fn is None:
            name = slot.schema.name
            tables = await reset.tables(self.conn, name)
            await self.conn.execute(
                reset.reset_function_sql(
                    name, tables, pool.template, replica=self._replica, seen=self._known[name]
                )
            )
            slot.reset_fn = registry.reset_function(name)
        # First what the test left running or in a transaction through the schema's DSN (and
        # idle sessions past a few); if a lock still times out, every session on the schema.
        for every in (False, True):
            try:
                state: str | None = await self.reset_conn.fetchval(
                    f"SELECT {slot.reset_fn}($1, $2, $3, $4)",
                    slot.state,
                    registry.app_name(slot.schema.name),
                    every,
                    self.context.own_server,
                )
                return state
            except asyncpg.LockNotAvailableError:
                continue
        self._reset_failed(slot, "a lock in the schema or its template was still held")
        return None

    def _reset_failed(self, slot: Slot, cause: str) -> None:
        """Count a reset that could not run, and warn once per migration set."""
        label = ", ".join(f"{m.module}={m.path}" for m in slot.key) or "(no migrations)"
        self.stats.reset_failed += 1
        self.stats.reset_cause = self.stats.reset_cause or f"{label}: {cause}"
        if slot.key not in self._warned:
            self._warned.add(slot.key)
            self.warnings.append(
                f"pgmig: resetting a schema of migration set {label} failed ({cause}); "
                "its tests get freshly migrated schemas instead, which is slower. Please "
                "report this with the migration that creates the table named."
            )

    # -- dropping ---------------------------------------------------------------------------

    async def _discard(self, name: str) -> None:
        """Drop one schema of ours now, ending the sessions still on it."""
        await registry.terminate_sessions(self.conn, [name])
        self.stats.dropped += len(await registry.drop(self.conn, [name], lease=self._lease))
        self._known.pop(name, None)
        if name in self._mine:
            self._mine.remove(name)

    async def _drop_mine(self, conn: asyncpg.Connection) -> None:
        try:
            if conn.is_closed():
                raise asyncpg.InterfaceError("the control connection is closed")
            await self._drop_all(conn)
        except (asyncpg.InterfaceError, asyncpg.InternalClientError):
            # Interrupted mid-statement (Ctrl-C during a migration): that session may still
            # run it and hold its locks. End it, and drop from a fresh one.
            conn.terminate()
            fresh = await asyncpg.connect(self.context.admin_dsn, timeout=10)
            try:
                await fresh.execute("SELECT pg_terminate_backend($1)", self._server_pid)
                await self._drop_all(fresh)
            finally:
                await fresh.close()

    async def _drop_all(self, conn: asyncpg.Connection) -> None:
        names = list(self._mine)
        await registry.terminate_sessions(conn, names)
        self.stats.dropped += len(await registry.drop(conn, names, lease=self._lease))
        self._mine = []


def _describe_reset_error(exc: asyncpg.PostgresError) -> str:
    """The error of a reset function, naming the table its failing statement was about."""
    table = getattr(exc, "table_name", None)
    query = getattr(exc, "internal_query", None) or ""
    if not table:
        match = re.search(r'(?:INSERT INTO|DELETE FROM)\s+"?[^".\s]+"?\."?([^".\s]+)"?', query)
        table = match.group(1) if match else None
    where = f"table {table}: " if table else ""
    return f"{where}{type(exc).__name__}: {exc}"
