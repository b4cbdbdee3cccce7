"""The run's PostgreSQL server: pick its source, start it, probe it, share it between processes."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from filelock import FileLock

from pytest_pgmig.servers import embedded
from pytest_pgmig.servers.dsn import DsnParts, normalize, parse, redact, scrub, socket_dsn

__all__ = [
    "MIN_VERSION",
    "SOURCES",
    "ServerError",
    "ServerHandle",
    "ServerInfo",
    "acquire_shared",
    "choose_source",
    "docker_available",
    "probe",
    "reap_shared",
    "release_shared",
    "start_docker",
    "start_server",
]

SOURCES = ("auto", "local", "docker")
MIN_VERSION = (12,)
DOCKER_IMAGE = "postgres:16-alpine"

_HOW_TO_GET_A_SERVER = """\
Three ways to get one:
  1. use an existing server: --pgmig-dsn=postgresql://USER:PASSWORD@HOST:5432/DB (or PGMIG_DSN,
     or pgmig_dsn in the ini file);
  2. install the PostgreSQL server binaries (initdb, pg_ctl, postgres), e.g.
     `apt-get install postgresql` or `brew install postgresql`; if they live somewhere unusual,
     point PGMIG_PG_BINDIR at their bin folder;
  3. install the docker extra (pip install 'pytest-pgmig[docker]') and run a Docker engine."""


class ServerError(Exception):
    """The server could not be chosen, started or reached.

    The message is final, user-facing text: what failed, where (host, port, database), the
    cause and how to fix it. It never contains a password.
    """


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


@dataclass(frozen=True, repr=False)
class ServerInfo:
    """Where the run's server is and what it is; JSON-able for handing to xdist workers.

    ``dsn`` is the admin DSN. ``host`` is a host name or, for the embedded server, its socket
    folder. ``source`` is ``"dsn"``, ``"local"`` or ``"docker"``. Neither ``repr()`` nor
    ``str()`` shows the password.

    Example::

        >>> info = start_server().info
        >>> info
        ServerInfo(source='local', version=15.18, dsn='postgresql://postgres@/postgres?host=...')
        >>> ServerInfo.from_dict(info.to_dict()) == info
        True
    """

    dsn: str
    host: str
    port: int
    database: str
    user: str
    version: tuple[int, ...]
    source: str

    @property
    def redacted_dsn(self) -> str:
        """The DSN with its password replaced by ``***``."""
        return redact(self.dsn)

    @property
    def address(self) -> str:
        """``host:port``, or the socket file's path for a unix socket."""
        return DsnParts(self.host, self.port, self.database, self.user).address

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``from_dict`` turns it back)."""
        data = asdict(self)
        data["version"] = list(self.version)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerInfo:
        """Rebuild a ``ServerInfo`` from :meth:`to_dict`'s output (e.g. out of ``workerinput``)."""
        return cls(
            dsn=str(data["dsn"]),
            host=str(data["host"]),
            port=int(data["port"]),
            database=str(data["database"]),
            user=str(data["user"]),
            version=tuple(int(part) for part in data["version"]),
            source=str(data["source"]),
        )

    def __repr__(self) -> str:
        return (
            f"ServerInfo(source={self.source!r}, version={_version_text(self.version)}, "
            f"dsn={self.redacted_dsn!r})"
        )

    def __str__(self) -> str:
        return (
            f"PostgreSQL {_version_text(self.version)} ({self.source}) at {self.address}, "
            f"database {self.database!r}, user {self.user!r}"
        )


# --- choosing the source --------------------------------------------------------------------


def choose_source(
    requested: str,
    *,
    dsn: str | None,
    bindir: Path | None,
    docker_available: Callable[[], bool],
) -> str:
    """Decide where the server comes from: ``"dsn"``, ``"local"`` or ``"docker"``.

    A DSN wins under ``auto``; asking for ``local`` or ``docker`` while a DSN is set is a
    conflict. ``auto`` then takes local binaries (``bindir``), then Docker when
    ``docker_available()`` says an engine answers. Anything unsatisfiable raises
    :class:`ServerError` saying how to fix it.

    Example::

        >>> choose_source("auto", dsn=None, bindir=Path("/usr/lib/postgresql/16/bin"),
        ...               docker_available=lambda: False)
        'local'
    """
    mode = (requested or "auto").strip().lower()
    if mode not in SOURCES:
        raise ServerError(
            f"--pgmig-server={requested!r} is not one of {', '.join(SOURCES)}. "
            "Use auto (the default), local or docker."
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
    if mode == "local":
        if bindir is None:
            raise ServerError(
                "--pgmig-server=local, but no PostgreSQL server binaries (initdb, pg_ctl, "
                "postgres) were found in PGMIG_PG_BINDIR, `pg_config --bindir`, PATH or "
                "/usr/lib/postgresql/*/bin.\nInstall them (e.g. `apt-get install postgresql`) "
                "or set PGMIG_PG_BINDIR to their bin folder."
            )
        return "local"
    if mode == "docker":
        if not docker_available():
            raise ServerError(
                "--pgmig-server=docker, but no Docker engine answers (is the daemon running? "
                "try `docker info`), or the docker extra is missing: "
                "pip install 'pytest-pgmig[docker]'."
            )
        return "docker"
    if bindir is not None:
        return "local"
    if docker_available():
        return "docker"
    raise ServerError(
        "pytest-pgmig needs a PostgreSQL server and found none: no DSN is set, no local "
        "PostgreSQL server binaries were found, and no Docker engine answers.\n"
        + _HOW_TO_GET_A_SERVER
    )


# --- probing --------------------------------------------------------------------------------


def _version_tuple(num: int) -> tuple[int, ...]:
    if num >= 100000:
        return (num // 10000, num % 10000)
    return (num // 10000, num // 100 % 100, num % 100)


async def _fetch_version_num(dsn: str, timeout: float) -> int:
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    conn = await asyncio.wait_for(asyncpg.connect(dsn, timeout=timeout), timeout + 1)
    try:
        return int(await conn.fetchval("SELECT current_setting('server_version_num')"))
    finally:
        await asyncio.wait_for(conn.close(), timeout)


def _run_sync(coro_factory: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    # A loop already runs in this thread (e.g. called from an async fixture): use another one.
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro_factory()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="pgmig-probe", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def _cause_and_fix(exc: BaseException, parts: DsnParts, timeout: float) -> tuple[str, str]:
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    where = "socket folder" if parts.is_socket else "host and port"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return (
            f"no answer within {timeout:g} s",
            f"check the {where} and that no firewall drops the connection",
        )
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return (
            f"password authentication failed for user {parts.user!r}",
            "check the user name and password in the DSN",
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (
            f"database {parts.database!r} does not exist",
            f"create it (createdb {parts.database}) or name an existing database in the DSN",
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return str(exc), "check the user name in the DSN and the server's pg_hba.conf"
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc), "see the server's message above"
    if isinstance(exc, FileNotFoundError) or (
        parts.is_socket and isinstance(exc, ConnectionRefusedError)
    ):
        if not Path(parts.host).is_dir():
            cause = f"the socket folder {parts.host} does not exist"
        else:
            cause = f"no server listens on the socket {parts.address}"
        return cause, "start the server, or fix host= / port= in the DSN"
    if isinstance(exc, ConnectionRefusedError):
        return (
            "connection refused: nothing listens on that port",
            "start the server, or fix the host and port in the DSN",
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name {parts.host!r}", "fix the host name in the DSN"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc), f"check the {where} in the DSN"
    return f"{type(exc).__name__}: {exc}", "check the DSN"


def probe(dsn: str, *, timeout: float = 5.0) -> tuple[int, ...]:
    """Connect once to ``dsn`` and return the server's version, e.g. ``(16, 4)``.

    Sync (it runs its own short event loop), bounded by ``timeout`` seconds. Any failure
    (unreachable, refused, bad password, missing database, a server older than
    ``MIN_VERSION``) raises :class:`ServerError` naming host, port, database and the cause,
    with the password redacted.

    Example::

        >>> probe("postgresql://postgres@/postgres?host=/tmp/pg")
        (15, 18)
    """
    try:
        parts = parse(dsn)
    except ValueError as exc:
        raise ServerError(scrub(f"invalid DSN {redact(dsn)}: {exc}", dsn)) from None
    try:
        num = _run_sync(lambda: _fetch_version_num(normalize(dsn), timeout))
    except Exception as exc:
        cause, fix = _cause_and_fix(exc, parts, timeout)
        message = (
            f"cannot connect to PostgreSQL at {parts.address} (database {parts.database!r}, "
            f"user {parts.user!r}; DSN {redact(dsn)}): {cause}.\nFix: {fix}."
        )
        raise ServerError(scrub(message, dsn)) from None
    version = _version_tuple(num)
    if version[: len(MIN_VERSION)] < MIN_VERSION:
        raise ServerError(
            f"PostgreSQL {_version_text(version)} at {parts.address} (database "
            f"{parts.database!r}) is older than {_version_text(MIN_VERSION)}, the oldest "
            "version pytest-pgmig supports. Use a newer server."
        )
    return version


# --- handles and sources --------------------------------------------------------------------


@dataclass
class ServerHandle:
    """A started (or borrowed) server: ``info`` plus :meth:`stop`.

    ``spec`` is a JSON-able description that lets any process stop the server
    (used when several processes share it). ``stop()`` is idempotent; for a DSN it does
    nothing.
    """

    info: ServerInfo
    spec: dict[str, Any] = field(default_factory=lambda: {"kind": "dsn"})
    _stopper: Callable[[], None] | None = field(default=None, repr=False)
    _done: bool = field(default=False, repr=False)

    def stop(self) -> None:
        """Stop the server this handle started and remove its files. Idempotent."""
        if self._done:
            return
        if self._stopper is not None:
            self._stopper()
        self._done = True

    def detach(self) -> dict[str, Any]:
        """Hand the server's lifetime to someone else: ``stop()`` becomes a no-op.

        Returns ``spec``, which :func:`stop_spec` accepts in any process.
        """
        cluster = getattr(self._stopper, "__self__", None)
        if isinstance(cluster, embedded.EmbeddedCluster):
            cluster.detach()
        self._done = True
        return self.spec


def stop_spec(spec: dict[str, Any]) -> None:
    """Stop a server described by a handle's ``spec``, from any process."""
    kind = spec.get("kind")
    if kind == "local":
        embedded.stop_run_dir(Path(spec["run_dir"]))
    elif kind == "docker":
        with contextlib.suppress(Exception):
            import docker  # type: ignore[import-untyped, unused-ignore]

            client = docker.from_env(timeout=10)
            try:
                client.containers.get(spec["container_id"]).remove(force=True, v=True)
            finally:
                client.close()


def _spec_alive(spec: dict[str, Any]) -> bool:
    if spec.get("kind") == "local":
        data_dir = Path(spec["run_dir"]) / "pg" / "data"
        try:
            pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        return embedded.pid_alive(pid)
    return True


def docker_available(timeout: float = 2.0) -> bool:
    """True when the docker extra is installed and a Docker engine answers a ping quickly."""
    try:
        import docker  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=timeout)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def start_docker(*, max_connections: int = 100, image: str | None = None) -> ServerHandle:
    """Start PostgreSQL in a container through testcontainers (extra ``docker``)."""
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError:
            raise ServerError(
                "--pgmig-server=docker needs testcontainers: pip install 'pytest-pgmig[docker]'"
            ) from None
    image = image or os.environ.get("PGMIG_DOCKER_IMAGE") or DOCKER_IMAGE
    password = secrets.token_urlsafe(16)
    container = PostgresContainer(
        image, username="postgres", password=password, dbname="postgres", driver=None
    )
    container.with_command(
        "postgres -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        f"-c max_connections={max_connections}"
    )
    try:
        container.start()
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(5432))
    except Exception as exc:
        with contextlib.suppress(Exception):
            container.stop()
        raise ServerError(
            f"could not start PostgreSQL in Docker (image {image}): {type(exc).__name__}: "
            f"{scrub(str(exc), f'postgresql://postgres:{password}@x/')}.\n"
            "Fix: check `docker info` and that the image can be pulled, or use local "
            "binaries / --pgmig-dsn instead."
        ) from None
    dsn = f"postgresql://postgres:{quote(password, safe='')}@{host}:{port}/postgres"
    try:
        version = probe(dsn, timeout=10.0)
    except ServerError:
        container.stop()
        raise
    info = ServerInfo(dsn, host, port, "postgres", "postgres", version, "docker")
    wrapped = container.get_wrapped_container()
    spec = {"kind": "docker", "container_id": getattr(wrapped, "id", "")}
    return ServerHandle(info, spec, container.stop)


def start_local(*, bindir: Path | None = None, max_connections: int = 100) -> ServerHandle:
    """Start the embedded server from local binaries (see :mod:`pytest_pgmig.servers.embedded`)."""
    try:
        cluster = embedded.start_cluster(bindir=bindir, max_connections=max_connections)
    except embedded.EmbeddedError as exc:
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
        dsn, str(cluster.socket_dir), cluster.port, "postgres", "postgres", version, "local"
    )
    return ServerHandle(info, {"kind": "local", "run_dir": str(cluster.run_dir)}, cluster.stop)


def start_server(
    *, requested: str = "auto", dsn: str | None = None, max_connections: int = 100
) -> ServerHandle:
    """Give the run its server: the DSN's, else local binaries, else Docker (see choose_source).

    Example::

        >>> handle = start_server()
        >>> handle.info.source, handle.info.version
        ('local', (15, 18))
        >>> handle.stop()
    """
    mode = (requested or "auto").strip().lower()
    bindir = None
    if not dsn and mode in ("auto", "local"):
        try:
            bindir = embedded.find_bindir()
        except embedded.EmbeddedError as exc:
            raise ServerError(str(exc)) from None
    source = choose_source(mode, dsn=dsn, bindir=bindir, docker_available=docker_available)
    if source == "dsn":
        assert dsn is not None
        dsn = normalize(dsn)
        version = probe(dsn)
        parts = parse(dsn)
        info = ServerInfo(dsn, parts.host, parts.port, parts.database, parts.user, version, "dsn")
        return ServerHandle(info)
    if source == "local":
        return start_local(bindir=bindir, max_connections=max_connections)
    return start_docker(max_connections=max_connections)


# --- one server shared by several processes -------------------------------------------------


def _shared_dir(run_dir_key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_dir_key)[:40]
    digest = hashlib.sha256(run_dir_key.encode()).hexdigest()[:8]
    return embedded.run_base() / f"shared-{safe}-{digest}"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the folder's lock; retry if the last user deleted the folder meanwhile."""
    while True:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = FileLock(str(folder / "lock"), timeout=120)
        with lock:
            if (folder / "lock").exists():
                yield
                return


def _live_users(folder: Path) -> list[int]:
    return embedded.live_owners(folder)


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "server.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    tmp = folder / f".server.json.{os.getpid()}"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / "server.json")


_held: set[str] = set()
_atexit_registered = False


def _release_all() -> None:
    for key in sorted(_held):
        with contextlib.suppress(Exception):
            release_shared(key)


def acquire_shared(run_dir_key: str, start: Callable[[], ServerHandle]) -> ServerInfo:
    """Join the server shared by every process with this ``run_dir_key`` (e.g. xdist's testrunuid).

    The first process, under a file lock, calls ``start()`` and records the server; the others
    read the record. Each process is registered by pid (dead pids do not count); the last one
    to :func:`release_shared` stops the server. Also released at interpreter exit.
    """
    folder = _shared_dir(run_dir_key)
    with _locked(folder):
        record = _read_record(folder)
        if record is not None and not _spec_alive(record["spec"]):
            stop_spec(record["spec"])
            record = None
        if record is None:
            handle = start()
            spec = handle.detach()
            record = {"info": handle.info.to_dict(), "spec": spec}
            _write_record(folder, record)
        embedded.add_owner(folder)
        if record["spec"].get("kind") == "local":
            # The run folder must outlive whichever process started it.
            embedded.add_owner(Path(record["spec"]["run_dir"]))
    global _atexit_registered
    _held.add(run_dir_key)
    if not _atexit_registered:
        atexit.register(_release_all)
        _atexit_registered = True
    return ServerInfo.from_dict(record["info"])


def release_shared(run_dir_key: str, *, keep: bool = False) -> None:
    """Leave the shared server; the last live process out stops it and removes its files.

    ``keep=True`` leaves the server running, also when another process is the last one
    out (e.g. so a user can inspect kept schemas); a later run reaps it once no owner
    process lives. :func:`reap_shared` still stops it.
    Calling it again, or without a matching :func:`acquire_shared`, does nothing.
    """
    if run_dir_key not in _held:
        return
    _held.discard(run_dir_key)
    folder = _shared_dir(run_dir_key)
    if not folder.is_dir():
        return
    with _locked(folder):
        embedded.remove_owner(folder)
        record = _read_record(folder)
        if record is not None and record["spec"].get("kind") == "local":
            embedded.remove_owner(Path(record["spec"]["run_dir"]))
        if keep:
            (folder / "keep").touch()
        if _live_users(folder) or (folder / "keep").exists():
            return
        if record is not None:
            stop_spec(record["spec"])
        _remove_shared(folder)


def _remove_shared(folder: Path) -> None:
    embedded.remove_tree(folder)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # leave no empty base behind


def reap_shared(run_dir_key: str) -> None:
    """Stop whatever server remains for ``run_dir_key`` (e.g. its workers were killed)."""
    folder = _shared_dir(run_dir_key)
    if not folder.is_dir():
        return
    with _locked(folder):
        record = _read_record(folder)
        if record is not None:
            stop_spec(record["spec"])
        _remove_shared(folder)
