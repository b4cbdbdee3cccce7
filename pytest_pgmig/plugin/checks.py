"""Check items the plugin adds to a run: each named for what it proves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_pgmig.engine import lockfile
from pytest_pgmig.isolation.base import MigrationSet


def items(session: pytest.Session, sets: Sequence[MigrationSet]) -> list[pytest.Item]:
    """The check items for the run's migration sets: ``pgmig.lock[<module>]`` where locked."""
    return [
        LockCheck.from_parent(session, name=f"pgmig.lock[{m.module}]", folder=m.path)
        for m in sets
        if (m.path / lockfile.LOCK_NAME).exists()
    ]


class LockCheck(pytest.Item):
    """A test item that fails when a locked migration was edited or deleted."""

    def __init__(self, *, folder: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = folder

    def runtest(self) -> None:
        drift = lockfile.check(self.folder)
        if drift:
            raise LockDrift(lockfile.describe(self.folder, drift))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, LockDrift):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.folder / lockfile.LOCK_NAME, 0, self.name


class LockDrift(Exception):
    """Locked migrations changed."""
