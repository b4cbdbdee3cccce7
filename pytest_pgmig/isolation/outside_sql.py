"""The server-side functions of the outside-write check: what a migration's own transaction
created, altered, dropped, wrote or advanced outside the schema it migrates."""

from __future__ import annotations

from pytest_pgmig.errors import OUTSIDE_SQLSTATE
from pytest_pgmig.isolation.names import REGISTRY

# the SQLSTATE outside_v3 raises: a write outside the migrated schema
OUTSIDE = OUTSIDE_SQLSTATE
CENSUS_SETTING = "pgmig.census"
BEFORE_SETTING = "pgmig.before"

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

CREATE OR REPLACE FUNCTION {REGISTRY}.seq_value_v1(p_seq oid) RETURNS bigint
LANGUAGE plpgsql STABLE AS $seq$
-- A sequence's last value (-1: never called); NULL when another session dropped it while
-- the catalogs still showed it.
BEGIN
    RETURN coalesce(pg_sequence_last_value(p_seq), -1);
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$seq$;

CREATE OR REPLACE FUNCTION {REGISTRY}.census_v3(p_schema text) RETURNS text
LANGUAGE plpgsql STABLE AS $census$
-- The values of the sequences outside the schema: sequences do not roll back, so those a
-- file advanced are set back (`restore_sequences_v3`). What a file created, altered or
-- dropped is told by its own transaction's rows and locks instead (`outside_v3`).
DECLARE
    skip oid[] := {REGISTRY}.skipped_ns_v1(p_schema);
BEGIN
    RETURN (SELECT coalesce(string_agg('seq:' || s.oid || '=' || s.v, ',' ORDER BY s.oid), '')
        FROM (
            SELECT c.oid, {REGISTRY}.seq_value_v1(c.oid) AS v
            FROM pg_class c WHERE c.relkind = 'S' AND c.relnamespace <> ALL (skip)
            -- (what the role may not read it may not advance either)
            AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, 'SELECT, USAGE') END
        ) AS s WHERE s.v IS NOT NULL);
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

CREATE OR REPLACE FUNCTION {REGISTRY}.advanced_here_v2(p_seq oid) RETURNS boolean
LANGUAGE plpgsql AS $here$
-- Whether this session has called nextval() on a sequence (currval() is defined only
-- then): a sequence another session advanced meanwhile is that session's, not a write of
-- the migration, and must not be set back.
BEGIN
    PERFORM currval(p_seq::regclass);
    RETURN true;
EXCEPTION WHEN object_not_in_prerequisite_state OR undefined_table OR internal_error THEN
    -- (internal_error: "could not open relation", another session dropped it meanwhile)
    RETURN false;
END
$here$;

CREATE OR REPLACE FUNCTION {REGISTRY}.restore_sequences_v3(p_census text) RETURNS void
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
           OR NOT {REGISTRY}.advanced_here_v2(item.seq) THEN
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

CREATE OR REPLACE FUNCTION {REGISTRY}.before_v1(p_schema text) RETURNS jsonb
LANGUAGE sql STABLE AS $before$
    -- What a file's own drops are told apart by: the highest oid before it (what it makes
    -- has higher ones); what the schema held then, with what goes with its tables (their
    -- toast tables, rules, defaults, triggers, policies); and the names of the relations
    -- outside it, to name one the file drops.
    WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = p_schema),
    rel AS (SELECT c.oid, c.reltoastrelid FROM pg_class c, ns WHERE c.relnamespace = ns.oid)
    SELECT jsonb_build_object(
        'max', greatest((SELECT max(oid) FROM pg_class), (SELECT max(oid) FROM pg_type),
                        (SELECT max(oid) FROM pg_proc), (SELECT max(oid) FROM pg_namespace)),
        'own', (SELECT coalesce(jsonb_agg(o::bigint), '[]') FROM (
            SELECT oid AS o FROM rel
            UNION ALL SELECT reltoastrelid FROM rel WHERE reltoastrelid <> 0
            -- (up to PostgreSQL 13 a toast table has a row type, in pg_toast)
            UNION ALL SELECT t.reltype FROM pg_class t JOIN rel ON t.oid = rel.reltoastrelid
                WHERE t.reltype <> 0
            UNION ALL SELECT i.indexrelid FROM pg_index i
                JOIN rel ON i.indrelid = rel.reltoastrelid
            UNION ALL SELECT y.oid FROM pg_type y, ns WHERE y.typnamespace = ns.oid
            UNION ALL SELECT p.oid FROM pg_proc p, ns WHERE p.pronamespace = ns.oid
            UNION ALL SELECT k.oid FROM pg_constraint k, ns WHERE k.connamespace = ns.oid
            UNION ALL SELECT r.oid FROM pg_rewrite r JOIN rel ON r.ev_class = rel.oid
            UNION ALL SELECT d.oid FROM pg_attrdef d JOIN rel ON d.adrelid = rel.oid
            UNION ALL SELECT t.oid FROM pg_trigger t JOIN rel ON t.tgrelid = rel.oid
            UNION ALL SELECT l.oid FROM pg_policy l JOIN rel ON l.polrelid = rel.oid
        ) AS own),
        'names', (SELECT coalesce(jsonb_object_agg(c.oid::text,
                                                   c.relkind::text || c.oid::regclass::text),
                                  '{{}}')
                  FROM pg_class c
                  WHERE c.oid >= 16384 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                    AND c.relnamespace <> ALL ({REGISTRY}.skipped_ns_v1(p_schema))))
$before$;

CREATE OR REPLACE FUNCTION {REGISTRY}.file_start_v1(p_schema text) RETURNS bigint
LANGUAGE plpgsql AS $start$
-- What a file's transaction runs first: the census (unless the file before left it), what
-- the schema holds (`before_v1`), and an xid, so that age() is exact.
BEGIN
    IF left(coalesce(current_setting('{CENSUS_SETTING}', true), ''), length(p_schema) + 1)
       IS DISTINCT FROM p_schema || '|' THEN
        PERFORM set_config('{CENSUS_SETTING}',
                           p_schema || '|' || {REGISTRY}.census_v3(p_schema), false);
    END IF;
    PERFORM set_config('{BEFORE_SETTING}', {REGISTRY}.before_v1(p_schema)::text, false);
    RETURN txid_current();
END
$start$;

CREATE OR REPLACE FUNCTION {REGISTRY}.gone_v1(p_catalog regclass, p_oid oid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $gone$
DECLARE
    found boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE oid = $1)', p_catalog)
        INTO found USING p_oid;
    RETURN NOT found;
EXCEPTION WHEN undefined_column OR undefined_table THEN
    RETURN false;
END
$gone$;

CREATE OR REPLACE FUNCTION {REGISTRY}.dropped_here_v1(p_before jsonb) RETURNS text
LANGUAGE sql STABLE AS $dropped$
    -- The first object this transaction dropped that was there before the file and not in
    -- its schema: a drop holds an exclusive lock on what it dropped to the end of the
    -- transaction, so another session's drops never count. Named if it was a relation.
    SELECT coalesce(
        'relation ' || substr(p_before -> 'names' ->> l.relation::text, 2),
        replace(coalesce(l.classid::regclass::text, 'pg_class'), 'pg_', '')
            || ' with oid ' || coalesce(l.relation, l.objid))
    FROM pg_locks l
    WHERE l.pid = pg_backend_pid() AND l.mode = 'AccessExclusiveLock' AND l.granted
      AND l.locktype IN ('relation', 'object') AND l.database IN (0, (
          SELECT oid FROM pg_database WHERE datname = current_database()))
      AND coalesce(l.relation, l.objid) >= 16384
      AND coalesce(l.relation, l.objid)::bigint <= (p_before ->> 'max')::bigint
      AND NOT (p_before -> 'own') @> to_jsonb(coalesce(l.relation, l.objid)::bigint)
      AND {REGISTRY}.gone_v1(coalesce(l.classid, 'pg_class'::regclass::oid)::regclass,
                             coalesce(l.relation, l.objid))
    -- a table before what went with it (its sequences, its views)
    ORDER BY l.locktype = 'relation' DESC, (p_before -> 'names' ? l.relation::text) DESC,
             left(p_before -> 'names' ->> l.relation::text, 1) IN ('r', 'p') DESC
    LIMIT 1
$dropped$;

CREATE OR REPLACE FUNCTION {REGISTRY}.outside_v3(p_schema text, p_census text) RETURNS void
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
        PERFORM {REGISTRY}.restore_sequences_v3(p_census);
        RAISE EXCEPTION USING ERRCODE = '{OUTSIDE}',
            DETAIL = CASE WHEN hit.mode = 'RowExclusiveLock' THEN 'rows written'
                          ELSE 'altered' END,
            MESSAGE = (SELECT o.type || ' ' || o.identity
                       FROM pg_identify_object('pg_class'::regclass, hit.relation, 0) AS o);
    END LOOP;
    -- Roles: this transaction wrote pg_authid or pg_auth_members (its lock says so); the
    -- roles it made are named where the role may read pg_authid.
    IF EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation'
               AND relation IN (1260, 1261) AND mode = 'RowExclusiveLock') THEN
        BEGIN
            SELECT string_agg(rolname, ', ') INTO was FROM pg_authid
                WHERE age(xmin) = 0 OR {REGISTRY}.is_mine_v1(xmin, top);
        EXCEPTION WHEN insufficient_privilege THEN
            was := NULL;
        END;
        RAISE EXCEPTION USING ERRCODE = '{OUTSIDE}',
            DETAIL = CASE WHEN was IS NULL THEN 'created, altered or dropped' ELSE 'created' END,
            MESSAGE = 'role ' || coalesce(was, '(one this file wrote)');
    END IF;
    -- Drops: what this transaction dropped that was there before it, outside the schema.
    was := {REGISTRY}.dropped_here_v1(current_setting('{BEFORE_SETTING}', true)::jsonb);
    IF was IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '{OUTSIDE}', DETAIL = 'dropped', MESSAGE = was;
    END IF;
    now_ := {REGISTRY}.census_v3(p_schema);
    IF now_ IS DISTINCT FROM p_census THEN
        FOR hit IN
            SELECT split_part(b, '=', 1) AS k, split_part(b, '=', 2)::bigint AS n
            FROM unnest(string_to_array(p_census, ',')) AS b
        LOOP
            SELECT split_part(a, '=', 2)::bigint INTO num
            FROM unnest(string_to_array(now_, ',')) AS a WHERE split_part(a, '=', 1) = hit.k;
            IF hit.k LIKE 'seq:%' THEN
                IF num IS DISTINCT FROM hit.n
                   AND {REGISTRY}.advanced_here_v2(split_part(hit.k, ':', 2)::oid) THEN
                    PERFORM {REGISTRY}.restore_sequences_v3(p_census);
                    RAISE EXCEPTION USING ERRCODE = '{OUTSIDE}', DETAIL = 'advanced',
                        MESSAGE = 'sequence ' || split_part(hit.k, ':', 2)::oid::regclass::text;
                END IF;
            END IF;
        END LOOP;
    END IF;
    PERFORM set_config('{CENSUS_SETTING}', p_schema || '|' || now_, false);
END
$outside$;
"""
SIGNATURES = (
    "skipped_ns_v1(text)",
    "foreign_cast_v1(oid,oid,oid[])",
    "seq_value_v1(oid)",
    "census_v3(text)",
    "is_mine_v1(xid,bigint)",
    "advanced_here_v2(oid)",
    "restore_sequences_v3(text)",
    "before_v1(text)",
    "file_start_v1(text)",
    "gone_v1(regclass,oid)",
    "dropped_here_v1(jsonb)",
    "outside_v3(text,text)",
)
