"""The job queue: enqueue, claim (``FOR UPDATE SKIP LOCKED``), complete, retry, dead-letter."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from pytest_pgmig import AsyncDatabaseManager, AsyncMigrationManager

from taskq.models import Job, JobEvent, QueueStats

MIGRATIONS = Path(__file__).parent / "migrations"

_COLUMNS = (
    "id",
    "queue",
    "payload",
    "status",
    "priority",
    "attempts",
    "run_after",
    "locked_by",
    "last_error",
    "dedupe_key",
    "created_at",
    "updated_at",
)
# Kept apart from the query text so that the queries stay plain strings with {{tables.x}}.
_JOB_COLUMNS = ", ".join(_COLUMNS)
_J_COLUMNS = ", ".join(f"j.{column}" for column in _COLUMNS)


class UnknownQueue(LookupError):
    """The queue does not exist (the ``jobs.queue`` foreign key refused it)."""


class DuplicateJob(ValueError):
    """A live job with the same ``dedupe_key`` is already in the queue."""


class JobNotFound(LookupError):
    """No job with that id is in the state the operation needs."""


async def migrate(db: AsyncDatabaseManager, *, module: str = "taskq") -> dict[str, Any]:
    """Bring ``db``'s schema up to date; module_name includes the schema (dual-mode safe).

    Example::

        db = AsyncDatabaseManager(DatabaseConfig(connection_string=dsn, schema="tenant_1"))
        await db.connect()
        await migrate(db)  # tracked as module_name="taskq_tenant_1"
    """
    manager = AsyncMigrationManager(
        db, migrations_path=str(MIGRATIONS), module_name=f"{module}_{db.schema}"
    )
    result = await manager.apply_pending_migrations()
    if result["status"] not in ("success", "up_to_date"):
        raise RuntimeError(f"taskq migrations failed: {result}")
    return result


class TaskQueue:
    """Jobs in PostgreSQL, many workers, each job run by one worker at a time.

    Example::

        tq = TaskQueue(db)
        job = await tq.enqueue("emails", {"to": "ada@example.com"})
        claimed = await tq.claim("emails", worker="w1")
        await tq.complete(claimed.id, worker="w1")
    """

    def __init__(self, db: AsyncDatabaseManager) -> None:
        self.db = db

    async def create_queue(self, name: str, *, max_attempts: int = 3) -> None:
        """Add a queue (no-op if it exists)."""
        await self.db.execute(
            "INSERT INTO {{tables.queues}} (name, max_attempts) VALUES ($1, $2) "
            "ON CONFLICT (name) DO NOTHING",
            name,
            max_attempts,
        )

    async def queues(self) -> list[str]:
        """The names of all queues."""
        rows = await self.db.fetch_all("SELECT name FROM {{tables.queues}} ORDER BY name")
        return [row["name"] for row in rows]

    async def set_paused(self, name: str, paused: bool) -> None:
        """Pause (workers claim nothing from it) or resume a queue."""
        status = await self.db.execute(
            "UPDATE {{tables.queues}} SET paused = $2 WHERE name = $1", name, paused
        )
        if status == "UPDATE 0":
            raise UnknownQueue(name)

    async def enqueue(
        self,
        queue: str,
        payload: dict[str, Any] | None = None,
        *,
        priority: int = 0,
        run_after: datetime | None = None,
        dedupe_key: str | None = None,
    ) -> Job:
        """Add a job; higher ``priority`` runs first, nothing runs before ``run_after``."""
        try:
            row = await self.db.fetch_one(
                "INSERT INTO {{tables.jobs}} (queue, payload, priority, run_after, dedupe_key) "
                "VALUES ($1, $2::jsonb, $3, coalesce($4, now()), $5) "
                "RETURNING " + _JOB_COLUMNS,
                queue,
                json.dumps(payload or {}),
                priority,
                run_after,
                dedupe_key,
            )
        except asyncpg.ForeignKeyViolationError:
            raise UnknownQueue(queue) from None
        except asyncpg.UniqueViolationError:
            raise DuplicateJob(f"{queue}: a live job has dedupe_key {dedupe_key!r}") from None
        assert row is not None
        return Job.from_row(row)

    async def get(self, job_id: int) -> Job:
        """One job by id."""
        row = await self.db.fetch_one(
            "SELECT " + _JOB_COLUMNS + " FROM {{tables.jobs}} WHERE id = $1", job_id
        )
        if row is None:
            raise JobNotFound(job_id)
        return Job.from_row(row)

    async def claim(self, queue: str, *, worker: str) -> Job | None:
        """Take the next due job of an unpaused queue, or ``None``; concurrent workers never
        take the same job (``FOR UPDATE SKIP LOCKED``)."""
        row = await self.db.fetch_one(
            """
            UPDATE {{tables.jobs}} AS j
            SET status = 'running', locked_by = $2, locked_at = now(), attempts = attempts + 1
            WHERE j.id = (
                SELECT id FROM {{tables.jobs}}
                WHERE queue = $1 AND status = 'queued' AND run_after <= now()
                  AND NOT (SELECT paused FROM {{tables.queues}} WHERE name = $1)
                ORDER BY priority DESC, run_after, id
                LIMIT 1
                FOR UPDATE SKIP LOCKED
            )
            RETURNING """
            + _J_COLUMNS,
            queue,
            worker,
        )
        return None if row is None else Job.from_row(row)

    async def complete(self, job_id: int, *, worker: str) -> Job:
        """Mark a running job held by ``worker`` done."""
        row = await self.db.fetch_one(
            "UPDATE {{tables.jobs}} SET status = 'done', locked_by = NULL, locked_at = NULL "
            "WHERE id = $1 AND status = 'running' AND locked_by = $2 RETURNING " + _JOB_COLUMNS,
            job_id,
            worker,
        )
        if row is None:
            raise JobNotFound(f"job {job_id} is not running under {worker!r}")
        return Job.from_row(row)

    async def fail(self, job_id: int, *, worker: str, error: str) -> Job:
        """Record a failure: retry after the queue's ``retry_delay``, or, once the queue's
        ``max_attempts`` is spent, mark it failed and copy it to ``dead_letters``."""
        async with self.db.transaction() as tx:
            row = await tx.fetch_one(
                """
                UPDATE {{tables.jobs}} AS j
                SET status = CASE WHEN j.attempts >= q.max_attempts THEN 'failed' ELSE 'queued' END,
                    run_after = CASE WHEN j.attempts >= q.max_attempts THEN j.run_after
                                     ELSE now() + q.retry_delay END,
                    locked_by = NULL, locked_at = NULL, last_error = $3
                FROM {{tables.queues}} AS q
                WHERE q.name = j.queue AND j.id = $1 AND j.status = 'running'
                  AND j.locked_by = $2
                RETURNING """
                + _J_COLUMNS,
                job_id,
                worker,
                error,
            )
            if row is None:
                raise JobNotFound(f"job {job_id} is not running under {worker!r}")
            job = Job.from_row(row)
            if job.status == "failed":
                await tx.execute(
                    "INSERT INTO {{tables.dead_letters}} "
                    "(job_id, queue, payload, attempts, last_error) "
                    "VALUES ($1, $2, $3::jsonb, $4, $5)",
                    job.id,
                    job.queue,
                    json.dumps(job.payload),
                    job.attempts,
                    error,
                )
        return job

    async def dead_letters(self, queue: str) -> list[dict[str, Any]]:
        """The jobs of ``queue`` that ran out of attempts, oldest first."""
        return await self.db.fetch_all(
            "SELECT job_id, attempts, last_error FROM {{tables.dead_letters}} "
            "WHERE queue = $1 ORDER BY died_at, job_id",
            queue,
        )

    async def events(self, job_id: int) -> list[JobEvent]:
        """The job's status changes, in order."""
        rows = await self.db.fetch_all(
            "SELECT job_id, old_status, new_status FROM {{tables.job_events}} "
            "WHERE job_id = $1 ORDER BY id",
            job_id,
        )
        return [JobEvent(**row) for row in rows]

    async def stats(self) -> dict[str, QueueStats]:
        """Counts per queue and status, from the ``queue_stats`` view."""
        rows = await self.db.fetch_all("SELECT * FROM {{tables.queue_stats}} ORDER BY queue")
        return {row["queue"]: QueueStats(**row) for row in rows}
