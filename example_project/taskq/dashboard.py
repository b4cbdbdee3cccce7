"""The dashboard's read side, on SQLAlchemy's async engine (as a FastAPI app would have it)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def make_engine(dsn: str) -> AsyncEngine:
    """The app's engine for a libpq-style DSN (``postgresql://...``), on asyncpg."""
    return create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))


async def queue_depths(engine: AsyncEngine) -> dict[str, int]:
    """Queued jobs per queue, idle queues included, from the ``queue_stats`` view."""
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT queue, queued FROM queue_stats ORDER BY queue"))
        return {queue: int(queued) for queue, queued in rows}
