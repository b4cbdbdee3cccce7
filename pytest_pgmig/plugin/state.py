"""Per-process plugin state: settings, the run's server and this process's schemas."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import asyncpg  # type: ignore[import-untyped]
import pytest

from pytest_pgmig.errors import ServerError
from pytest_pgmig.isolation.schemas import Stats, Workspace
from pytest_pgmig.plugin import settings
from pytest_pgmig.servers.dsn import scrub
from pytest_pgmig.servers.info import ServerHandle, ServerInfo

# The embedded server serves every xdist worker at once: leave room for each worker's
# control connection, pools and the test's own connections.
EMBEDDED_MAX_CONNECTIONS = 300
RESERVED_CONNECTIONS = 10


# admin_shutdown, crash_shutdown, cannot_connect_now: the server is going or gone
_SERVER_GONE = {"57P01", "57P02", "57P03"}


class PgmigWarning(UserWarning):
    """A teardown problem: reported, never turned into a test error."""


@dataclass
class PgmigState:
    """Everything the plugin holds for one pytest process, kept in `config.stash`."""

    config: pytest.Config
    settings: settings.Settings
    run: str
    worker: str
    workers: int = 1
    shared_key: str | None = None
    handle: ServerHandle | None = None
    info: ServerInfo | None = None
    workspace: Workspace | None = None
    runtime: Any = None
    server_error: str | None = None
    stats: Stats = field(default_factory=Stats)
    remote_info: dict[str, Any] | None = None
    kept: list[str] = field(default_factory=list)
    worker_slots: dict[Any, Any] = field(default_factory=dict)
    checked_folders: set[Path] = field(default_factory=set)  # marker and factory folders
    closed: bool = False

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the plugin's own loop (see `pytest_pgmig.runtime`).

        A lost server fails this test and, without another try, every later one.
        """
        try:
            if self.server_error is not None:
                fail_test(self.server_error)
            self.space()
        except BaseException:
            coro.close()
            raise
        try:
            return self.runtime.run(coro, timeout)
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

    def lost(self, exc: BaseException) -> NoReturn:
        """Record that the server went away and fail the current test saying so."""
        address = self.info.redacted_dsn if self.info is not None else "the server"
        self.server_error = (
            f"pgmig: lost the PostgreSQL server {address} ({type(exc).__name__}: "
            f"{scrub(str(exc), self.info.dsn) if self.info else exc}); every later test that "
            "needs it fails at once. Check the server's log (was it stopped or killed?)."
        )
        fail_test(self.server_error)

    def server(self) -> ServerInfo:
        """The run's server, started (or joined, under xdist) on first use."""
        if self.server_error is not None:
            fail_test(self.server_error)
        if self.info is not None:
            return self.info
        from pytest_pgmig.servers import shared, sources

        opts = self.settings

        def start() -> ServerHandle:
            return sources.start_server(
                requested=opts.server.value,
                dsn=opts.dsn.value,
                max_connections=EMBEDDED_MAX_CONNECTIONS,
            )

        try:
            if self.shared_key is not None and not opts.dsn.value:
                self.info = shared.acquire_shared(self.shared_key, start)
            else:
                self.handle = start()
                self.info = self.handle.info
        except ServerError as exc:
            self.server_error = f"pgmig: {exc}"
            fail_test(self.server_error)
        return self.info

    def space(self) -> Workspace:
        """This process's schemas, on a control connection made on first use."""
        if self.workspace is not None:
            return self.workspace
        info = self.server()
        from pytest_pgmig.runtime import Runtime

        if self.runtime is None:
            self.runtime = Runtime()
        first = self.settings.migrations.value[0].module if self.settings.migrations.value else None
        workspace = Workspace(
            admin_dsn=info.dsn,
            run=self.run,
            worker=self.worker,
            statement_timeout=self.settings.statement_timeout.value,
            module_default=first or self.settings.module.value or "app",
            own_server=info.source != "dsn" or self.settings.ddl_log.value,
        )
        try:
            self.runtime.run(workspace.start())
        except Exception as exc:
            self.server_error = (
                f"pgmig: cannot prepare the server {info.redacted_dsn}: {scrub(str(exc), info.dsn)}"
            )
            fail_test(self.server_error)
        self.workspace = workspace
        return workspace

    def pool_size(self) -> int:
        """Connections one test's pool may open, so N workers stay within max_connections."""
        limit = EMBEDDED_MAX_CONNECTIONS
        return max(2, min(10, (limit - RESERVED_CONNECTIONS) // (3 * max(1, self.workers))))

    def close(self) -> None:
        """Drop this process's schemas and release the server; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self.workspace is not None and self.runtime is not None:
            try:
                self.runtime.run(self.workspace.close(), timeout=60)
            except Exception as exc:
                warnings.warn(
                    PgmigWarning(f"pgmig: could not drop this run's schemas: {exc}"), stacklevel=1
                )
            self.stats.merge(self.workspace.stats.to_dict())
        if self.runtime is not None:
            self.runtime.close()
        keep_server = (
            bool(self.stats.kept) and self.info is not None and self.info.source == "local"
        )
        from pytest_pgmig.servers import shared

        if self.shared_key is not None:
            # a kept schema needs its server: the last process out then leaves it running
            shared.release_shared(self.shared_key, keep=keep_server)
        elif self.handle is not None:
            if keep_server:
                self.handle.detach()
            else:
                self.handle.stop()


STATE = pytest.StashKey[PgmigState]()
# the psql hint for a failing test's kept schema, set when its call phase fails
KEPT = pytest.StashKey[str]()
# the schema handed to a test, for --pgmig-keep to name when the test fails
SCHEMA = pytest.StashKey[Any]()


def state_of(config: pytest.Config) -> PgmigState:
    """The plugin's state; a usage error if the plugin was not configured."""
    try:
        return config.stash[STATE]
    except KeyError:
        raise pytest.UsageError(
            "pytest-pgmig is not configured (was it disabled with -p no:pgmig?)"
        ) from None


def fail_test(message: str) -> NoReturn:
    """Fail the current test with `message` alone, reported FAILED even from a fixture.

    The plugin's report hooks read the marker attribute: a broken migration or a lost server
    is the test's failure, not an error in its set-up code.
    """
    failure = pytest.fail.Exception(message, pytrace=False)
    setattr(failure, "pgmig_failure", True)  # noqa: B010
    # Often raised inside an `except`: without `from None` the report prints the message
    # twice, joined by "During handling of the above exception...".
    raise failure from None
