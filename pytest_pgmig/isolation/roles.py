"""Login roles that put a schema on search_path for every driver, without DSN options."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from urllib.parse import quote

import asyncpg

from pytest_pgmig.engine.templates import quote_identifier as q
from pytest_pgmig.engine.templates import sql_literal as lit
from pytest_pgmig.isolation.registry import app_name, drop_roles
from pytest_pgmig.servers.dsn import with_search_path, with_user

# what the summary says when schemas' DSNs carry libpq's `options` instead
FALLBACK = (
    "pgmig_dsn sets search_path with libpq's `options` ({why}): psycopg, psycopg2, asyncpg "
    "and SQLAlchemy on psycopg take it; SQLAlchemy's asyncpg dialect needs "
    "pgmig_schema.plain_dsn with connect_args={{'server_settings': "
    "pgmig_schema.server_settings}} (README: Drivers)"
)


@dataclass
class Roles:
    """Whether a schema's DSN logs in as a role of the schema's own, and with what password.

    A libpq `options` parameter (`-c search_path=...`) is not understood by every driver:
    SQLAlchemy's asyncpg dialect hands it to `asyncpg.connect`, which rejects it. A role
    whose own settings name the schema's search_path (and application_name) needs no
    parameter at all. It is a superuser, as the admin role is, so a test can do whatever it
    could before; it is named like its schema and dropped with it (`registry.drop`).
    Where the admin is no superuser, or a new role cannot log in, DSNs carry `options`.
    """

    admin_dsn: str
    enabled: bool
    # on a server of someone else's, a password (pg_hba may ask for one); ours trusts
    password: str | None = None
    why_not: str = ""
    checked: bool = False  # a first role has logged in

    @classmethod
    def for_server(cls, admin_dsn: str, *, superuser: bool, own_server: bool) -> Roles:
        if not superuser:
            return cls(admin_dsn, False, why_not="the DSN's role is not a superuser")
        return cls(admin_dsn, True, None if own_server else secrets.token_hex(16))

    def off(self, why: str) -> None:
        self.enabled, self.why_not = False, why

    async def dsn(self, conn: asyncpg.Connection, schema: str, path: tuple[str, ...]) -> str:
        """The DSN of `schema`: a role's of its own where roles work, else with `options`."""
        if self.enabled:
            try:
                return await self._role_dsn(conn, schema, path)
            except (asyncpg.PostgresError, OSError, asyncio.TimeoutError) as exc:
                self.off(f"a role of the schema's own could not log in: {type(exc).__name__}")
        return options_dsn(self.admin_dsn, schema, path)

    async def _role_dsn(self, conn: asyncpg.Connection, schema: str, path: tuple[str, ...]) -> str:
        search_path = ", ".join(q(s) for s in dict.fromkeys((schema, *path)))
        password = f" PASSWORD {lit(self.password)}" if self.password else ""
        await conn.execute(
            f"CREATE ROLE {q(schema)} LOGIN SUPERUSER{password};\n"
            f"ALTER ROLE {q(schema)} SET search_path = {search_path};\n"
            f"ALTER ROLE {q(schema)} SET application_name = {lit(app_name(schema))}"
        )
        dsn = with_user(self.admin_dsn, schema, self.password)
        if not self.checked:
            # pg_hba.conf may let only some roles in: try the first before handing it out
            try:
                first = await asyncpg.connect(dsn, timeout=10)
            except BaseException:
                await drop_roles(conn, [schema])
                raise
            await first.close()
            self.checked = True
        return dsn


def options_dsn(admin_dsn: str, schema: str, path: tuple[str, ...] = ()) -> str:
    """The admin DSN with the schema (then `path`) on search_path, by libpq's `options`,
    and our application_name."""
    dsn = with_search_path(admin_dsn, schema, *path)
    app = app_name(schema)
    if "://" in dsn:
        return f"{dsn}&application_name={quote(app, safe='')}"
    return f"{dsn} application_name='{app}'"
