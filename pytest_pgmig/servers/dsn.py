"""Pure helpers for PostgreSQL connection strings: parse, redact, build and extend them."""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode

__all__ = [
    "DsnParts",
    "normalize",
    "parse",
    "password_of",
    "redact",
    "scrub",
    "socket_dsn",
    "with_search_path",
]

_SCHEMES = ("postgresql://", "postgres://")
_MASK = "***"
# Debian and most distributions put the socket here; upstream libpq uses /tmp.
_DEFAULT_SOCKET_DIRS = ("/var/run/postgresql", "/tmp")

# key=value form: a value is either '...' (with \' and \\ escapes) or a bare word.
_KV_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")
_KV_PASSWORD_RE = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)", re.IGNORECASE)
_QUERY_PASSWORD_RE = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)


@dataclass(frozen=True)
class DsnParts:
    """Where a DSN points, with libpq's defaults filled in.

    ``host`` is a host name, an IP address or, for unix sockets, a directory.

    Example::

        >>> parse("postgresql://app@db.example:5433/shop")
        DsnParts(host='db.example', port=5433, database='shop', user='app')
    """

    host: str
    port: int
    database: str
    user: str

    @property
    def is_socket(self) -> bool:
        """True when ``host`` is a unix socket directory."""
        return self.host.startswith("/")

    @property
    def address(self) -> str:
        """``host:port`` for TCP, the socket file's path for unix sockets."""
        if self.is_socket:
            return f"{self.host.rstrip('/')}/.s.PGSQL.{self.port}"
        return f"{self.host}:{self.port}"


def _is_url(dsn: str) -> bool:
    return dsn.strip().lower().startswith(_SCHEMES)


def _split_url(dsn: str) -> tuple[str, str | None, str, str]:
    """Split a URL DSN into (scheme://, userinfo or None, rest after '@', original).

    Tolerates passwords written without percent-encoding that contain ``@ / : ? %``: the
    credentials end at the last ``@`` that is not inside the query string (an ``@`` after a
    ``?`` counts as query only once a ``key=`` has started there).
    """
    stripped = dsn.strip()
    scheme_end = stripped.index("://") + 3
    head, rest = stripped[:scheme_end], stripped[scheme_end:]
    at = len(rest)
    while True:
        at = rest.rfind("@", 0, at)
        if at < 0:
            return head, None, rest, stripped
        query_at = rest.find("?", 0, at)
        if query_at < 0 or "=" not in rest[query_at:at]:
            return head, rest[:at], rest[at + 1 :], stripped


def _unquote_kv(value: str) -> str:
    if len(value) >= 2 and value.startswith("'") and value.endswith("'"):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _parse_kv(dsn: str) -> dict[str, str]:
    return {m.group(1).lower(): _unquote_kv(m.group(2)) for m in _KV_RE.finditer(dsn)}


def _parse_url(dsn: str) -> dict[str, str]:
    _, userinfo, rest, _ = _split_url(dsn)
    params: dict[str, str] = {}
    if userinfo is not None:
        user, sep, password = userinfo.partition(":")
        if user:
            params["user"] = unquote(user)
        if sep:
            params["password"] = unquote(password)
    query = ""
    if "?" in rest:
        rest, query = rest.split("?", 1)
    rest = rest.split("#", 1)[0]
    hostport, _, path = rest.partition("/")
    if path:
        params["dbname"] = unquote(path)
    if hostport:
        # Several hosts "h1:5432,h2:5433": libpq tries them in order; we describe the first.
        first = hostport.split(",", 1)[0]
        if first.startswith("["):
            host, _, port = first[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = first.partition(":")
        if host:
            params["host"] = unquote(host)
        if port:
            params["port"] = port
    for key, value in parse_qsl(query, keep_blank_values=True):
        params["dbname" if key == "database" else key] = value
    return params


def _params(dsn: str) -> dict[str, str]:
    return _parse_url(dsn) if _is_url(dsn) else _parse_kv(dsn)


def _default_host() -> str:
    for folder in _DEFAULT_SOCKET_DIRS:
        if os.path.isdir(folder):
            return folder
    return "localhost"


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "postgres"


def parse(dsn: str) -> DsnParts:
    """Return host, port, database and user of ``dsn``, filling gaps as libpq does.

    Gaps are filled from ``PGHOST``, ``PGPORT``, ``PGUSER`` and ``PGDATABASE``, then libpq's
    defaults (the local socket directory, 5432, the OS user name, the user name).
    Both the URL form and the ``key=value`` form are understood; ``?host=/dir`` names a socket
    directory.

    Example::

        >>> parse("postgresql://postgres@/postgres?host=%2Ftmp%2Fpg&port=5433")
        DsnParts(host='/tmp/pg', port=5433, database='postgres', user='postgres')
    """
    params = _params(dsn)
    host = (params.get("host") or os.environ.get("PGHOST") or _default_host()).split(",")[0]
    port_text = (params.get("port") or os.environ.get("PGPORT") or "5432").split(",")[0]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid port {port_text!r} in DSN {redact(dsn)}") from None
    user = params.get("user") or os.environ.get("PGUSER") or _default_user()
    database = params.get("dbname") or os.environ.get("PGDATABASE") or user
    return DsnParts(host=host, port=port, database=database, user=user)


def password_of(dsn: str) -> str | None:
    """The password written in ``dsn`` (decoded), or None.

    Example::

        >>> password_of("postgresql://app:s%40cret@db/app")
        's@cret'
    """
    return _params(dsn).get("password")


def redact(dsn: str) -> str:
    """Return ``dsn`` with its password replaced by ``***``; safe to show anywhere.

    Handles the URL form (also passwords with unencoded ``@ / : %``), ``?password=`` query
    parameters and the ``key=value`` form.

    Example::

        >>> redact("postgresql://app:p@ss/w:rd@db:5432/app")
        'postgresql://app:***@db:5432/app'
        >>> redact("host=db password='a b' dbname=app")
        'host=db password=*** dbname=app'
    """
    if _is_url(dsn):
        head, userinfo, rest, _ = _split_url(dsn)
        if userinfo is not None and ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + _MASK
        text = head + (f"{userinfo}@" if userinfo is not None else "") + rest
        return _QUERY_PASSWORD_RE.sub(lambda m: m.group(1) + _MASK, text)
    return _KV_PASSWORD_RE.sub(lambda m: m.group(1) + _MASK, dsn)


def scrub(text: str, dsn: str) -> str:
    """Remove every spelling of ``dsn``'s password (raw, decoded, encoded) from ``text``."""
    secrets = set()
    password = password_of(dsn)
    if password:
        secrets.update({password, quote(password, safe=""), quote(password)})
    if _is_url(dsn):
        _, userinfo, _, _ = _split_url(dsn)
        if userinfo and ":" in userinfo:
            secrets.add(userinfo.split(":", 1)[1])
    text = text.replace(dsn, redact(dsn))
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


def normalize(dsn: str) -> str:
    """Return ``dsn`` with user and password percent-encoded, so every driver parses it.

    People write passwords with ``@ / : %`` into URLs unencoded; libpq and asyncpg then
    misread the host. Already encoded values are kept as they are. A ``key=value`` DSN
    (libpq's other form, which asyncpg does not read) becomes the equivalent URL.

    Example::

        >>> normalize("postgresql://app:p@ss/w:rd@db:5432/app")
        'postgresql://app:p%40ss%2Fw%3Ard@db:5432/app'
        >>> normalize("host=db port=5433 dbname=app user=me password='a b'")
        'postgresql://me:a%20b@/app?host=db&port=5433'
    """
    if not _is_url(dsn):
        return _kv_to_url(_parse_kv(dsn))
    head, userinfo, rest, _ = _split_url(dsn)
    if userinfo is None:
        return head + rest
    user, sep, password = userinfo.partition(":")
    userinfo = quote(unquote(user), safe="") + (
        ":" + quote(unquote(password), safe="") if sep else ""
    )
    return f"{head}{userinfo}@{rest}"


def _kv_to_url(params: dict[str, str]) -> str:
    rest = dict(params)
    user = rest.pop("user", "")
    password = rest.pop("password", None)
    database = rest.pop("dbname", "")
    userinfo = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    query = urlencode(rest, quote_via=quote, safe="")
    return f"postgresql://{userinfo + '@' if userinfo else ''}/{quote(database, safe='')}" + (
        f"?{query}" if query else ""
    )


def socket_dsn(socket_dir: str, *, port: int, user: str, database: str) -> str:
    """A URL DSN for a server listening on a unix socket in ``socket_dir``.

    Example::

        >>> socket_dsn("/tmp/pg", port=5432, user="postgres", database="postgres")
        'postgresql://postgres@/postgres?host=%2Ftmp%2Fpg&port=5432'
    """
    query = urlencode({"host": socket_dir, "port": str(port)}, quote_via=quote, safe="")
    return f"postgresql://{quote(user, safe='')}@/{quote(database, safe='')}?{query}"


def _search_path_option(schemas: tuple[str, ...]) -> str:
    # The server splits "options" on whitespace and honours backslash escapes; the quotes
    # make each schema name an exact identifier inside search_path.
    idents = ",".join('"' + schema.replace('"', '""') + '"' for schema in schemas)
    escaped = re.sub(r"([\\\s])", r"\\\1", idents)
    return f"-c search_path={escaped}"


def with_search_path(dsn: str, schema: str, *more: str) -> str:
    """Return ``dsn`` with ``options=-c search_path="<schema>"[,"<more>"...]`` added.

    Every libpq-style driver (psycopg, asyncpg, SQLAlchemy on either) then opens connections
    with ``schema`` first on the search path (then ``more``, e.g. where extensions live).
    Other parameters and an existing ``options`` value are kept.

    Example::

        >>> with_search_path("postgresql://u@/db?host=%2Ftmp", "t_1")
        'postgresql://u@/db?host=%2Ftmp&options=-c%20search_path%3D%22t_1%22'
    """
    option = _search_path_option(tuple(dict.fromkeys((schema, *more))))
    if _is_url(dsn):
        base, _, fragment = dsn.strip().partition("#")
        head, _, query = base.partition("?")
        pairs = parse_qsl(query, keep_blank_values=True)
        existing = [v for k, v in pairs if k == "options"]
        pairs = [(k, v) for k, v in pairs if k != "options"]
        pairs.append(("options", " ".join([*existing, option])))
        text = head + "?" + urlencode(pairs, quote_via=quote, safe="")
        return text + ("#" + fragment if fragment else "")
    params = _parse_kv(dsn)
    value = " ".join(v for v in (params.get("options", ""), option) if v)
    quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    kept = _KV_RE.sub(lambda m: "" if m.group(1).lower() == "options" else m.group(0), dsn)
    return f"{kept.strip()} options={quoted}".strip()


def with_database(dsn: str, database: str) -> str:
    """Return ``dsn`` (as a URL) pointing at ``database``; every other parameter kept.

    Example::

        >>> with_database("postgresql://u:pw@h:5432/app?sslmode=require", "t 1")
        'postgresql://u:pw@h:5432/t%201?sslmode=require'
    """
    head, userinfo, rest, _ = _split_url(normalize(dsn))
    rest, hash_mark, fragment = rest.partition("#")
    location, _, query = rest.partition("?")
    pairs = [
        (k, v)
        for k, v in parse_qsl(query, keep_blank_values=True)
        if k not in ("dbname", "database")
    ]
    text = f"{head}{userinfo + '@' if userinfo is not None else ''}{location.partition('/')[0]}"
    text += f"/{quote(database, safe='')}"
    if pairs:
        text += "?" + urlencode(pairs, quote_via=quote, safe="")
    return text + hash_mark + fragment


def with_user(dsn: str, user: str, password: str | None = None) -> str:
    """Return ``dsn`` (as a URL) logging in as ``user`` (with ``password``, else none); every
    other parameter kept, except a ``user`` or ``password`` in the query.

    Example::

        >>> with_user("postgresql://admin:pw@h:5432/app?sslmode=require", "t_1", "s3cret")
        'postgresql://t_1:s3cret@h:5432/app?sslmode=require'
    """
    head, _, rest, _ = _split_url(normalize(dsn))
    location, _, query = rest.partition("?")
    pairs = [
        (k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in ("user", "password")
    ]
    userinfo = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    text = f"{head}{userinfo}@{location}"
    if pairs:
        text += "?" + urlencode(pairs, quote_via=quote, safe="")
    return text
