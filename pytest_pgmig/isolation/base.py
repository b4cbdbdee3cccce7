"""What isolation hands out and counts, and the interface every isolation strategy offers."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pytest_pgmig.isolation.sets import MigrationSet, Sets
from pytest_pgmig.servers.dsn import redact

if TYPE_CHECKING:  # asyncpg is imported when a fixture first needs it, not with the plugin
    from pytest_pgmig.isolation.workspace import Procedure

__all__ = ["Context", "Isolation", "MigrationSet", "PgmigSchema", "Sets", "Slot", "Stats"]

T = TypeVar("T")


@dataclass(frozen=True)
class PgmigSchema:
    """A migrated schema handed to a test.

    `dsn` opens connections with the schema first on search_path, e.g.
    `psycopg.connect(pgmig_schema.dsn)`: it logs in as a role of the schema's own whose
    settings set search_path, so every driver lands in the schema. Where the plugin may not
    create roles it sets search_path with libpq's `options` instead; `plain_dsn` (no
    parameters of ours) with `server_settings` then serves a driver that rejects `options`
    (SQLAlchemy's asyncpg dialect: `connect_args={"server_settings": ...}`).
    `module_name` is `<lib>_<schema>` for the first migrations folder, `module_names` maps
    every folder's `<lib>` to its module_name.

    Under database isolation `database` is the test's own database, `dsn` connects to it
    with the server's default search_path, `name` is `public` and `module_name` is `<lib>`.
    """

    name: str
    module_name: str
    dsn: str
    module_names: Mapping[str, str] = field(default_factory=dict)
    database: str | None = None  # set under database isolation
    plain_dsn: str = ""  # `dsn` without our parameters (the same DSN when it has none)
    server_settings: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.plain_dsn:
            object.__setattr__(self, "plain_dsn", self.dsn)

    def __repr__(self) -> str:
        where = f", database={self.database!r}" if self.database else ""
        return (
            f"PgmigSchema(name={self.name!r}, module_name={self.module_name!r}{where}, "
            f"dsn={redact(self.dsn)!r})"
        )


@dataclass(frozen=True)
class Context:
    """Where an isolation works and for whom: the server, this run and worker, its limits.

    `own_server`: the plugin started the server (or was told it may install event
    triggers), so the DDL log can be used; `module_default` is the `<lib>` of a slot
    migrated with no folder.
    """

    admin_dsn: str
    run: str
    worker: str
    statement_timeout: float = 60.0
    module_default: str = "app"
    own_server: bool = False
    # a user's server (--pgmig-dsn) without pgmig_keep_registry: the last run on a database
    # removes what runs made there (`pytest_pgmig.isolation.registry.leave`)
    leave_registry: bool = False
    # ``VAR=TEMPLATE`` settings Alembic runs with, and the conftest hook adjusting its Config
    alembic_env: tuple[tuple[str, str], ...] = ()
    alembic_hook: Callable[[Any, Any], Any] | None = None

    def lib(self, sets: Sets) -> str:
        """The `<lib>` of a slot's `module_name`: its first set's module."""
        return sets[0].module if sets else self.module_default


@dataclass
class Slot:
    """One schema this process created, and the state a reset compares against."""

    schema: PgmigSchema
    key: Sets
    state: str
    reset_fn: str | None = None  # its own reset function, made at its first reset
    lane: str = ""  # the pool it returns to: worker scope keeps its schema to itself
    # what a test whose work was rolled back leaves to undo (SQL setting its sequences back,
    # run by the rollback fixtures after their ROLLBACK); None: the strategy resets instead
    undo: str | None = None


@dataclass
class Stats:
    """What isolation cost this process, for the terminal summary."""

    created: int = 0
    dropped: int = 0
    kept: int = 0
    reused: int = 0
    rolled_back: int = 0  # given back without a reset: the test's work was rolled back
    migrations: int = 0
    reset_failed: int = 0
    reset_cause: str = ""  # the first failed reset's set and error
    databases_created: int = 0
    databases_dropped: int = 0
    databases_reset: int = 0  # reset in place for a later test
    databases_reused: int = 0  # dropped and cloned again for a later test (DDL changed)
    # why a set runs under database isolation (auto mode), one line a set
    switched: list[str] = field(default_factory=list)
    # what else the summary must say once (how schemas' DSNs set search_path)
    notes: list[str] = field(default_factory=list)
    # what each migration check found and cost, one line a check
    checks: list[str] = field(default_factory=list)
    setup_s: list[float] = field(default_factory=list)
    teardown_s: list[float] = field(default_factory=list)

    _COUNTS = (
        "created",
        "dropped",
        "kept",
        "reused",
        "rolled_back",
        "migrations",
        "reset_failed",
        "databases_created",
        "databases_dropped",
        "databases_reset",
        "databases_reused",
    )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in self._COUNTS}
        data.update(
            reset_cause=self.reset_cause,
            switched=self.switched,
            notes=self.notes,
            checks=self.checks,
            setup_s=self.setup_s,
            teardown_s=self.teardown_s,
        )
        return data

    def merge(self, data: Mapping[str, Any]) -> None:
        for name in self._COUNTS:
            setattr(self, name, getattr(self, name) + int(data.get(name, 0)))
        self.reset_cause = self.reset_cause or str(data.get("reset_cause", ""))
        self.switched += [line for line in data.get("switched", ()) if line not in self.switched]
        self.notes += [line for line in data.get("notes", ()) if line not in self.notes]
        self.checks += list(data.get("checks", ()))
        self.setup_s += list(data.get("setup_s", ()))
        self.teardown_s += list(data.get("teardown_s", ()))

    def summary(self) -> list[str]:
        per_test = [a + b for a, b in zip(self.setup_s, self.teardown_s, strict=False)]
        total = sum(self.setup_s) + sum(self.teardown_s)
        median = statistics.median(per_test) * 1000 if per_test else 0.0
        lines = [
            f"schemas: {self.created} created, {self.dropped} dropped, {self.kept} kept, "
            f"{self.reused} resets for reuse"
            + (f", {self.rolled_back} rolled back (no reset)" if self.rolled_back else ""),
            *(
                [
                    f"databases: {self.databases_created} created, {self.databases_dropped} "
                    f"dropped, {self.databases_reset} resets for reuse, {self.databases_reused} "
                    "cloned again for reuse"
                ]
                if self.databases_created
                else []
            ),
            *self.switched,
            *self.notes,
            f"migrations applied: {self.migrations}",
            *self.checks,
            f"isolation cost: {total:.2f} s in set-up and teardown over {len(per_test)} "
            f"tests, median {median:.1f} ms per test",
        ]
        if self.reset_failed:
            lines.append(
                f"resets failed: {self.reset_failed}, each schema replaced by a freshly "
                f"migrated one; first: {self.reset_cause}"
            )
        return lines


class Isolation(Protocol):
    """How the fixtures get and give back a clean migrated place for a test.

    Schemas (`pytest_pgmig.isolation.schemas.SchemaIsolation`) and databases cloned from a
    template (`pytest_pgmig.isolation.databases.DatabaseIsolation`) are the strategies. A
    slot handed out by `acquire` goes back through `release` (reset for a later test, off
    the test's path) or `keep` (left for inspection); `close` drops what the process made.
    """

    stats: Stats
    warnings: list[str]

    async def start(self) -> list[str]:
        """Connect and reap what dead runs left; the names reaped."""

    async def acquire(
        self, sets: Sets, *, spare: bool = False, lane: str = "", database: bool = False
    ) -> Slot:
        """A clean migrated slot for `sets` (raises `MigrationFailed`); with `database`, a
        database of its own where the strategy can give one (pgdbm's fixtures' semantics)."""

    def take_ready(self, sets: Sets, lane: str) -> Slot | None:
        """A clean slot ready now, without the runtime's thread; None: call `acquire`.

        For the thread that calls `acquire` and `release`, between those calls."""

    def give_back(self, slot: Slot) -> bool:
        """Give back a slot whose test's work was rolled back (its `undo` run), without the
        runtime's thread; False: call `release`."""

    async def release(self, slot: Slot) -> None:
        """Give a slot back: it is reset in the background and serves a later test."""

    async def keep(self, slot: Slot) -> None:
        """Keep a failed test's slot for inspection: never reset, reused or dropped."""

    async def check(self, sets: Sets, procedure: Procedure[T]) -> T:
        """Run a migration check on `sets` in a workspace of its own, dropped after; never
        in a slot a test uses."""

    async def close(self) -> None:
        """Drop everything this process made (kept slots stay) and disconnect."""
