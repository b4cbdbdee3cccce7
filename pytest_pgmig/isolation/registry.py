"""The plugin's own schema on the server: which run owns which schema, and the reset function."""

from __future__ import annotations

import random

import asyncpg  # type: ignore[import-untyped]

from pytest_pgmig.engine.templates import quote_identifier as quote_ident

REGISTRY = "pgmig_registry"
# idle sessions a reset leaves on a schema: a connection kept across tests survives
IDLE_KEPT = 4
# classid of every advisory lock the plugin takes (b"pgmi"), so ours never meet a user's keys
LOCK_CLASS = 0x70676D69
_INSTALL_LOCK = 0  # objid serialising the registry's creation

_FINGERPRINT = f"""
CREATE OR REPLACE FUNCTION {REGISTRY}.fingerprint_v1(ns oid) RETURNS text
LANGUAGE plpgsql STABLE AS $fp$
-- Every DDL statement writes a catalog row, and a written row has a new xmin: the set of
-- (oid, xmin) over the schema's catalog rows changes with any DDL and with nothing else.
-- plpgsql, not sql: its plan is cached in the session instead of re-planned per call.
BEGIN
RETURN (SELECT md5(coalesce(string_agg(x, ',' ORDER BY x), '')) FROM (
    SELECT 'n' || n.oid || ':' || n.xmin FROM pg_namespace n WHERE n.oid = ns
    UNION ALL SELECT 'c' || c.oid || ':' || c.xmin FROM pg_class c WHERE c.relnamespace = ns
    UNION ALL SELECT 'a' || a.attrelid || '.' || a.attnum || ':' || a.xmin
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE c.relnamespace = ns AND a.attnum > 0
    UNION ALL SELECT 'd' || d.oid || ':' || d.xmin
        FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid WHERE c.relnamespace = ns
    UNION ALL SELECT 'k' || k.oid || ':' || k.xmin FROM pg_constraint k WHERE k.connamespace = ns
    UNION ALL SELECT 'i' || i.indexrelid || ':' || i.xmin
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = ns
    UNION ALL SELECT 't' || t.oid || ':' || t.xmin
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = ns
    UNION ALL SELECT 'r' || r.oid || ':' || r.xmin
        FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE c.relnamespace = ns
    UNION ALL SELECT 'p' || p.oid || ':' || p.xmin FROM pg_proc p WHERE p.pronamespace = ns
    UNION ALL SELECT 'y' || y.oid || ':' || y.xmin FROM pg_type y WHERE y.typnamespace = ns
    UNION ALL SELECT 's' || s.seqrelid || ':' || s.xmin
        FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid WHERE c.relnamespace = ns
    UNION ALL SELECT 'o' || o.objoid || '.' || o.objsubid || ':' || o.xmin
        FROM pg_description o JOIN pg_class c ON c.oid = o.objoid WHERE c.relnamespace = ns
    UNION ALL SELECT 'l' || l.oid || ':' || l.xmin
        FROM pg_policy l JOIN pg_class c ON c.oid = l.polrelid WHERE c.relnamespace = ns
) AS catalog(x));
END
$fp$;
"""

_STATE = f"""
CREATE OR REPLACE FUNCTION {REGISTRY}.state_v1(p_schema text, p_skip text[], p_log boolean)
RETURNS text
LANGUAGE plpgsql STABLE AS $state$
-- A schema's DDL fingerprint plus a hash of the rows of the tables a reset leaves alone
-- (the migrations tracking table): equal states mean nothing a reset cannot undo happened.
DECLARE
    ns oid;
    rel text;
    acc text := '';
BEGIN
    SELECT oid INTO ns FROM pg_namespace WHERE nspname = p_schema;
    IF ns IS NULL THEN
        RETURN NULL;
    END IF;
    FOREACH rel IN ARRAY p_skip LOOP
        IF to_regclass(format('%I.%I', p_schema, rel)) IS NOT NULL THEN
            acc := acc || rel || '=' || {REGISTRY}.rows_v1(p_schema, rel) || ';';
        END IF;
    END LOOP;
    IF p_log THEN
        -- on a server of our own the DDL log answers in one probe; elsewhere the
        -- catalog fingerprint does, at a few milliseconds
        RETURN 'e' || coalesce((SELECT max(id) FROM {REGISTRY}.ddl
                               WHERE schema IN (p_schema, '*')), 0) || '/' || md5(acc);
    END IF;
    RETURN {REGISTRY}.fingerprint_v1(ns) || '/' || md5(acc);
END
$state$;
"""

_HELPERS = f"""
CREATE OR REPLACE FUNCTION {REGISTRY}.end_sessions_v1(
    ns oid, p_app text, p_all boolean
) RETURNS void LANGUAGE plpgsql AS $end$
-- End what a test left behind on its schema: its sessions in a transaction or running a
-- statement, and idle ones past the {IDLE_KEPT} most recent (a harness may keep a connection
-- to a schema it meets again; a leak must not exhaust the server). With p_all, after a
-- reset met a lock: every session through the schema's DSN and any session holding a lock
-- in the schema, whatever DSN it came through (reading pg_locks costs a millisecond or two).
BEGIN
    PERFORM pg_terminate_backend(s.pid) FROM (
        SELECT a.pid, a.state, row_number() OVER (
            PARTITION BY a.state = 'idle' ORDER BY a.backend_start DESC
        ) AS newest
        FROM pg_stat_activity AS a
        WHERE a.application_name = p_app AND a.pid <> pg_backend_pid()
    ) AS s
    WHERE p_all OR s.state IS DISTINCT FROM 'idle' OR s.newest > {IDLE_KEPT};
    IF p_all THEN
        PERFORM pg_terminate_backend(l.pid)
        FROM (SELECT DISTINCT pid FROM pg_locks JOIN pg_class AS c ON c.oid = relation
              WHERE c.relnamespace = ns AND pid <> pg_backend_pid()) AS l;
    END IF;
END
$end$;

CREATE OR REPLACE FUNCTION {REGISTRY}.rows_v1(p_schema text, p_table text) RETURNS text
LANGUAGE plpgsql STABLE AS $rows$
-- A table's rows as one hash: equal hashes, equal rows.
DECLARE
    h text;
BEGIN
    EXECUTE format(
        $q$SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))
           FROM %I.%I AS t$q$, p_schema, p_table
    ) INTO h;
    RETURN h;
END
$rows$;
"""

_DDL_LOG = f"""
CREATE TABLE IF NOT EXISTS {REGISTRY}.ddl (id bigserial PRIMARY KEY, schema text NOT NULL);
CREATE INDEX IF NOT EXISTS ddl_schema_id ON {REGISTRY}.ddl (schema, id);
CREATE OR REPLACE FUNCTION {REGISTRY}.log_ddl_v1() RETURNS event_trigger
LANGUAGE plpgsql AS $log$
-- Records which of our schemas a DDL command touched ('*' when it names none, e.g. GRANT):
-- a reset then knows in one index probe whether a test changed DDL.
BEGIN
    IF TG_EVENT = 'sql_drop' THEN
        INSERT INTO {REGISTRY}.ddl (schema)
        SELECT DISTINCT s FROM (
            SELECT coalesce(schema_name, address_names[1], '*') AS s
            FROM pg_event_trigger_dropped_objects()
        ) AS d
        WHERE (s LIKE 'pgmig\\_%' AND s <> '{REGISTRY}') OR s = '*';
    ELSE
        INSERT INTO {REGISTRY}.ddl (schema)
        SELECT DISTINCT s FROM (
            -- objects with no schema of their own (a schema, a trigger, a constraint) are
            -- addressed by their schema first, then their table and name
            SELECT coalesce(
                schema_name,
                CASE WHEN objid <> 0 THEN
                    (pg_identify_object_as_address(classid, objid, objsubid)).object_names[1]
                END,
                '*'
            ) AS s
            FROM pg_event_trigger_ddl_commands()
        ) AS d
        WHERE (s LIKE 'pgmig\\_%' AND s <> '{REGISTRY}') OR s = '*';
    END IF;
END
$log$;
DO $evt$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgmig_ddl_end') THEN
        CREATE EVENT TRIGGER pgmig_ddl_end ON ddl_command_end
            EXECUTE FUNCTION {REGISTRY}.log_ddl_v1();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgmig_sql_drop') THEN
        CREATE EVENT TRIGGER pgmig_sql_drop ON sql_drop
            EXECUTE FUNCTION {REGISTRY}.log_ddl_v1();
    END IF;
END
$evt$;
"""

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
_INSTALL = f"CREATE SCHEMA IF NOT EXISTS {REGISTRY};\n" + "".join(
    _OWNED.format(registry=REGISTRY, kind=kind) for kind in ("schemas", "databases")
)


# exact signatures: a server that holds an older version of a function gets the current one
_SIGNATURES = (
    "fingerprint_v1(oid)",
    "state_v1(text,text[],boolean)",
    "end_sessions_v1(oid,text,boolean)",
    "rows_v1(text,text)",
)


async def install(conn: asyncpg.Connection, *, own_server: bool) -> None:
    """Create the registry and its functions once per server, safe against concurrent runs.

    On a server the plugin started itself (`own_server`) it also installs event triggers
    that log DDL on our schemas; a user's server never gets a database-wide trigger.
    """
    from pytest_pgmig.isolation import guard

    wanted = [*_SIGNATURES, *guard.SIGNATURES] + (["log_ddl_v1()"] if own_server else [])
    present = await conn.fetchval(
        "SELECT count(to_regprocedure($1 || '.' || sig)) FROM unnest($2::text[]) AS sig "
        "WHERE to_regclass($1 || '.databases') IS NOT NULL",
        REGISTRY,
        wanted,
    )
    if present == len(wanted):
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_CLASS, _INSTALL_LOCK)
        script = _INSTALL + _FINGERPRINT + (_DDL_LOG if own_server else "") + _STATE + _HELPERS
        script += guard.FUNCTIONS
        await conn.execute(script)


async def take_lease(conn: asyncpg.Connection) -> int:
    """Hold a session advisory lock that says "this process is alive" while `conn` lives."""
    rng = random.SystemRandom()
    while True:
        key = rng.randint(1, 2**31 - 1)
        free = await conn.fetchval(
            f"SELECT NOT EXISTS (SELECT 1 FROM {REGISTRY}.schemas WHERE lease = $3) "
            f"AND NOT EXISTS (SELECT 1 FROM {REGISTRY}.databases WHERE lease = $3) "
            "AND pg_try_advisory_lock($1, $2)",
            LOCK_CLASS,
            key,
            key,
        )
        if free:
            return int(key)


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
    """Drop the named schemas, but only those the registry says this lease owns."""
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
    return present


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
    """Drop one database of ours, ending the sessions still in it (PostgreSQL 13 and later)."""
    await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


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
