"""Planning a run: which files are pending, and which applied ones were modified."""

from __future__ import annotations

from collections.abc import Mapping

from pytest_pgmig.engine.files import MigrationFile
from pytest_pgmig.errors import ChecksumMismatch


def pending(files: tuple[MigrationFile, ...], applied: Mapping[str, str]) -> list[MigrationFile]:
    """The files without a tracking row, in version order.

    ``applied`` maps file names to their recorded checksums. A file whose checksum changed
    after it was applied raises `MigrationError` (pgdbm's message) before anything runs,
    but for a repeatable migration (Flyway's ``R__``), which is then pending again.
    """
    todo = []
    for file in files:
        recorded = applied.get(file.filename)
        if recorded is None or (file.repeatable and recorded != file.checksum):
            todo.append(file)
        elif recorded != file.checksum:
            raise ChecksumMismatch(file.filename, file.version, recorded, file.checksum)
    return todo
