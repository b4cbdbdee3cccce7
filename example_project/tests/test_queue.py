"""The queue's behaviour through `pgmig_db`: each test starts from a freshly migrated schema."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from asyncpg import Connection
from pytest_pgmig import AsyncDatabaseManager

from taskq import DuplicateJob, JobEvent, JobNotFound, TaskQueue, UnknownQueue


async def test_enqueue_fills_defaults(tq: TaskQueue) -> None:
    job = await tq.enqueue("emails", {"to": "ada@example.com"})
    assert job.status == "queued"
    assert job.attempts == 0
    assert job.payload == {"to": "ada@example.com"}
    assert job.locked_by is None
    assert job.run_after <= datetime.now(timezone.utc)


async def test_seeded_queues_are_present(tq: TaskQueue) -> None:
    assert await tq.queues() == ["default", "emails", "reports"]


async def test_unknown_queue_is_refused_by_the_foreign_key(tq: TaskQueue) -> None:
    with pytest.raises(UnknownQueue):
        await tq.enqueue("nope", {})


async def test_claim_takes_the_highest_priority_first(tq: TaskQueue) -> None:
    low = await tq.enqueue("default", {"n": 1}, priority=0)
    high = await tq.enqueue("default", {"n": 2}, priority=10)
    first = await tq.claim("default", worker="w1")
    second = await tq.claim("default", worker="w1")
    assert first is not None and second is not None
    assert [first.id, second.id] == [high.id, low.id]
    assert first.status == "running" and first.locked_by == "w1" and first.attempts == 1
    assert await tq.claim("default", worker="w1") is None


async def test_claim_waits_for_run_after(tq: TaskQueue) -> None:
    await tq.enqueue("default", run_after=datetime.now(timezone.utc) + timedelta(hours=1))
    assert await tq.claim("default", worker="w1") is None


async def test_paused_queue_hands_out_nothing(tq: TaskQueue) -> None:
    await tq.enqueue("reports", {"month": "2024-01"})
    await tq.set_paused("reports", True)
    assert await tq.claim("reports", worker="w1") is None
    await tq.set_paused("reports", False)
    assert await tq.claim("reports", worker="w1") is not None


async def test_dedupe_key_allows_one_live_job(tq: TaskQueue, pgmig_conn: Connection) -> None:
    await tq.enqueue("emails", {"to": "ada"}, dedupe_key="welcome:ada")
    # The test goes on after an SQL error, so the failing statement runs in a savepoint:
    # in worker scope the whole test is one transaction, which an error would abort.
    # (pgmig_db works on pgmig_conn's connection, so the savepoint covers tq's query.)
    with pytest.raises(DuplicateJob):
        async with pgmig_conn.transaction():
            await tq.enqueue("emails", {"to": "ada"}, dedupe_key="welcome:ada")
    job = await tq.claim("emails", worker="w1")
    assert job is not None
    await tq.complete(job.id, worker="w1")
    # the partial unique index covers live jobs only: a finished job frees its key
    again = await tq.enqueue("emails", {"to": "ada"}, dedupe_key="welcome:ada")
    assert again.id != job.id


async def test_complete_needs_the_worker_holding_the_job(tq: TaskQueue) -> None:
    await tq.enqueue("default")
    job = await tq.claim("default", worker="w1")
    assert job is not None
    with pytest.raises(JobNotFound):
        await tq.complete(job.id, worker="w2")
    done = await tq.complete(job.id, worker="w1")
    assert done.status == "done" and done.locked_by is None


async def test_failure_retries_after_the_queue_delay(tq: TaskQueue) -> None:
    await tq.enqueue("emails", {"to": "bob"})  # emails: 5 attempts, retried after 1 minute
    job = await tq.claim("emails", worker="w1")
    assert job is not None
    retried = await tq.fail(job.id, worker="w1", error="SMTP timeout")
    assert retried.status == "queued"
    assert retried.last_error == "SMTP timeout"
    assert retried.run_after > datetime.now(timezone.utc) + timedelta(seconds=30)
    assert await tq.claim("emails", worker="w1") is None


async def test_last_attempt_goes_to_dead_letters(tq: TaskQueue) -> None:
    await tq.enqueue("reports", {"month": "2024-02"})  # reports: a single attempt
    job = await tq.claim("reports", worker="w1")
    assert job is not None
    dead = await tq.fail(job.id, worker="w1", error="disk full")
    assert dead.status == "failed"
    assert await tq.dead_letters("reports") == [
        {"job_id": job.id, "attempts": 1, "last_error": "disk full"}
    ]


async def test_trigger_records_every_status_change(tq: TaskQueue) -> None:
    await tq.enqueue("default")
    job = await tq.claim("default", worker="w1")
    assert job is not None
    await tq.complete(job.id, worker="w1")
    assert await tq.events(job.id) == [
        JobEvent(job.id, None, "queued"),
        JobEvent(job.id, "queued", "running"),
        JobEvent(job.id, "running", "done"),
    ]


async def test_trigger_touches_updated_at(tq: TaskQueue) -> None:
    job = await tq.enqueue("default")
    claimed = await tq.claim("default", worker="w1")
    assert claimed is not None
    assert claimed.updated_at > job.updated_at
    assert claimed.created_at == job.created_at


async def test_stats_view_counts_per_queue(tq: TaskQueue) -> None:
    for n in range(3):
        await tq.enqueue("emails", {"n": n})
    job = await tq.claim("emails", worker="w1")
    assert job is not None
    stats = await tq.stats()
    assert set(stats) == {"default", "emails", "reports"}
    assert (stats["emails"].queued, stats["emails"].running) == (2, 1)
    assert stats["default"].queued == 0


async def test_templates_render_into_the_test_schema(pgmig_db: AsyncDatabaseManager) -> None:
    rendered = pgmig_db.prepare_query("SELECT * FROM {{tables.jobs}}")
    assert rendered == f'SELECT * FROM "{pgmig_db.schema}"."jobs"'
    where = await pgmig_db.fetch_value(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'jobs' "
        "AND table_schema = $1",
        pgmig_db.schema,
    )
    assert where == pgmig_db.schema


@pytest.mark.parametrize("probe", ["first", "second"])
async def test_no_test_sees_another_tests_rows(tq: TaskQueue, probe: str) -> None:
    # Whichever of the two runs second proves that the other's job is gone.
    assert (await tq.stats())["default"].queued == 0
    await tq.enqueue("default", {"probe": probe})
    assert (await tq.stats())["default"].queued == 1
