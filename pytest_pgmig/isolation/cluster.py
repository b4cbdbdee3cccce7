"""The file check of database isolation: a migration must leave what the server shares alone."""

from __future__ import annotations

import asyncpg

from pytest_pgmig.engine.apply import RaisingCheck
from pytest_pgmig.engine.sqltext import Statement
from pytest_pgmig.errors import MigrationError, OutsideSchemaError
from pytest_pgmig.isolation.guard import preflight_target
from pytest_pgmig.isolation.names import ROLE_PATTERN

# (not counting the login roles schemas get: names.ROLE_PATTERN)
_ROLES = (
    "(SELECT count(*) || ':' || coalesce(max(oid::bigint), 0) FROM pg_roles "
    f"WHERE rolname !~ '{ROLE_PATTERN}')"
)
_SETTING = "pgmig.roles"
_CHANGED = "PGMRC"  # the SQLSTATE our check raises

_HINT = (
    "Roles, databases, tablespaces and the server's settings are shared by every database "
    "on the server, so no throwaway database can hold them: create them once, outside the "
    "migrations (a CI set-up step), or guard them in the migration (DO $$ ... IF NOT EXISTS)."
)


class ClusterCheck(RaisingCheck):
    """Refuses, inside a file's transaction, a migration that creates or drops a role; and,
    before it runs, a statement on a database, a tablespace or the server's settings."""

    sqlstate = _CHANGED

    def before_sql(self) -> str:
        return f"SELECT set_config('{_SETTING}', {_ROLES}, true);"

    def after_sql(self) -> str:
        return (
            f"DO $pgmig$ BEGIN IF {_ROLES} <> current_setting('{_SETTING}') THEN "
            f"RAISE EXCEPTION 'roles' USING ERRCODE = '{_CHANGED}'; END IF; END $pgmig$;"
        )

    def failure(
        self, filename: str, exc: asyncpg.PostgresError, *, committed: bool
    ) -> MigrationError:
        return _refused(filename, "it creates or drops a role", f"'{filename}' was rolled back.")

    async def preflight(
        self, conn: asyncpg.Connection, filename: str, statement: Statement, text: str
    ) -> None:
        if preflight_target(statement, text) == "*":
            what = " ".join(statement.head[:2]).lower()
            raise _refused(filename, what, "That statement was not run.")


def _refused(filename: str, what: str, done: str) -> OutsideSchemaError:
    return OutsideSchemaError(
        f"Migration '{filename}' changes what the whole server shares ({what}). {done}",
        filename,
        what=what,
        hint=_HINT,
        cluster=True,
    )
