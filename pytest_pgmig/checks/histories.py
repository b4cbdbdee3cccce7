"""The down check of an Alembic history: each downgrade undoes its upgrade, one step at a time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pytest_pgmig.alembic.listen import Watch
from pytest_pgmig.alembic.steps import Steps
from pytest_pgmig.alembic.target import Target
from pytest_pgmig.alembic.upgrade import history
from pytest_pgmig.checks import snapshot
from pytest_pgmig.checks.snapshot import differences, explain
from pytest_pgmig.errors import CheckFailed
from pytest_pgmig.isolation.workspace import Workspace


async def check_alembic_downs(ws: Workspace, ini: Path, env: Sequence[tuple[str, str]]) -> str:
    """Upgrade one revision at a time; after each, its downgrade must give back the schema
    as it was, and the upgrade again the same schema as the first time. A revision whose
    downgrade does nothing is irreversible (counted, skipped); a branched history is
    upgraded whole, its downgrades not checked."""
    steps = await _start(ws, ini, env)
    try:
        revisions = history(ini)
        if not revisions:
            await _step(steps, "upgrade", "heads", "")
            return "a branched history: its downgrades are not checked"
        checked: list[str] = []
        skipped: list[str] = []
        before = await snapshot.of(ws)
        for revision, down, path, acts in revisions:
            name = Path(path).name
            await _step(steps, "upgrade", revision, name)
            applied = await snapshot.of(ws)
            if not acts:
                skipped.append(name)
                before = applied
                continue
            await _step(steps, "downgrade", down or "base", name)
            found = differences(before, await snapshot.of(ws))
            if found:
                raise CheckFailed(
                    f"{name}: its downgrade does not undo its upgrade:\n"
                    + explain(
                        found, f"after downgrading {revision}", f"before upgrading {revision}"
                    )
                    + f"\nMake downgrade() in {path} undo exactly what upgrade() does."
                )
            await _step(steps, "upgrade", revision, name)
            again = await snapshot.of(ws)
            found = differences(applied, again)
            if found:
                raise CheckFailed(
                    f"{name} upgraded again after its downgrade gives another schema:\n"
                    + explain(found, "the second time", "the first time", extra="is new")
                )
            before = again
            checked.append(name)
    finally:
        await steps.close()
    text = f"{len(checked)} downgrade(s) undo their upgrade exactly"
    if skipped:
        text += f"; {len(skipped)} without a downgrade, skipped: {', '.join(skipped[:3])}"
    return text


async def _start(ws: Workspace, ini: Path, env: Sequence[tuple[str, str]]) -> Steps:
    """Alembic's process for the workspace: in a schema, the extensions are left alone, as in
    the tests' schemas, and each transaction is checked for writes outside it."""
    watch = None
    if not ws.database:
        installed = await ws.conn.fetchval("SELECT array_agg(extname) FROM pg_extension")
        check = ws.options.check
        sql = (check.before_sql(), check.after_sql()) if check is not None else None
        watch = Watch(frozenset(installed), sql)
    return await Steps.start(ini, Target.from_dsn(ws.dsn, schema=ws.schema), env, watch)


async def _step(steps: Steps, command: str, revision: str, name: str) -> None:
    answer = await steps.run(command, revision)
    if not answer.get("ok"):
        what = f"{name}'s {command}" if name else f"alembic {command} {revision}"
        raise CheckFailed(f"{what} fails: {answer.get('error')}")


async def check_models(ws: Workspace, ini: Path, env: Sequence[tuple[str, str]]) -> str:
    """``alembic check`` after ``upgrade heads``: env.py's ``target_metadata`` must find
    nothing to autogenerate against the migrated schema."""
    steps = await _start(ws, ini, env)
    try:
        await _step(steps, "upgrade", "heads", "")
        answer = await steps.run("check", "")
    finally:
        await steps.close()
    if not answer.get("ok"):
        raise CheckFailed(
            f"the models (env.py's target_metadata) do not match what {ini.name}'s history "
            f"makes: {answer.get('error')}\nAdd a revision for the difference (alembic "
            "revision --autogenerate), or fix the models."
        )
    return "the models match the migrated schema"
