"""The idempotence check: every migration, run a second time, succeeds and changes nothing."""

from __future__ import annotations

from pytest_pgmig.checks import snapshot
from pytest_pgmig.checks.failed import file_failed
from pytest_pgmig.checks.snapshot import differences, explain
from pytest_pgmig.engine.formats import load_migrations
from pytest_pgmig.errors import CheckFailed, MigrationError
from pytest_pgmig.isolation.base import Sets
from pytest_pgmig.isolation.workspace import Workspace


async def check_idempotent(ws: Workspace, sets: Sets) -> str:
    """Apply the last set, then run each of its files once more, in order.

    A file run again must succeed and leave the structure and every table's rows as they
    were; raises `CheckFailed` naming the first that does not. The summary, when all pass.

    Example::

        print(await check_idempotent(workspace, (MigrationSet("app", Path("migrations")),)))
    """
    applier = await ws.prepare(sets)
    files = load_migrations(sets[-1].path, sets[-1].reading)
    for file in files:
        await applier.apply_file(ws.conn, file)
    current = await snapshot.of(ws, rows=True)
    for file in files:
        try:
            await applier.run(ws.conn, file.filename, file.plan)
        except MigrationError as exc:
            raise file_failed(
                f"{file.filename} fails when run a second time",
                exc,
                f"Make {file.path} idempotent (CREATE ... IF NOT EXISTS, INSERT ... ON "
                "CONFLICT DO NOTHING), or turn this check off (pgmig_check_idempotent = off).",
            ) from None
        after = await snapshot.of(ws, rows=True)
        found = differences(current, after)
        if found:
            when = f"after running {file.filename} a second time"
            raise CheckFailed(
                f"{file.filename} changes what is there when run a second time:\n"
                + explain(found, when, "after the first run", extra="is new")
                + f"\nMake {file.path} idempotent (guard each change by what is already "
                "there), or turn this check off (pgmig_check_idempotent = off)."
            )
        current = after
    return f"{len(files)} migration(s) run a second time without error or change"
