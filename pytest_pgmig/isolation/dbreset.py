"""Resetting a database in place: what its template holds so that each copy can reset itself."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from pytest_pgmig.engine.templates import quote_identifier as q
from pytest_pgmig.isolation import functions, reset
from pytest_pgmig.isolation.names import REGISTRY
from pytest_pgmig.isolation.registry import reset_function

# where a template keeps each schema's seed rows (the nth user schema's in _0, _1, ...)
SEED_PREFIX = "pgmig_seed_"
# the call that resets a copy, on a session of its own in that copy: its new state, or NULL
# when the test changed what a reset cannot undo (the copy is then cloned again)
RESET = f"SELECT {REGISTRY}.reset_database_v1($1, $2, $3)"

# the schemas a set's migrations made or filled: all but the system's and ours
_USER_SCHEMAS = r"""
SELECT nspname FROM pg_namespace
WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\_%'
  AND nspname NOT LIKE 'pgmig\_%'
ORDER BY nspname
"""

_OUTER = f"""
CREATE OR REPLACE FUNCTION {REGISTRY}.outer_v1() RETURNS text
LANGUAGE plpgsql STABLE AS $outer$
-- What no schema's fingerprint covers: the schemas themselves, and the extensions, casts,
-- event triggers and publications of the database. A test that changes one needs a new copy.
BEGIN
RETURN (SELECT md5(coalesce(string_agg(x, ',' ORDER BY x), '')) FROM (
    SELECT 'n' || n.oid || ':' || n.xmin FROM pg_namespace n
        WHERE n.nspname NOT LIKE 'pg\\_%'
    UNION ALL SELECT 'e' || e.oid || ':' || e.xmin FROM pg_extension e
    UNION ALL SELECT 'c' || c.oid || ':' || c.xmin FROM pg_cast c WHERE c.oid >= 16384
    UNION ALL SELECT 't' || t.oid || ':' || t.xmin FROM pg_event_trigger t
    UNION ALL SELECT 'p' || p.oid || ':' || p.xmin FROM pg_publication p
) AS catalog(x));
END
$outer$;

"""


def database_functions_sql(schemas: Sequence[tuple[str, reset.Known]]) -> str:
    """The state and reset functions of a database whose migrated schemas are `schemas`.

    A database's state is the `outer_v1` hash and each schema's state, space-separated; its
    reset ends the test's sessions, then resets each schema with that schema's own reset
    function, and gives NULL as soon as one part differs from the state it was handed.

    >>> none = reset.Known((), (), 0)
    >>> sql = database_functions_sql([("app", none), ("public", none)])
    >>> "reset_app" in sql and "st[3]" in sql
    True
    """
    parts = " || ' ' || ".join(
        [f"{REGISTRY}.outer_v1()"]
        + [f"coalesce({reset.state_sql(s, seen, 'p_log')}, '-')" for s, seen in schemas]
    )
    steps = "".join(
        f"    one := {reset_function(s)}(st[{i}], NULL, false, p_log);\n"
        "    IF one IS NULL THEN\n        RETURN NULL;\n    END IF;\n"
        "    got := got || ' ' || one;\n"
        for i, (s, _) in enumerate(schemas, start=2)
    )
    return (
        f"CREATE OR REPLACE FUNCTION {REGISTRY}.database_state_v1(p_log boolean) RETURNS text "
        f"LANGUAGE sql STABLE AS $state$ SELECT {parts} $state$;\n"
        f"CREATE OR REPLACE FUNCTION {REGISTRY}.reset_database_v1("
        "p_state text, p_all boolean, p_log boolean) RETURNS text "
        "LANGUAGE plpgsql AS $reset$\nDECLARE\n"
        "    st text[] := string_to_array(p_state, ' ');\n"
        f"    got text := {REGISTRY}.outer_v1();\n    one text;\nBEGIN\n"
        # every session in the copy is the last test's (a harness may keep a few idle ones)
        f"    PERFORM {REGISTRY}.end_sessions_v1(0, NULL, p_all);\n"
        "    IF got IS DISTINCT FROM st[1] THEN\n        RETURN NULL;\n    END IF;\n"
        f"{steps}    RETURN got;\nEND\n$reset$;\n"
    )


async def prepare(conn: asyncpg.Connection, *, replica: bool, log: bool) -> str:
    """Make a freshly migrated template database able to reset its copies; its state.

    Run on a session in the template, after its migrations: the registry's functions (and
    with `log`, a DDL log of every schema), a copy of each schema's seed rows, each
    schema's reset function (`replica`: rows go by DELETE in a superuser's replica-role
    session), and the database's own state and reset functions. Every copy has them all.
    """
    await conn.execute(
        f"CREATE SCHEMA IF NOT EXISTS {REGISTRY};\n"
        + functions.script(own_server=log, every_schema=True)
        + _OUTER
    )
    schemas = [row["nspname"] for row in await conn.fetch(_USER_SCHEMAS)]
    known = []
    for i, schema in enumerate(schemas):
        seed = f"{SEED_PREFIX}{i}"
        tables = await reset.tables(conn, schema)
        captured = await reset.capture(conn, schema, tables)
        await conn.execute(f"CREATE SCHEMA {q(seed)}")
        template = await reset.keep_seeds(conn, captured, seed)
        seen = await reset.known(conn, schema)
        known.append((schema, seen))
        await conn.execute(
            reset.reset_function_sql(schema, tables, template, replica=replica, seen=seen)
        )
    await conn.execute(database_functions_sql(known))
    state: str = await conn.fetchval(f"SELECT {REGISTRY}.database_state_v1($1)", log)
    return state
