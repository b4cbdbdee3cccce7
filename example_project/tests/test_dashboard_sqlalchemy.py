"""The app's own SQLAlchemy async engine on `pgmig_dsn`, shared across tests on a session loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from taskq import TaskQueue
from taskq.dashboard import make_engine, queue_depths

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def engine(pgmig_dsn: str) -> AsyncIterator[AsyncEngine]:
    """The engine the app makes at start-up, here on the test's schema."""
    engine = make_engine(pgmig_dsn)
    yield engine
    await engine.dispose()


async def test_idle_queues_show_empty(engine: AsyncEngine) -> None:
    assert await queue_depths(engine) == {"default": 0, "emails": 0, "reports": 0}


async def test_depths_follow_the_queue(engine: AsyncEngine, tq: TaskQueue) -> None:
    # the queue writes through pgmig_db (asyncpg) on the same session loop as the engine
    await tq.enqueue("emails", {"to": "ada@example.com"})
    await tq.enqueue("emails", {"to": "alan@example.com"})
    await tq.enqueue("reports")
    assert await queue_depths(engine) == {"default": 0, "emails": 2, "reports": 1}
