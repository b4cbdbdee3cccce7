"""The down check: each ``.down.sql`` brings the schema back to what it was before its up."""

from __future__ import annotations

from dataclasses import dataclass, field

from pytest_pgmig.checks.snapshot import Snapshot, differences, explain
from pytest_pgmig.checks.workspace import Workspace, file_failed
from pytest_pgmig.engine.apply import Applier
from pytest_pgmig.engine.files import MigrationFile, decode, load_migrations, plan_for, read_bytes
from pytest_pgmig.engine.sqltext import ScriptPlan
from pytest_pgmig.errors import CheckFailed, MigrationError
from pytest_pgmig.isolation.base import Sets


@dataclass
class DownReport:
    """What the down check did: the ups whose down it checked, the ups that have none, and
    those whose down holds no statement (kept to mark an irreversible migration)."""

    checked: list[str] = field(default_factory=list)
    without: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.checked)} down file(s) undo their up exactly"
        for names, what in (
            (self.without, "without a down"),
            (self.empty, "with an empty down (irreversible)"),
        ):
            if names:
                listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                text += f"; {len(names)} migration(s) {what}, skipped: {listed}"
        return text


async def check_downs(ws: Workspace, sets: Sets) -> DownReport:
    """Apply the last set's ups one by one; after each, its down then the up again.

    Raises `CheckFailed` at the first down that fails or leaves the schema other than it
    was before its up, and at an up that cannot be applied again after its down or then
    gives another schema than the first time. An up that fails on its own raises its
    `MigrationError` (the tests fail on it too).

    Example::

        report = await check_downs(workspace, (MigrationSet("app", Path("migrations")),))
        print(report.summary())
    """
    applier = await ws.prepare(sets)
    report = DownReport()
    current: Snapshot | None = None  # the schema now, when known
    for file in load_migrations(sets[-1].path):
        down = _read_down(file)
        if down is None or not down.statements:
            await applier.apply(ws.conn, file.filename, file.checksum, file.plan)
            (report.without if down is None else report.empty).append(file.filename)
            current = None
            continue
        before = current if current is not None else await ws.snapshot()
        await applier.apply(ws.conn, file.filename, file.checksum, file.plan)
        applied = await ws.snapshot()
        current = await _round_trip(ws, applier, file, down, before, applied)
        report.checked.append(file.filename)
    return report


def _read_down(file: MigrationFile) -> ScriptPlan | None:
    """How to run the file's down, None when it has none; a bad one fails the check."""
    if file.down is None:
        return None
    name = file.down.name
    try:
        return plan_for(decode(read_bytes(file.down), name), name)
    except MigrationError as exc:
        raise file_failed(f"{name} cannot be read", exc, f"Fix {file.down}.") from None


async def _round_trip(
    ws: Workspace,
    applier: Applier,
    file: MigrationFile,
    plan: ScriptPlan,
    before: Snapshot,
    applied: Snapshot,
) -> Snapshot:
    """Run the file's down, compare, apply the up again, compare; the schema after."""
    assert file.down is not None
    down, up = file.down.name, file.filename
    try:
        await applier.revert(ws.conn, down, plan, up=up)
    except MigrationError as exc:
        raise file_failed(
            f"{down} fails", exc, f"Fix {file.down} so that it undoes {up}."
        ) from None
    found = differences(before, await ws.snapshot())
    if found:
        raise CheckFailed(
            f"{down} does not undo {up}:\n"
            + explain(found, f"after {down}", f"before {up}")
            + f"\nMake {down} undo exactly what {up} does."
        )
    try:
        await applier.apply(ws.conn, up, file.checksum, file.plan)
    except MigrationError as exc:
        raise file_failed(
            f"{up} fails when applied again after {down}",
            exc,
            f"{down} leaves something behind that {up} creates: make it undo all of {up}.",
        ) from None
    again = await ws.snapshot()
    found = differences(applied, again)
    if found:
        raise CheckFailed(
            f"{up} applied again after {down} gives another schema than the first time:\n"
            + explain(
                found, f"after {down} and {up} again", f"after {up} the first time", extra="is new"
            )
        )
    return again
