"""Migrating sets into a place: a throwaway schema (extensions first, then the files, checked
once) or a template database (the files as written, the server's shared objects guarded)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from pytest_pgmig.engine.apply import ApplyOptions
from pytest_pgmig.engine.formats import load_migrations
from pytest_pgmig.engine.templates import quote_identifier
from pytest_pgmig.errors import MigrationError, MigrationFailed, OutsideSchemaError
from pytest_pgmig.isolation import extensions
from pytest_pgmig.isolation.cluster import ClusterCheck
from pytest_pgmig.isolation.guard import Guard
from pytest_pgmig.isolation.place import PUBLIC, Place
from pytest_pgmig.isolation.sets import MigrationSet, Sets

# the plugin installs a set's extensions itself, once per database
_SKIP = (("CREATE", "EXTENSION"),)
# and a migration check's down files may not drop them from under the tests
_CHECK_SKIP = (*_SKIP, ("DROP", "EXTENSION"))

# a template database's files run as written (no search_path of ours after public, CREATE
# EXTENSION kept), but none may change the roles, databases or settings the server shares
IN_DATABASE = Place(
    PUBLIC, ApplyOptions(search_path=(), check=ClusterCheck(), batch=True), database=True
)


def in_schema(name: str, search_path: tuple[str, ...] = (), *, check: bool = False) -> Place:
    """Throwaway schema `name` as a place, `search_path` after it: extensions left to the
    plugin; with `check` (a migration check's), its down files may not drop them and each
    file is checked for writes outside the schema."""
    if not check:
        return Place(name, ApplyOptions(search_path=search_path, skip=_SKIP))
    return Place(name, ApplyOptions(search_path=search_path, skip=_CHECK_SKIP, check=Guard(name)))


@dataclass
class SetMigrator:
    """Migrates sets into places for one process, remembering what it checked and installed.

    The first time a set is migrated, each file is checked for writes outside the schema
    (`pytest_pgmig.isolation.guard`); later schemas of the set are migrated unchecked: the
    files are the same.
    """

    verified: set[MigrationSet] = field(default_factory=set)
    paths: dict[MigrationSet, tuple[str, ...]] = field(default_factory=dict)
    # how Alembic histories are pointed at their target (`pytest_pgmig.isolation.base.Context`)
    alembic_env: Sequence[tuple[str, str]] = ()
    alembic_hook: Callable[[Any, Any], Any] | None = None

    async def migrate(
        self, conn: asyncpg.Connection, place: Place, sets: Sets, *, dsn: str = ""
    ) -> int:
        """Migrate `place` with `sets`: how many files (or revisions) ran; raises
        `MigrationFailed` naming the file.

        `dsn` logs in there (a schema first on search_path): Alembic histories run through
        it."""
        applied = 0
        for mset in sets:
            try:
                if place.database:
                    applied += await self._into_database(conn, place, mset, dsn)
                elif mset.reading.alembic:
                    applied += await self._alembic(conn, place.schema, mset, dsn)
                else:
                    applied += await self._files(conn, place, mset)
            except MigrationError as exc:
                await conn.execute("RESET ALL")
                raise migration_failed(mset, exc) from None
            self.verified.add(mset)
        # a file's SET (pg_dump's set_config('search_path', '', false)) must not stay on the
        # control connection
        await conn.execute("RESET ALL")
        return applied

    async def _files(self, conn: asyncpg.Connection, place: Place, mset: MigrationSet) -> int:
        """A set's files into a schema after its extensions, batched, checked the first time
        the set runs."""
        options = dataclasses.replace(
            place.options,
            search_path=await self.extension_path(conn, mset),
            check=None if mset in self.verified else Guard(place.schema),
            batch=True,
        )
        return await dataclasses.replace(place, options=options).apply(conn, mset)

    async def _into_database(
        self, conn: asyncpg.Connection, place: Place, mset: MigrationSet, dsn: str
    ) -> int:
        """A set into a template database, as production would have it; a set without a
        module is a schema a suite's fixture makes for its manager."""
        if mset.reading.alembic:
            return await self._alembic_database(conn, mset, dsn)
        if not mset.module:
            await conn.execute(
                f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(mset.schema or PUBLIC)}"
            )
            return 0
        return await place.apply(conn, mset)

    async def _alembic_database(
        self, conn: asyncpg.Connection, mset: MigrationSet, dsn: str
    ) -> int:
        """An Alembic history into a template database through its `dsn`; the sessions its
        env.py left there are ended, or the template could not be copied."""
        from pytest_pgmig.alembic.runs import upgrade_heads
        from pytest_pgmig.alembic.target import Target

        try:
            return await upgrade_heads(
                mset.path, Target.from_dsn(dsn), self.alembic_env, self.alembic_hook
            )
        finally:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    async def _alembic(
        self, conn: asyncpg.Connection, name: str, mset: MigrationSet, dsn: str
    ) -> int:
        """Run an Alembic history into schema `name` through its `dsn`: the extensions it
        creates are installed already, and its first run here is checked for writes
        outside the schema, transaction by transaction."""
        from pytest_pgmig.alembic.listen import Watch
        from pytest_pgmig.alembic.runs import upgrade_heads
        from pytest_pgmig.alembic.target import Target

        await self.extension_path(conn, mset)
        installed = frozenset(await conn.fetchval("SELECT array_agg(extname) FROM pg_extension"))
        guard = Guard(name)
        watch = Watch(
            installed,
            None if mset in self.verified else (guard.before_sql(), guard.after_sql()),
        )
        return await upgrade_heads(
            mset.path,
            Target.from_dsn(dsn, schema=name),
            self.alembic_env,
            self.alembic_hook,
            watch=watch,
        )

    async def search_path(self, conn: asyncpg.Connection, name: str, sets: Sets) -> tuple[str, ...]:
        """Schema `name`, then the schemas of the extensions `sets` create (installed now)."""
        path: list[str] = []
        for mset in sets:
            try:
                path += await self.extension_path(conn, mset)
            except MigrationError as exc:
                raise migration_failed(mset, exc) from None
        return tuple(dict.fromkeys((name, *(path or [extensions.EXTENSION_SCHEMA]))))

    async def extension_path(self, conn: asyncpg.Connection, mset: MigrationSet) -> tuple[str, ...]:
        """Install the extensions a set creates (once per process); the schemas they are in."""
        path = self.paths.get(mset)
        if path is None:
            requests = _extension_requests(mset)
            path = tuple(await extensions.install(conn, requests)) if requests else ()
            self.paths[mset] = path = path or (extensions.EXTENSION_SCHEMA,)
        return path


def _extension_requests(mset: MigrationSet) -> list[extensions.ExtensionRequest]:
    if mset.reading.alembic:
        from pytest_pgmig.alembic.upgrade import revision_files

        return [
            request
            for file in revision_files(mset.path)
            for request in extensions.find_in_python(file.read_text(encoding="utf-8"), file.name)
        ]
    return [
        request
        for file in load_migrations(mset.path, mset.reading)
        for request in extensions.find_extensions(file.content, file.plan.statements, file.filename)
    ]


def migration_failed(mset: MigrationSet, problem: MigrationError) -> MigrationFailed:
    """Turn an engine error into a test failure: the full text, and a brief one."""
    filename = problem.migration_file or "?"
    error = str(problem).strip()
    # an Alembic history's path is its alembic.ini, its files are named from its folder
    base = mset.path.parent if mset.path.is_file() else mset.path
    where = f"{base}/{filename}" if filename != "?" else str(mset.path)
    full = f"pgmig: migration {where} failed (module {mset.module}):\n{error}"
    first_line = error.splitlines()[0] if error else "failed"
    brief = (
        f"pgmig: migration {where} is broken ({first_line}); see the first failing test for details"
    )
    return MigrationFailed(
        full, brief, transient=problem.transient, outside=outside_write(mset, problem)
    )


# `public.x`, `"public"."X"`: a name the file qualifies with the database's own schema
_PUBLIC = re.compile(r'(?<![\w"])"?public"?\s*\.\s*"?\w', re.IGNORECASE)


def outside_write(mset: MigrationSet, problem: MigrationError) -> str | None:
    """What of the set lies outside the schema it migrates (``file: object``), when that is
    why it failed: a write the outside-write check caught (but not to what the whole server
    shares), or a name qualified with ``public`` that is not there, because the set made it
    unqualified in the test's schema. Either way a database of its own can hold the set."""
    where = f"{mset.path}/{problem.migration_file or '?'}"
    if isinstance(problem, OutsideSchemaError):
        return None if problem.cluster else f"{where}: {problem.what}"
    # the missing object itself is named with public (`relation "public.User" does not
    # exist`): not another error that merely sits on a line naming public
    said = (problem.sql_error or "").split("\n", 1)[0]
    if said.endswith("does not exist") and _PUBLIC.search(said):
        return f"{where}: a name qualified with public ({said})"
    return None
