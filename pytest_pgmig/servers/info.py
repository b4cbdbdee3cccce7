"""What a running server is: its address and version, and a handle that stops it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_pgmig.servers.dsn import DsnParts, redact

# what --pgmig-server takes
SOURCES = ("auto", "local", "wheel", "docker")

MIN_VERSION = (12,)


def version_text(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


@dataclass(frozen=True, repr=False)
class ServerInfo:
    """Where the run's server is and what it is; JSON-able for handing to xdist workers.

    ``dsn`` is the admin DSN. ``host`` is a host name or, for the embedded server, its socket
    folder. ``source`` is ``"dsn"``, ``"local"``, ``"wheel"`` or ``"docker"``. Neither
    ``repr()`` nor ``str()`` shows the password.

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
    superuser: bool = True  # the DSN's role (the plugin's own servers: always)

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
            superuser=bool(data.get("superuser", True)),
        )

    def __repr__(self) -> str:
        return (
            f"ServerInfo(source={self.source!r}, version={version_text(self.version)}, "
            f"dsn={self.redacted_dsn!r})"
        )

    def __str__(self) -> str:
        return (
            f"PostgreSQL {version_text(self.version)} ({self.source}) at {self.address}, "
            f"database {self.database!r}, user {self.user!r}"
        )


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
    _detacher: Callable[[], None] | None = field(default=None, repr=False)
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

        Returns ``spec``, which `pytest_pgmig.servers.shared.stop_spec` takes in any process.
        """
        if self._detacher is not None:
            self._detacher()
        self._done = True
        return self.spec
