"""A schema handed to a test after a reset equals one freshly migrated file by file."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
import pytest_asyncio

from pytest_pgmig import AsyncDatabaseManager, AsyncMigrationManager
from pytest_pgmig.engine.database import OneConnectionPool
from pytest_pgmig.isolation.base import Context, MigrationSet
from pytest_pgmig.isolation.schemas import SchemaIsolation
from pytest_pgmig.servers.info import ServerInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from migration_sets import migration_files
from plugin_support import drop_database
from reliability_support import tool
from typed_set import DIRTY_SQL, write_typed_set

SETS = {"default": (10, 11), "large": (50, 51)}


def write_set(folder: Path, tables: int, files: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in migration_files(tables, files, seed=True):
        (folder / name).write_text(text)
    return folder


def dump_schema(dsn: str, schema: str) -> str:
    out = subprocess.run(
        [tool("pg_dump"), "--schema-only", "--no-owner", "-n", schema, "-d", dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # \restrict lines carry a random key per dump (pg_dump's guard against injected psql)
    noise = ("-- Dumped", "\\restrict", "\\unrestrict")
    lines = [line for line in out.splitlines() if not line.startswith(noise)]
    return "\n".join(lines).replace(schema, "<schema>")


async def snapshot(conn: asyncpg.Connection, schema: str) -> dict[str, object]:
    """Every table's rows (tracking rows without times), and every sequence's state."""
    state: dict[str, object] = {}
    tables = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
        schema,
    )
    for row in tables:
        name = row["relname"]
        if name == "schema_migrations":
            query = (
                f"SELECT filename, checksum, replace(module_name, $1, '<schema>') AS m "
                f'FROM "{schema}".schema_migrations ORDER BY filename'
            )
            state[name] = [tuple(r) for r in await conn.fetch(query, schema)]
        else:
            rows = await conn.fetch(
                f'SELECT id, name, parent_id IS NULL FROM "{schema}"."{name}" ORDER BY id'
                if name != "t1"
                else f'SELECT id, name FROM "{schema}".t1 ORDER BY id'
            )
            state[name] = [tuple(r) for r in rows]
    seqs = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind = 'S' ORDER BY 1",
        schema,
    )
    for row in seqs:
        if row["relname"] == "schema_migrations_id_seq":
            # the ids of tracking rows: a batch of files rolled back (and applied again one by
            # one) used some, as a failed file does in production; no test reads them
            continue
        state[f"seq {row['relname']}"] = tuple(
            await conn.fetchrow(f'SELECT last_value, is_called FROM "{schema}"."{row["relname"]}"')
        )
    return state


@pytest.fixture(scope="module")
def nonsuper_dsn(pgmig_server: ServerInfo) -> Iterator[str]:
    """A role without superuser, owning a database of its own: the reset's TRUNCATE path."""
    name = f"eq_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pgmig_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
        conn.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
    yield pgmig_server.dsn.replace(
        "postgresql://postgres@/postgres?", f"postgresql://{name}@/{name}?"
    )
    drop_database(pgmig_server.dsn, name)
    with psycopg.connect(pgmig_server.dsn, autocommit=True) as conn:
        conn.execute(f'DROP ROLE "{name}"')


MODES = ["ddl-log", "fingerprint", "non-superuser"]


@pytest_asyncio.fixture
async def workspace(
    pgmig_server: ServerInfo, request: pytest.FixtureRequest
) -> AsyncIterator[SchemaIsolation]:
    mode = getattr(request, "param", "ddl-log")
    dsn = request.getfixturevalue("nonsuper_dsn") if mode == "non-superuser" else pgmig_server.dsn
    assert "postgres@/postgres?" in dsn or mode == "non-superuser"
    context = Context(
        admin_dsn=dsn,
        run=uuid.uuid4().hex[:8],
        worker="eq",
        module_default="bench",
        own_server=mode == "ddl-log",
    )
    ws = SchemaIsolation(context)
    await ws.start()
    yield ws
    await ws.close()


async def reference(dsn: str, folder: Path) -> str:
    """A schema migrated by the engine file by file, as production would."""
    name = f"ref_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        db = AsyncDatabaseManager(pool=OneConnectionPool(conn), schema=name)
        result = await AsyncMigrationManager(
            db, migrations_path=str(folder), module_name=f"bench_{name}"
        ).apply_pending_migrations()
        assert result["status"] == "success", result
    finally:
        await conn.close()
    return name


async def dirty(dsn: str) -> None:
    """What a test might do: rows everywhere, seed rows changed and removed, sequences moved."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO t1 (name) VALUES ('test-a'), ('test-b')")
        await conn.execute("UPDATE t1 SET name = 'renamed' WHERE name = 'seed-1'")
        await conn.execute("DELETE FROM t2 WHERE name = 'seed-child'")
        await conn.execute("INSERT INTO t2 (name, parent_id) VALUES ('c', 1)")
        await conn.execute("SELECT nextval('t3_id_seq'), nextval('t3_id_seq')")
        async with conn.transaction():
            await conn.execute("INSERT INTO t3 (name) VALUES ('in a committed tx')")
    finally:
        await conn.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("workspace", MODES, indirect=True)
@pytest.mark.parametrize("size", sorted(SETS))
async def test_reset_schema_equals_a_freshly_migrated_one(
    workspace: SchemaIsolation, tmp_path: Path, size: str
) -> None:
    folder = write_set(tmp_path / "migrations", *SETS[size])
    await check_reset_equals_fresh(workspace, folder, dirty, snapshot)


async def check_reset_equals_fresh(
    workspace: SchemaIsolation,
    folder: Path,
    make_dirty: Callable[[str], Awaitable[None]],
    take_snapshot: Callable[[asyncpg.Connection, str], Awaitable[object]],
) -> None:
    """Dirty a schema, reset it, and compare it with one freshly migrated file by file."""
    sets = (MigrationSet("bench", folder),)
    slot = await workspace.acquire(sets)
    name = slot.schema.name
    await make_dirty(slot.schema.dsn)
    await workspace.release(slot)
    again = await workspace.acquire(sets)
    assert workspace.stats.reset_failed == 0, workspace.stats.reset_cause
    assert again.schema.name == name, "a schema without DDL changes is reset, not replaced"

    dsn = workspace.context.admin_dsn
    ref = await reference(dsn, folder)
    conn = await asyncpg.connect(dsn)
    try:
        assert await take_snapshot(conn, name) == await take_snapshot(conn, ref)
        assert dump_schema(dsn, name) == dump_schema(dsn, ref)
    finally:
        await conn.execute(f'DROP SCHEMA "{ref}" CASCADE')
        await conn.close()
    await workspace.release(again)


@pytest.mark.asyncio
@pytest.mark.parametrize("workspace", MODES, indirect=True)
async def test_ddl_change_replaces_the_schema(workspace: SchemaIsolation, tmp_path: Path) -> None:
    folder = write_set(tmp_path / "migrations", 3, 3)
    sets = (MigrationSet("bench", folder),)
    slot = await workspace.acquire(sets)
    conn = await asyncpg.connect(slot.schema.dsn)
    try:
        await conn.execute("ALTER TABLE t1 ALTER COLUMN name SET DEFAULT 'x'")
    finally:
        await conn.close()
    await workspace.release(slot)
    fresh = await workspace.acquire(sets)
    assert fresh.schema.name != slot.schema.name
    conn = await asyncpg.connect(fresh.schema.dsn)
    try:
        default = await conn.fetchval(
            "SELECT column_default FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 't1' AND column_name = 'name'"
        )
        assert default is None
        gone = await conn.fetchval("SELECT to_regnamespace($1)", slot.schema.name)
        assert gone is None, "the changed schema was dropped"
    finally:
        await conn.close()


# every kind of DDL a test might run in its schema: each must get the schema replaced
DDL_KINDS = {
    "add column": "ALTER TABLE t1 ADD COLUMN extra int",
    "drop column": "ALTER TABLE t2 DROP COLUMN name",
    "set default": "ALTER TABLE t1 ALTER COLUMN name SET DEFAULT 'x'",
    "column type": "ALTER TABLE t1 ALTER COLUMN name TYPE varchar(200)",
    "new table": "CREATE TABLE scratch (id int)",
    "drop table": "DROP TABLE t3 CASCADE",
    "new index": "CREATE INDEX t1_name_lower ON t1 (lower(name))",
    "drop index": "DROP INDEX t1_created",
    "check constraint": "ALTER TABLE t1 ADD CONSTRAINT t1_check CHECK (id > 0)",
    "new trigger": "CREATE TRIGGER t2_again BEFORE UPDATE ON t2 "
    "FOR EACH ROW EXECUTE FUNCTION touch_updated_at()",
    "new function": "CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42'",
    "replaced function": "CREATE OR REPLACE FUNCTION touch_updated_at() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    "new type": "CREATE TYPE mood AS ENUM ('ok')",
    "new view": "CREATE VIEW t1_names AS SELECT name FROM t1",
    "comment": "COMMENT ON TABLE t1 IS 'changed'",
    "column comment": "COMMENT ON COLUMN t1.name IS 'changed'",
    "sequence": "ALTER SEQUENCE t1_id_seq INCREMENT BY 5",
    "policy": "CREATE POLICY everyone ON t1 USING (true)",
    "rename": "ALTER TABLE t2 RENAME TO t2_renamed",
    "grant": "GRANT SELECT ON t1 TO PUBLIC",
}


@pytest.mark.asyncio
@pytest.mark.parametrize("workspace", MODES, indirect=True)
@pytest.mark.parametrize("ddl", sorted(DDL_KINDS))
async def test_every_kind_of_ddl_replaces_the_schema(
    workspace: SchemaIsolation, tmp_path: Path, ddl: str
) -> None:
    folder = write_set(tmp_path / "migrations", 3, 3)
    sets = (MigrationSet("bench", folder),)
    first = await workspace.acquire(sets)
    await workspace.release(first)  # the first reset makes the schema's reset function
    slot = await workspace.acquire(sets)
    conn = await asyncpg.connect(slot.schema.dsn)
    try:
        await conn.execute(DDL_KINDS[ddl])
    finally:
        await conn.close()
    await workspace.release(slot)
    again = await workspace.acquire(sets)
    assert again.schema.name != slot.schema.name, f"{ddl}: the schema was reset, not replaced"
    await workspace.release(again)


async def rows_as_text(conn: asyncpg.Connection, schema: str) -> dict[str, list[str]]:
    """Every table's and materialized view's rows as text, and every sequence's state."""
    rels = await conn.fetch(
        "SELECT c.relname, c.relkind::text AS relkind FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'm', 'S') "
        "AND c.relname <> 'schema_migrations' ORDER BY 1",
        schema,
    )
    state = {}
    for row in rels:
        query = (
            f'SELECT last_value::text || is_called::text FROM "{schema}"."{row["relname"]}"'
            if row["relkind"] == "S"
            else f'SELECT t::text FROM "{schema}"."{row["relname"]}" AS t ORDER BY 1'
        )
        state[row["relname"]] = [r[0] for r in await conn.fetch(query)]
    return state


@pytest.mark.asyncio
@pytest.mark.parametrize("workspace", MODES, indirect=True)
async def test_reset_restores_seed_rows_of_types_of_its_own(
    workspace: SchemaIsolation, tmp_path: Path
) -> None:
    """Enums, domains, composite and range types, arrays of them, identity and generated
    columns, a partitioned table and a materialized view: a reset schema equals a fresh one."""
    folder = write_typed_set(tmp_path / "migrations")
    await check_reset_equals_fresh(workspace, folder, dirty_typed, rows_as_text)


async def dirty_typed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in DIRTY_SQL:
            await conn.execute(statement)
    finally:
        await conn.close()
