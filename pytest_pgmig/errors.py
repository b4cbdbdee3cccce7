"""pytest-pgmig's exceptions: one hierarchy under PgmigError, each message final user text."""

from __future__ import annotations


class PgmigError(Exception):
    """Base of every error pytest-pgmig raises; its message says what failed and the fix."""


class MigrationError(PgmigError):
    """A migration could not be found, read, checked or applied.

    ``str(error)`` is the whole message, ending with what to do next. The parts are
    also kept apart for tools (the pytest plugin shows them in its reports):

    - ``migration_file``: the file name (e.g. ``"003_orders.sql"``), or ``None``
    - ``sql_error``: PostgreSQL's own message, when the server refused the SQL
    - ``line``: 1-based line within the *file* where PostgreSQL located the error
    - ``excerpt``: that line (and the one before it) with a caret under the column
    - ``hint``: what to do next
    - ``transient``: a concurrent session got in the way (deadlock, lock timeout, ...):
      running the migrations again may succeed

    Example::

        try:
            await migrations.apply_migration(migration)
        except MigrationError as exc:
            print(exc.migration_file, exc.line)
            print(exc.excerpt)
    """

    def __init__(
        self,
        message: str,
        migration_file: str | None = None,
        version: str | None = None,
        sql_error: str | None = None,
        *,
        line: int | None = None,
        excerpt: str | None = None,
        hint: str | None = None,
        transient: bool = False,
    ) -> None:
        self.message = message
        self.migration_file = migration_file
        self.version = version
        self.sql_error = sql_error
        self.line = line
        self.excerpt = excerpt
        self.hint = hint
        self.transient = transient
        parts = [message]
        if excerpt:
            parts.append(excerpt)
        if hint:
            parts.append(hint)
        super().__init__("\n".join(parts))

    @property
    def details(self) -> dict[str, object]:
        """The set attributes as a dict (pgdbm's ``AsyncDBError.details``)."""
        fields = {
            "migration_file": self.migration_file,
            "version": self.version,
            "sql_error": self.sql_error,
            "line": self.line,
        }
        return {key: value for key, value in fields.items() if value is not None}


class InvalidMigrationFile(MigrationError):
    """A migration file (or its folder) is wrong before anything runs: a name no pattern
    accepts, two files with one version, a down without its up, bytes that are not UTF-8,
    a placeholder that cannot be filled, a folder that is missing."""


class ChecksumMismatch(MigrationError):
    """A migration changed after it was applied (pgdbm's message): ``expected`` is the
    checksum recorded when it ran, ``actual`` the file's now."""

    def __init__(self, migration_file: str, version: str, expected: str, actual: str) -> None:
        super().__init__(
            f"Migration '{migration_file}' has been modified after being applied!\n"
            f"Expected checksum: {expected}\n"
            f"Current checksum: {actual}",
            migration_file,
            version,
            hint="Restore the applied file and put the change in a new migration (in "
            f"development, rollback_migration('{migration_file}') lets it run again).",
        )
        self.expected = expected
        self.actual = actual


class MigrationSQLError(MigrationError):
    """The server refused a migration's SQL: ``sql_error`` is PostgreSQL's message, ``line``
    and ``excerpt`` where in the file."""


class TransientMigrationError(MigrationSQLError):
    """A concurrent session got in the way (a deadlock, a lock timeout, a relation dropped
    under a catalog scan): running the migrations again may succeed (``transient`` true)."""


# the SQLSTATE the plugin's outside-write check raises (`pytest_pgmig.isolation.guard`)
OUTSIDE_SQLSTATE = "PGM01"


class OutsideSchemaError(MigrationError):
    """A migration wrote outside the schema it migrates; ``what`` names the first object.

    ``cluster``: what it wrote is shared by the whole server (a role, a database, a
    tablespace, the server's settings), so no database of its own could hold it either.
    """

    def __init__(
        self, message: str, migration_file: str, *, what: str, hint: str, cluster: bool = False
    ) -> None:
        super().__init__(message, migration_file, hint=hint)
        self.what = what
        self.cluster = cluster


class CheckFailed(PgmigError):
    """A migration check (``pgmig.down[...]``, ``pgmig.idempotent[...]``) found a problem;
    the message names the file and what is wrong."""


class ServerError(PgmigError):
    """The server could not be chosen, started or reached.

    The message is final, user-facing text: what failed, where (host, port, database), the
    cause and how to fix it. It never contains a password.
    """


class CannotCreateDatabases(PgmigError):
    """The DSN's role may not create databases, so database isolation cannot run."""


class EmbeddedError(ServerError):
    """The local cluster could not be created or started; the message says why and what to do."""


class MigrationFailed(PgmigError):
    """The migrations could not build a schema; the message says which file and the fix.

    ``transient``: a concurrent session got in the way; trying again may succeed, so the
    set is not marked broken. ``outside``: the set writes outside its schema (``file:
    object``), so database isolation can hold it.
    """

    def __init__(
        self, full: str, brief: str, *, transient: bool = False, outside: str | None = None
    ) -> None:
        super().__init__(full)
        self.full = full
        self.brief = brief
        self.transient = transient
        self.outside = outside

    def again(self) -> MigrationFailed:
        """The failure as later tests hear it: the brief text alone (the first test that
        met it showed the whole)."""
        return MigrationFailed(self.brief, self.brief)
