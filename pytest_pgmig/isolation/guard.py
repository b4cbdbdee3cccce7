"""Catching migrations that write outside the schema they migrate, before they commit."""

from __future__ import annotations

import re

import asyncpg  # type: ignore[import-untyped]

from pytest_pgmig.engine.apply import RaisingCheck
from pytest_pgmig.engine.sqltext import Statement
from pytest_pgmig.engine.templates import sql_literal
from pytest_pgmig.errors import OUTSIDE_SQLSTATE, MigrationError, OutsideSchemaError
from pytest_pgmig.isolation.registry import REGISTRY, ROLE_PATTERN

# the SQLSTATE outside_v2 raises: a write outside the migrated schema
OUTSIDE = OUTSIDE_SQLSTATE
_CENSUS_SETTING = "pgmig.census"

# Objects of the system have OIDs below 16384 (FirstNormalObjectId): never the user's.
FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION {REGISTRY}.skipped_ns_v1(p_schema text) RETURNS oid[]
LANGUAGE sql STABLE AS $skip$
    -- the migrated schema, the system's, the plugin's and every registered throwaway schema
    SELECT array_agg(oid) FROM pg_namespace
    WHERE nspname = p_schema OR nspname LIKE 'pg\\_%' OR nspname = 'information_schema'
       OR nspname = '{REGISTRY}' OR nspname IN (SELECT name FROM {REGISTRY}.schemas)
$skip$;

CREATE OR REPLACE FUNCTION {REGISTRY}.foreign_cast_v1(p_source oid, p_target oid, p_skip oid[])
RETURNS boolean LANGUAGE sql STABLE AS $cast$
    -- a cast of a type in a skipped schema (a range type's cast to its multirange) goes
    -- with that schema
    SELECT NOT EXISTS (
        SELECT 1 FROM pg_type WHERE oid IN (p_source, p_target) AND typnamespace = ANY (p_skip)
    )
$cast$;

CREATE OR REPLACE FUNCTION {REGISTRY}.census_v2(p_schema text) RETURNS text
LANGUAGE plpgsql STABLE AS $census$
-- How many objects every other schema holds, and the database-wide objects: a count that
-- fell while a migration ran means it dropped something that was not its own.
DECLARE
    skip oid[] := {REGISTRY}.skipped_ns_v1(p_schema);
BEGIN
    RETURN (SELECT string_agg(k || '=' || n, ',' ORDER BY k) FROM (
        SELECT 'relation:' || relnamespace AS k, count(*) AS n FROM pg_class
            WHERE oid >= 16384 AND relnamespace <> ALL (skip) GROUP BY relnamespace
        UNION ALL SELECT 'type:' || typnamespace, count(*) FROM pg_type
            WHERE oid >= 16384 AND typnamespace <> ALL (skip) GROUP BY typnamespace
        UNION ALL SELECT 'function:' || pronamespace, count(*) FROM pg_proc
            WHERE oid >= 16384 AND pronamespace <> ALL (skip) GROUP BY pronamespace
        UNION ALL SELECT 'constraint:' || connamespace, count(*) FROM pg_constraint
            WHERE oid >= 16384 AND connamespace <> ALL (skip) GROUP BY connamespace
        UNION ALL SELECT 'trigger:' || c.relnamespace, count(*) FROM pg_trigger t
            JOIN pg_class c ON c.oid = t.tgrelid
            WHERE t.oid >= 16384 AND c.relnamespace <> ALL (skip) GROUP BY c.relnamespace
        UNION ALL SELECT 'schema', count(*) FROM pg_namespace
            WHERE oid >= 16384 AND oid <> ALL (skip)
        UNION ALL SELECT 'extension', count(*) FROM pg_extension
        UNION ALL SELECT 'role', count(*) FROM pg_roles WHERE rolname !~ '{ROLE_PATTERN}'
        UNION ALL SELECT 'role-oid', max(oid::bigint) FROM pg_roles
            WHERE rolname !~ '{ROLE_PATTERN}'
        UNION ALL SELECT 'event trigger', count(*) FROM pg_event_trigger
        UNION ALL SELECT 'publication', count(*) FROM pg_publication
        UNION ALL SELECT 'cast', count(*) FROM pg_cast
            WHERE oid >= 16384 AND {REGISTRY}.foreign_cast_v1(castsource, casttarget, skip)
        -- sequences do not roll back: their values, to be set back
        UNION ALL SELECT 'seq:' || c.oid, coalesce(pg_sequence_last_value(c.oid), -1)
            FROM pg_class c WHERE c.relkind = 'S' AND c.relnamespace <> ALL (skip)
            -- (what the role may not read it may not advance either)
            AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, 'SELECT, USAGE') END
    ) AS census);
END
$census$;

CREATE OR REPLACE FUNCTION {REGISTRY}.is_mine_v1(p_xid xid, p_top bigint) RETURNS boolean
LANGUAGE plpgsql STABLE AS $mine$
-- Whether a row's xmin is this transaction or one of its subtransactions (a DO block's
-- EXCEPTION clause), not a later transaction that committed meanwhile.
BEGIN
    RETURN txid_status(p_top - p_top % 4294967296 + p_xid::text::bigint) = 'in progress';
EXCEPTION WHEN OTHERS THEN
    RETURN false;
END
$mine$;

CREATE OR REPLACE FUNCTION {REGISTRY}.advanced_here_v1(p_seq oid) RETURNS boolean
LANGUAGE plpgsql AS $here$
-- Whether this session has called nextval() on a sequence (currval() is defined only
-- then): a sequence another session advanced meanwhile is that session's, not a write of
-- the migration, and must not be set back.
BEGIN
    PERFORM currval(p_seq::regclass);
    RETURN true;
EXCEPTION WHEN object_not_in_prerequisite_state OR undefined_table THEN
    RETURN false;
END
$here$;

CREATE OR REPLACE FUNCTION {REGISTRY}.restore_sequences_v2(p_census text) RETURNS void
LANGUAGE plpgsql AS $restore$
-- Set the sequences outside the schema that this session advanced back to their census
-- values (setval does not roll back with the failing file, which is what makes this work).
DECLARE
    item record;
BEGIN
    FOR item IN
        SELECT split_part(split_part(b, '=', 1), ':', 2)::oid AS seq,
               split_part(b, '=', 2)::bigint AS value
        FROM unnest(string_to_array(p_census, ',')) AS b WHERE b LIKE 'seq:%'
    LOOP
        IF to_regclass(item.seq::regclass::text) IS NULL
           OR NOT {REGISTRY}.advanced_here_v1(item.seq) THEN
            CONTINUE;
        ELSIF item.value = -1 AND pg_sequence_last_value(item.seq) IS NOT NULL THEN
            PERFORM setval(item.seq, s.seqstart, false) FROM pg_sequence s
            WHERE s.seqrelid = item.seq;
        ELSIF item.value <> -1
              AND pg_sequence_last_value(item.seq) IS DISTINCT FROM item.value THEN
            PERFORM setval(item.seq, item.value, true);
        END IF;
    END LOOP;
END
$restore$;

CREATE OR REPLACE FUNCTION {REGISTRY}.outside_v2(p_schema text, p_census text) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $outside$
-- Raise {OUTSIDE} naming the first object this transaction created, altered, dropped or wrote
-- rows to outside p_schema. A catalog row written by this transaction has its xid as xmin,
-- which age() puts at 0 (or below, for subtransactions and later transactions).
DECLARE
    skip oid[] := {REGISTRY}.skipped_ns_v1(p_schema);
    top bigint := txid_current();
    hit record;
    was text;
    num bigint;
    now_ text;
BEGIN
    FOR hit IN
        SELECT u.classid, u.objid, u.x FROM (
            SELECT 'pg_namespace'::regclass AS classid, oid AS objid, xmin AS x
                FROM pg_namespace WHERE oid >= 16384 AND age(xmin) <= 0 AND oid <> ALL (skip)
            UNION ALL SELECT 'pg_class'::regclass, c.oid, c.xmin FROM pg_class c
                WHERE c.oid >= 16384 AND age(c.xmin) <= 0 AND c.relnamespace <> ALL (skip)
            UNION ALL SELECT 'pg_type'::regclass, oid, xmin FROM pg_type
                WHERE oid >= 16384 AND age(xmin) <= 0 AND typnamespace <> ALL (skip)
            UNION ALL SELECT 'pg_proc'::regclass, oid, xmin FROM pg_proc
                WHERE oid >= 16384 AND age(xmin) <= 0 AND pronamespace <> ALL (skip)
            UNION ALL SELECT 'pg_constraint'::regclass, oid, xmin FROM pg_constraint
                WHERE oid >= 16384 AND age(xmin) <= 0 AND connamespace <> ALL (skip)
            UNION ALL SELECT 'pg_operator'::regclass, oid, xmin FROM pg_operator
                WHERE oid >= 16384 AND age(xmin) <= 0 AND oprnamespace <> ALL (skip)
            UNION ALL SELECT 'pg_collation'::regclass, oid, xmin FROM pg_collation
                WHERE oid >= 16384 AND age(xmin) <= 0 AND collnamespace <> ALL (skip)
            UNION ALL SELECT 'pg_extension'::regclass, oid, xmin FROM pg_extension
                WHERE age(xmin) <= 0
            UNION ALL SELECT 'pg_event_trigger'::regclass, oid, xmin FROM pg_event_trigger
                WHERE age(xmin) <= 0
            UNION ALL SELECT 'pg_publication'::regclass, oid, xmin FROM pg_publication
                WHERE age(xmin) <= 0
            UNION ALL SELECT 'pg_cast'::regclass, oid, xmin FROM pg_cast
                WHERE oid >= 16384 AND age(xmin) <= 0
                  AND {REGISTRY}.foreign_cast_v1(castsource, casttarget, skip)
            UNION ALL SELECT 'pg_language'::regclass, oid, xmin FROM pg_language
                WHERE oid >= 16384 AND age(xmin) <= 0
            UNION ALL SELECT 'pg_foreign_server'::regclass, oid, xmin FROM pg_foreign_server
                WHERE age(xmin) <= 0
            UNION ALL SELECT 'pg_default_acl'::regclass, oid, xmin FROM pg_default_acl
                WHERE age(xmin) <= 0
            UNION ALL SELECT 'pg_database'::regclass, oid, xmin FROM pg_database
                WHERE datname = current_database() AND age(xmin) <= 0
        ) AS u
    LOOP
        IF age(hit.x) = 0 OR {REGISTRY}.is_mine_v1(hit.x, top) THEN
            RAISE EXCEPTION USING ERRCODE = '{OUTSIDE}', DETAIL = 'created or altered',
                MESSAGE = (SELECT o.type || ' ' || coalesce(o.identity, '?')
                           FROM pg_identify_object(hit.classid, hit.objid, 0) AS o);
        END IF;
    END LOOP;
    -- Writing rows and every change to a relation (ALTER, a trigger, an index, a rule, a
    -- policy, a default, TRUNCATE, nextval) take a lock stronger than a read's, held to the
    -- end of the transaction: this session's locks name them without reading the catalogs.
    FOR hit IN
        SELECT l.relation, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
        WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.relation >= 16384
          AND l.mode NOT IN ('AccessShareLock', 'RowShareLock')
          AND c.relnamespace <> ALL (skip)
          AND c.relkind <> 'S'  -- the census reads sequences so (their values show changes)
        ORDER BY l.mode = 'RowExclusiveLock'
    LOOP
        PERFORM {REGISTRY}.restore_sequences_v2(p_census);
        RAISE EXCEPTION USING ERRCODE = '{OUTSIDE}',
            DETAIL = CASE WHEN hit.mode = 'RowExclusiveLock' THEN 'rows written'
                          ELSE 'altered' END,
            MESSAGE = (SELECT o.type || ' ' || o.identity
                       FROM pg_identify_object('pg_class'::regclass, hit.relation, 0) AS o);
    END LOOP;
    now_ := {REGISTRY}.census_v2(p_schema);
    IF now_ IS DISTINCT FROM p_census THEN
        FOR hit IN
            SELECT split_part(b, '=', 1) AS k, split_part(b, '=', 2)::bigint AS n
            FROM unnest(string_to_array(p_census, ',')) AS b
        LOOP
            SELECT split_part(a, '=', 2)::bigint INTO num
            FROM unnest(string_to_array(now_, ',')) AS a WHERE split_part(a, '=', 1) = hit.k;
            IF hit.k LIKE 'seq:%' THEN
                IF num IS DISTINCT FROM hit.n
                   AND {REGISTRY}.advanced_here_v1(split_part(hit.k, ':', 2)::oid) THEN
                    PERFORM {REGISTRY}.restore_sequences_v2(p_census);
                    RAISE EXCEPTION USING ERRCODE = '{OUTSIDE}', DETAIL = 'advanced',
                        MESSAGE = 'sequence ' || split_part(hit.k, ':', 2)::oid::regclass::text;
                END IF;
            ELSIF hit.k = 'role-oid' THEN
                SELECT string_agg(rolname, ', ') INTO was FROM pg_roles
                    WHERE oid::bigint > hit.n AND rolname !~ '{ROLE_PATTERN}';
                IF was IS NOT NULL THEN
                    RAISE EXCEPTION USING ERRCODE = '{OUTSIDE}', DETAIL = 'created',
                        MESSAGE = 'role ' || was;
                END IF;
            ELSIF coalesce(num, 0) < hit.n THEN
                was := split_part(hit.k, ':', 1);
                IF split_part(hit.k, ':', 2) <> '' THEN
                    was := was || ' in schema '
                        || quote_ident(split_part(hit.k, ':', 2)::oid::regnamespace::text);
                END IF;
                RAISE EXCEPTION USING ERRCODE = '{OUTSIDE}', DETAIL = 'dropped',
                    MESSAGE = (hit.n - coalesce(num, 0)) || ' ' || replace(was, ' in ', '(s) in ');
            END IF;
        END LOOP;
    END IF;
    PERFORM set_config('{_CENSUS_SETTING}', p_schema || '|' || now_, false);
END
$outside$;
"""
SIGNATURES = (
    "skipped_ns_v1(text)",
    "foreign_cast_v1(oid,oid,oid[])",
    "census_v2(text)",
    "is_mine_v1(xid,bigint)",
    "advanced_here_v1(oid)",
    "restore_sequences_v2(text)",
    "outside_v2(text,text)",
)


class Guard(RaisingCheck):
    """The engine's file check (`pytest_pgmig.engine.apply.FileCheck`) for one schema.

    Example::

        runner = Runner(schema, folder, module, options=ApplyOptions(check=Guard(schema)))
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema

    def before_sql(self) -> str:
        """What a file's transaction runs first: an xid, so age() is exact, and the census.

        The census a file ends with is the next file's (kept in a session setting that a
        failing file rolls back), so it is counted once per file.
        """
        tag = sql_literal(self.schema + "|")
        return (
            f"SELECT CASE WHEN coalesce(current_setting('{_CENSUS_SETTING}', true), '') "
            f"NOT LIKE {tag} || '%' THEN set_config('{_CENSUS_SETTING}', "
            f"{tag} || {REGISTRY}.census_v2({sql_literal(self.schema)}), false) END, "
            "txid_current();"
        )

    def after_sql(self) -> str:
        """What it runs after the file, before its tracking row: raise if it wrote outside."""
        return (
            f"SELECT {REGISTRY}.outside_v2({sql_literal(self.schema)}, "
            f"split_part(current_setting('{_CENSUS_SETTING}'), '|', 2));"
        )

    sqlstate = OUTSIDE

    def failure(
        self, filename: str, exc: asyncpg.PostgresError, *, committed: bool
    ) -> MigrationError:
        """The migration failure for the write outside the schema `after_sql` raised."""
        detail = getattr(exc, "detail", None) or "changed"
        what = f"{getattr(exc, 'message', None) or exc} ({detail})"
        done = (
            "It ran outside a transaction: its earlier statements stay committed."
            if committed
            else f"'{filename}' was rolled back: nothing of it stays in the database."
        )
        cluster = str(getattr(exc, "message", "")).startswith("role ")
        return _outside(filename, self.schema, what, done, cluster=cluster)

    async def preflight(
        self, conn: asyncpg.Connection, filename: str, statement: Statement, text: str
    ) -> None:
        """Refuse, before it runs, a non-transactional statement that works outside."""
        target = preflight_target(statement, text)
        if target is None:
            return
        if target != "*":
            where = await conn.fetchval(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = to_regclass($1)",
                target,
            )
            if where is None or where == self.schema:
                return
            what = f"relation {where}.{target.rsplit('.', 1)[-1].strip()}"
        else:
            what = " ".join(statement.head[:2]).lower()
        first = text.strip().split("\n", 1)[0][:60]
        raise _outside(
            filename,
            self.schema,
            f"{what} ({first})",
            "That statement cannot run in a transaction, so it was not run; the statements "
            "before it stay committed.",
            cluster=target == "*",
        )


def _outside(
    filename: str, schema: str, what: str, done: str, *, cluster: bool = False
) -> OutsideSchemaError:
    return OutsideSchemaError(
        f"Migration '{filename}' writes outside the schema it migrates ({schema}): {what}. {done}",
        filename,
        what=what,
        cluster=cluster,
        hint="Each test's migrations run with its own schema first on search_path. Drop the "
        "schema qualifier (public.users -> users) or write {{tables.users}} / {{schema}}; "
        "remove statements that empty search_path (pg_dump's SELECT pg_catalog.set_config("
        "'search_path', '', false)). Objects a set must keep in a schema of its own (CREATE "
        "SCHEMA billing), roles, casts, event triggers and publications cannot live in a "
        "per-test schema.",
    )


# a relation as a statement names it: [schema.]name, either part quoted or not
_NAME = r'(?:"(?:[^"]|"")*"|[\w$]+)'
_RELATION = rf"({_NAME}(?:\s*\.\s*{_NAME})?)"
_TARGETS = {
    "CREATE": re.compile(rf"\bON\s+(?:ONLY\s+)?{_RELATION}", re.IGNORECASE),
    "DROP": re.compile(
        rf"DROP\s+INDEX\s+CONCURRENTLY\s+(?:IF\s+EXISTS\s+)?{_RELATION}", re.IGNORECASE
    ),
    "ALTER": re.compile(
        rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_RELATION}", re.IGNORECASE
    ),
}


def preflight_target(statement: Statement, text: str) -> str | None:
    """The relation a statement that cannot run in a transaction works on, as written.

    ``"*"`` for one that always works outside a schema (a database, a tablespace, the
    server's configuration); ``None`` when it touches no object (``VACUUM``, ``REINDEX``).

    >>> from pytest_pgmig.engine.sqltext import split
    >>> text = 'CREATE INDEX CONCURRENTLY i ON public."Users" (email)'
    >>> preflight_target(split(text)[0], text)
    'public."Users"'
    """
    head = statement.head
    cluster_wide = head[:1] in (("CREATE",), ("DROP",)) and head[1:2] in (
        ("DATABASE",),
        ("TABLESPACE",),
    )
    if cluster_wide or head[:2] == ("ALTER", "SYSTEM"):
        return "*"
    pattern = _TARGETS.get(head[0]) if head else None
    if pattern is None:
        return None
    match = pattern.search(text)
    return match.group(1) if match else None
