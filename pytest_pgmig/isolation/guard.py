"""Catching migrations that write outside the schema they migrate, before they commit."""

from __future__ import annotations

import re

import asyncpg

from pytest_pgmig.engine.apply import RaisingCheck
from pytest_pgmig.engine.sqltext import Statement
from pytest_pgmig.engine.templates import sql_literal
from pytest_pgmig.errors import MigrationError, OutsideSchemaError
from pytest_pgmig.isolation.names import REGISTRY
from pytest_pgmig.isolation.outside_sql import CENSUS_SETTING, OUTSIDE


class Guard(RaisingCheck):
    """The engine's file check (`pytest_pgmig.engine.apply.FileCheck`) for one schema.

    Example::

        runner = Runner(schema, folder, module, options=ApplyOptions(check=Guard(schema)))
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema

    def before_sql(self) -> str:
        """What a file's transaction runs first (`file_start_v1`): an xid, so age() is
        exact, what the schema holds, and the census.

        The census a file ends with is the next file's (kept in a session setting that a
        failing file rolls back), so it is counted once per file.
        """
        return f"SELECT {REGISTRY}.file_start_v1({sql_literal(self.schema)});"

    def after_sql(self) -> str:
        """What it runs after the file, before its tracking row: raise if it wrote outside."""
        return (
            f"SELECT {REGISTRY}.outside_v3({sql_literal(self.schema)}, "
            f"split_part(current_setting('{CENSUS_SETTING}'), '|', 2));"
        )

    sqlstate = OUTSIDE

    def failure(
        self, filename: str, exc: asyncpg.PostgresError, *, committed: bool
    ) -> MigrationError:
        """The migration failure for the write outside the schema `after_sql` raised."""
        detail = getattr(exc, "detail", None) or "changed"
        what = f"{getattr(exc, 'message', None) or exc} ({detail})"
        done = (
            "It ran outside a transaction: its earlier statements stay committed."
            if committed
            else f"'{filename}' was rolled back: nothing of it stays in the database."
        )
        cluster = str(getattr(exc, "message", "")).startswith("role ")
        return _outside(filename, self.schema, what, done, cluster=cluster)

    async def preflight(
        self, conn: asyncpg.Connection, filename: str, statement: Statement, text: str
    ) -> None:
        """Refuse, before it runs, a non-transactional statement that works outside."""
        target = preflight_target(statement, text)
        if target is None:
            return
        if target != "*":
            where = await conn.fetchval(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = to_regclass($1)",
                target,
            )
            if where is None or where == self.schema:
                return
            what = f"relation {where}.{target.rsplit('.', 1)[-1].strip()}"
        else:
            what = " ".join(statement.head[:2]).lower()
        first = text.strip().split("\n", 1)[0][:60]
        raise _outside(
            filename,
            self.schema,
            f"{what} ({first})",
            "That statement cannot run in a transaction, so it was not run; the statements "
            "before it stay committed.",
            cluster=target == "*",
        )


def _outside(
    filename: str, schema: str, what: str, done: str, *, cluster: bool = False
) -> OutsideSchemaError:
    return OutsideSchemaError(
        f"Migration '{filename}' writes outside the schema it migrates ({schema}): {what}. {done}",
        filename,
        what=what,
        cluster=cluster,
        hint="Each test's migrations run with its own schema first on search_path. Drop the "
        "schema qualifier (public.users -> users) or write {{tables.users}} / {{schema}}; "
        "remove statements that empty search_path (pg_dump's SELECT pg_catalog.set_config("
        "'search_path', '', false)). Objects a set must keep in a schema of its own (CREATE "
        "SCHEMA billing), roles, casts, event triggers and publications cannot live in a "
        "per-test schema.",
    )


# a relation as a statement names it: [schema.]name, either part quoted or not
_NAME = r'(?:"(?:[^"]|"")*"|[\w$]+)'
_RELATION = rf"({_NAME}(?:\s*\.\s*{_NAME})?)"
_TARGETS = {
    "CREATE": re.compile(rf"\bON\s+(?:ONLY\s+)?{_RELATION}", re.IGNORECASE),
    "DROP": re.compile(
        rf"DROP\s+INDEX\s+CONCURRENTLY\s+(?:IF\s+EXISTS\s+)?{_RELATION}", re.IGNORECASE
    ),
    "ALTER": re.compile(
        rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_RELATION}", re.IGNORECASE
    ),
}


def preflight_target(statement: Statement, text: str) -> str | None:
    """The relation a statement that cannot run in a transaction works on, as written.

    ``"*"`` for one that always works outside a schema (a database, a tablespace, the
    server's configuration); ``None`` when it touches no object (``VACUUM``, ``REINDEX``).

    >>> from pytest_pgmig.engine.sqltext import split
    >>> text = 'CREATE INDEX CONCURRENTLY i ON public."Users" (email)'
    >>> preflight_target(split(text)[0], text)
    'public."Users"'
    """
    head = statement.head
    cluster_wide = head[:1] in (("CREATE",), ("DROP",)) and head[1:2] in (
        ("DATABASE",),
        ("TABLESPACE",),
    )
    if cluster_wide or head[:2] == ("ALTER", "SYSTEM"):
        return "*"
    pattern = _TARGETS.get(head[0]) if head else None
    if pattern is None:
        return None
    match = pattern.search(text)
    return match.group(1) if match else None
