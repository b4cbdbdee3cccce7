"""Alembic commands in a process of their own, one at a time: both ends of the channel.

Applications cache their settings per process, so a second target in the pytest process
would get the first one's URL: every later run gets a process instead. The process reads a
JSON line (the alembic.ini, the target's URL parts, the environment templates, the `Watch`),
then one command a line (``upgrade REV``, ``downgrade REV``, ``check``), answering each with
a JSON line.

    python -m pytest_pgmig.alembic.steps < commands
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pytest_pgmig.alembic.listen import Watch
from pytest_pgmig.alembic.target import Target
from pytest_pgmig.alembic.upgrade import outside_error, revision_count, run_command
from pytest_pgmig.errors import MigrationError, OutsideSchemaError

_STEP_TIMEOUT = 600.0


class Steps:
    """The pytest process's end: a process started for one target, commands sent to it.

    Example::

        steps = await Steps.start(ini, Target.from_dsn(dsn), env)
        try:
            answer = await steps.run("upgrade", "heads")
        finally:
            await steps.close()
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(
        cls,
        ini: Path,
        target: Target,
        env: Sequence[tuple[str, str]],
        watch: Watch | None = None,
    ) -> Steps:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pytest_pgmig.alembic.steps",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ini.parent,
        )
        steps = cls(process)
        watch = watch or Watch()
        setup = {
            "ini": str(ini),
            "target": asdict(target),
            "env": [list(p) for p in env],
            "installed": sorted(watch.installed),
            "check": list(watch.check) if watch.check else None,
        }
        await steps._send(json.dumps(setup))
        return steps

    async def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def run(self, command: str, revision: str) -> dict[str, Any]:
        """Run one command; its answer (``ok``, else ``error`` and ``file``)."""
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

    async def upgrade(self, ini: Path) -> int:
        """``upgrade heads``; the history's number of revisions, or its `MigrationError`."""
        answer = await self.run("upgrade", "heads")
        if answer.get("ok"):
            return int(answer.get("revisions", 0))
        outside = answer.get("outside")
        if outside:
            raise outside_error(ini, outside[0], outside[1])
        raise MigrationError(
            str(answer.get("message")),
            answer.get("file"),
            sql_error=answer.get("sql_error"),
            hint=answer.get("hint"),
        )

    async def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()


def main() -> int:
    """The other end, in the process of its own."""
    # the answers keep stdout to themselves: what Alembic and env.py print goes to stderr
    answers, sys.stdout = sys.stdout, sys.stderr
    setup: dict[str, Any] = json.loads(sys.stdin.readline())
    ini = Path(setup["ini"])
    target = Target(**setup["target"])
    env = [tuple(pair) for pair in setup["env"]]
    check = setup.get("check")
    watch = Watch(frozenset(setup.get("installed") or ()), tuple(check) if check else None)
    for line in sys.stdin:
        command, _, revision = line.strip().partition(" ")
        if not command:
            continue
        try:
            config = run_command(ini, target, env, command, revision, watch=watch)
            answer: dict[str, Any] = {"ok": True}
            if command == "upgrade":
                answer["revisions"] = revision_count(config)
        except MigrationError as exc:
            answer = {
                "ok": False,
                "error": str(exc),
                "message": exc.message,
                "hint": exc.hint,
                "file": exc.migration_file,
                "sql_error": exc.sql_error,
            }
            if isinstance(exc, OutsideSchemaError):
                what, _, detail = exc.what.rpartition(" (")
                answer["outside"] = [what, detail.rstrip(")")]
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
