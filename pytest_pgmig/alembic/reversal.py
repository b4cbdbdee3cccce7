"""The down check of an Alembic history: each downgrade undoes its upgrade, one step at a time."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pytest_pgmig.alembic.target import Target
from pytest_pgmig.alembic.upgrade import history
from pytest_pgmig.checks.snapshot import differences, explain
from pytest_pgmig.checks.workspace import Workspace
from pytest_pgmig.errors import CheckFailed, MigrationError

_STEP_TIMEOUT = 600.0


class Steps:
    """Alembic commands run one at a time in a process of the check's own (see
    `pytest_pgmig.alembic.steps`), so that no cached setting points at another database."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, ini: Path, target: Target, env: Sequence[tuple[str, str]]) -> Steps:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pytest_pgmig.alembic.steps",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ini.parent,
        )
        steps = cls(process)
        setup = {"ini": str(ini), "target": asdict(target), "env": [list(p) for p in env]}
        await steps._send(json.dumps(setup))
        return steps

    async def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def run(self, command: str, revision: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        await self._send(f"{command} {revision}")
        line = await asyncio.wait_for(self.process.stdout.readline(), _STEP_TIMEOUT)
        if not line:
            raise MigrationError(
                f"alembic {command} {revision} ended its process without an answer.",
                hint="Run `alembic upgrade heads` by hand to see why.",
            )
        try:
            answer: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            raise MigrationError(
                f"alembic {command} {revision} answered {line[:200]!r}, not its result.",
                hint="Something in env.py wrote to the check's channel; report it.",
            ) from None
        return answer

    async def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()


async def check_alembic_downs(ws: Workspace, ini: Path, env: Sequence[tuple[str, str]]) -> str:
    """Upgrade one revision at a time; after each, its downgrade must give back the schema
    as it was, and the upgrade again the same schema as the first time. A revision whose
    downgrade does nothing is irreversible (counted, skipped); a branched history is
    upgraded whole, its downgrades not checked."""
    steps = await Steps.start(ini, Target.from_dsn(ws.dsn), env)
    try:
        revisions = history(ini)
        if not revisions:
            await _step(steps, "upgrade", "heads", "")
            return "a branched history: its downgrades are not checked"
        checked: list[str] = []
        skipped: list[str] = []
        before = await ws.snapshot()
        for revision, down, path, acts in revisions:
            name = Path(path).name
            await _step(steps, "upgrade", revision, name)
            applied = await ws.snapshot()
            if not acts:
                skipped.append(name)
                before = applied
                continue
            await _step(steps, "downgrade", down or "base", name)
            found = differences(before, await ws.snapshot())
            if found:
                raise CheckFailed(
                    f"{name}: its downgrade does not undo its upgrade:\n"
                    + explain(
                        found, f"after downgrading {revision}", f"before upgrading {revision}"
                    )
                    + f"\nMake downgrade() in {path} undo exactly what upgrade() does."
                )
            await _step(steps, "upgrade", revision, name)
            again = await ws.snapshot()
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


async def _step(steps: Steps, command: str, revision: str, name: str) -> None:
    answer = await steps.run(command, revision)
    if not answer.get("ok"):
        what = f"{name}'s {command}" if name else f"alembic {command} {revision}"
        raise CheckFailed(f"{what} fails: {answer.get('error')}")


async def check_models(ws: Workspace, ini: Path, env: Sequence[tuple[str, str]]) -> str:
    """``alembic check`` after ``upgrade heads``: env.py's ``target_metadata`` must find
    nothing to autogenerate against the migrated schema."""
    steps = await Steps.start(ini, Target.from_dsn(ws.dsn), env)
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
