"""Raw SQL through `pgmig_conn`: the constraints and objects the migrations create."""

from __future__ import annotations

import asyncpg
import pytest
from pytest_pgmig import AsyncDatabaseManager


async def test_search_path_starts_with_the_test_schema(
    pgmig_conn: asyncpg.Connection, pgmig_schema
) -> None:
    assert await pgmig_conn.fetchval("SELECT current_schema()") == pgmig_schema.name
    # unqualified names resolve into the schema, as in 001_create_queues.sql
    assert await pgmig_conn.fetchval("SELECT count(*) FROM queues") == 3


async def test_status_check_constraint(pgmig_conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await pgmig_conn.execute("INSERT INTO jobs (queue, status) VALUES ('default', 'lost')")


async def test_running_job_must_name_its_worker(pgmig_conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await pgmig_conn.execute("INSERT INTO jobs (queue, status) VALUES ('default', 'running')")


async def test_queue_name_and_attempts_are_checked(pgmig_conn: asyncpg.Connection) -> None:
    # savepoints keep the test's transaction usable after each error (see worker scope)
    with pytest.raises(asyncpg.CheckViolationError):
        async with pgmig_conn.transaction():
            await pgmig_conn.execute("INSERT INTO queues (name) VALUES ('Bad Name')")
    with pytest.raises(asyncpg.CheckViolationError):
        async with pgmig_conn.transaction():
            await pgmig_conn.execute("INSERT INTO queues (name, max_attempts) VALUES ('x', 0)")
    assert await pgmig_conn.fetchval("SELECT count(*) FROM queues") == 3


async def test_deleting_a_queue_cascades_to_its_jobs_and_events(
    pgmig_conn: asyncpg.Connection,
) -> None:
    await pgmig_conn.execute("INSERT INTO jobs (queue) VALUES ('reports'), ('default')")
    await pgmig_conn.execute("DELETE FROM queues WHERE name = 'reports'")
    assert await pgmig_conn.fetchval("SELECT count(*) FROM jobs") == 1
    assert await pgmig_conn.fetchval("SELECT count(*) FROM job_events") == 1


async def test_concurrent_index_was_built_and_is_valid(pgmig_conn: asyncpg.Connection) -> None:
    row = await pgmig_conn.fetchrow(
        "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) AS definition "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = 'jobs_ready' AND c.relnamespace = current_schema()::regnamespace"
    )
    assert row is not None
    assert row["indisvalid"]
    assert "WHERE (status = 'queued'::text)" in row["definition"]


async def test_trigger_functions_live_in_the_schema(pgmig_db: AsyncDatabaseManager) -> None:
    names = await pgmig_db.fetch_all(
        "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = $1::regnamespace "
        "ORDER BY p.proname",
        pgmig_db.schema,
    )
    assert [row["proname"] for row in names] == ["record_job_event", "touch_updated_at"]


async def test_own_transaction_rolls_back(pgmig_conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        async with pgmig_conn.transaction():
            await pgmig_conn.execute("INSERT INTO jobs (queue) VALUES ('default')")
            await pgmig_conn.execute("INSERT INTO jobs (queue) VALUES ('missing')")
    assert await pgmig_conn.fetchval("SELECT count(*) FROM jobs") == 0
