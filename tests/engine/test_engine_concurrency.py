"""Exactly-once application under 8 concurrent OS processes on a fresh schema."""

# ruff: noqa: F811  (pytest fixtures imported from engine_support are redefined as arguments)

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from engine_support import admin_dsn, schema, write  # noqa: F401

pytestmark = pytest.mark.asyncio

PROCESSES = 8
REPO = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, json, os, sys, time
import asyncpg
from pytest_pgmig import AsyncDatabaseManager, AsyncMigrationManager, DatabaseConfig

async def main(dsn, schema, folder, mode, barrier, count):
    pool = None
    if mode == "pool":
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        db = AsyncDatabaseManager(pool=pool, schema=schema)
    else:
        db = AsyncDatabaseManager(
            DatabaseConfig(connection_string=dsn, schema=schema, max_connections=2)
        )
    # a barrier: every process ready (its interpreter and pool up) before any connects
    os.close(os.open(os.path.join(barrier, str(os.getpid())), os.O_CREAT))
    deadline = time.monotonic() + 60
    while len(os.listdir(barrier)) < count:
        assert time.monotonic() < deadline, "not every process got ready"
        time.sleep(0.005)
    await db.connect()
    try:
        result = await AsyncMigrationManager(
            db, folder, module_name="race"
        ).apply_pending_migrations()
    finally:
        await db.disconnect()
        if pool is not None:
            await pool.close()
    print(json.dumps({"status": result["status"], "error": result.get("error"),
                      "applied": [a["filename"] for a in result["applied"]]}))

asyncio.run(main(*sys.argv[1:6], int(sys.argv[6])))
"""

FILES = {
    "001_users.sql": "CREATE TABLE {{tables.users}} (id serial PRIMARY KEY, email text UNIQUE);",
    "002_seed.sql": "INSERT INTO users (email) VALUES ('admin@example.com');",
    "003_posts.sql": "BEGIN;\nCREATE TABLE posts (id serial PRIMARY KEY, "
    "user_id int REFERENCES users (id));\nCOMMIT;",
    "004_index.sql": "CREATE INDEX CONCURRENTLY posts_user ON posts (user_id);",
    "005_counter.sql": "CREATE TABLE counter (n int);\nINSERT INTO counter VALUES (1);",
}


@pytest.mark.parametrize("mode", ["config", "pool"])
async def test_eight_processes_apply_each_file_exactly_once(
    admin_dsn: str, schema: str, tmp_path: Path, mode: str
) -> None:
    folder = write(tmp_path / "m", dict(FILES))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    barrier = tmp_path / "ready"
    barrier.mkdir()
    args = [admin_dsn, schema, str(folder), mode, str(barrier), str(PROCESSES)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(PROCESSES)
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert "pg_type_typname_nsp_index" not in err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert all(r["status"] in ("success", "up_to_date") for r in results), results
    applied = sorted(name for r in results for name in r["applied"])
    assert applied == sorted(FILES)  # each file applied by exactly one process

    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetch(f'SELECT filename FROM "{schema}".schema_migrations ORDER BY id')
        assert [row["filename"] for row in rows] == sorted(FILES)
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".users') == 1
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".counter') == 1
    finally:
        await conn.close()


async def test_a_relation_dropped_under_a_catalog_scan_counts_as_transient(
    admin_dsn: str,
) -> None:
    """What the outside-write check meets when another session drops a sequence while it
    reads the sequences' values: the error is the server's timing, so the file is tried
    again in a new schema instead of failing its tests."""
    from pytest_pgmig.engine.apply import is_transient

    name = f"gone_{os.getpid()}"
    reader = await asyncpg.connect(admin_dsn)
    dropper = await asyncpg.connect(admin_dsn)
    try:
        await dropper.execute(f"CREATE SEQUENCE public.{name}")
        async with reader.transaction(isolation="repeatable_read"):
            await reader.fetchval("SELECT 1")  # the snapshot still holds the sequence
            await dropper.execute(f"DROP SEQUENCE public.{name}")
            with pytest.raises(asyncpg.PostgresError) as raised:
                await reader.fetchval(
                    "SELECT pg_sequence_last_value(oid) FROM pg_class WHERE relname = $1", name
                )
        assert "could not open relation with OID" in str(raised.value)
        assert is_transient(raised.value)
    finally:
        await dropper.execute(f"DROP SEQUENCE IF EXISTS public.{name}")
        await reader.close()
        await dropper.close()
