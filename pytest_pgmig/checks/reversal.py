"""The down check: each migration's down brings the schema back to what it was before its up."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from pytest_pgmig.checks import accepted, snapshot
from pytest_pgmig.checks.failed import file_failed
from pytest_pgmig.checks.snapshot import Difference, Snapshot, differences, explain
from pytest_pgmig.engine.apply import Applier
from pytest_pgmig.engine.files import MigrationFile, plan_for
from pytest_pgmig.engine.formats import load_migrations
from pytest_pgmig.engine.sqltext import ScriptPlan, blank, split
from pytest_pgmig.engine.templates import quote_identifier
from pytest_pgmig.errors import CheckFailed, MigrationError
from pytest_pgmig.isolation.base import Sets
from pytest_pgmig.isolation.workspace import Workspace


@dataclass
class DownReport:
    """What the down check did: the ups whose down it checked, the ups that have none, and
    those whose down holds no statement (kept to mark an irreversible migration)."""

    checked: list[str] = field(default_factory=list)
    without: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # "down: declared difference"
    verified: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.checked)} down file(s) undo their up exactly"
        if self.verified:
            text += f"; {len(self.verified)} verify script(s) pass"
        for names, what in (
            (self.accepted, "difference(s) accepted by -- pgmig:down-differs"),
            (self.without, "migration(s) without a down, skipped"),
            (self.empty, "migration(s) with an empty down (irreversible), skipped"),
        ):
            if names:
                listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                text += f"; {len(names)} {what}: {listed}"
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
    for file in load_migrations(sets[-1].path, sets[-1].reading):
        down = _read_down(file)
        if down is None or not down.statements:
            await applier.apply_file(ws.conn, file)
            await _verify(ws, applier, file, report)
            (report.without if down is None else report.empty).append(file.filename)
            current = None
            continue
        before = current if current is not None else await snapshot.of(ws)
        await applier.apply_file(ws.conn, file)
        await _verify(ws, applier, file, report)
        applied = await snapshot.of(ws)
        current = await _round_trip(ws, applier, file, down, before, applied, report)
        report.checked.append(file.filename)
    return report


def _read_down(file: MigrationFile) -> ScriptPlan | None:
    """How to run the file's down, None when it has none; a bad one fails the check."""
    if file.down is None:
        return None
    try:
        return plan_for(file.down.text, file.down.name)
    except MigrationError as exc:
        raise file_failed(
            f"{file.down.name} cannot be read", exc, f"Fix {file.down.path}."
        ) from None


async def _verify(ws: Workspace, applier: Applier, file: MigrationFile, report: DownReport) -> None:
    """Run the migration's verify script (sqitch's) in a transaction rolled back after it."""
    script = file.verify
    if script is None:
        return
    # its own BEGIN and ROLLBACK are blanked: ours wrap it, and always roll back
    text = blank(script.text, [s for s in split(script.text) if s.kind != "sql"])
    path = ", ".join(
        map(quote_identifier, dict.fromkeys([ws.schema, *applier.options.search_path]))
    )
    try:
        await ws.conn.execute(f"BEGIN; SET LOCAL search_path TO {path};{text}\n;")
    except asyncpg.PostgresError as exc:
        raise CheckFailed(
            f"{script.name} fails after {file.filename}: {type(exc).__name__}: {exc}\n"
            f"Fix {file.filename} so that it does what {script.name} checks, or fix "
            f"{script.path}."
        ) from None
    finally:
        await ws.conn.execute("ROLLBACK")
    report.verified.append(script.name)


async def _round_trip(
    ws: Workspace,
    applier: Applier,
    file: MigrationFile,
    plan: ScriptPlan,
    before: Snapshot,
    applied: Snapshot,
    report: DownReport,
) -> Snapshot:
    """Run the file's down, compare, apply the up again, compare; the schema after."""
    assert file.down is not None
    down, up = file.down.name, file.filename
    declared = accepted.declared(file.down.text, down)
    try:
        await applier.revert(ws.conn, down, plan, up=up)
    except MigrationError as exc:
        raise file_failed(
            f"{down} fails", exc, f"Fix {file.down.path} so that it undoes {up}."
        ) from None
    found = _undeclared(differences(before, await snapshot.of(ws)), declared, down, report)
    if found:
        raise CheckFailed(
            f"{down} does not undo {up}:\n"
            + explain(found, f"after {down}", f"before {up}")
            + f"\nMake {down} undo exactly what {up} does."
        )
    try:
        await applier.apply_file(ws.conn, file)
    except MigrationError as exc:
        raise file_failed(
            f"{up} fails when applied again after {down}",
            exc,
            f"{down} leaves something behind that {up} creates: make it undo all of {up}.",
        ) from None
    again = await snapshot.of(ws)
    found, _ = accepted.split(differences(applied, again), declared)
    if found:
        raise CheckFailed(
            f"{up} applied again after {down} gives another schema than the first time:\n"
            + explain(
                found, f"after {down} and {up} again", f"after {up} the first time", extra="is new"
            )
        )
    return again


def _undeclared(
    found: list[Difference], declared: list[accepted.Accepted], down: str, report: DownReport
) -> list[Difference]:
    """The differences the down does not declare; a declaration that matches none fails."""
    left, taken = accepted.split(found, declared)
    used = {a for a, _ in taken}
    for declaration in declared:
        if declaration not in used and not left:
            raise CheckFailed(
                f"{down} line {declaration.line}: '-- pgmig:down-differs {declaration.text}' "
                "matches no difference: the down now undoes it exactly (remove the comment), "
                "or the comment names the object wrongly (KIND TABLE.NAME [ASPECT], as the "
                "check's messages name it)."
            )
    report.accepted += [f"{down}: {a.text}" for a, _ in taken]
    return left
