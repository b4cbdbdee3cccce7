"""Resetting a schema: what its template holds, and the reset function's SQL (built purely)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from pytest_pgmig.engine.templates import quote_identifier as q
from pytest_pgmig.engine.templates import sql_literal as lit
from pytest_pgmig.isolation.names import REGISTRY
from pytest_pgmig.isolation.registry import reset_function

TRACKING_TABLE = "schema_migrations"

# The tables a reset empties (partitions go with their parent), with their columns: the
# ones an INSERT may name, and the same read out of a row value `r`.
_TABLES = f"""
SELECT c.relname,
       string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
           FILTER (WHERE a.attgenerated = '') AS cols,
       string_agg('(r).' || quote_ident(a.attname), ', ' ORDER BY a.attnum)
           FILTER (WHERE a.attgenerated = '') AS fields
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND c.relname <> {lit(TRACKING_TABLE)}
GROUP BY c.relname ORDER BY c.relname
"""
_SEQUENCES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind = 'S' ORDER BY c.relname
"""


# what a schema holds, by oid, when its state is first taken (see `Known`)
_KNOWN = """
SELECT array(SELECT oid FROM pg_class WHERE relnamespace = n.oid ORDER BY oid),
       array(SELECT oid FROM pg_proc WHERE pronamespace = n.oid
             UNION ALL SELECT oid FROM pg_type WHERE typnamespace = n.oid
             UNION ALL SELECT oid FROM pg_constraint WHERE connamespace = n.oid ORDER BY 1),
       greatest((SELECT max(oid) FROM pg_class), (SELECT max(oid) FROM pg_proc),
                (SELECT max(oid) FROM pg_type), (SELECT max(oid) FROM pg_constraint))
FROM pg_namespace n WHERE n.nspname = $1
"""


@dataclass(frozen=True)
class Known:
    """What a schema held when its state was first taken: its relations (`rels`), its
    functions, types and constraints (`objs`), and the highest oid then (`max_oid`).

    The DDL fingerprint (`pgmig_registry.fingerprint_v2`) reads these rows by oid, and
    anything newer by an oid above `max_oid`, through the catalogs' indexes.
    """

    rels: tuple[int, ...]
    objs: tuple[int, ...]
    max_oid: int


async def known(conn: asyncpg.Connection, schema: str) -> Known:
    """What `schema` holds now (see `Known`)."""
    rels, objs, max_oid = await conn.fetchrow(_KNOWN, schema)
    return Known(tuple(rels), tuple(objs), int(max_oid))


async def known_and_state(conn: asyncpg.Connection, schema: str, *, log: bool) -> tuple[Known, str]:
    """What `schema` holds now, and its state read with it, in one round trip."""
    rels, objs, max_oid, state = await conn.fetchrow(
        f"SELECT k.*, {REGISTRY}.state_v2($1, ARRAY[{lit(TRACKING_TABLE)}], $2, k.rels, "
        f"k.objs, k.max_oid) FROM ({_KNOWN}) AS k (rels, objs, max_oid)",
        schema,
        log,
    )
    return Known(tuple(rels), tuple(objs), int(max_oid)), str(state)


def state_sql(schema: str, seen: Known, log: str) -> str:
    """The SQL expression of `schema`'s state (`log`: the expression saying whether the DDL
    log answers).

    >>> state_sql("s1", Known((1, 2), (3,), 9), "p_log")
    "pgmig_registry.state_v2(E's1', ARRAY[E'schema_migrations'], p_log, '{1,2}', '{3}', 9::oid)"
    """

    def array(oids: tuple[int, ...]) -> str:
        return "'{" + ",".join(map(str, oids)) + "}'"

    return (
        f"{REGISTRY}.state_v2({lit(schema)}, ARRAY[{lit(TRACKING_TABLE)}], {log}, "
        f"{array(seen.rels)}, {array(seen.objs)}, {seen.max_oid}::oid)"
    )


@dataclass(frozen=True)
class Table:
    """A table a reset empties: its name, insertable columns, and those read from ``r``."""

    name: str
    cols: str
    fields: str


@dataclass(frozen=True)
class SequenceState:
    """A sequence and the state the template has it in."""

    name: str
    value: int
    called: bool


@dataclass(frozen=True)
class Template:
    """What a reset restores a schema of one migration set to: its seed rows and sequences.

    ``seeded`` maps each table that holds rows after migrating to the hash of those rows
    (``pgmig_registry.rows_v1``); ``name`` is the schema whose same-named tables keep those
    rows as text, one row a value in column ``r`` (see `keep_seeds`).
    """

    name: str
    seeded: dict[str, str]
    sequences: tuple[SequenceState, ...]


async def tables(conn: asyncpg.Connection, schema: str) -> list[Table]:
    """The tables of `schema` a reset empties, in name order."""
    return [Table(r["relname"], r["cols"], r["fields"]) for r in await conn.fetch(_TABLES, schema)]


async def capture(
    conn: asyncpg.Connection, schema: str, its_tables: Sequence[Table] | None = None
) -> Template:
    """What a freshly migrated `schema` holds: its seed rows' hashes and sequence states
    (`its_tables`: its `tables`, when the caller has them already)."""
    # one round trip for the tables and one for the sequences: this runs on the first
    # test's path, and a long history has a hundred of each
    its_tables = its_tables if its_tables is not None else await tables(conn, schema)
    seeded: dict[str, str] = {}
    if its_tables:
        rows = " UNION ALL ".join(
            f"SELECT {lit(t.name)}, CASE WHEN EXISTS (SELECT 1 FROM {q(schema)}.{q(t.name)}) "
            f"THEN {REGISTRY}.rows_v1({lit(schema)}, {lit(t.name)}) END"
            for t in its_tables
        )
        seeded = {name: hashed for name, hashed in await conn.fetch(rows) if hashed is not None}
    names = [row["relname"] for row in await conn.fetch(_SEQUENCES, schema)]
    sequences: list[SequenceState] = []
    if names:
        values = " UNION ALL ".join(
            f"SELECT {lit(name)}, last_value, is_called FROM {q(schema)}.{q(name)}"
            for name in names
        )
        found = {row[0]: row for row in await conn.fetch(values)}
        sequences = [SequenceState(n, int(found[n][1]), bool(found[n][2])) for n in names]
    return Template(schema, seeded, tuple(sequences))


async def keep_seeds(conn: asyncpg.Connection, captured: Template, store: str) -> Template:
    """Copy the seed rows `captured` found into schema `store` (which exists), each row as
    its text: the copy depends on no type of the schema it came from, and a reset casts it
    back to the row type of the schema it restores. The template, now read from `store`."""
    await conn.execute(
        "".join(
            f"CREATE TABLE {q(store)}.{q(table)} AS "
            f"SELECT t::text AS r FROM {q(captured.name)}.{q(table)} AS t;\n"
            for table in captured.seeded
        )
        or "SELECT 1"
    )
    return Template(store, captured.seeded, captured.sequences)


def reset_function_sql(
    schema: str,
    tables: Sequence[Table],
    template: Template | None,
    *,
    replica: bool,
    seen: Known,
) -> str:
    """The ``CREATE FUNCTION`` of one schema's reset, static SQL with its plans cached.

    The function ends what the test left on the schema, returns NULL if its DDL or
    tracking rows changed, removes the test's rows, restores the seed rows it changed from
    the template and the sequences, and returns the schema's state. In replica role (a
    superuser's session) rows go by DELETE in any order with no trigger firing; otherwise
    the tables holding rows are truncated together.

    >>> sql = reset_function_sql(
    ...     "s1", [Table("t", "id", "(r).id")], None, replica=True, seen=Known((), (), 0)
    ... )
    >>> "DELETE FROM \\"s1\\".\\"t\\";" in sql and "TRUNCATE" not in sql
    True
    """
    clear, reseed = [], []
    for table in tables:
        cleared, reseeded = _table_sql(schema, table, template, replica=replica)
        clear.append(cleared)
        reseed += reseeded
    state = state_sql(schema, seen, "p_log")
    body = clear
    if not replica:
        body += [
            "IF cardinality(dirty) > 0 THEN",
            "    EXECUTE 'TRUNCATE ' || array_to_string(dirty, ', ') || ' CASCADE';",
            *reseed,
            "END IF;",
        ]
    body += _sequences_sql(schema, template)
    if not replica:
        # TRUNCATE gave the tables new files: a catalog fingerprint sees a new state
        body.append(f"IF cardinality(dirty) > 0 THEN\n    RETURN {state};\nEND IF;")
    return (
        f"CREATE OR REPLACE FUNCTION {reset_function(schema)}(p_state text, p_app text, "
        "p_all boolean, p_log boolean) RETURNS text LANGUAGE plpgsql AS $pgmig_reset$\n"
        "DECLARE\n    dirty text[] := '{}';\nBEGIN\n"
        "IF p_app IS NOT NULL THEN\n"
        f"    PERFORM {REGISTRY}.end_sessions_v1({lit(q(schema))}::regnamespace, "
        "p_app, p_all);\nEND IF;\n"
        f"IF {state} IS DISTINCT FROM p_state THEN\n    RETURN NULL;\nEND IF;\n"
        + "\n".join(body)
        + "\nRETURN p_state;\nEND\n$pgmig_reset$"
    )


def _table_sql(
    schema: str, table: Table, template: Template | None, *, replica: bool
) -> tuple[str, list[str]]:
    """What empties one table (or marks it for TRUNCATE), and what then restores its seed."""
    rel = f"{q(schema)}.{q(table.name)}"
    if template is None or table.name not in template.seeded:
        if replica:
            return f"DELETE FROM {rel};", []
        marks = f"dirty := dirty || {lit(rel)}::text;"
        return f"IF EXISTS (SELECT 1 FROM {rel}) THEN {marks} END IF;", []
    changed = (
        f"{REGISTRY}.rows_v1({lit(schema)}, {lit(table.name)}) "
        f"IS DISTINCT FROM {lit(template.seeded[table.name])}"
    )
    # The seed rows are kept as text (`keep_seeds`): read back as this schema's row type, so
    # its enums, domains and composite types are its own.
    insert = (
        f"INSERT INTO {rel} ({table.cols}) OVERRIDING SYSTEM VALUE "
        f"SELECT {table.fields} FROM (SELECT s.r::{rel} AS r "
        f"FROM {q(template.name)}.{q(table.name)} AS s) AS seed;"
    )
    if replica:
        return f"IF {changed} THEN\n    DELETE FROM {rel};\n    {insert}\nEND IF;", []
    # the seed goes back after a TRUNCATE ... CASCADE, which may empty a seeded table it
    # references
    return (
        f"IF {changed} THEN dirty := dirty || {lit(rel)}::text; END IF;",
        [f"IF {changed} THEN\n    {insert}\nEND IF;"],
    )


def _sequences_sql(schema: str, template: Template | None) -> list[str]:
    """Set each sequence back to the template's state, where it moved (in a function)."""
    statements = []
    for seq in template.sequences if template is not None else ():
        ref = f"{lit(q(schema) + '.' + q(seq.name))}::regclass"
        expected = str(seq.value) if seq.called else "NULL"
        statements.append(
            f"PERFORM setval({ref}, {seq.value}, {str(seq.called).lower()}) "
            f"WHERE pg_sequence_last_value({ref}) IS DISTINCT FROM {expected};"
        )
    return statements


def sequences_sql(schema: str, template: Template | None) -> str:
    """What a rolled-back test leaves to undo (nextval does not roll back): each sequence it
    moved set back to the template's state, in one statement with one result; "" for a set
    without sequences.

    It runs in the test's transaction, after ``ROLLBACK TO SAVEPOINT``: nextval and setval
    lock a sequence until the transaction ends, so the sequences the transaction holds a
    lock on are those it may have moved, and only they are read (a set with a hundred
    sequences costs what the test touched). setval itself does not roll back.
    """
    sequences = template.sequences if template is not None else ()
    if not sequences:
        return ""
    rows = ", ".join(
        f"({lit(q(schema) + '.' + q(seq.name))}::regclass, {seq.value}::bigint, "
        f"{str(seq.called).lower()})"
        for seq in sequences
    )
    return (
        f"SELECT count(setval(s.seq, s.value, s.called)) FROM (VALUES {rows}) "
        "AS s(seq, value, called) WHERE CASE WHEN s.seq::oid IN (SELECT relation FROM pg_locks "
        "WHERE pid = pg_backend_pid() AND locktype = 'relation') "
        "THEN pg_sequence_last_value(s.seq) IS DISTINCT FROM CASE WHEN s.called THEN s.value END "
        "END;"
    )
    return (
        f"SELECT count(setval(s.seq, s.value, s.called)) FROM (VALUES {rows}) "
        "AS s(seq, value, called) "
        "WHERE pg_sequence_last_value(s.seq) IS DISTINCT FROM CASE WHEN s.called THEN s.value END;"
    )
