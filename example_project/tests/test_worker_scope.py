"""One migrated schema for the whole worker in this module: `pgmig` marker, scope="worker".

Each test's work is undone at teardown: pgmig_conn/pgmig_db run inside a transaction that is
rolled back, and what pgmig_pool or pgmig_dsn commit is undone by a reset of the schema.
"""

from __future__ import annotations

import os

import asyncpg
import psycopg
import pytest
from pytest_pgmig import AsyncDatabaseManager

from taskq import TaskQueue

pytestmark = pytest.mark.pgmig(scope="worker")

SCHEMAS_SEEN: set[str] = set()
PROBES = ["first", "second", "third"]


@pytest.fixture(autouse=True)
def one_schema_per_worker(pgmig_schema) -> None:
    # Every test of this module in this process gets the same schema.
    SCHEMAS_SEEN.add(pgmig_schema.name)
    assert len(SCHEMAS_SEEN) == 1, (os.getpid(), SCHEMAS_SEEN)


@pytest.mark.parametrize("probe", PROBES)
async def test_pgmig_db_writes_are_rolled_back(tq: TaskQueue, probe: str) -> None:
    assert (await tq.stats())["default"].queued == 0
    job = await tq.enqueue("default", {"probe": probe})
    # a transaction of the application's own becomes a savepoint inside the test's
    claimed = await tq.claim("default", worker="w1")
    assert claimed is not None and claimed.id == job.id
    await tq.fail(job.id, worker="w1", error="boom")
    assert (await tq.stats())["default"].queued == 1


@pytest.mark.parametrize("probe", PROBES)
async def test_pool_commits_are_reset(pgmig_pool: asyncpg.Pool, probe: str) -> None:
    async with pgmig_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
        assert await conn.fetchval("SELECT count(*) FROM queues") == 3
        await conn.execute(
            "INSERT INTO jobs (queue, payload) "
            "VALUES ('emails', json_build_object('probe', $1::text))",
            probe,
        )
        # deleting seed rows is undone too: the next test finds the three queues again
        await conn.execute("DELETE FROM queues WHERE name = 'reports'")


@pytest.mark.parametrize("probe", PROBES)
def test_psycopg_commits_are_reset(pgmig_dsn: str, probe: str) -> None:
    with psycopg.connect(pgmig_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM job_events").fetchone() == (0,)
        conn.execute("INSERT INTO queues (name) VALUES (%s)", (f"sync_{probe}",))
        conn.execute("INSERT INTO jobs (queue) VALUES (%s)", (f"sync_{probe}",))
    with psycopg.connect(pgmig_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM queues").fetchone() == (4,)


async def test_sequences_restart_for_each_test(pgmig_db: AsyncDatabaseManager) -> None:
    first = await TaskQueue(pgmig_db).enqueue("default")
    assert first.id == 1
