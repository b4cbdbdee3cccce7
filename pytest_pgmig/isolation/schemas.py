"""Throwaway schemas: create and migrate them, hand them out, reset them, drop them."""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped]

from pytest_pgmig.engine.apply import ApplyOptions
from pytest_pgmig.engine.files import load_migrations
from pytest_pgmig.engine.runner import Runner
from pytest_pgmig.engine.templates import quote_identifier, sql_literal
from pytest_pgmig.errors import MigrationError
from pytest_pgmig.isolation import registry
from pytest_pgmig.isolation.extensions import EXTENSION_SCHEMA, find_extensions
from pytest_pgmig.isolation.extensions import install as install_extensions
from pytest_pgmig.isolation.guard import Guard
from pytest_pgmig.plugin.settings import MigrationSet
from pytest_pgmig.servers.dsn import redact, with_search_path

TRACKING_TABLE = "schema_migrations"
# how often a migration that met a concurrent session (deadlock, lock timeout, ...) is tried
TRANSIENT_TRIES = 3
# what `_reset` answers when locks held it up twice: the schema must be replaced
_LOCKED = "locked"
# a test that leaves a lock held must not stall teardown for long
LOCK_TIMEOUT_MS = 5000
RESET_LOCK_TIMEOUT_MS = 1000


@dataclass(frozen=True)
class PgmigSchema:
    """A migrated schema handed to a test.

    `dsn` opens connections with the schema first on search_path, e.g.
    `psycopg.connect(pgmig_schema.dsn)`; `module_name` is `<lib>_<schema>` for the first
    migrations folder, `module_names` maps every folder's `<lib>` to its module_name.
    """

    name: str
    module_name: str
    dsn: str
    module_names: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"PgmigSchema(name={self.name!r}, module_name={self.module_name!r}, "
            f"dsn={redact(self.dsn)!r})"
        )


class MigrationFailed(Exception):
    """The migrations could not build a schema; the message says which file and the fix.

    ``transient``: a concurrent session got in the way; trying again may succeed, so the
    set is not marked broken.
    """

    def __init__(self, full: str, brief: str, *, transient: bool = False) -> None:
        super().__init__(full)
        self.full = full
        self.brief = brief
        self.transient = transient


@dataclass
class _Template:
    """A pristine migrated schema of one migration set: the source a reset restores from."""

    name: str
    seeded: list[str]
    seed_rows: list[str]
    seq_names: list[str]
    seq_values: list[int]
    seq_called: list[bool]


@dataclass
class Slot:
    """One schema this process created, and the state a reset compares against."""

    schema: PgmigSchema
    key: tuple[MigrationSet, ...]
    state: str
    reset_fn: str | None = None  # its own reset function, made at its first reset
    pending: asyncio.Task[Slot | None] | None = None  # its reset under way (worker scope)


@dataclass
class _SetPool:
    template: _Template | None = None
    free: list[Slot] = field(default_factory=list)
    # resets and spare creations under way, oldest first; each gives a clean slot or None
    pending: deque[asyncio.Task[Slot | None]] = field(default_factory=deque)
    failure: MigrationFailed | None = None  # an error that would recur: the set is broken
    reported: bool = False  # a test has shown the failure's full text


class OneConnectionPool:
    """A pool-shaped wrapper over one connection, for managers that must share it.

    AsyncDatabaseManager and AsyncMigrationManager acquire from a pool; handing them this
    keeps their work on one session (inside the caller's transaction, where there is one).
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[Any]:
        yield self._conn


@dataclass
class Stats:
    """What isolation cost this process, for the terminal summary."""

    created: int = 0
    dropped: int = 0
    kept: int = 0
    reused: int = 0
    migrations: int = 0
    reset_failed: int = 0
    reset_cause: str = ""  # the first failed reset's set and error
    setup_s: list[float] = field(default_factory=list)
    teardown_s: list[float] = field(default_factory=list)

    _COUNTS = ("created", "dropped", "kept", "reused", "migrations", "reset_failed")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in self._COUNTS}
        data.update(reset_cause=self.reset_cause, setup_s=self.setup_s, teardown_s=self.teardown_s)
        return data

    def merge(self, data: Mapping[str, Any]) -> None:
        for name in self._COUNTS:
            setattr(self, name, getattr(self, name) + int(data.get(name, 0)))
        self.reset_cause = self.reset_cause or str(data.get("reset_cause", ""))
        self.setup_s += list(data.get("setup_s", ()))
        self.teardown_s += list(data.get("teardown_s", ()))

    def summary(self) -> list[str]:
        per_test = [a + b for a, b in zip(self.setup_s, self.teardown_s, strict=False)]
        total = sum(self.setup_s) + sum(self.teardown_s)
        median = statistics.median(per_test) * 1000 if per_test else 0.0
        lines = [
            f"schemas: {self.created} created, {self.dropped} dropped, {self.kept} kept, "
            f"{self.reused} resets for reuse",
            f"migrations applied: {self.migrations}",
            f"isolation cost: {total:.2f} s in set-up and teardown over {len(per_test)} "
            f"tests, median {median:.1f} ms per test",
        ]
        if self.reset_failed:
            lines.append(
                f"resets failed: {self.reset_failed}, each schema replaced by a freshly "
                f"migrated one; first: {self.reset_cause}"
            )
        return lines


class Workspace:
    """This process's schemas on one server: created, reset, kept or dropped by it alone."""

    def __init__(
        self,
        *,
        admin_dsn: str,
        run: str,
        worker: str,
        statement_timeout: float,
        module_default: str,
        own_server: bool = False,
    ) -> None:
        self.own_server = own_server
        self.admin_dsn = admin_dsn
        self.run = run
        self.worker = worker
        self.statement_timeout = statement_timeout
        self.module_default = module_default
        self.stats = Stats()
        self._conn: asyncpg.Connection | None = None
        self._reset_conn: asyncpg.Connection | None = None
        self._replica = False
        self._lease = 0
        self._server_pid = 0
        self._pools: dict[tuple[MigrationSet, ...], _SetPool] = {}
        self._mine: list[str] = []
        self._counter = 0
        self._op: asyncio.Lock | None = None
        self._background: set[asyncio.Task[Slot | None]] = set()
        self._warned: set[tuple[MigrationSet, ...]] = set()
        self._verified: set[MigrationSet] = set()  # sets checked for writes outside
        self._paths: dict[MigrationSet, tuple[str, ...]] = {}  # their extension schemas
        # messages for the test run's warnings summary, taken by the fixtures
        self.warnings: list[str] = []

    @property
    def op(self) -> asyncio.Lock:
        """Serialises work on the one control connection (asyncpg runs one query at a time)."""
        if self._op is None:
            self._op = asyncio.Lock()
        return self._op

    @property
    def conn(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            raise ConnectionError("pytest-pgmig's control connection to the server is closed")
        return self._conn

    @property
    def reset_conn(self) -> asyncpg.Connection:
        if self._reset_conn is None or self._reset_conn.is_closed():
            raise ConnectionError("pytest-pgmig's reset connection to the server is closed")
        return self._reset_conn

    async def start(self) -> list[str]:
        """Connect, take this process's lease, and drop what dead runs left behind."""
        settings = {
            "application_name": f"pgmig-control:{self.run}:{self.worker}"[:63],
            "lock_timeout": str(LOCK_TIMEOUT_MS),
            "statement_timeout": str(int(self.statement_timeout * 1000)),
            "client_min_messages": "warning",
        }
        self._conn = await asyncpg.connect(self.admin_dsn, server_settings=settings, timeout=10)
        self._server_pid = self._conn.get_server_pid()
        # Resets run on a session of their own, in replica role where the role may (no user
        # or FK trigger fires while rows are removed); migrations must run with triggers.
        self._replica = bool(
            await self._conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        )
        if self._replica:
            settings = {**settings, "session_replication_role": "replica"}
        settings["application_name"] = f"pgmig-reset:{self.run}:{self.worker}"[:63]
        # a lock met by a reset is the sign to end the lock's holder: do not wait long for it
        settings["lock_timeout"] = str(RESET_LOCK_TIMEOUT_MS)
        self._reset_conn = await asyncpg.connect(
            self.admin_dsn, server_settings=settings, timeout=10
        )
        await registry.install(self._conn, own_server=self.own_server)
        self._lease = await registry.take_lease(self._conn)
        return await registry.reap(self._conn)

    async def close(self) -> None:
        """Drop every schema this process made (kept ones stay), then disconnect."""
        conn = self._conn
        if conn is None:
            return
        pending = [task for pool in self._pools.values() for task in pool.pending]
        await asyncio.gather(*pending, *self._background, return_exceptions=True)
        with contextlib.suppress(asyncio.TimeoutError):
            # whatever was interrupted on the control connection finishes unwinding first
            await asyncio.wait_for(self.op.acquire(), timeout=LOCK_TIMEOUT_MS / 1000)
        names = list(self._mine)
        try:
            if names:
                try:
                    if conn.is_closed():
                        raise asyncpg.InterfaceError("the control connection is closed")
                    await self._drop_all(conn, names)
                except (asyncpg.InterfaceError, asyncpg.InternalClientError):
                    # Interrupted mid-statement (Ctrl-C during a migration): that session may
                    # still run it and hold its locks. End it, and drop from a fresh one.
                    pid = self._server_pid
                    conn.terminate()
                    fresh = await asyncpg.connect(self.admin_dsn, timeout=10)
                    try:
                        await fresh.execute("SELECT pg_terminate_backend($1)", pid)
                        await self._drop_all(fresh, names)
                    finally:
                        await fresh.close()
        finally:
            for session in (conn, self._reset_conn):
                if session is not None and not session.is_closed():
                    try:
                        await asyncio.wait_for(session.close(), timeout=5)
                    except Exception:
                        session.terminate()

    async def _drop_all(self, conn: asyncpg.Connection, names: list[str]) -> None:
        await registry.terminate_sessions(conn, names)
        self.stats.dropped += len(await registry.drop(conn, names, lease=self._lease))
        self._mine = []

    def _next_name(self, kind: str) -> str:
        self._counter += 1
        return f"pgmig_{self.run}_{self.worker}_{kind}{self._counter}"

    async def acquire(self, sets: tuple[MigrationSet, ...], *, spare: bool = False) -> Slot:
        """A clean migrated schema for `sets`: a reset one if any is ready, else a new one.

        With `spare`, one more schema is kept in preparation in the background, so that a
        test's schema can be reset off the next test's path (see `release_later`).
        """
        pool = self._pools.setdefault(sets, _SetPool())
        slot: Slot | None = None
        while slot is None and (pool.free or pool.pending) and pool.failure is None:
            slot = pool.free.pop() if pool.free else await pool.pending.popleft()
        if pool.failure is not None:
            # broken while a schema was reset or prepared: the first test to hear of it
            # shows the whole message, later ones the brief one
            failure, first = pool.failure, not pool.reported
            pool.reported = True
            raise failure if first else MigrationFailed(failure.brief, failure.brief)
        if slot is None:
            async with self.op:
                try:
                    return await self._create(sets, kind="s")
                except MigrationFailed as exc:
                    if not exc.transient:
                        pool.failure, pool.reported = exc, True
                    raise
        # A second test of this set is here: from now on one schema is prepared while the
        # previous one is reset (a run of one test never pays for the spare).
        if spare and not pool.free and not pool.pending:
            pool.pending.append(asyncio.create_task(self._spare(sets)))
        return slot

    async def _spare(self, sets: tuple[MigrationSet, ...]) -> Slot | None:
        async with self.op:
            try:
                return await self._create(sets, kind="s")
            except MigrationFailed as exc:
                self._broken(sets, exc)
                return None  # the foreground acquire reports it

    def _broken(self, sets: tuple[MigrationSet, ...], exc: MigrationFailed) -> None:
        pool = self._pools[sets]
        if not exc.transient and pool.failure is None:
            pool.failure = exc

    async def release_later(self, slot: Slot) -> None:
        """Reset a test's schema in the background (ending its sessions) for a later test."""
        pool = self._pools[slot.key]
        pool.pending.append(asyncio.create_task(self._reset_task(slot)))

    async def reset_later(self, slot: Slot) -> None:
        """Start resetting a worker's schema; `ready` waits for it before the next test.

        The reset then runs on the server while pytest reports the test and sets up the next.
        """
        slot.pending = asyncio.create_task(self._reset_task(slot))
        self._background.add(slot.pending)
        slot.pending.add_done_callback(self._background.discard)

    async def ready(self, slot: Slot) -> bool:
        """Wait for the slot's reset; False when it had to be dropped instead."""
        task, slot.pending = slot.pending, None
        return task is None or await task is not None

    async def release(self, slot: Slot) -> None:
        """Reset a test's schema now (ending its sessions) and make it ready for reuse."""
        if await self.reset_now(slot):
            self._pools[slot.key].free.append(slot)

    async def _reset_task(self, slot: Slot) -> Slot | None:
        async with self.op:
            try:
                return slot if await self.reset(slot) else None
            except asyncpg.PostgresError as exc:
                self._reset_failed(slot, _describe_reset_error(exc))
                await self.discard(slot.schema.name)
                return None
            except MigrationFailed as exc:  # the template could not be migrated
                self._broken(slot.key, exc)
                await self.discard(slot.schema.name)
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

    async def keep(self, slot: Slot) -> None:
        """Keep a failed test's schema for inspection: never reset, reused or dropped."""
        async with self.op:
            await registry.keep(self.conn, slot.schema.name)
        self._mine.remove(slot.schema.name)
        self.stats.kept += 1

    async def reset_now(self, slot: Slot) -> bool:
        """`reset`, taking its turn on the control connection."""
        async with self.op:
            return await self.reset(slot)

    async def reset(self, slot: Slot) -> bool:
        """Undo a test's work in its schema; False when the schema had to be dropped instead.

        The caller holds `op`.
        """
        pool = self._pools[slot.key]
        if pool.template is None and slot.key:
            # made at the first reset, off the first test's path: the rows and sequence
            # values a reset restores are read from it
            pool.template = await self._make_template(slot.key)
        if slot.reset_fn is None:
            slot.reset_fn = await self._make_reset_function(slot, pool.template)
        state = await self._reset(slot)
        if state is None:
            await self.discard(slot.schema.name)
            return False
        if state == _LOCKED:
            self._reset_failed(slot, "a lock in the schema or its template was still held")
            await self.discard(slot.schema.name)
            return False
        slot.state = state
        self.stats.reused += 1
        return True

    async def discard(self, name: str) -> None:
        """Drop one schema of ours now, ending the sessions still on it."""
        await registry.terminate_sessions(self.conn, [name])
        self.stats.dropped += len(await registry.drop(self.conn, [name], lease=self._lease))
        if name in self._mine:
            self._mine.remove(name)

    async def _reset(self, slot: Slot) -> str | None:
        """The schema's new state; None when a test changed its DDL, `_LOCKED` if locks held."""
        assert slot.reset_fn is not None
        # First what the test left running or in a transaction through the schema's DSN (and
        # idle sessions past a few); if a lock still times out, every session on the schema.
        for every in (False, True):
            try:
                state: str | None = await self.reset_conn.fetchval(
                    f"SELECT {slot.reset_fn}($1, $2, $3, $4)",
                    slot.state,
                    registry.app_name(slot.schema.name),
                    every,
                    self.own_server,
                )
                return state
            except asyncpg.LockNotAvailableError:
                continue
        return _LOCKED

    async def _make_reset_function(self, slot: Slot, tpl: _Template | None) -> str:
        """Write the reset of one schema as a function of static SQL, made at its first reset.

        It ends what the test left on the schema, returns NULL if its DDL or tracking rows
        changed, removes the test's rows, restores the seed rows it changed from the template
        and the sequences, and returns the schema's state. Static SQL has its plans cached in
        the reset session, so a reset costs a fraction of a millisecond. In replica role
        (a superuser's session) rows go by DELETE in any order with no trigger firing;
        otherwise the tables holding rows are truncated together.
        """
        name = slot.schema.name
        q, lit = quote_identifier, sql_literal
        tables = await self.conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND c.relname <> $2 ORDER BY 1",
            name,
            TRACKING_TABLE,
        )
        seeded = tpl.seeded if tpl is not None else []
        clear, reseed = [], []
        for row in tables:
            table = row["relname"]
            rel = f"{q(name)}.{q(table)}"
            if table not in seeded:
                clear.append(
                    f"DELETE FROM {rel};"
                    if self._replica
                    else f"IF EXISTS (SELECT 1 FROM {rel}) THEN "
                    f"dirty := dirty || {lit(rel)}::text; END IF;"
                )
                continue
            assert tpl is not None
            cols, fields = await self.conn.fetchrow(
                "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum), "
                "string_agg('(r).' || quote_ident(attname), ', ' ORDER BY attnum) "
                "FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
                "AND NOT attisdropped AND attgenerated = ''",
                rel,
            )
            changed = (
                f"{registry.REGISTRY}.rows_v1({lit(name)}, {lit(table)}) "
                f"IS DISTINCT FROM {lit(tpl.seed_rows[seeded.index(table)])}"
            )
            # Through each row's text: the template's enums, domains and composite types are
            # its own, so its values must be read back as this schema's types.
            insert = (
                f"INSERT INTO {rel} ({cols}) OVERRIDING SYSTEM VALUE "
                f"SELECT {fields} FROM (SELECT t::text::{rel} AS r "
                f"FROM {q(tpl.name)}.{q(table)} AS t) AS seed;"
            )
            if self._replica:
                clear.append(f"IF {changed} THEN\n    DELETE FROM {rel};\n    {insert}\nEND IF;")
            else:
                clear.append(f"IF {changed} THEN dirty := dirty || {lit(rel)}::text; END IF;")
                # after a TRUNCATE ... CASCADE, which may empty a seeded table it references
                reseed.append(f"IF {changed} THEN\n    {insert}\nEND IF;")
        state = f"{registry.REGISTRY}.state_v1({lit(name)}, ARRAY[{lit(TRACKING_TABLE)}], p_log)"
        body = clear
        if not self._replica:
            body += [
                "IF cardinality(dirty) > 0 THEN",
                "    EXECUTE 'TRUNCATE ' || array_to_string(dirty, ', ') || ' CASCADE';",
                *reseed,
                "END IF;",
            ]
        if tpl is not None:
            for seq, value, called in zip(
                tpl.seq_names, tpl.seq_values, tpl.seq_called, strict=True
            ):
                ref = f"{lit(q(name) + '.' + q(seq))}::regclass"
                expected = str(value) if called else "NULL"
                body.append(
                    f"PERFORM setval({ref}, {value}, {str(called).lower()}) "
                    f"WHERE pg_sequence_last_value({ref}) IS DISTINCT FROM {expected};"
                )
        if not self._replica:
            # TRUNCATE gave the tables new files: a catalog fingerprint sees a new state
            body.append(f"IF cardinality(dirty) > 0 THEN\n    RETURN {state};\nEND IF;")
        function = registry.reset_function(name)
        await self.conn.execute(
            f"CREATE OR REPLACE FUNCTION {function}(p_state text, p_app text, p_all boolean, "
            "p_log boolean) RETURNS text LANGUAGE plpgsql AS $pgmig_reset$\n"
            "DECLARE\n    dirty text[] := '{}';\nBEGIN\n"
            "IF p_app IS NOT NULL THEN\n"
            f"    PERFORM {registry.REGISTRY}.end_sessions_v1({lit(q(name))}::regnamespace, "
            "p_app, p_all);\nEND IF;\n"
            f"IF {state} IS DISTINCT FROM p_state THEN\n    RETURN NULL;\nEND IF;\n"
            + "\n".join(body)
            + "\nRETURN p_state;\nEND\n$pgmig_reset$"
        )
        return function

    async def _create(self, sets: tuple[MigrationSet, ...], *, kind: str) -> Slot:
        for attempt in range(1, TRANSIENT_TRIES + 1):
            name = self._next_name(kind)
            await registry.register(
                self.conn, name, lease=self._lease, run=self.run, worker=self.worker
            )
            self._mine.append(name)
            self.stats.created += 1
            try:
                module_names, path = await self._migrate(name, sets)
                break
            except MigrationFailed as exc:
                await self.discard(name)
                if not exc.transient or attempt == TRANSIENT_TRIES:
                    raise
                await asyncio.sleep(0.05 * attempt)
            except Exception:
                await self.discard(name)
                raise
        # (a cancelled migration, Ctrl-C, leaves the schema to close(): the connection is
        # still busy with the statement being cancelled)
        state = await self.conn.fetchval(
            f"SELECT {registry.REGISTRY}.state_v1($1, $2, $3)",
            name,
            [TRACKING_TABLE],
            self.own_server,
        )
        lib = sets[0].module if sets else self.module_default
        schema = PgmigSchema(
            name=name,
            module_name=module_names.get(lib, f"{lib}_{name}"),
            dsn=schema_dsn(self.admin_dsn, name, path),
            module_names=module_names,
        )
        return Slot(schema=schema, key=sets, state=state)

    async def _migrate(
        self, name: str, sets: tuple[MigrationSet, ...]
    ) -> tuple[dict[str, str], tuple[str, ...]]:
        """Migrate schema `name`; the module names, and the schemas after it on search_path.

        The first time a set is migrated in this process, each of its files is checked for
        writes outside the schema; the set's extensions are installed first.
        """
        module_names: dict[str, str] = {}
        path: tuple[str, ...] = ()
        try:
            for mset in sets:
                module_name = f"{mset.module}_{name}"
                module_names[mset.module] = module_name
                set_path = await self._extension_path(mset)
                path = tuple(dict.fromkeys([*path, *set_path]))
                options = ApplyOptions(
                    search_path=set_path,
                    skip=(("CREATE", "EXTENSION"),),
                    check=None if mset in self._verified else Guard(name),
                )
                runner = Runner(name, mset.path, module_name, table=TRACKING_TABLE, options=options)
                self.stats.migrations += len((await runner.upgrade(self.conn)).done)
                self._verified.add(mset)
        except MigrationError as exc:
            await self.conn.execute("RESET ALL")
            raise migration_failed(mset, exc) from None
        # a file's SET (pg_dump's set_config('search_path', '', false)) must not stay on the
        # control connection
        await self.conn.execute("RESET ALL")
        return module_names, path or (EXTENSION_SCHEMA,)

    async def _extension_path(self, mset: MigrationSet) -> tuple[str, ...]:
        """Install the extensions a set creates (once per process); the schemas they are in."""
        path = self._paths.get(mset)
        if path is None:
            requests = [
                request
                for file in load_migrations(mset.path)
                for request in find_extensions(file.content, file.plan.statements, file.filename)
            ]
            path = tuple(await install_extensions(self.conn, requests)) if requests else ()
            self._paths[mset] = path = path or (EXTENSION_SCHEMA,)
        return path

    async def _make_template(self, sets: tuple[MigrationSet, ...]) -> _Template:
        slot = await self._create(sets, kind="tpl")
        name = slot.schema.name
        conn = self.conn
        tables = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND c.relname <> $2",
            name,
            TRACKING_TABLE,
        )
        seeded, seed_rows = [], []
        for row in tables:
            table = f"{quote_identifier(name)}.{quote_identifier(row['relname'])}"
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
                seeded.append(row["relname"])
                seed_rows.append(
                    await conn.fetchval(
                        f"SELECT {registry.REGISTRY}.rows_v1($1, $2)", name, row["relname"]
                    )
                )
        seqs = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind = 'S'",
            name,
        )
        names, values, called = [], [], []
        for row in seqs:
            seq = f"{quote_identifier(name)}.{quote_identifier(row['relname'])}"
            state = await conn.fetchrow(f"SELECT last_value, is_called FROM {seq}")
            names.append(row["relname"])
            values.append(int(state["last_value"]))
            called.append(bool(state["is_called"]))
        return _Template(name, seeded, seed_rows, names, values, called)


def _describe_reset_error(exc: asyncpg.PostgresError) -> str:
    """The error of a reset function, naming the table its failing statement was about."""
    table = getattr(exc, "table_name", None)
    query = getattr(exc, "internal_query", None) or ""
    if not table:
        match = re.search(r'(?:INSERT INTO|DELETE FROM)\s+"?[^".\s]+"?\."?([^".\s]+)"?', query)
        table = match.group(1) if match else None
    where = f"table {table}: " if table else ""
    return f"{where}{type(exc).__name__}: {exc}"


def schema_dsn(admin_dsn: str, schema: str, path: tuple[str, ...] = ()) -> str:
    """The DSN a test connects with: the schema, then `path`, on search_path; our
    application_name."""
    dsn = with_search_path(admin_dsn, schema, *path)
    app = registry.app_name(schema)
    if "://" in dsn:
        return f"{dsn}&application_name={quote(app, safe='')}"
    return f"{dsn} application_name='{app}'"


def migration_failed(mset: MigrationSet, problem: MigrationError) -> MigrationFailed:
    """Turn an engine error into a test failure: the full text, and a brief one."""
    filename = problem.migration_file or "?"
    error = str(problem).strip()
    where = f"{mset.path}/{filename}" if filename != "?" else str(mset.path)
    full = f"pgmig: migration {where} failed (module {mset.module}):\n{error}"
    first_line = error.splitlines()[0] if error else "failed"
    brief = (
        f"pgmig: migration {where} is broken ({first_line}); see the first failing test for details"
    )
    return MigrationFailed(full, brief, transient=problem.transient)
