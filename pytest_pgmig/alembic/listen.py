"""What the plugin adds to an Alembic run in a test's schema, through SQLAlchemy's events."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pytest_pgmig.engine.sqltext import split
from pytest_pgmig.errors import OUTSIDE_SQLSTATE

# SQLAlchemy's events are per class here (env.py makes its own engines): one run at a time
_LOCK = threading.Lock()
_EXTENSION = re.compile(
    r'(?:CREATE|DROP)\s+EXTENSION\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?(?:"([^"]+)"|([\w-]+))',
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Watch:
    """How a run in a schema is watched.

    `installed`: extensions the database has (in a schema on the target's search_path), whose
    ``CREATE EXTENSION`` statements are left out, as for SQL sets, so that a second schema can
    run the same revision, and whose ``DROP EXTENSION`` (a downgrade's) would take them from
    every other schema; `check`: the SQL run when each transaction begins and before it
    commits, the second raising `OUTSIDE_SQLSTATE` for a write outside the schema.
    """

    installed: frozenset[str] = frozenset()
    check: tuple[str, str] | None = None


class OutsideWrite(Exception):
    """A transaction of the run wrote outside the target's schema (and was rolled back)."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what} ({detail})")
        self.what, self.detail = what, detail


@contextmanager
def watching(watch: Watch) -> Iterator[None]:
    """Watch every SQLAlchemy engine's statements and transactions while Alembic runs."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    listeners: list[tuple[str, Any, dict[str, Any]]] = []
    if watch.installed:
        listeners.append(
            ("before_cursor_execute", _strip(watch.installed), {"retval": True}),
        )
    if watch.check is not None:
        begin_sql, commit_sql = watch.check
        listeners.append(("begin", lambda conn: _raw(conn, begin_sql), {}))
        listeners.append(("commit", lambda conn: _checked(conn, commit_sql), {}))
    with _LOCK:
        for name, fn, kw in listeners:
            event.listen(Engine, name, fn, **kw)
        try:
            yield
        finally:
            for name, fn, _ in listeners:
                event.remove(Engine, name, fn)


def without_extensions(statement: str, installed: frozenset[str]) -> str:
    """`statement` without its ``CREATE`` or ``DROP EXTENSION`` of an installed extension.

    >>> have = frozenset({"uuid-ossp", "pg_trgm"})
    >>> without_extensions('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"', have)
    'SELECT 1'
    >>> without_extensions("DROP EXTENSION pg_trgm; CREATE TABLE t (x int)", have)
    ' CREATE TABLE t (x int)'
    """
    if "EXTENSION" not in statement.upper():
        return statement
    kept, cut = [], 0
    for part in split(statement):
        match = _EXTENSION.match(statement, part.start)
        if (
            part.head[1:2] == ("EXTENSION",)
            and match
            and (match.group(1) or match.group(2)) in installed
        ):
            kept.append(statement[cut : part.start])
            cut = part.end
            if cut < len(statement) and statement[cut] == ";":
                cut += 1
    kept.append(statement[cut:])
    text = "".join(kept)
    return text if text.strip(" \n\t;") else "SELECT 1"


def _strip(installed: frozenset[str]) -> Any:
    def before(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> tuple[str, Any]:
        return without_extensions(statement, installed), parameters

    return before


def _raw(conn: Any, sql: str) -> None:
    """Run `sql` on the connection's DBAPI connection, inside its transaction."""
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


def _checked(conn: Any, sql: str) -> None:
    try:
        _raw(conn, sql)
    except Exception as exc:
        found = _outside(exc)
        if found is None:
            raise
        raise OutsideWrite(*found) from None


def _outside(exc: BaseException | None) -> tuple[str, str] | None:
    """The object and what was done to it, when `exc` (or its cause) is the check's error."""
    while exc is not None:
        state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if state == OUTSIDE_SQLSTATE:
            diag = getattr(exc, "diag", None)
            message = getattr(diag, "message_primary", None) or getattr(exc, "message", None)
            detail = getattr(diag, "message_detail", None) or getattr(exc, "detail", None)
            return str(message or str(exc).splitlines()[0]), str(detail or "changed")
        exc = exc.__cause__ or exc.__context__
    return None
