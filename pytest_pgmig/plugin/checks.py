"""Check items the plugin adds to a run: each named for what it proves."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from pytest_pgmig.engine import lockfile
from pytest_pgmig.engine.formats import load_migrations
from pytest_pgmig.errors import CheckFailed, MigrationError, MigrationFailed
from pytest_pgmig.isolation.base import MigrationSet, Sets
from pytest_pgmig.plugin import settings
from pytest_pgmig.plugin.state import state_of

if TYPE_CHECKING:
    from pytest_pgmig.isolation.workspace import Workspace


# what each item proves: pgmig.<kind>[<module>]
Kind = Literal["lock", "alembic_heads", "down", "idempotent", "models_match"]


def _name(kind: Kind, mset: MigrationSet) -> str:
    return f"pgmig.{kind}[{mset.module}]"


def items(session: pytest.Session, opts: settings.Settings) -> list[pytest.Item]:
    """The check items for the run's migration sets: ``pgmig.lock[<module>]`` where locked,
    ``pgmig.down[<module>]`` where there are down files, ``pgmig.idempotent[<module>]`` when
    asked for, ``pgmig.alembic_heads[<module>]`` (and ``pgmig.models_match[<module>]`` when
    asked for) for an Alembic history."""
    sets = opts.migrations.value
    found: list[pytest.Item] = [
        LockCheck.from_parent(session, name=_name("lock", m), mset=m)
        for m in sets
        if (m.path / lockfile.LOCK_NAME).exists()
    ]
    for index, mset in enumerate(sets):
        if mset.reading.alembic:
            found.append(
                HeadsCheck.from_parent(session, name=_name("alembic_heads", mset), mset=mset)
            )
            # the down check runs Alembic in a process of its own, which a conftest's
            # pytest_pgmig_alembic_config hook cannot reach: not where one is needed
            hooked = session.config.hook.pytest_pgmig_alembic_config.get_hookimpls()
            wanted: dict[Kind, bool] = {
                "down": opts.check_down.value,
                "models_match": opts.check_models.value,
            }
            found += [
                MigrationCheck.from_parent(session, name=_name(kind, mset), sets=(mset,))
                for kind, on in wanted.items()
                if on and not hooked
            ]
            continue
        # a set is checked on the sets before it, as its tests have them
        upto = sets[: index + 1]
        wanted = {
            "down": opts.check_down.value and _has_downs(mset),
            "idempotent": opts.check_idempotent.value,
        }
        found += [
            MigrationCheck.from_parent(session, name=_name(kind, mset), sets=upto)
            for kind, on in wanted.items()
            if on
        ]
    return found


def _has_downs(mset: MigrationSet) -> bool:
    """Whether the set has downs (or sqitch's verify scripts) for the down check to run."""
    try:
        migrations = load_migrations(mset.path, mset.reading)
    except MigrationError:
        return False  # the tests report the folder
    return any(m.down is not None or m.verify is not None for m in migrations)


class LockCheck(pytest.Item):
    """A test item that fails when a locked migration was edited or deleted."""

    def __init__(self, *, mset: MigrationSet, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = mset.path
        self.reading = mset.reading

    def runtest(self) -> None:
        drift = lockfile.check(self.folder, self.reading)
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


class HeadsCheck(pytest.Item):
    """``pgmig.alembic_heads[...]``: the Alembic history has a single head (two heads make
    ``alembic upgrade head`` fail in production while ``heads`` passes here)."""

    def __init__(self, *, mset: MigrationSet, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ini = mset.path

    def runtest(self) -> None:
        from pytest_pgmig.alembic.upgrade import heads

        found = heads(self.ini)
        if len(found) != 1:
            raise CheckFailed(
                f"{self.ini} has {len(found)} heads: {', '.join(found)}. Merge them "
                "(alembic merge heads -m merge) so that `alembic upgrade head` knows where "
                "to go."
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, (CheckFailed, MigrationError)):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.ini, 0, self.name


class MigrationCheck(pytest.Item):
    """``pgmig.down[...]`` or ``pgmig.idempotent[...]``: a check run on a throwaway schema
    (or database) of its own, never one a test uses; one worker runs it."""

    def __init__(self, *, sets: Sets, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sets = sets
        self.kind = self.name.split(".", 1)[1].split("[", 1)[0]

    @property
    def mset(self) -> MigrationSet:
        return self.sets[-1]

    def runtest(self) -> None:
        state = state_of(self.config)
        isolation = state.isolation_on(state.server())
        procedure = _procedure(self.kind, self.mset, state.settings)
        started = time.perf_counter()
        outcome = "failed"
        try:
            outcome = state.call(isolation.check(self.sets, lambda ws: procedure(ws, self.sets)))
        except CheckFailed as exc:
            outcome = f"failed: {str(exc).splitlines()[0].rstrip(':')}"
            raise
        except MigrationError as exc:
            where = (
                f"{self.mset.path}: {exc.migration_file}" if exc.migration_file else self.mset.path
            )
            outcome = f"failed: migration {exc.migration_file or self.mset.path} failed"
            raise CheckFailed(f"migration {where} failed (its tests fail too):\n{exc}") from None
        except MigrationFailed as exc:  # the set could not be prepared (its extensions)
            outcome = "failed: its migrations failed"
            raise CheckFailed(exc.full) from None
        finally:
            seconds = time.perf_counter() - started
            state.stats.checks.append(f"{self.name}: {outcome} ({seconds:.2f} s)")
        self.add_report_section("call", "pgmig", outcome)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CheckFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.mset.path, 0, self.name


def _procedure(
    kind: str, mset: MigrationSet, opts: settings.Settings
) -> Callable[[Workspace, Sets], Awaitable[str]]:
    """The check a kind of item runs (imported on use: the plugin loads no driver)."""
    if mset.reading.alembic:
        from pytest_pgmig.checks.histories import check_alembic_downs, check_models

        check = check_models if kind == "models_match" else check_alembic_downs

        async def alembic_check(workspace: Workspace, sets: Sets) -> str:
            return await check(workspace, mset.path, opts.alembic_env.value)

        return alembic_check
    if kind == "idempotent":
        from pytest_pgmig.checks.idempotence import check_idempotent

        return check_idempotent
    from pytest_pgmig.checks.reversal import check_downs

    async def downs(workspace: Workspace, sets: Sets) -> str:
        return (await check_downs(workspace, sets)).summary()

    return downs
