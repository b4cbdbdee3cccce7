"""Extensions a migration set creates: found in its files, installed once per database."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from pytest_pgmig.engine.sqltext import Statement, line_of
from pytest_pgmig.engine.templates import quote_identifier, sql_literal
from pytest_pgmig.errors import MigrationError

# Where an extension goes when the database does not have it yet: where production has it.
EXTENSION_SCHEMA = "public"
# objid of the advisory lock (under the registry's class) serialising installs per database
INSTALL_LOCK = 1

_TOKEN = re.compile(
    r"""\s+|--[^\n]*|/\*.*?\*/|(?P<q>"(?:[^"]|"")*")|(?P<s>'(?:[^']|'')*')|(?P<w>[^\s;'"]+)""",
    re.DOTALL,
)


@dataclass(frozen=True)
class ExtensionRequest:
    """One ``CREATE EXTENSION`` statement of a migration file."""

    name: str
    version: str | None
    cascade: bool
    filename: str
    line: int
    start: int
    end: int


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) of each word, quoted identifier and string; comments dropped."""
    out: list[tuple[str, str]] = []
    for match in _TOKEN.finditer(text):
        if match.group("q"):
            out.append(("ident", match.group("q")[1:-1].replace('""', '"')))
        elif match.group("s"):
            out.append(("string", match.group("s")[1:-1].replace("''", "'")))
        elif match.group("w"):
            out.append(("word", match.group("w")))
    return out


def parse_create_extension(text: str) -> tuple[str, str | None, bool] | None:
    """``(name, version, cascade)`` of a ``CREATE EXTENSION`` statement, else ``None``.

    Every form: ``IF NOT EXISTS``, ``[WITH] SCHEMA s``, ``VERSION v``, ``CASCADE``, quoted
    names. The schema is not returned: the plugin decides where extensions live.

    >>> parse_create_extension('CREATE EXTENSION IF NOT EXISTS "uuid-ossp" WITH SCHEMA x;')
    ('uuid-ossp', None, False)
    >>> parse_create_extension("create extension hstore version '1.8' cascade")
    ('hstore', '1.8', True)
    """
    tokens = _tokens(text)
    words = [value.upper() if kind == "word" else None for kind, value in tokens]
    if words[:2] != ["CREATE", "EXTENSION"]:
        return None
    pos = 2
    if words[pos : pos + 3] == ["IF", "NOT", "EXISTS"]:
        pos += 3
    if pos >= len(tokens):
        return None
    kind, name = tokens[pos]
    name = name if kind == "ident" else name.lower()
    version: str | None = None
    cascade = False
    rest = tokens[pos + 1 :]
    for index, (kind, value) in enumerate(rest):
        upper = value.upper() if kind == "word" else None
        if upper == "CASCADE":
            cascade = True
        elif upper == "VERSION" and index + 1 < len(rest):
            version = rest[index + 1][1]
    return name, version, cascade


def find_extensions(
    text: str, statements: Sequence[Statement], filename: str
) -> tuple[ExtensionRequest, ...]:
    """The ``CREATE EXTENSION`` statements among a file's top-level statements."""
    found = []
    for statement in statements:
        if statement.head[:2] != ("CREATE", "EXTENSION"):
            continue
        parsed = parse_create_extension(text[statement.start : statement.end])
        if parsed is not None:
            name, version, cascade = parsed
            found.append(
                ExtensionRequest(
                    name,
                    version,
                    cascade,
                    filename,
                    line_of(text, statement.start),
                    statement.start,
                    statement.end,
                )
            )
    return tuple(found)


# ``CREATE EXTENSION`` in a Python migration's string, up to where that string or statement ends
_IN_PYTHON = re.compile(r"""CREATE\s+EXTENSION\b[^;'\n]*""", re.IGNORECASE)


def find_in_python(text: str, filename: str) -> tuple[ExtensionRequest, ...]:
    """The ``CREATE EXTENSION`` statements a Python migration (an Alembic revision) runs.

    >>> text = "op.execute('CREATE EXTENSION IF NOT EXISTS \\"uuid-ossp\\"')"
    >>> [r.name for r in find_in_python(text, "a.py")]
    ['uuid-ossp']
    >>> [r.name for r in find_in_python('op.execute("create extension pg_trgm")', "a.py")]
    ['pg_trgm']
    """
    found = []
    for match in _IN_PYTHON.finditer(text):
        snippet = match.group(0).replace('\\"', '"')
        # the Python string holding it may end in the snippet: `"...pg_trgm")`
        cut = snippet.rsplit('"', 1)[0] if snippet.count('"') % 2 else snippet.rstrip(")")
        parsed = parse_create_extension(snippet) or parse_create_extension(cut)
        if parsed is not None:
            name, version, cascade = parsed
            line = line_of(text, match.start())
            found.append(
                ExtensionRequest(name, version, cascade, filename, line, match.start(), match.end())
            )
    return tuple(found)


async def install(conn: asyncpg.Connection, requests: Sequence[ExtensionRequest]) -> list[str]:
    """Install what `requests` ask for where missing; return the schemas the extensions are in.

    An extension the database already has is used where it is; a new one goes into
    `EXTENSION_SCHEMA`, under an advisory lock so concurrent workers and runs install it
    once. Nothing is ever dropped. Raises `MigrationError` naming the file for an extension
    the server does not have, or one the role may not create.
    """
    from pytest_pgmig.isolation.names import LOCK_CLASS
    from pytest_pgmig.isolation.registry import record_extensions

    names = sorted({r.name for r in requests})
    where = await _installed(conn, names)
    missing = [r for r in _first_of_each(requests) if r.name not in where]
    if missing:
        available = {
            row["name"]
            for row in await conn.fetch(
                "SELECT name FROM pg_available_extensions WHERE name = ANY($1::text[])",
                [r.name for r in missing],
            )
        }
        for request in missing:
            if request.name not in available:
                raise _unavailable(request)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_CLASS, INSTALL_LOCK)
            before = set(await conn.fetchval("SELECT array_agg(extname) FROM pg_extension"))
            for request in missing:
                try:
                    await conn.execute(_create_sql(request))
                except asyncpg.PostgresError as exc:
                    raise _refused(request, exc) from exc
            # CASCADE's too: the last run removes what runs installed (`registry.leave`)
            after = await conn.fetchval("SELECT array_agg(extname) FROM pg_extension")
            await record_extensions(conn, sorted(set(after) - before))
        where = await _installed(conn, names)
    return list(dict.fromkeys([EXTENSION_SCHEMA, *(where[name] for name in names)]))


def _first_of_each(requests: Sequence[ExtensionRequest]) -> list[ExtensionRequest]:
    first: dict[str, ExtensionRequest] = {}
    for request in requests:
        first.setdefault(request.name, request)
    return list(first.values())


async def _installed(conn: asyncpg.Connection, names: list[str]) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT e.extname, n.nspname FROM pg_extension e "
        "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = ANY($1::text[])",
        names,
    )
    return {row["extname"]: row["nspname"] for row in rows}


def _create_sql(request: ExtensionRequest) -> str:
    sql = (
        f"CREATE EXTENSION IF NOT EXISTS {quote_identifier(request.name)} "
        f"WITH SCHEMA {quote_identifier(EXTENSION_SCHEMA)}"
    )
    if request.version is not None:
        sql += f" VERSION {sql_literal(request.version)}"
    return sql + (" CASCADE" if request.cascade else "")


def _unavailable(request: ExtensionRequest) -> MigrationError:
    return MigrationError(
        f"Migration '{request.filename}' line {request.line} creates extension "
        f"'{request.name}', which this PostgreSQL server does not have "
        "(it is not in pg_available_extensions).",
        migration_file=request.filename,
        line=request.line,
        hint=f"Install the package that provides '{request.name}' on the server (on Debian "
        "and Ubuntu most are in postgresql-contrib or postgresql-<major>-<name>), or point "
        "--pgmig-dsn at a server that has it.",
    )


def _refused(request: ExtensionRequest, exc: asyncpg.PostgresError) -> MigrationError:
    return MigrationError(
        f"Migration '{request.filename}' line {request.line}: extension '{request.name}' "
        f"could not be installed in schema {EXTENSION_SCHEMA}: {type(exc).__name__}: {exc}",
        migration_file=request.filename,
        line=request.line,
        sql_error=f"{type(exc).__name__}: {exc}",
        hint=f"Create it once in the database as a role that may (CREATE EXTENSION "
        f"{quote_identifier(request.name)} WITH SCHEMA {EXTENSION_SCHEMA}); the plugin then "
        "uses it where it is.",
    )
