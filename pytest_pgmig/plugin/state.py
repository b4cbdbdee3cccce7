"""Per-process plugin state: settings, the run's server and this process's isolation."""

from __future__ import annotations

import warnings
from collections.abc import Coroutine
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import pytest

from pytest_pgmig.errors import ServerError
from pytest_pgmig.isolation.base import Context, MigrationSet, PgmigSchema, Slot, Stats
from pytest_pgmig.plugin import settings
from pytest_pgmig.plugin.connections import kept_of
from pytest_pgmig.plugin.server import EMBEDDED_MAX_CONNECTIONS, RunServer
from pytest_pgmig.servers.dsn import scrub

if TYPE_CHECKING:
    from pytest_pgmig.isolation.base import Isolation
    from pytest_pgmig.runtime import Runtime
    from pytest_pgmig.servers.info import ServerInfo

T = TypeVar("T")

RESERVED_CONNECTIONS = 10
# admin_shutdown, crash_shutdown, cannot_connect_now: the server is going or gone
_SERVER_GONE = {"57P01", "57P02", "57P03"}


class PgmigWarning(UserWarning):
    """A teardown problem: reported, never turned into a test error."""


if TYPE_CHECKING:
    _Failed = BaseException
else:
    _Failed = pytest.fail.Exception  # the public name of pytest.fail()'s exception


class PgmigFailed(_Failed):
    """This test fails because of its migrations or its server, not its own code.

    Raised from a fixture, it is still reported FAILED (not ERROR), with its message alone.
    """

    def __init__(self, message: str) -> None:
        cast(Any, super()).__init__(message, pytrace=False)


@dataclass
class PgmigState:
    """Everything the plugin holds for one pytest process, kept in `config.stash`."""

    config: pytest.Config
    settings: settings.Settings
    run: str
    worker: str
    run_server: RunServer
    workers: int = 1
    isolation: Isolation | None = None
    active: ServerInfo | None = None  # the server `isolation` works on
    runtime: Runtime | None = None
    server_error: str | None = None  # the server is lost or could not start: tests fail
    stats: Stats = field(default_factory=Stats)
    kept: list[str] = field(default_factory=list)  # psql hints for kept schemas
    checked_folders: set[MigrationSet] = field(default_factory=set)  # marker and factory sets
    closed: bool = False

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the plugin's own loop (see `pytest_pgmig.runtime`).

        A lost server fails this test and, without another try, every later one.
        """
        import asyncpg

        if self.server_error is not None:
            coro.close()
            fail_test(self.server_error)
        try:
            return self._runtime().run(coro, timeout)
        except (
            OSError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            asyncpg.ConnectionDoesNotExistError,
        ) as exc:
            # files are read into MigrationErrors, so an OSError here is the connection's
            self.lost(exc)
        except asyncpg.PostgresError as exc:
            if exc.sqlstate in _SERVER_GONE or (exc.sqlstate or "").startswith("08"):
                self.lost(exc)
            raise

    def _runtime(self) -> Runtime:
        if self.runtime is None:
            from pytest_pgmig.runtime import Runtime

            self.runtime = Runtime()
        return self.runtime

    def lost(self, exc: BaseException) -> NoReturn:
        """Record that the server went away and fail the current test saying so."""
        info = self.active or self.run_server.info
        address = info.redacted_dsn if info is not None else "the server"
        self.server_error = (
            f"pgmig: lost the PostgreSQL server {address} ({_cause(exc, info)}); every later "
            "test that needs it fails at once. Check the server's log (was it stopped or killed?)."
        )
        fail_test(self.server_error)

    def server(self) -> ServerInfo:
        """The run's server, started (or joined, under xdist) on first use."""
        if self.server_error is not None:
            fail_test(self.server_error)
        try:
            return self.run_server.get()
        except ServerError as exc:
            self.server_error = f"pgmig: {exc}"
            fail_test(self.server_error)

    def _alembic_hook(self, config: Any, target: Any) -> AbstractContextManager[Any]:
        """The conftests' `pytest_pgmig_alembic_config` hook, before an Alembic run; the
        contexts they return, entered around it."""
        stack = ExitStack()
        try:
            hook = self.config.hook.pytest_pgmig_alembic_config
            for context in hook(config=config, target=target):
                if context is not None:
                    stack.enter_context(context)
        except BaseException:
            stack.close()
            raise
        return stack

    def _alembic_hooked(self) -> bool:
        return bool(self.config.hook.pytest_pgmig_alembic_config.get_hookimpls())

    def isolation_on(self, info: ServerInfo) -> Isolation:
        """This process's isolation on `info` (the `pgmig_server` fixture's value), made on
        first use."""
        if self.isolation is not None:
            return self.isolation
        from pytest_pgmig.isolation import choice

        opts = self.settings
        first = opts.migrations.value[0].module if opts.migrations.value else None
        context = Context(
            admin_dsn=info.dsn,
            run=self.run,
            worker=self.worker,
            statement_timeout=opts.statement_timeout.value,
            module_default=first or opts.module.value or "app",
            own_server=info.source != "dsn" or opts.ddl_log.value,
            leave_registry=info.source == "dsn" and not opts.keep_registry.value,
            alembic_env=opts.alembic_env.value,
            # without a conftest's hook, Alembic may run in a process of its own
            alembic_hook=self._alembic_hook if self._alembic_hooked() else None,
        )
        isolation = choice.isolation(opts.isolation.value, context)
        try:
            self._runtime().run(isolation.start())
        except Exception as exc:
            self.server_error = (
                f"pgmig: cannot prepare the server {info.redacted_dsn}: {scrub(str(exc), info.dsn)}"
            )
            fail_test(self.server_error)
        self.isolation, self.active = isolation, info
        return isolation

    def pool_size(self) -> int:
        """Connections one test's pool may open, so N workers stay within max_connections."""
        limit = EMBEDDED_MAX_CONNECTIONS
        return max(2, min(10, (limit - RESERVED_CONNECTIONS) // (3 * max(1, self.workers))))

    def close(self) -> None:
        """Drop this process's schemas and release the server; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        kept_of(self.config).close()
        if self.isolation is not None and self.runtime is not None:
            try:
                self.runtime.run(self.isolation.close(), timeout=60)
            except Exception as exc:
                warnings.warn(
                    PgmigWarning(f"pgmig: could not drop this run's schemas: {exc}"), stacklevel=1
                )
            self.stats.merge(self.isolation.stats.to_dict())
        if self.runtime is not None:
            self.runtime.close()
        self.run_server.release(kept=bool(self.stats.kept))


def _cause(exc: BaseException, info: ServerInfo | None) -> str:
    """Why the connection went, in words: asyncpg's own state errors are only its symptom."""
    import asyncpg

    if isinstance(exc, asyncpg.InternalClientError):
        # the server went away between a reply and the end of it (a fast shutdown): the
        # connection is left mid-operation, and asyncpg says so instead of "closed"
        return "the connection broke in the middle of an operation"
    return f"{type(exc).__name__}: {scrub(str(exc), info.dsn) if info else exc}"


STATE = pytest.StashKey[PgmigState]()
# the psql hint for a failing test's kept schema, set when its call phase fails
KEPT = pytest.StashKey[str]()
# the schema handed to a test, for --pgmig-keep to name when the test fails
SCHEMA = pytest.StashKey[PgmigSchema]()
# the rollback fixtures rolled the test's work back, all of it; anything else that could have
# written to the schema (its DSN handed out) says so in OUTSIDE_TX: then the schema is reset
ROLLED_BACK = pytest.StashKey[bool]()
OUTSIDE_TX = pytest.StashKey[bool]()
# the slot behind the test's schema: its `undo` is what the rollback fixtures run
SLOT = pytest.StashKey[Slot]()


def state_of(config: pytest.Config) -> PgmigState:
    """The plugin's state; a usage error if the plugin was not configured."""
    try:
        return config.stash[STATE]
    except KeyError:
        raise pytest.UsageError(
            "pytest-pgmig is not configured (was it disabled with -p no:pgmig?)"
        ) from None


def fail_test(message: str) -> NoReturn:
    """Fail the current test with `message` alone, reported FAILED even from a fixture."""
    # Often raised inside an `except`: without `from None` the report prints the message
    # twice, joined by "During handling of the above exception...".
    raise PgmigFailed(message) from None
