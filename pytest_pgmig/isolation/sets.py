"""A migration set: one folder of migrations and how to read it, the unit isolation migrates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pytest_pgmig.engine.formats import DEFAULT_READING, Reading


@dataclass(frozen=True)
class MigrationSet:
    """One folder of migrations, the `<lib>` part of its module_name, and how to read it
    (its format and placeholders).

    `schema` and `table` say where a suite of its own applied it (a pgdbm manager bound to a
    schema, another tracking table): under database isolation the set is applied there, so
    that the suite's own call finds it applied. None: the place's own (the test's schema,
    or `public` of a database) and the engine's table. A set without a module stands for
    `schema` alone, made empty (a fixture's ``create_db(schema=...)``).
    """

    module: str
    path: Path
    reading: Reading = DEFAULT_READING
    schema: str | None = None
    table: str | None = None


Sets = tuple[MigrationSet, ...]
