"""Many workers at once through `pgmig_pool`: a job is never handed out twice."""

from __future__ import annotations

import asyncio

import asyncpg
from pytest_pgmig import AsyncDatabaseManager

from taskq import TaskQueue


async def test_concurrent_workers_never_share_a_job(pgmig_pool: asyncpg.Pool, pgmig_schema) -> None:
    # AsyncDatabaseManager over the plugin's pool: each query takes its own connection.
    tq = TaskQueue(AsyncDatabaseManager(pool=pgmig_pool, schema=pgmig_schema.name))
    await asyncio.gather(*(tq.enqueue("default", {"n": n}) for n in range(20)))

    async def worker(name: str) -> list[int]:
        taken = []
        while (job := await tq.claim("default", worker=name)) is not None:
            taken.append(job.id)
            await tq.complete(job.id, worker=name)
        return taken

    results = await asyncio.gather(*(worker(f"w{i}") for i in range(4)))
    claimed = [job_id for taken in results for job_id in taken]
    assert len(claimed) == 20
    assert len(set(claimed)) == 20
    assert (await tq.stats())["default"].done == 20


async def test_pool_connections_share_the_schema(pgmig_pool: asyncpg.Pool, pgmig_schema) -> None:
    async with pgmig_pool.acquire() as a, pgmig_pool.acquire() as b:
        await a.execute("INSERT INTO jobs (queue) VALUES ('emails')")
        assert await b.fetchval("SELECT count(*) FROM jobs WHERE queue = 'emails'") == 1
        assert await b.fetchval("SELECT current_schema()") == pgmig_schema.name
