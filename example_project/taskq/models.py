"""The rows taskq hands out, as frozen dataclasses built from query results."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Job:
    """One job: what to run (``payload``), where it is in its life, and who holds it."""

    id: int
    queue: str
    payload: dict[str, Any]
    status: str
    priority: int
    attempts: int
    run_after: datetime
    locked_by: str | None
    last_error: str | None
    dedupe_key: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """Build a job from a ``jobs`` row (asyncpg returns jsonb as text)."""
        payload = row["payload"]
        return cls(
            id=row["id"],
            queue=row["queue"],
            payload=json.loads(payload) if isinstance(payload, str) else payload,
            status=row["status"],
            priority=row["priority"],
            attempts=row["attempts"],
            run_after=row["run_after"],
            locked_by=row["locked_by"],
            last_error=row["last_error"],
            dedupe_key=row["dedupe_key"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True)
class JobEvent:
    """A status change of a job, written by the ``jobs_record_event`` trigger."""

    job_id: int
    old_status: str | None
    new_status: str


@dataclass(frozen=True)
class QueueStats:
    """One row of the ``queue_stats`` view."""

    queue: str
    paused: bool
    queued: int
    running: int
    done: int
    failed: int
