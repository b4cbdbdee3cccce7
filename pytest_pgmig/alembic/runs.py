"""Where each ``alembic upgrade heads`` of the pytest process runs: here, or a process of its own.

Applications cache their settings (the database URL) per process: the first upgrade may run
in the pytest process, where it costs no interpreter start; every later one, into another
schema or database, runs in a process of its own, where no cached setting can send it to the
first target. A conftest's `pytest_pgmig_alembic_config` hook can only run here, so with one
every upgrade runs here: the hook is where such a project points its settings each time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from pytest_pgmig.alembic.listen import Watch
from pytest_pgmig.alembic.steps import Steps
from pytest_pgmig.alembic.target import Target
from pytest_pgmig.alembic.upgrade import Adjust, revision_count, run_command


class _Here:
    """Whether this process has run an upgrade already: the process's state, not a run's
    (a second pytest session in one interpreter inherits the cached settings too)."""

    lock = threading.Lock()
    used = False

    @classmethod
    def take(cls) -> bool:
        with cls.lock:
            first, cls.used = not cls.used, True
            return first


async def upgrade_heads(
    ini: Path,
    target: Target,
    env: Sequence[tuple[str, str]],
    hook: Adjust | None = None,
    *,
    watch: Watch | None = None,
) -> int:
    """Apply every head of `ini`'s history to `target` (see `upgrade.run_command`), here
    when it is the process's first or a hook must run, else in a process of its own; the
    history's number of revisions."""
    if hook is not None or _Here.take():

        def here() -> int:
            return revision_count(run_command(ini, target, env, "upgrade", "heads", hook, watch))

        return await asyncio.to_thread(here)
    steps = await Steps.start(ini, target, env, watch)
    try:
        return await steps.upgrade(ini)
    finally:
        await steps.close()
