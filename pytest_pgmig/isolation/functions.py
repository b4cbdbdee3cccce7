"""The functions the registry schema holds for resets: state, fingerprint, sessions, DDL log."""

from __future__ import annotations

from pytest_pgmig.isolation.names import IDLE_KEPT, REGISTRY

_FINGERPRINT = f"""
CREATE OR REPLACE FUNCTION {REGISTRY}.fingerprint_v2(
    ns oid, p_rels oid[], p_objs oid[], p_max oid
) RETURNS text LANGUAGE plpgsql STABLE AS $fp$
-- Every DDL statement writes a catalog row, and a written row has a new xmin: the set of
-- (oid, xmin) over the schema's catalog rows changes with any DDL and with nothing else.
-- Read through the catalogs' indexes, not by scanning them: the rows of what the schema
-- held when its state was first taken (p_rels its relations, p_objs its functions, types
-- and constraints), and whatever it gained since, whose oid is above p_max (oids only grow).
-- A sum of the rows' hashes, with their count: no sort, and any change moves it.
-- plpgsql, not sql: its plan is cached in the session instead of re-planned per call.
BEGIN
RETURN (SELECT count(*) || ':' || coalesce(sum(hashtext(x)), 0) FROM (
    SELECT 'n' || n.oid || ':' || n.xmin FROM pg_namespace n WHERE n.oid = ns
    UNION ALL SELECT 'c' || c.oid || ':' || c.xmin FROM pg_class c WHERE c.oid = ANY (p_rels)
    UNION ALL SELECT 'a' || a.attrelid || '.' || a.attnum || ':' || a.xmin
        FROM pg_attribute a WHERE a.attrelid = ANY (p_rels) AND a.attnum > 0
    UNION ALL SELECT 'd' || d.oid || ':' || d.xmin FROM pg_attrdef d WHERE d.adrelid = ANY (p_rels)
    UNION ALL SELECT 'i' || i.indexrelid || ':' || i.xmin
        FROM pg_index i WHERE i.indrelid = ANY (p_rels)
    UNION ALL SELECT 't' || t.oid || ':' || t.xmin FROM pg_trigger t WHERE t.tgrelid = ANY (p_rels)
    UNION ALL SELECT 'r' || r.oid || ':' || r.xmin FROM pg_rewrite r WHERE r.ev_class = ANY (p_rels)
    UNION ALL SELECT 's' || s.seqrelid || ':' || s.xmin
        FROM pg_sequence s WHERE s.seqrelid = ANY (p_rels)
    UNION ALL SELECT 'o' || o.objoid || '.' || o.objsubid || ':' || o.xmin
        FROM pg_description o WHERE o.objoid = ANY (p_rels)
    UNION ALL SELECT 'l' || l.oid || ':' || l.xmin FROM pg_policy l WHERE l.polrelid = ANY (p_rels)
    UNION ALL SELECT 'p' || p.oid || ':' || p.xmin FROM pg_proc p WHERE p.oid = ANY (p_objs)
    UNION ALL SELECT 'y' || y.oid || ':' || y.xmin FROM pg_type y WHERE y.oid = ANY (p_objs)
    UNION ALL SELECT 'k' || k.oid || ':' || k.xmin FROM pg_constraint k WHERE k.oid = ANY (p_objs)
    UNION ALL SELECT 'C' || c.oid FROM pg_class c WHERE c.oid > p_max AND c.relnamespace = ns
    UNION ALL SELECT 'P' || p.oid FROM pg_proc p WHERE p.oid > p_max AND p.pronamespace = ns
    UNION ALL SELECT 'Y' || y.oid FROM pg_type y WHERE y.oid > p_max AND y.typnamespace = ns
    UNION ALL SELECT 'K' || k.oid FROM pg_constraint k
        WHERE k.oid > p_max AND k.connamespace = ns
) AS catalog(x));
END
$fp$;
"""

_STATE = f"""
CREATE OR REPLACE FUNCTION {REGISTRY}.state_v2(
    p_schema text, p_skip text[], p_log boolean, p_rels oid[], p_objs oid[], p_max oid
) RETURNS text
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
        -- catalog fingerprint does
        RETURN 'e' || coalesce((SELECT max(id) FROM {REGISTRY}.ddl
                               WHERE schema IN (p_schema, '*')), 0) || '/' || md5(acc);
    END IF;
    RETURN {REGISTRY}.fingerprint_v2(ns, p_rels, p_objs, p_max) || '/' || md5(acc);
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
-- With p_app NULL, in a database of the plugin's own that serves one test at a time: every
-- session in it counts as the test's.
BEGIN
    PERFORM pg_terminate_backend(s.pid) FROM (
        SELECT a.pid, a.state, row_number() OVER (
            PARTITION BY a.state = 'idle' ORDER BY a.backend_start DESC
        ) AS newest
        FROM pg_stat_activity AS a
        WHERE a.pid <> pg_backend_pid() AND CASE
            WHEN p_app IS NOT NULL THEN a.application_name = p_app
            ELSE a.datname = current_database() AND a.backend_type = 'client backend'
                 AND pg_has_role(a.usesysid, 'MEMBER')
        END
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
        WHERE {{logged}};
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
        WHERE {{logged}};
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

# exact signatures: a server that holds an older version of a function gets the current one
SIGNATURES = (
    "fingerprint_v2(oid,oid[],oid[],oid)",
    "state_v2(text,text[],boolean,oid[],oid[],oid)",
    "end_sessions_v1(oid,text,boolean)",
    "rows_v1(text,text)",
)


# which schemas the DDL log records: on the shared database, ours (pgmig_...) but the
# registry; in a database of our own (database isolation), every schema but ours and the
# sessions' temporary ones
_OURS = f"(s LIKE 'pgmig\\_%' AND s <> '{REGISTRY}') OR s = '*'"
_EVERY = r"s = '*' OR (s NOT LIKE 'pgmig\_%' AND s !~ '^pg_(toast_)?temp_')"


def script(*, own_server: bool, every_schema: bool = False) -> str:
    """The SQL that creates (or replaces) them; the DDL log only on a server of our own,
    recording `every_schema` in a database the plugin made."""
    log = _DDL_LOG.replace("{logged}", _EVERY if every_schema else _OURS) if own_server else ""
    return _FINGERPRINT + log + _STATE + _HELPERS
