"""taskq: a PostgreSQL job queue on asyncpg (the example application of pytest-pgmig)."""

from __future__ import annotations

from taskq.models import Job, JobEvent, QueueStats
from taskq.queue import (
    MIGRATIONS,
    DuplicateJob,
    JobNotFound,
    TaskQueue,
    UnknownQueue,
    migrate,
)

__all__ = [
    "MIGRATIONS",
    "DuplicateJob",
    "Job",
    "JobEvent",
    "JobNotFound",
    "QueueStats",
    "TaskQueue",
    "UnknownQueue",
    "migrate",
]
