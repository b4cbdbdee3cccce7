"""The plugin's own schema on the server: which run owns which schema or database, and leases."""

from __future__ import annotations

import asyncio
import random

import asyncpg

from pytest_pgmig.engine.templates import quote_identifier as quote_ident
from pytest_pgmig.isolation import functions, outside_sql
from pytest_pgmig.isolation.names import LOCK_CLASS, REGISTRY

_INSTALL_LOCK = 0  # objid serialising the registry's creation
# how often PostgreSQL 12 is asked to drop a database whose sessions are being ended
_DROP_TRIES = 100

# one table of what each run owns per kind of object, schemas and databases alike
_OWNED = """
CREATE TABLE IF NOT EXISTS {registry}.{kind} (
    name text PRIMARY KEY,
    lease integer NOT NULL,
    run text NOT NULL,
    worker text NOT NULL,
    kept boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""
_INSTALL = (
    f"CREATE SCHEMA IF NOT EXISTS {REGISTRY};\n"
    + "".join(_OWNED.format(registry=REGISTRY, kind=kind) for kind in ("schemas", "databases"))
    # the extensions a run installed in this database, removed with the registry
    + f"CREATE TABLE IF NOT EXISTS {REGISTRY}.extensions (name text PRIMARY KEY);\n"
)
# another process's lease on this database: a run that is alive (see `take_lease`)
_OTHER_LEASES = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND classid = $1 AND objsubid = 2 AND objid > 1 AND granted
      AND pid <> pg_backend_pid()
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
"""


async def enter(conn: asyncpg.Connection, *, own_server: bool) -> int:
    """Take this process's lease, then make sure the registry and its functions are there
    (a run that ends removes them when no other holds a lease: `leave`); the lease."""
    lease = await take_lease(conn)
    await install(conn, own_server=own_server)
    return lease


async def install(conn: asyncpg.Connection, *, own_server: bool) -> None:
    """Create the registry and its functions once per database, safe against concurrent
    runs, and against a last run removing them meanwhile (both hold the same lock).

    On a server the plugin started itself (`own_server`) it also installs event triggers
    that log DDL on our schemas; a user's server never gets a database-wide trigger.
    """
    wanted = [*functions.SIGNATURES, *outside_sql.SIGNATURES]
    wanted += ["log_ddl_v1()"] if own_server else []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_CLASS, _INSTALL_LOCK)
        present = await conn.fetchval(
            "SELECT count(to_regprocedure($1 || '.' || sig)) FROM unnest($2::text[]) AS sig "
            "WHERE to_regclass($1 || '.extensions') IS NOT NULL",
            REGISTRY,
            wanted,
        )
        if present != len(wanted):
            script = _INSTALL + functions.script(own_server=own_server) + outside_sql.FUNCTIONS
            await conn.execute(script)


async def take_lease(conn: asyncpg.Connection) -> int:
    """Hold a session advisory lock that says "this process is alive" while `conn` lives
    (a key no dead run's rows in the registry still name, when there is a registry)."""
    rng = random.SystemRandom()
    while True:
        key = rng.randint(2, 2**31 - 1)  # 0 and 1 are the install locks
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, key):
            continue
        named = await _named(conn, key)
        if not named:
            return int(key)
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, key)


async def _named(conn: asyncpg.Connection, key: int) -> bool:
    """Whether a dead run's rows in the registry hold lease `key` (to be reaped first)."""
    if not await conn.fetchval(f"SELECT to_regclass('{REGISTRY}.databases') IS NOT NULL"):
        return False
    return bool(
        await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {REGISTRY}.schemas WHERE lease = $1) "
            f"OR EXISTS (SELECT 1 FROM {REGISTRY}.databases WHERE lease = $1)",
            key,
        )
    )


async def leave(conn: asyncpg.Connection) -> list[str]:
    """After this process dropped what it made: if no other run holds a lease on this
    database and the registry names nothing (a kept schema, what a dead run left that could
    not be dropped yet), remove what the plugin made here, the extensions it installed and
    the registry with its functions and event triggers; what was removed.

    An extension something else now depends on stays (its name is returned with why).
    """
    removed: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_CLASS, _INSTALL_LOCK)
        if await conn.fetchval(f"SELECT to_regclass('{REGISTRY}.extensions') IS NULL"):
            return removed
        if await conn.fetchval(_OTHER_LEASES, LOCK_CLASS) or await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {REGISTRY}.schemas) "
            f"OR EXISTS (SELECT 1 FROM {REGISTRY}.databases)"
        ):
            return removed
        left = [
            r["name"]
            for r in await conn.fetch(f"SELECT name FROM {REGISTRY}.extensions ORDER BY name")
        ]
        # one installed with CASCADE goes before what it needs: drop in rounds
        while left:
            kept = []
            for name in left:
                try:
                    async with conn.transaction():
                        await conn.execute(f"DROP EXTENSION IF EXISTS {quote_ident(name)}")
                    removed.append(f"extension {name}")
                except asyncpg.DependentObjectsStillExistError:
                    kept.append(name)
            if len(kept) == len(left):
                removed += [f"(extension {n} kept: other objects now depend on it)" for n in kept]
                break
            left = kept
        await conn.execute(f"DROP SCHEMA {REGISTRY} CASCADE")
        removed.append(f"schema {REGISTRY}")
    return removed


async def record_extensions(conn: asyncpg.Connection, names: list[str]) -> None:
    """Note extensions a run installed in this database, for the last run to remove."""
    if names and await conn.fetchval(f"SELECT to_regclass('{REGISTRY}.extensions') IS NOT NULL"):
        await conn.execute(
            f"INSERT INTO {REGISTRY}.extensions SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            names,
        )


async def register(
    conn: asyncpg.Connection, name: str, *, lease: int, run: str, worker: str
) -> None:
    """Create schema `name` (never adopting one that exists) and record it as ours."""
    async with conn.transaction():
        await conn.execute(f"CREATE SCHEMA {quote_ident(name)}")
        await conn.execute(
            f"INSERT INTO {REGISTRY}.schemas (name, lease, run, worker) VALUES ($1, $2, $3, $4)",
            name,
            lease,
            run,
            worker,
        )


async def drop(
    conn: asyncpg.Connection, names: list[str], *, lease: int, lock_timeout_ms: int | None = None
) -> list[str]:
    """Drop the named schemas, but only those the registry says this lease owns, and the
    login role each may have (`roles.py`: named like its schema, so owned with it)."""
    if not names:
        return []
    async with conn.transaction():
        if lock_timeout_ms is not None:
            await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        owned: list[str] = [
            r["name"]
            for r in await conn.fetch(
                f"DELETE FROM {REGISTRY}.schemas WHERE name = ANY($1::text[]) AND lease = $2 "
                "RETURNING name",
                names,
                lease,
            )
        ]
        present = [
            r["nspname"]
            for r in await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])", owned
            )
        ]
        if present:
            await conn.execute(
                "DROP SCHEMA " + ", ".join(quote_ident(n) for n in present) + " CASCADE"
            )
        for name in owned:
            await conn.execute(f"DROP FUNCTION IF EXISTS {reset_function(name)}")
        await drop_roles(conn, owned)
    return present


async def drop_roles(conn: asyncpg.Connection, names: list[str]) -> None:
    """Drop the login roles of these schemas that exist, handing what each still owns to
    the admin role first (what a test made outside its schema stays, as without roles)."""
    for row in await conn.fetch(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])", names
    ):
        role = quote_ident(row["rolname"])
        try:
            # most own nothing once their schema is gone; a savepoint keeps the caller's
            # transaction alive when one does
            async with conn.transaction():
                await conn.execute(f"DROP ROLE {role}")
        except asyncpg.DependentObjectsStillExistError:
            await conn.execute(
                f"REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}; DROP ROLE {role}"
            )


async def register_database(
    conn: asyncpg.Connection,
    name: str,
    *,
    lease: int,
    run: str,
    worker: str,
    template: str | None = None,
) -> None:
    """Record database `name` as ours, then create it (from `template`, else the default).

    The row comes first and commits on its own (CREATE DATABASE cannot run in a
    transaction): a process killed in between leaves a row the next run's reap clears.
    """
    await conn.execute(
        f"INSERT INTO {REGISTRY}.databases (name, lease, run, worker) VALUES ($1, $2, $3, $4)",
        name,
        lease,
        run,
        worker,
    )
    await create_database(conn, name, template=template)


async def create_database(conn: asyncpg.Connection, name: str, *, template: str | None) -> None:
    """CREATE DATABASE `name`, a copy of `template` when given; never adopts one that exists."""
    clone = f" TEMPLATE {quote_ident(template)}" if template else ""
    await conn.execute(f"CREATE DATABASE {quote_ident(name)}{clone}")


async def drop_database(conn: asyncpg.Connection, name: str) -> None:
    """Drop one database of ours, ending the sessions still in it."""
    if conn.get_server_version().major >= 13:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        return
    # PostgreSQL 12 has no FORCE: end the sessions, and drop once they are gone (an ended
    # backend takes a moment to leave; one that connects meanwhile is ended again)
    for _ in range(_DROP_TRIES):
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
            return
        except asyncpg.ObjectInUseError:
            await asyncio.sleep(0.02)
    await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")


async def drop_databases(conn: asyncpg.Connection, names: list[str], *, lease: int) -> list[str]:
    """Drop the named databases, but only those the registry says this lease owns."""
    if not names:
        return []
    owned = await conn.fetch(
        f"SELECT name FROM {REGISTRY}.databases WHERE name = ANY($1::text[]) AND lease = $2",
        names,
        lease,
    )
    dropped = []
    for row in owned:
        present = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", row["name"])
        await drop_database(conn, row["name"])
        await conn.execute(f"DELETE FROM {REGISTRY}.databases WHERE name = $1", row["name"])
        if present:
            dropped.append(row["name"])
    return dropped


def reset_function(schema: str) -> str:
    """The qualified name of the reset function made for one schema (see `reset_script`)."""
    return f"{REGISTRY}.{quote_ident('reset_' + schema)}"


async def keep(conn: asyncpg.Connection, name: str, *, table: str = "schemas") -> None:
    """Mark a schema (or a database) kept for inspection; the next run drops it like any
    dead run's."""
    await conn.execute(f"UPDATE {REGISTRY}.{table} SET kept = true WHERE name = $1", name)


async def reap(conn: asyncpg.Connection) -> list[str]:
    """Drop every registered schema whose owning process no longer holds its lease."""
    rows = await conn.fetch(
        f"SELECT lease FROM {REGISTRY}.schemas UNION SELECT lease FROM {REGISTRY}.databases"
    )
    dropped: list[str] = []
    for row in rows:
        lease = int(row["lease"])
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, lease):
            continue  # its owner is alive
        try:
            names = [
                r["name"]
                for r in await conn.fetch(
                    f"SELECT name FROM {REGISTRY}.schemas WHERE lease = $1", lease
                )
            ]
            # Sessions through its DSNs are the dead run's leftovers; a session of someone
            # else's that holds a lock in one (a kept schema being inspected) is left alone,
            # and the schemas wait for a later run.
            await terminate_sessions(conn, names, lock_holders=False)
            dropped += await drop(conn, names, lease=lease, lock_timeout_ms=500)
            databases = [
                r["name"]
                for r in await conn.fetch(
                    f"SELECT name FROM {REGISTRY}.databases WHERE lease = $1", lease
                )
            ]
            dropped += await drop_databases(conn, databases, lease=lease)
        except asyncpg.LockNotAvailableError:
            pass
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, lease)
    return dropped


async def terminate_sessions(
    conn: asyncpg.Connection, schemas: list[str], *, lock_holders: bool = True
) -> None:
    """End the sessions opened through these schemas' DSNs, and any holding locks in them."""
    if schemas:
        await conn.execute(
            "SELECT pg_terminate_backend(s.pid) FROM ("
            " SELECT pid FROM pg_stat_activity"
            " WHERE application_name = ANY($1::text[]) AND pid <> pg_backend_pid()"
            " UNION"
            " SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE $3 AND n.nspname = ANY($2::text[]) AND l.pid <> pg_backend_pid()"
            ") AS s",
            [app_name(n) for n in schemas],
            schemas,
            lock_holders,
        )


def app_name(schema: str) -> str:
    """The application_name that marks connections made through a schema's DSN."""
    return f"pgmig:{schema}"[:63]
