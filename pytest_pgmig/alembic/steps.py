"""A process of its own that runs Alembic commands one at a time, for the down check.

Applications cache their settings per process, so a second database in the pytest process
would get the first one's URL: the down check's database gets this process instead. It reads
a JSON line (the alembic.ini, the target's URL parts, the environment templates), then one
command a line (``upgrade REV``, ``downgrade REV``), answering each with a JSON line.

    python -m pytest_pgmig.alembic.steps < commands
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pytest_pgmig.alembic.target import Target
from pytest_pgmig.alembic.upgrade import run_command
from pytest_pgmig.errors import MigrationError


def main() -> int:
    # the answers keep stdout to themselves: what Alembic and env.py print goes to stderr
    answers, sys.stdout = sys.stdout, sys.stderr
    setup: dict[str, Any] = json.loads(sys.stdin.readline())
    ini = Path(setup["ini"])
    target = Target(**setup["target"])
    env = [tuple(pair) for pair in setup["env"]]
    for line in sys.stdin:
        command, _, revision = line.strip().partition(" ")
        if not command:
            continue
        try:
            run_command(ini, target, env, command, revision)
            answer: dict[str, Any] = {"ok": True}
        except MigrationError as exc:
            answer = {"ok": False, "error": str(exc), "file": exc.migration_file}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
