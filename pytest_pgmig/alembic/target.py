"""Where an Alembic run goes, and the ``{url}``-style templates that point ``env.py`` there."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

_PLACEHOLDER = re.compile(r"\{(url(?::(\w+))?|host|port|user|password|database|schema)\}")


@dataclass(frozen=True)
class Target:
    """The database (and schema) a history is applied to, as libpq URL parts."""

    host: str
    port: int
    user: str
    password: str
    database: str
    schema: str = "public"
    socket: str = ""  # a unix socket folder, when the server listens on one
    # libpq's `options` (``-c search_path=...``) where no role of the schema's own sets it;
    # asyncpg cannot take it
    options: str = ""

    @classmethod
    def from_dsn(cls, dsn: str, *, schema: str = "public") -> Target:
        """The target of a ``postgresql://`` DSN (host in the query for a unix socket).

        >>> t = Target.from_dsn("postgresql://u:p@/db?host=%2Ftmp%2Fs&port=5433")
        >>> (t.user, t.password, t.database, t.port, t.socket)
        ('u', 'p', 'db', 5433, '/tmp/s')
        """
        parts = urlsplit(dsn)
        query = dict(item.split("=", 1) for item in parts.query.split("&") if "=" in item)
        socket = unquote(query.get("host", ""))
        port = int(query.get("port") or parts.port or 5432)
        return cls(
            host=parts.hostname or "localhost",
            port=port,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            database=unquote(parts.path.lstrip("/")),
            schema=schema,
            socket=socket if socket.startswith("/") else "",
            options=unquote(query.get("options", "")),
        )

    def url(self, driver: str | None = None) -> str:
        """``postgresql://...`` (``postgresql+DRIVER://`` for SQLAlchemy), the socket as
        libpq and SQLAlchemy's drivers read it.

        >>> Target("h", 5432, "u", "p w", "db").url("asyncpg")
        'postgresql+asyncpg://u:p%20w@h:5432/db'
        """
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        auth = quote(self.user, safe="") + (
            f":{quote(self.password, safe='')}" if self.password else ""
        )
        query = []
        if self.socket:
            query += [f"host={quote(self.socket, safe='')}", f"port={self.port}"]
            where = f"{scheme}://{auth}@/{quote(self.database)}"
        else:
            where = f"{scheme}://{auth}@{self.host}:{self.port}/{quote(self.database)}"
        if self.options and driver != "asyncpg":
            query.append(f"options={quote(self.options, safe='')}")
        return f"{where}?{'&'.join(query)}" if query else where


def render(template: str, target: Target) -> str:
    """`template` with ``{url}``, ``{url:DRIVER}``, ``{host}``, ``{port}``, ``{user}``,
    ``{password}``, ``{database}`` and ``{schema}`` filled in for `target`.

    >>> render("{user}@{host}:{port}/{database}", Target("h", 5, "u", "p", "d"))
    'u@h:5/d'
    """

    def value(match: re.Match[str]) -> str:
        name, driver = match.group(1), match.group(2)
        if name.startswith("url"):
            return target.url(driver)
        if name == "host":
            return target.socket or target.host
        return str(getattr(target, name))

    return _PLACEHOLDER.sub(value, template)
